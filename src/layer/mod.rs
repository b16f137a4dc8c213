//! Layers over a bundle: [`JaxLayer`] (plain computations) and [`FlaxLayer`] (Keras-like).

pub mod cache;
mod computation;
mod flax_layer;
mod jax_layer;

pub use flax_layer::{BundleSource, FlaxLayer, FlaxLayerBuilder, FlaxLayerConfig, LAYER_FILE};
pub use jax_layer::{seed_key, JaxLayer, LayerOptions, WeightInfo};
