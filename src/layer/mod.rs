//! Layers over a bundle, as a pipeline: a [`Builder`] collects [`Options`] → the device
//! state (variables, optimizer state, key) → computations compiled per mode and batch size →
//! [`Layer`], as [`JaxLayer`] (the general layer) or [`FlaxLayer`] (Keras' face: config,
//! saving), and [`Trainer`] (the exported training step over a `JaxLayer`).
//! [`RawLoop`](raw::RawLoop) is the benchmark floor.

pub(crate) mod batching;
pub mod cache;
mod computation;
mod custom_calls;
mod flax_layer;
mod init;
mod inputs;
pub mod isolate;
mod jax_layer;
mod mode;
mod options;
mod placement;
pub mod raw;
mod saved;
mod state;
mod trainer;

pub use custom_calls::BUILTIN_CUSTOM_CALL_TARGETS;
pub use flax_layer::{Flax, FlaxLayer, FlaxLayerConfig, LAYER_FILE};
pub use inputs::AsInputs;
pub use jax_layer::{seed_key, Jax, JaxLayer, Kind, Layer};
pub use mode::Mode;
pub use options::{Build, Builder, BundleSource, Options, Restore, VariablesSource};
pub use trainer::{epoch_batches, epoch_permutation, Batch, Metrics, Trainer, OPT_STATE_FILE, TRAINER_FILE};
