//! Layers over a bundle, as a pipeline: a [`Builder`] collects [`Options`] → the device
//! state (variables, optimizer state, key) → computations compiled per mode and batch size →
//! [`FlaxLayer`] (Keras' `FlaxLayer`; Keras' `JaxLayer` arguments through
//! [`FlaxLayer::jax_layer`]), and [`Trainer`] (the exported training step over a
//! `FlaxLayer`).

pub(crate) mod batching;
pub mod cache;
mod computation;
mod flax_layer;
mod init;
pub mod inputs;
pub mod isolate;
mod jax_layer;
mod mode;
mod options;
mod placement;
/// The benchmark floor (`flaxlayer bench`): not part of the supported API.
#[doc(hidden)]
pub mod raw;
mod saved;
mod state;
mod trainer;

pub use crate::custom_calls::BUILTIN_CUSTOM_CALL_TARGETS;
pub use flax_layer::{FlaxLayerConfig, LAYER_FILE};
pub use init::seed_key;
pub use inputs::AsInputs;
pub use jax_layer::FlaxLayer;
/// The name [`FlaxLayer`] had as the general layer; Keras' `JaxLayer` is
/// [`FlaxLayer::jax_layer`].
#[doc(hidden)]
pub type JaxLayer = FlaxLayer;
pub use mode::Mode;
pub use options::{Build, Builder, BundleSource, Options, Restore, VariablesSource};
pub use trainer::{epoch_batches, epoch_permutation, Batch, TrainMetrics, Trainer, OPT_STATE_FILE, TRAINER_FILE};
