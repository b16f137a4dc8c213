//! Host tensors: a dtype, a shape and little-endian bytes in C order.

use std::borrow::Cow;
use std::fmt;

use ndarray::{ArrayD, IxDyn};

use crate::{DType, Element, Error, Result};

mod io;
mod npy;
pub use npy::{load_npy_bytes, serialize_npy};
pub use io::{
    load_safetensors_bytes, load_safetensors_bytes_with_metadata, read_safetensors, read_safetensors_with_metadata,
    safetensors_views, serialize_safetensors, write_safetensors, SafeTensorsContents,
};

// Tensor bytes are the in-memory representation of the elements, and PJRT, safetensors and
// numpy all use little-endian bytes.
#[cfg(target_endian = "big")]
compile_error!("flaxlayer supports little-endian targets only");

/// How many elements `Display`/`Debug` show.
const SHOWN_ELEMENTS: usize = 6;

/// A host value: a dtype, a shape and the elements as little-endian bytes in C (row-major)
/// order.
///
/// The bytes live in 8-byte-aligned storage, so [`Tensor::as_slice`] borrows them as `&[T]`
/// for every element type without copying.
///
/// ```
/// # fn main() -> flaxlayer::Result<()> {
/// use flaxlayer::{DType, Tensor};
/// let t = Tensor::from_vec(vec![2, 3], vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0])?;
/// assert_eq!(t.dtype(), DType::F32);
/// assert_eq!(t.shape(), &[2, 3]);
/// assert_eq!(t.as_slice::<f32>()?[4], 5.0);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, PartialEq)]
pub struct Tensor {
    dtype: DType,
    shape: Vec<usize>,
    /// The bytes, in words so that they are aligned for every element type; the tail of the
    /// last word past `len` is zero.
    words: Vec<u64>,
    /// The number of bytes.
    len: usize,
}

/// The number of elements of `shape`, or `None` on overflow.
fn checked_num_elements(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d))
}

/// The number of bytes of a `dtype` tensor of `shape`, or an error naming `what` on overflow.
fn checked_num_bytes(what: &str, dtype: DType, shape: &[usize]) -> Result<usize> {
    checked_num_elements(shape)
        .and_then(|n| n.checked_mul(dtype.size_in_bytes()))
        .ok_or_else(|| {
            Error::invalid(what, format!("a {dtype} tensor of shape {shape:?} overflows usize bytes"))
        })
}

/// Zeroed word storage for `len` bytes, failing (instead of aborting) when it cannot be had.
fn alloc_words(what: &str, len: usize) -> Result<Vec<u64>> {
    let n = len.div_ceil(8);
    let mut words = Vec::new();
    words
        .try_reserve_exact(n)
        .map_err(|e| Error::invalid(what, format!("cannot allocate {len} bytes: {e}")))?;
    words.resize(n, 0);
    Ok(words)
}

/// Checks that `bytes` hold a `dtype` array of `shape`: the length, and 0/1 bool bytes.
fn check_bytes(dtype: DType, shape: &[usize], bytes: &[u8]) -> Result<()> {
    let expected = checked_num_bytes("Tensor::new", dtype, shape)?;
    if bytes.len() != expected {
        return Err(Error::SizeMismatch {
            what: format!("Tensor::new({dtype}, {shape:?})"),
            expected,
            got: bytes.len(),
            unit: "bytes",
        });
    }
    if dtype == DType::Bool {
        if let Some(pos) = bytes.iter().position(|&b| b > 1) {
            return Err(Error::invalid(
                "Tensor::new(bool)",
                format!("byte {pos} is {}; bool elements must be 0 or 1", bytes[pos]),
            ));
        }
    }
    Ok(())
}

/// A borrowed host array: a dtype, a shape and little-endian bytes in C order, for example a
/// tensor inside a safetensors file. Checked like [`Tensor::new`], but not copied.
///
/// An `ndarray` view converts without copying when it is in standard (C) order, and with one
/// copy otherwise.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorView<'a> {
    dtype: DType,
    shape: Cow<'a, [usize]>,
    data: Cow<'a, [u8]>,
}

