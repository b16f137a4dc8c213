//! A custom call as a handler sees it, in safe types: the buffers and attributes that
//! `xla_ffi_frame` decodes from XLA's call frame, and the error a kernel answers with. A
//! [`Kernel`] over these types is what [`Plugin::register_ffi_kernel`](super::Plugin::register_ffi_kernel)
//! registers; the crate's LAPACK kernels (`crate::linalg`) are written against them.

use std::fmt;

use super::xla_ffi_api::{XLA_FFI_Error_Code, XLA_FFI_Error_Code_INTERNAL, XLA_FFI_Error_Code_INVALID_ARGUMENT};
use crate::DType;

/// An input buffer of a custom call, as the FFI glue decodes an `XLA_FFI_Buffer` argument.
///
/// `dims` are the logical dims (`tensor<3x4x5xf32>` is `[3, 4, 5]`); the bytes are laid out as
/// the target's `operand_layouts` say, which for every LAPACK target is: batch dims major,
/// then each matrix column-major (`{1, 2, 0}` for rank 3), vectors contiguous.
#[derive(Debug, Clone, Copy)]
pub struct Operand<'a> {
    /// The element type.
    pub dtype: DType,
    /// The logical dims.
    pub dims: &'a [i64],
    /// The operand's bytes, or `None` when XLA gave this operand the same buffer as the
    /// result it aliases (`output_operand_aliases`), so its contents are already in that
    /// result. Only the operand a target writes in place may be `None`.
    pub data: Option<&'a [u8]>,
}

/// An output buffer of a custom call (an `XLA_FFI_Buffer` return value).
#[derive(Debug)]
pub struct ResultBuf<'a> {
    /// The element type.
    pub dtype: DType,
    /// The logical dims.
    pub dims: &'a [i64],
    /// The bytes to write.
    pub data: &'a mut [u8],
}

/// One attribute value, as XLA FFI encodes scalars (`XLA_FFI_Scalar`) and strings.
///
/// jaxlib's LAPACK targets use `U8` for their char enums (`uplo = 76 : ui8` is `'L'`) and
/// `Bool` for flags (ormqr's `left`, `transpose`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AttrValue<'a> {
    U8(u8),
    Bool(bool),
    I32(i32),
    I64(i64),
    F32(f32),
    F64(f64),
    Str(&'a str),
}

#[allow(dead_code)] // serves linalg's messages and unit tests
impl AttrValue<'_> {
    /// The type's name, for error messages: `u8`, `bool`, `string`, ...
    pub fn type_name(&self) -> &'static str {
        match self {
            AttrValue::U8(_) => "u8",
            AttrValue::Bool(_) => "bool",
            AttrValue::I32(_) => "i32",
            AttrValue::I64(_) => "i64",
            AttrValue::F32(_) => "f32",
            AttrValue::F64(_) => "f64",
            AttrValue::Str(_) => "string",
        }
    }
}

impl fmt::Display for AttrValue<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttrValue::U8(v) if v.is_ascii_graphic() => write!(f, "u8 {v} ({:?})", *v as char),
            AttrValue::U8(v) => write!(f, "u8 {v}"),
            AttrValue::Bool(v) => write!(f, "bool {v}"),
            AttrValue::I32(v) => write!(f, "i32 {v}"),
            AttrValue::I64(v) => write!(f, "i64 {v}"),
            AttrValue::F32(v) => write!(f, "f32 {v}"),
            AttrValue::F64(v) => write!(f, "f64 {v}"),
            AttrValue::Str(v) => write!(f, "string {v:?}"),
        }
    }
}

/// The attributes of one call, by name; names and strings borrow from the caller.
///
/// Built by the FFI glue from `XLA_FFI_Attrs` (one [`insert`](Attrs::insert) per attribute);
/// order does not matter and a later insert of the same name replaces the earlier one.
/// Attributes a target does not read are ignored.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Attrs<'a> {
    entries: Vec<(&'a str, AttrValue<'a>)>,
}

#[allow(dead_code)] // a few helpers serve linalg's unit tests only
impl<'a> Attrs<'a> {
    /// No attributes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `name` to `value`, returning the value it replaces.
    pub fn insert(&mut self, name: &'a str, value: AttrValue<'a>) -> Option<AttrValue<'a>> {
        match self.entries.iter_mut().find(|(n, _)| *n == name) {
            Some((_, old)) => Some(std::mem::replace(old, value)),
            None => {
                self.entries.push((name, value));
                None
            }
        }
    }

    /// Builder form of [`insert`](Attrs::insert).
    pub fn with(mut self, name: &'a str, value: AttrValue<'a>) -> Self {
        self.insert(name, value);
        self
    }

    /// The value of `name`, if set.
    pub fn get(&self, name: &str) -> Option<AttrValue<'a>> {
        self.entries.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }

    /// Number of attributes.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every attribute, in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, AttrValue<'a>)> + '_ {
        self.entries.iter().copied()
    }
}

impl<'a> FromIterator<(&'a str, AttrValue<'a>)> for Attrs<'a> {
    fn from_iter<I: IntoIterator<Item = (&'a str, AttrValue<'a>)>>(iter: I) -> Self {
        let mut attrs = Attrs::new();
        for (name, value) in iter {
            attrs.insert(name, value);
        }
        attrs
    }
}

/// A refused or failed call: XLA's error code and our message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerError {
    /// `INVALID_ARGUMENT` for a refused call, `INTERNAL` for a bug.
    pub code: XLA_FFI_Error_Code,
    /// What went wrong, naming the target.
    pub message: String,
}

impl HandlerError {
    /// A call refused for its arguments.
    pub fn invalid(message: impl Into<String>) -> Self {
        HandlerError { code: XLA_FFI_Error_Code_INVALID_ARGUMENT, message: message.into() }
    }

    /// A failure that is not the caller's.
    pub fn internal(message: impl Into<String>) -> Self {
        HandlerError { code: XLA_FFI_Error_Code_INTERNAL, message: message.into() }
    }
}

/// What a handler runs on a decoded call: the target's name, its operands, results and
/// attributes.
pub type Kernel = fn(&str, &[Operand<'_>], &mut [ResultBuf<'_>], &Attrs<'_>) -> Result<(), HandlerError>;

