//! Run Flax (JAX) models from Rust, through XLA's PJRT C API.
//!
//! The pipeline, bottom to top: [`pjrt`] (plugin, client, buffers, executables; the only
//! `unsafe`) → [`Tensor`] / [`PyTree`] (host values) → [`bundle`] (manifest, serialized
//! exports, weights) → [`JaxLayer`] / [`FlaxLayer`] → the `flaxlayer` CLI.

mod atomic;
pub mod bundle;
mod dtype;
mod error;
pub mod layer;
pub mod pjrt;
pub mod pytree;
pub mod tensor;

pub use bundle::Bundle;
pub use dtype::{DType, Element};
pub use error::{Error, ErrorCode, Result};
pub use layer::{FlaxLayer, FlaxLayerConfig, JaxLayer, WeightInfo};
pub use pytree::{PyTree, TreeDef};
pub use tensor::Tensor;
