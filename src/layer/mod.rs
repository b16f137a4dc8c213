//! Layers over a bundle, as a pipeline: a [`Builder`] collects [`Options`] → the device
//! state (variables, optimizer state, key) → computations compiled per mode and batch size →
//! [`JaxLayer`] (the general layer), [`FlaxLayer`] (Keras' face: weights by collection,
//! config, saving) and [`Trainer`] (the exported training step over a `JaxLayer`).
//! [`RawLoop`](raw::RawLoop) is the benchmark floor.

mod batching;
pub mod cache;
mod computation;
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

pub use flax_layer::{FlaxLayer, FlaxLayerConfig, LAYER_FILE};
pub use inputs::AsInputs;
pub use jax_layer::{seed_key, JaxLayer};
pub use mode::Mode;
pub use options::{Build, Builder, BundleSource, Options, VariablesSource};
pub use trainer::{epoch_batches, epoch_permutation, Batch, Metrics, Trainer, OPT_STATE_FILE, TRAINER_FILE};
