//! The kernels' error type: what was wrong with a call, naming the target and the buffer.

use std::fmt;

use crate::DType;

/// Which buffer of a call an error is about: `operand 1 (b)`, `result 2 (info)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BufferRef {
    /// An operand (an XLA FFI argument), by position and the name jaxlib gives it.
    Operand { index: usize, name: &'static str },
    /// A result (an XLA FFI return value), by position and the name jaxlib gives it.
    Result { index: usize, name: &'static str },
}

impl fmt::Display for BufferRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BufferRef::Operand { index, name } => write!(f, "operand {index} ({name})"),
            BufferRef::Result { index, name } => write!(f, "result {index} ({name})"),
        }
    }
}

/// A call the kernels refused, or (never expected) a kernel that failed inside.
///
/// Every variant names the custom-call target; buffer variants name the buffer, attribute
/// variants the attribute, and all say what was expected and what came.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum KernelError {
    /// The target is not one of [`supported_targets`](super::supported_targets).
    #[error("no linear algebra kernel for custom call target {target:?}")]
    UnknownTarget { target: String },

    /// Too few or too many operands or results.
    #[error("{target}: expected {expected} {what} ({names}), got {got}")]
    Arity { target: String, what: &'static str, names: String, expected: usize, got: usize },

    /// A buffer of the wrong element type.
    #[error("{target}: {buffer} has dtype {got}, expected {expected}")]
    DType { target: String, buffer: BufferRef, expected: DType, got: DType },

    /// A buffer of the wrong shape. `expected` describes the shape in words or as dims.
    #[error("{target}: {buffer} has shape {got:?}, expected {expected}")]
    Shape { target: String, buffer: BufferRef, expected: String, got: Vec<i64> },

    /// A buffer whose byte length does not match its dtype and dims.
    #[error("{target}: {buffer} holds {got} bytes, expected {expected} for its dtype and shape")]
    ByteLength { target: String, buffer: BufferRef, expected: usize, got: usize },

    /// A buffer whose address is not a multiple of its element's alignment.
    #[error("{target}: {buffer} is not aligned to {align} bytes")]
    Misaligned { target: String, buffer: BufferRef, align: usize },

    /// An operand passed as aliased (`data: None`) that the target does not write in place.
    #[error("{target}: {buffer} has no data, but only an operand aliased to a result may omit it")]
    NotAliased { target: String, buffer: BufferRef },

    /// A required attribute is absent.
    #[error("{target}: missing attribute {name:?} ({expected})")]
    MissingAttr { target: String, name: &'static str, expected: &'static str },

    /// An attribute of the wrong type, or with a value outside the allowed set.
    #[error("{target}: attribute {name:?} is {got}, expected {expected}")]
    AttrValue { target: String, name: &'static str, expected: &'static str, got: String },

    /// A mode jaxlib itself does not implement (gesdd/gesvd `mode = 'O'`).
    #[error("{target}: {what} is not implemented")]
    Unimplemented { target: String, what: String },

    /// A kernel panicked; this is a bug in the kernels, reported instead of unwinding into C.
    #[error("{target}: kernel panicked: {message}")]
    Panic { target: String, message: String },
}
