//! Custom-call attributes: a small name → value map, and the typed reads the kernels make.

use super::error::KernelError;

pub(crate) use crate::pjrt::{AttrValue, Attrs};

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
