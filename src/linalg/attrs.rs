//! Custom-call attributes: a small name → value map, and the typed reads the kernels make.

use std::fmt;

use super::error::KernelError;

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

/// A char-enum attribute of jaxlib's (`MatrixParams::UpLo`, `svd::ComputationMode`, ...):
/// its name, the letters allowed, and how to say so.
pub(crate) struct CharAttr {
    pub name: &'static str,
    pub allowed: &'static [u8],
    pub expected: &'static str,
}

pub(crate) const UPLO: CharAttr = CharAttr { name: "uplo", allowed: b"LU", expected: "u8 'L' or 'U'" };
pub(crate) const SIDE: CharAttr = CharAttr { name: "side", allowed: b"LR", expected: "u8 'L' or 'R'" };
pub(crate) const TRANS_X: CharAttr =
    CharAttr { name: "trans_x", allowed: b"NTC", expected: "u8 'N', 'T' or 'C'" };
pub(crate) const DIAG: CharAttr = CharAttr { name: "diag", allowed: b"NU", expected: "u8 'N' or 'U'" };
pub(crate) const EIG_MODE: CharAttr = CharAttr { name: "mode", allowed: b"NV", expected: "u8 'N' or 'V'" };
pub(crate) const SVD_MODE: CharAttr =
    CharAttr { name: "mode", allowed: b"ASON", expected: "u8 'A', 'S', 'O' or 'N'" };

/// Reads a char-enum attribute: a `u8` that must be one of `attr.allowed`.
pub(crate) fn char_attr(target: &str, attrs: &Attrs<'_>, attr: &CharAttr) -> Result<u8, KernelError> {
    let CharAttr { name, allowed, expected } = *attr;
    match attrs.get(name) {
        None => Err(KernelError::MissingAttr { target: target.to_owned(), name, expected }),
        Some(AttrValue::U8(v)) if allowed.contains(&v) => Ok(v),
        Some(other) => {
            Err(KernelError::AttrValue { target: target.to_owned(), name, expected, got: other.to_string() })
        }
    }
}

/// Reads a `bool` attribute.
pub(crate) fn bool_attr(target: &str, attrs: &Attrs<'_>, name: &'static str) -> Result<bool, KernelError> {
    match attrs.get(name) {
        None => Err(KernelError::MissingAttr { target: target.to_owned(), name, expected: "bool" }),
        Some(AttrValue::Bool(v)) => Ok(v),
        Some(other) => Err(KernelError::AttrValue {
            target: target.to_owned(),
            name,
            expected: "bool",
            got: other.to_string(),
        }),
    }
}
