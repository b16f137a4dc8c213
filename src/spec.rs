//! `TensorSpec`: a name, a dtype and a shape — what a variable, an input, an output or an
//! optimizer-state leaf must be — and the one function that checks a value against it.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{DType, Error, Result};

/// A named array type: the PyTree path or Flax path of a leaf, its dtype and its shape.
///
/// ```
/// use flaxlayer::{DType, TensorSpec};
/// let spec = TensorSpec::new("params/Dense_0/kernel", DType::F32, vec![12, 32]);
/// assert_eq!(spec.to_string(), "params/Dense_0/kernel: float32[12, 32]");
/// assert_eq!(spec.num_elements(), Some(384));
/// assert!(spec.check("variable", DType::F32, &[12, 32]).is_ok());
/// assert!(spec.check("variable", DType::F32, &[12, 31]).is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TensorSpec {
    /// The leaf's path, levels joined with `/` (`params/Dense_0/kernel`, `1/ids`, `inputs`).
    pub name: String,
    /// The element type.
    pub dtype: DType,
    /// The dimensions.
    pub shape: Vec<usize>,
}

impl TensorSpec {
    /// A spec.
    pub fn new(name: impl Into<String>, dtype: DType, shape: Vec<usize>) -> TensorSpec {
        TensorSpec { name: name.into(), dtype, shape }
    }

    /// The number of elements, or `None` on overflow.
    pub fn num_elements(&self) -> Option<usize> {
        self.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d))
    }

    /// The number of bytes, with checked arithmetic.
    pub fn num_bytes(&self) -> Result<usize> {
        self.dtype.array_bytes(&self.shape).map_err(|_| {
            Error::invalid(self.name.clone(), format!("a {} array of shape {:?} overflows usize bytes", self.dtype, self.shape))
        })
    }

    /// The first (collection) component of the name: `params` of `params/Dense_0/kernel`.
    pub fn collection(&self) -> &str {
        self.name.split('/').next().unwrap_or_default()
    }

    /// Whether this is a trainable parameter (collection `params`).
    pub fn is_param(&self) -> bool {
        self.collection() == "params"
    }

    /// Checks a value's dtype and shape against this spec. `kind` says what the value is
    /// (`input`, `variable`, `batch input`, ...); errors name it with the spec's name.
    pub fn check(&self, kind: &str, dtype: DType, shape: &[usize]) -> Result<()> {
        if dtype != self.dtype {
            return Err(Error::DTypeMismatch {
                what: format!("{kind} {:?}", self.name),
                expected: self.dtype,
                got: dtype,
            });
        }
        if shape != self.shape.as_slice() {
            return Err(Error::ShapeMismatch {
                what: format!("{kind} {:?}", self.name),
                expected: self.shape.clone(),
                got: shape.to_vec(),
            });
        }
        Ok(())
    }
}

impl fmt::Display for TensorSpec {
    /// `name: float32[2, 3]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}{:?}", self.name, self.dtype, self.shape)
    }
}

/// An input or output of a layer's method, as ort's `session.inputs`: its PyTree path, its
/// dtype and its shape, with `None` for a dimension that can vary between calls (the batch
/// axis of a method that takes any batch size, or that was exported at several).
///
/// ```
/// use flaxlayer::{DType, ValueSpec};
/// let spec = ValueSpec { name: "image".into(), dtype: DType::F32, shape: vec![None, Some(8), Some(8), Some(1)] };
/// assert_eq!(spec.to_string(), "image: float32[?, 8, 8, 1]");
/// assert!(spec.accepts(DType::F32, &[5, 8, 8, 1]));
/// assert!(!spec.accepts(DType::F32, &[5, 8, 8, 3]));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ValueSpec {
    /// The leaf's PyTree path (`image`, `0`, `1/ids`; `inputs` or `outputs` for a bare array).
    pub name: String,
    /// The element type.
    pub dtype: DType,
    /// The dimensions; `None` where any size goes.
    pub shape: Vec<Option<usize>>,
}

impl ValueSpec {
    /// Whether a value of this dtype and shape fits the spec.
    pub fn accepts(&self, dtype: DType, shape: &[usize]) -> bool {
        dtype == self.dtype
            && shape.len() == self.shape.len()
            && self.shape.iter().zip(shape).all(|(want, got)| want.is_none() || *want == Some(*got))
    }

    /// The shape with `-1` for a dimension that varies, as KServe's metadata shows it.
    pub fn dims_i64(&self) -> Vec<i64> {
        self.shape.iter().map(|d| d.map_or(-1, |d| d as i64)).collect()
    }

    /// Merges the specs of the same leaves at several exported batch sizes: a dimension that
    /// differs between them is `None`; `vary_batch[i]` makes leaf `i`'s leading axis `None` too.
    pub(crate) fn merge(per_size: &[&[TensorSpec]], vary_batch: &[bool]) -> Vec<ValueSpec> {
        let Some(first) = per_size.first() else { return Vec::new() };
        first
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                let mut shape: Vec<Option<usize>> = spec.shape.iter().map(|&d| Some(d)).collect();
                for other in &per_size[1..] {
                    if let Some(o) = other.get(i) {
                        for (d, &od) in shape.iter_mut().zip(&o.shape) {
                            if *d != Some(od) {
                                *d = None;
                            }
                        }
                    }
                }
                if vary_batch.get(i).copied().unwrap_or(false) {
                    if let Some(d) = shape.first_mut() {
                        *d = None;
                    }
                }
                ValueSpec { name: spec.name.clone(), dtype: spec.dtype, shape }
            })
            .collect()
    }
}

impl fmt::Display for ValueSpec {
    /// `image: float32[?, 8, 8, 1]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dims: Vec<String> = self.shape.iter().map(|d| d.map_or("?".to_string(), |d| d.to_string())).collect();
        write!(f, "{}: {}[{}]", self.name, self.dtype, dims.join(", "))
    }
}

/// Finds a spec by name.
pub(crate) fn find<'a>(specs: &'a [TensorSpec], name: &str) -> Option<&'a TensorSpec> {
    specs.iter().find(|s| s.name == name)
}

/// The names of `specs`, comma-separated, as `NotFound` errors list what is available.
pub(crate) fn names(specs: &[TensorSpec]) -> String {
    specs.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_names_the_value_and_both_sides() {
        let s = TensorSpec::new("ids", DType::I32, vec![3, 4]);
        let e = s.check("input", DType::I64, &[3, 4]).unwrap_err();
        assert_eq!(e.to_string(), "input \"ids\": expected dtype int32, got int64");
        let e = s.check("input", DType::I32, &[3, 5]).unwrap_err();
        assert_eq!(e.to_string(), "input \"ids\": expected shape [3, 4], got [3, 5]");
        assert!(s.check("input", DType::I32, &[3, 4]).is_ok());
    }

    #[test]
    fn collections_and_sizes() {
        let s = TensorSpec::new("batch_stats/bn/mean", DType::F32, vec![32]);
        assert_eq!(s.collection(), "batch_stats");
        assert!(!s.is_param());
        assert_eq!(s.num_bytes().unwrap(), 128);
        let huge = TensorSpec::new("x", DType::F64, vec![usize::MAX, 2]);
        assert!(huge.num_elements().is_none());
        assert!(matches!(huge.num_bytes(), Err(Error::InvalidArgument { .. })));
    }
}
