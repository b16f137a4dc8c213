//! Run Flax (JAX) models from Rust, through XLA's PJRT C API.
//!
//! The pipeline, bottom to top: [`pjrt`] (plugin, client, buffers, executables; all the FFI
//! code) → [`Tensor`] / [`PyTree`] (host values) → [`bundle`] (manifest, serialized
//! exports, weights) → [`JaxLayer`] / [`FlaxLayer`] → the `flaxlayer` CLI.
//!
//! All `unsafe` code lives in [`pjrt`]; the rest of the crate may not use it.
#![deny(unsafe_code)]

mod atomic;
pub mod bundle;
mod dtype;
mod error;
pub mod layer;
#[allow(unsafe_code)]
pub mod pjrt;
pub mod pytree;
pub mod tensor;

pub use bundle::Bundle;
pub use dtype::{DType, Element};
pub use error::{Error, ErrorCode, Result};
pub use layer::{FlaxLayer, FlaxLayerConfig, JaxLayer, WeightInfo};
pub use layer::{Batch, Metrics, Trainer};
pub use pytree::{PyTree, TreeDef};
pub use tensor::Tensor;

/// The README's Rust example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