impl<'a> TensorView<'a> {
    /// A view of `bytes` as a `dtype` array of `shape`.
    pub fn new(dtype: DType, shape: Vec<usize>, data: &'a [u8]) -> Result<TensorView<'a>> {
        check_bytes(dtype, &shape, data)?;
        Ok(TensorView { dtype, shape: Cow::Owned(shape), data: Cow::Borrowed(data) })
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The shape as `i64`s (PJRT's dims).
    pub fn dims_i64(&self) -> Vec<i64> {
        self.shape.iter().map(|&d| d as i64).collect()
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.data
    }

    /// An owned copy.
    pub fn to_tensor(&self) -> Result<Tensor> {
        Tensor::new(self.dtype, self.shape.to_vec(), &self.data)
    }

    /// A view of an `ndarray` view: borrowed when the array is in standard (C) order,
    /// copied into C order otherwise.
    pub fn from_array_view<T: Element, D: ndarray::Dimension>(array: ndarray::ArrayView<'a, T, D>) -> TensorView<'a> {
        let shape = array.shape().to_vec();
        let data = match array.to_slice() {
            Some(s) => Cow::Borrowed(bytemuck::cast_slice(s)),
            None => Cow::Owned(bytemuck::cast_slice(&array.iter().copied().collect::<Vec<T>>()).to_vec()),
        };
        TensorView { dtype: T::DTYPE, shape: Cow::Owned(shape), data }
    }
}

impl<'a, T: Element, D: ndarray::Dimension> From<ndarray::ArrayView<'a, T, D>> for TensorView<'a> {
    fn from(array: ndarray::ArrayView<'a, T, D>) -> TensorView<'a> {
        TensorView::from_array_view(array)
    }
}

/// Host arrays that can be viewed without copying: [`Tensor`] and [`TensorView`].
pub trait AsView {
    /// The borrowed view.
    fn as_view(&self) -> TensorView<'_>;
}

impl AsView for Tensor {
    fn as_view(&self) -> TensorView<'_> {
        self.view()
    }
}

impl AsView for TensorView<'_> {
    fn as_view(&self) -> TensorView<'_> {
        self.clone()
    }
}

impl Tensor {
    /// Reads every tensor of a safetensors file into a map from name to tensor (a
    /// `BTreeMap`, which is also a `dict` input of a call). The file is untrusted: its header
    /// and every offset are checked, and an error names the file.
    ///
    /// ```no_run
    /// # fn main() -> flaxlayer::Result<()> {
    /// use flaxlayer::{FlaxLayer, Tensor};
    /// let inputs = Tensor::read_safetensors("inputs.safetensors")?; // {"image": ..., "meta": ...}
    /// let layer = FlaxLayer::builder("hlo/image_meta").build()?;
    /// let y = layer.predict(&inputs)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn read_safetensors(path: impl AsRef<std::path::Path>) -> Result<std::collections::BTreeMap<String, Tensor>> {
        Ok(read_safetensors(path)?.into_iter().collect())
    }

    /// Writes named tensors to a safetensors file, atomically (the old file or the whole new
    /// one): a map, or `(name, tensor)` pairs.
    pub fn write_safetensors<'t, K: AsRef<str>>(
        path: impl AsRef<std::path::Path>,
        tensors: impl IntoIterator<Item = (K, &'t Tensor)>,
    ) -> Result<()> {
        let items: Vec<(K, &Tensor)> = tensors.into_iter().collect();
        write_safetensors(path, &items, None)
    }

    /// Reads a numpy `.npy` file (`numpy.save`): any little-endian bool, int, uint or float
    /// array in C order. The file is untrusted and checked before anything is allocated.
    pub fn read_npy(path: impl AsRef<std::path::Path>) -> Result<Tensor> {
        npy::read_npy(path.as_ref())
    }

    /// Writes this tensor as a numpy `.npy` file (`numpy.load` reads it), atomically.
    /// `bfloat16` has no numpy dtype and is refused.
    pub fn write_npy(&self, path: impl AsRef<std::path::Path>) -> Result<()> {
        npy::write_npy(path.as_ref(), self)
    }

