//! Run Flax (JAX) models from Rust, through XLA's PJRT C API.
//!
//! The pipeline, bottom to top: [`pjrt`] (plugin, client, buffers, executables; the only
//! `unsafe`) → [`Tensor`] / [`PyTree`] (host values) → [`bundle`] (manifest, serialized
//! exports, weights) → [`JaxLayer`] / [`FlaxLayer`] → the `flaxlayer` CLI.

mod dtype;
mod error;
pub mod pjrt;

pub use dtype::{DType, Element};
pub use error::{Error, ErrorCode, Result};
