#![doc = include_str!("../docs/rustdoc.md")]
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod atomic;
pub mod bundle;
mod dtype;
mod error;
mod files;
pub mod generate;
pub mod layer;
#[allow(dead_code)] // a few helpers (`Attrs::with`, `supported_targets`, ...) serve its unit tests only
mod linalg;
#[allow(unsafe_code)]
pub mod pjrt;
pub mod pytree;
#[cfg(feature = "serve")]
pub mod server;
mod spec;
pub mod tensor;

pub use bundle::Bundle;
pub use dtype::{DType, Element};
pub use error::{Error, ErrorCode, Result};
pub use layer::{AsInputs, Batch, Builder, FlaxLayer, FlaxLayerConfig, JaxLayer, Layer, Metrics, Mode, Trainer};
pub use pytree::{PyTree, Tree, TreeDef, TreeView};
pub use spec::TensorSpec;
pub use tensor::{Tensor, TensorView};

/// The `ndarray` this crate is built with, so that arrays passed in and out have its types.
pub use ndarray;

/// The README's Rust examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