    /// A borrowed view of this tensor.
    pub fn view(&self) -> TensorView<'_> {
        TensorView { dtype: self.dtype, shape: Cow::Borrowed(&self.shape), data: Cow::Borrowed(self.as_bytes()) }
    }

    /// A tensor from raw little-endian bytes in C order. The byte length must be the shape's
    /// element count times the dtype's size; a `bool` tensor's bytes must each be 0 or 1.
    pub fn new(dtype: DType, shape: Vec<usize>, bytes: &[u8]) -> Result<Tensor> {
        check_bytes(dtype, &shape, bytes)?;
        let mut words = alloc_words("Tensor::new", bytes.len())?;
        bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..bytes.len()].copy_from_slice(bytes);
        Ok(Tensor { dtype, shape, words, len: bytes.len() })
    }

    /// A tensor of `T` elements from a slice in C order.
    pub fn from_slice<T: Element>(shape: Vec<usize>, values: &[T]) -> Result<Tensor> {
        let expected = checked_num_elements(&shape).ok_or_else(|| {
            Error::invalid("Tensor::from_slice", format!("shape {shape:?} overflows usize elements"))
        })?;
        if values.len() != expected {
            return Err(Error::SizeMismatch {
                what: format!("Tensor::from_slice({}, {shape:?})", T::DTYPE),
                expected,
                got: values.len(),
                unit: "elements",
            });
        }
        Tensor::new(T::DTYPE, shape, bytemuck::cast_slice(values))
    }

    /// A tensor of `T` elements from a vector in C order.
    pub fn from_vec<T: Element>(shape: Vec<usize>, values: Vec<T>) -> Result<Tensor> {
        Tensor::from_slice(shape, &values)
    }

    /// A `bool` tensor.
    pub fn from_bools(shape: Vec<usize>, values: &[bool]) -> Result<Tensor> {
        let bytes: Vec<u8> = values.iter().map(|&b| u8::from(b)).collect();
        let expected = checked_num_elements(&shape).ok_or_else(|| {
            Error::invalid("Tensor::from_bools", format!("shape {shape:?} overflows usize elements"))
        })?;
        if bytes.len() != expected {
            return Err(Error::SizeMismatch {
                what: format!("Tensor::from_bools({shape:?})"),
                expected,
                got: bytes.len(),
                unit: "elements",
            });
        }
        Tensor::new(DType::Bool, shape, &bytes)
    }

    /// A tensor of zeros (`false` for `bool`).
    pub fn zeros(dtype: DType, shape: Vec<usize>) -> Result<Tensor> {
        let len = checked_num_bytes("Tensor::zeros", dtype, &shape)?;
        let words = alloc_words("Tensor::zeros", len)?;
        Ok(Tensor { dtype, shape, words, len })
    }

    /// A rank-0 tensor.
    pub fn scalar<T: Element>(value: T) -> Tensor {
        let len = std::mem::size_of::<T>();
        let mut words = vec![0u64; len.div_ceil(8)];
        bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..len]
            .copy_from_slice(bytemuck::bytes_of(&value));
        Tensor { dtype: T::DTYPE, shape: Vec::new(), words, len }
    }

    /// A tensor from an `ndarray` array of any memory layout (the elements are copied in
    /// logical C order).
    pub fn from_array<T: Element>(array: &ArrayD<T>) -> Tensor {
        let shape = array.shape().to_vec();
        let values: Vec<T> = match array.as_slice() {
            Some(s) => s.to_vec(),
            None => array.iter().copied().collect(),
        };
        let len = std::mem::size_of_val(values.as_slice());
        let mut words = vec![0u64; len.div_ceil(8)];
        bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..len]
            .copy_from_slice(bytemuck::cast_slice(&values));
        Tensor { dtype: T::DTYPE, shape, words, len }
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The dimensions.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The dimensions as PJRT takes them.
    pub fn dims_i64(&self) -> Vec<i64> {
        // A dimension of an allocated tensor fits in i64 (its byte length fits in isize),
        // except for zero-size tensors with huge dimensions; saturate those.
        self.shape.iter().map(|&d| i64::try_from(d).unwrap_or(i64::MAX)).collect()
    }

    /// The rank (number of dimensions).
    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// The number of elements.
    pub fn num_elements(&self) -> usize {
        // Checked at construction: the byte length did not overflow, so neither does this.
        checked_num_elements(&self.shape).unwrap_or(usize::MAX)
    }

    /// The number of bytes.
    pub fn num_bytes(&self) -> usize {
        self.len
    }

    /// The elements as little-endian bytes in C order.
    pub fn as_bytes(&self) -> &[u8] {
        &bytemuck::cast_slice::<u64, u8>(&self.words)[..self.len]
    }

    /// The elements as mutable bytes. (Writing bytes other than 0 and 1 into a `bool` tensor
    /// is the caller's mistake: such a tensor is not a valid `bool` value.)
    pub fn as_mut_bytes(&mut self) -> &mut [u8] {
        &mut bytemuck::cast_slice_mut::<u64, u8>(&mut self.words)[..self.len]
    }

    /// Checks that the tensor holds `T` elements.
    fn check_dtype<T: Element>(&self, what: &str) -> Result<()> {
        if self.dtype == T::DTYPE {
            Ok(())
        } else {
            Err(Error::DTypeMismatch {
                what: what.to_string(),
                expected: T::DTYPE,
                got: self.dtype,
            })
        }
    }

    /// The elements, borrowed without a copy; the dtype must be `T`'s.
    pub fn as_slice<T: Element>(&self) -> Result<&[T]> {
        self.check_dtype::<T>("Tensor::as_slice")?;
        bytemuck::try_cast_slice(self.as_bytes())
            .map_err(|e| Error::invalid("Tensor::as_slice", e.to_string()))
    }

    /// The elements, mutably borrowed; the dtype must be `T`'s.
    pub fn as_mut_slice<T: Element>(&mut self) -> Result<&mut [T]> {
        self.check_dtype::<T>("Tensor::as_mut_slice")?;
        bytemuck::try_cast_slice_mut(self.as_mut_bytes())
            .map_err(|e| Error::invalid("Tensor::as_mut_slice", e.to_string()))
    }

    /// The elements, copied; the dtype must be `T`'s.
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>> {
        Ok(self.as_slice::<T>()?.to_vec())
    }

    /// The elements of a `bool` tensor.
    pub fn to_bools(&self) -> Result<Vec<bool>> {
        if self.dtype != DType::Bool {
            return Err(Error::DTypeMismatch {
                what: "Tensor::to_bools".into(),
                expected: DType::Bool,
                got: self.dtype,
            });
        }
        Ok(self.as_bytes().iter().map(|&b| b != 0).collect())
    }

    /// The tensor as an `ndarray` array; the dtype must be `T`'s.
    pub fn to_array<T: Element>(&self) -> Result<ArrayD<T>> {
        ArrayD::from_shape_vec(IxDyn(&self.shape), self.to_vec::<T>()?)
            .map_err(|e| Error::invalid("Tensor::to_array", e.to_string()))
    }

    /// The same elements under another shape with the same element count.
    pub fn reshape(mut self, shape: Vec<usize>) -> Result<Tensor> {
        let n = checked_num_elements(&shape).ok_or_else(|| {
            Error::invalid("Tensor::reshape", format!("shape {shape:?} overflows usize elements"))
        })?;
        if n != self.num_elements() {
            return Err(Error::SizeMismatch {
                what: format!("Tensor::reshape({:?} -> {shape:?})", self.shape),
                expected: self.num_elements(),
                got: n,
                unit: "elements",
            });
        }
        self.shape = shape;
        Ok(self)
    }

    /// Every element converted to `f64`, for comparisons: exact for `bool`, floats and
    /// integers up to 2^53 in magnitude, rounded beyond.
    pub fn to_f64_vec(&self) -> Vec<f64> {
        fn conv<T: Element>(bytes: &[u8], f: impl Fn(T) -> f64) -> Vec<f64> {
            bytes
                .chunks_exact(std::mem::size_of::<T>())
                .map(|c| f(bytemuck::pod_read_unaligned::<T>(c)))
                .collect()
        }
        let b = self.as_bytes();
        match self.dtype {
            DType::Bool => b.iter().map(|&x| if x != 0 { 1.0 } else { 0.0 }).collect(),
            DType::I8 => conv::<i8>(b, f64::from),
            DType::I16 => conv::<i16>(b, f64::from),
            DType::I32 => conv::<i32>(b, f64::from),
            DType::I64 => conv::<i64>(b, |x| x as f64),
            DType::U8 => conv::<u8>(b, f64::from),
            DType::U16 => conv::<u16>(b, f64::from),
            DType::U32 => conv::<u32>(b, f64::from),
            DType::U64 => conv::<u64>(b, |x| x as f64),
            DType::F16 => conv::<half::f16>(b, half::f16::to_f64),
            DType::BF16 => conv::<half::bf16>(b, half::bf16::to_f64),
            DType::F32 => conv::<f32>(b, f64::from),
            DType::F64 => conv::<f64>(b, |x| x),
        }
    }

    /// The largest absolute elementwise difference to `other`, compared as `f64` (the
    /// dtypes may differ; the shapes must match). Two NaNs, or two equal infinities, count as
    /// equal; a NaN against a number, or unequal infinities, give infinity. Empty tensors
    /// give 0.
    pub fn max_abs_diff(&self, other: &Tensor) -> Result<f64> {
        if self.shape != other.shape {
            return Err(Error::ShapeMismatch {
                what: "Tensor::max_abs_diff".into(),
                expected: self.shape.clone(),
                got: other.shape.clone(),
            });
        }
        let a = self.to_f64_vec();
        let b = other.to_f64_vec();
        Ok(a.iter().zip(&b).fold(0.0f64, |m, (&x, &y)| {
            let d = if x == y || (x.is_nan() && y.is_nan()) {
                0.0
            } else {
                let d = (x - y).abs();
                if d.is_nan() {
                    f64::INFINITY
                } else {
                    d
                }
            };
            m.max(d)
        }))
    }

    /// The first few elements as text.
    fn preview(&self) -> String {
        let v = self.to_f64_vec();
        let mut parts: Vec<String> = v
            .iter()
            .take(SHOWN_ELEMENTS)
            .map(|x| match self.dtype {
                DType::Bool => (*x != 0.0).to_string(),
                d if d.is_float() => format!("{x:?}"),
                _ => format!("{x}"),
            })
            .collect();
        if v.len() > SHOWN_ELEMENTS {
            parts.push("...".into());
        }
        format!("[{}]", parts.join(", "))
    }
}

