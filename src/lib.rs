#![doc = include_str!("../docs/rustdoc.md")]
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod atomic;
pub mod bundle;
pub mod custom_calls;
mod dtype;
mod error;
mod files;
pub mod generate;
pub mod layer;
#[allow(dead_code)] // a few helpers (`Attrs::with`, `supported_targets`, ...) serve its unit tests only
mod linalg;
#[allow(unsafe_code)]
pub mod pjrt;
pub mod plugins;
pub mod pytree;
#[cfg(feature = "serve")]
pub mod server;
mod spec;
pub mod tensor;

pub use bundle::Bundle;
pub use dtype::{DType, Element};
pub use error::{Error, ErrorCode, Result};
pub use layer::{AsInputs, Batch, Builder, FlaxLayer, FlaxLayerConfig, Mode, TrainMetrics, Trainer};
#[doc(hidden)]
pub use layer::JaxLayer;
pub use pytree::{PyTree, Tree, TreeDef, TreeView};
pub use spec::{TensorSpec, ValueSpec};
pub use tensor::{Tensor, TensorView};

/// The `ndarray` this crate is built with, so that arrays passed in and out have its types.
pub use ndarray;

/// The README's Rust examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// docs/rust.md's examples (inputs), compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../docs/rust.md")]
pub struct RustDocDoctests;

/// docs/devices.md's example (a bundle on a 2 x 4 mesh), compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../docs/devices.md")]
pub struct DevicesDocDoctests;
