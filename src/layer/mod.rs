//! Layers over a bundle: [`JaxLayer`] (plain computations), [`FlaxLayer`] (Keras-like),
//! [`Trainer`] (the exported training step), and [`RawLoop`](raw::RawLoop), the benchmark floor.

pub mod cache;
mod computation;
mod flax_layer;
mod jax_layer;
mod saved;
mod trainer;
pub mod raw;

pub use flax_layer::{BundleSource, FlaxLayer, FlaxLayerBuilder, FlaxLayerConfig, LAYER_FILE};
pub use jax_layer::{seed_key, JaxLayer, LayerOptions, WeightInfo};
pub use trainer::{epoch_batches, epoch_permutation, Batch, Metrics, Trainer, TrainerBuilder, OPT_STATE_FILE, TRAINER_FILE};