impl fmt::Display for Tensor {
    /// `float32[2,3] [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dims: Vec<String> = self.shape.iter().map(|d| d.to_string()).collect();
        write!(f, "{}[{}] {}", self.dtype, dims.join(","), self.preview())
    }
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tensor({self})")
    }
}

impl<T: Element> From<ArrayD<T>> for Tensor {
    fn from(array: ArrayD<T>) -> Tensor {
        Tensor::from_array(&array)
    }
}

impl safetensors::View for &Tensor {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype.to_safetensors()
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(self.as_bytes())
    }
    fn data_len(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::{bf16, f16};

    #[test]
    fn new_checks_byte_length() {
        let t = Tensor::new(DType::F32, vec![2, 2], &[0u8; 16]).unwrap();
        assert_eq!(t.num_elements(), 4);
        assert_eq!(t.num_bytes(), 16);
        let e = Tensor::new(DType::F32, vec![2, 2], &[0u8; 15]).unwrap_err();
        assert!(matches!(e, Error::SizeMismatch { expected: 16, got: 15, unit: "bytes", .. }), "{e}");
    }

    #[test]
    fn new_checks_overflow() {
        let e = Tensor::new(DType::F64, vec![usize::MAX, 2], &[]).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
        let e = Tensor::new(DType::F64, vec![usize::MAX / 4], &[]).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
        let e = Tensor::zeros(DType::U8, vec![1 << 20, 1 << 20, 1 << 20, 1 << 20]).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
        // Representable but not allocatable: an error, not an abort.
        let e = Tensor::zeros(DType::U8, vec![usize::MAX / 2]).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    }

    #[test]
    fn new_checks_bool_bytes() {
        assert!(Tensor::new(DType::Bool, vec![3], &[0, 1, 0]).is_ok());
        let e = Tensor::new(DType::Bool, vec![3], &[0, 2, 0]).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    }

    #[test]
    fn from_vec_and_slice() {
        let t = Tensor::from_vec(vec![3], vec![1i32, -2, 3]).unwrap();
        assert_eq!(t.dtype(), DType::I32);
        assert_eq!(t.as_slice::<i32>().unwrap(), &[1, -2, 3]);
        assert_eq!(t.as_bytes(), &[1, 0, 0, 0, 254, 255, 255, 255, 3, 0, 0, 0]);
        let e = Tensor::from_vec(vec![2, 2], vec![1.0f32; 3]).unwrap_err();
        assert!(matches!(e, Error::SizeMismatch { expected: 4, got: 3, unit: "elements", .. }), "{e}");
        let e = Tensor::from_slice(vec![usize::MAX, 3], &[1u8]).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    }

    #[test]
    fn as_slice_checks_dtype_and_is_zero_copy() {
        let t = Tensor::from_vec(vec![3], vec![1.0f64, 2.0, 3.0]).unwrap();
        let s = t.as_slice::<f64>().unwrap();
        assert_eq!(s.as_ptr() as *const u8, t.as_bytes().as_ptr());
        let e = t.as_slice::<f32>().unwrap_err();
        assert!(matches!(e, Error::DTypeMismatch { .. }), "{e}");
        assert!(t.to_vec::<i64>().is_err());
        assert!(t.to_bools().is_err());
    }

    #[test]
    fn bools() {
        let t = Tensor::from_bools(vec![2], &[true, false]).unwrap();
        assert_eq!(t.dtype(), DType::Bool);
        assert_eq!(t.to_bools().unwrap(), vec![true, false]);
        assert_eq!(t.to_f64_vec(), vec![1.0, 0.0]);
        let e = Tensor::from_bools(vec![3], &[true]).unwrap_err();
        assert!(matches!(e, Error::SizeMismatch { .. }), "{e}");
    }

    #[test]
    fn zeros_scalar_empty() {
        for d in DType::ALL {
            let z = Tensor::zeros(d, vec![2, 3]).unwrap();
            assert_eq!(z.num_bytes(), 6 * d.size_in_bytes());
            assert!(z.to_f64_vec().iter().all(|&x| x == 0.0));
        }
        let s = Tensor::scalar(2.5f32);
        assert_eq!(s.shape(), &[] as &[usize]);
        assert_eq!(s.num_elements(), 1);
        assert_eq!(s.as_slice::<f32>().unwrap(), &[2.5]);
        let e = Tensor::zeros(DType::F32, vec![0, 5]).unwrap();
        assert_eq!(e.num_elements(), 0);
        assert_eq!(e.as_slice::<f32>().unwrap(), &[] as &[f32]);
    }

    #[test]
    fn arrays_any_layout() {
        let a = ndarray::Array::from_shape_vec((2, 3), vec![1.0f32, 2., 3., 4., 5., 6.])
            .unwrap()
            .into_dyn();
        let t = Tensor::from_array(&a);
        assert_eq!(t.shape(), &[2, 3]);
        assert_eq!(t.to_array::<f32>().unwrap(), a);
        // Transposed (Fortran order in memory): copied in logical order.
        let at = a.t().to_owned();
        let tt = Tensor::from_array(&a.t().to_owned());
        assert_eq!(tt.shape(), &[3, 2]);
        assert_eq!(tt.as_slice::<f32>().unwrap(), &[1., 4., 2., 5., 3., 6.]);
        let view_t = Tensor::from(a.clone().reversed_axes());
        assert_eq!(view_t, tt);
        assert_eq!(tt.to_array::<f32>().unwrap(), at);
        assert!(t.to_array::<f64>().is_err());
    }

    #[test]
    fn views_of_ndarray_borrow_when_contiguous() {
        let a = ndarray::Array::from_shape_vec((2, 3), vec![1.0f32, 2., 3., 4., 5., 6.]).unwrap();
        let v = TensorView::from(a.view());
        assert_eq!(v.as_bytes().as_ptr(), a.as_ptr() as *const u8, "no copy for a C-order view");
        assert_eq!(v.shape(), &[2, 3]);
        let t = TensorView::from(a.t());
        assert_eq!(t.to_tensor().unwrap().as_slice::<f32>().unwrap(), &[1., 4., 2., 5., 3., 6.]);
    }

    #[test]
    fn reshape() {
        let t = Tensor::from_vec(vec![6], (0..6).collect::<Vec<i64>>()).unwrap();
        let r = t.clone().reshape(vec![2, 3]).unwrap();
        assert_eq!(r.shape(), &[2, 3]);
        assert!(matches!(t.reshape(vec![4]), Err(Error::SizeMismatch { .. })));
    }

    #[test]
    fn f64_conversion_every_dtype() {
        let cases = [
            Tensor::from_vec(vec![2], vec![-1i8, 2]).unwrap(),
            Tensor::from_vec(vec![2], vec![-1i16, 2]).unwrap(),
            Tensor::from_vec(vec![2], vec![-1i32, 2]).unwrap(),
            Tensor::from_vec(vec![2], vec![-1i64, 2]).unwrap(),
            Tensor::from_vec(vec![2], vec![f16::from_f32(-1.0), f16::from_f32(2.0)]).unwrap(),
            Tensor::from_vec(vec![2], vec![bf16::from_f32(-1.0), bf16::from_f32(2.0)]).unwrap(),
            Tensor::from_vec(vec![2], vec![-1.0f32, 2.0]).unwrap(),
            Tensor::from_vec(vec![2], vec![-1.0f64, 2.0]).unwrap(),
        ];
        for t in &cases {
            assert_eq!(t.to_f64_vec(), vec![-1.0, 2.0], "{t}");
        }
        for t in [
            Tensor::from_vec(vec![2], vec![255u8, 2]).unwrap(),
            Tensor::from_vec(vec![2], vec![255u16, 2]).unwrap(),
            Tensor::from_vec(vec![2], vec![255u32, 2]).unwrap(),
            Tensor::from_vec(vec![2], vec![255u64, 2]).unwrap(),
        ] {
            assert_eq!(t.to_f64_vec(), vec![255.0, 2.0], "{t}");
        }
    }

    #[test]
    fn max_abs_diff() {
        let a = Tensor::from_vec(vec![3], vec![1.0f32, f32::NAN, f32::INFINITY]).unwrap();
        let b = Tensor::from_vec(vec![3], vec![bf16::from_f32(1.5), bf16::NAN, bf16::INFINITY]).unwrap();
        assert_eq!(a.max_abs_diff(&b).unwrap(), 0.5);
        let c = Tensor::from_vec(vec![3], vec![1.0f32, 0.0, f32::INFINITY]).unwrap();
        assert_eq!(a.max_abs_diff(&c).unwrap(), f64::INFINITY);
        let d = Tensor::from_vec(vec![1, 3], vec![1.0f32, 0.0, 0.0]).unwrap();
        assert!(matches!(a.max_abs_diff(&d), Err(Error::ShapeMismatch { .. })));
    }

    #[test]
    fn display_is_short() {
        let t = Tensor::from_vec(vec![2, 5], (0..10).map(|x| x as f32).collect()).unwrap();
        assert_eq!(t.to_string(), "float32[2,5] [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, ...]");
        assert_eq!(format!("{t:?}"), "Tensor(float32[2,5] [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, ...])");
        let b = Tensor::from_bools(vec![2], &[true, false]).unwrap();
        assert_eq!(b.to_string(), "bool[2] [true, false]");
        assert_eq!(Tensor::scalar(7i32).to_string(), "int32[] [7]");
    }
}
