//! Layers over a bundle: [`JaxLayer`] (plain computations), [`FlaxLayer`] (Keras-like),
//! and [`RawLoop`](raw::RawLoop), the benchmark floor.

pub mod cache;
mod computation;
mod flax_layer;
mod jax_layer;
pub mod raw;

pub use flax_layer::{BundleSource, FlaxLayer, FlaxLayerBuilder, FlaxLayerConfig, LAYER_FILE};
pub use jax_layer::{seed_key, JaxLayer, LayerOptions, WeightInfo};
