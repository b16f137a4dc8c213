//! Tests of the LAPACK kernels against LAPACK itself (scipy's, which jaxlib calls) and JAX.
//!
//! The oracle is `tests/fixtures/linalg.safetensors`, written by
//! `scripts/make_linalg_fixtures.py`. Fixtures are row-major with logical shapes; the kernels
//! see column-major matrices, as XLA lays them out for these custom calls.

mod cholesky;
mod eigh;
mod errors;
mod lu;
mod qr;
mod svd;
mod triangular;

use std::sync::OnceLock;

use safetensors::SafeTensors;

use super::scalar::Real;
use super::{call, AttrValue, Attrs, KernelError, Operand, ResultBuf};
use crate::DType;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/linalg.safetensors");

fn fixture_bytes() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| {
        std::fs::read(FIXTURES)
            .expect("tests/fixtures/linalg.safetensors (run scripts/make_linalg_fixtures.py)")
    })
}

/// A float type under test, with its fixture prefix and tolerance.
pub(super) trait Float: Real {
    /// `s` or `d`, as in the fixture names and LAPACK's routine names.
    const PREFIX: &'static str;
    /// Relative tolerance against the reference.
    const TOL: f64;
    fn to_f64(self) -> f64;
}

impl Float for f32 {
    const PREFIX: &'static str = "s";
    const TOL: f64 = 1e-5;
    fn to_f64(self) -> f64 {
        self as f64
    }
}

impl Float for f64 {
    const PREFIX: &'static str = "d";
    const TOL: f64 = 1e-12;
    fn to_f64(self) -> f64 {
        self
    }
}

/// A fixture tensor, row-major.
#[derive(Debug, Clone)]
pub(super) struct Tensor<T> {
    pub dims: Vec<i64>,
    pub data: Vec<T>,
}

impl<T: bytemuck::Pod> Tensor<T> {
    /// Loads `name` (e.g. `"d/getrf/square/a"`).
    pub fn load(name: &str) -> Self {
        let tensors = SafeTensors::deserialize(fixture_bytes()).expect("fixture file parses");
        let view = tensors.tensor(name).unwrap_or_else(|e| panic!("fixture {name}: {e}"));
        assert_eq!(view.dtype().bitsize(), 8 * std::mem::size_of::<T>(), "fixture {name} element size");
        Tensor {
            dims: view.shape().iter().map(|&d| d as i64).collect(),
            data: bytemuck::pod_collect_to_vec(view.data()),
        }
    }
}

impl<T: Float> Tensor<T> {
    /// Loads `{prefix}/{name}`.
    pub fn of(name: &str) -> Self {
        Self::load(&format!("{}/{name}", T::PREFIX))
    }
}

impl<T: Copy> Tensor<T> {
    /// Matrices in the batch, rows, cols.
    pub fn shape(&self) -> (usize, usize, usize) {
        let n = self.dims.len();
        let (rows, cols) = (self.dims[n - 2] as usize, self.dims[n - 1] as usize);
        (self.data.len() / (rows * cols).max(1), rows, cols)
    }

    /// The data with each matrix column-major: what the kernels read and write.
    pub fn col_major(&self) -> Vec<T> {
        transpose_each(&self.data, self.shape())
    }

    /// A tensor of these dims from column-major matrices.
    pub fn from_col_major(dims: &[i64], data: &[T]) -> Self {
        let n = dims.len();
        let (rows, cols) = (dims[n - 2] as usize, dims[n - 1] as usize);
        let batch = data.len() / (rows * cols).max(1);
        Tensor { dims: dims.to_vec(), data: transpose_each(data, (batch, cols, rows)) }
    }

    /// Matrix `b` (row-major) as a `rows × cols` accessor.
    pub fn matrix(&self, b: usize) -> Mat<T> {
        let (_, rows, cols) = self.shape();
        Mat { rows, cols, data: self.data[b * rows * cols..(b + 1) * rows * cols].to_vec() }
    }
}

/// Transposes every `rows × cols` row-major matrix of `data`.
fn transpose_each<T: Copy>(data: &[T], (batch, rows, cols): (usize, usize, usize)) -> Vec<T> {
    let mut out = Vec::with_capacity(data.len());
    for b in 0..batch {
        let m = &data[b * rows * cols..(b + 1) * rows * cols];
        for j in 0..cols {
            for i in 0..rows {
                out.push(m[i * cols + j]);
            }
        }
    }
    out
}

/// A small dense row-major matrix for reconstructions in f64.
#[derive(Debug, Clone)]
pub(super) struct Mat<T> {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<T>,
}

impl<T: Float> Mat<T> {
    pub fn at(&self, i: usize, j: usize) -> f64 {
        self.data[i * self.cols + j].to_f64()
    }
}

/// `rows × cols` row-major f64 matrix.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct M {
    pub rows: usize,
    pub cols: usize,
    pub v: Vec<f64>,
}

impl M {
    pub fn from_fn(rows: usize, cols: usize, f: impl Fn(usize, usize) -> f64) -> M {
        let mut v = Vec::with_capacity(rows * cols);
        for i in 0..rows {
            for j in 0..cols {
                v.push(f(i, j));
            }
        }
        M { rows, cols, v }
    }

    pub fn of<T: Float>(m: &Mat<T>) -> M {
        M::from_fn(m.rows, m.cols, |i, j| m.at(i, j))
    }

    pub fn at(&self, i: usize, j: usize) -> f64 {
        self.v[i * self.cols + j]
    }

    pub fn t(&self) -> M {
        M::from_fn(self.cols, self.rows, |i, j| self.at(j, i))
    }

    pub fn mul(&self, other: &M) -> M {
        assert_eq!(self.cols, other.rows);
        M::from_fn(self.rows, other.cols, |i, j| (0..self.cols).map(|k| self.at(i, k) * other.at(k, j)).sum())
    }

    pub fn eye(n: usize) -> M {
        M::from_fn(n, n, |i, j| f64::from(u8::from(i == j)))
    }

    pub fn max_abs(&self) -> f64 {
        self.v.iter().fold(0.0, |m, x| m.max(x.abs()))
    }
}

/// Asserts `got ≈ want` in max norm, relative to `want`'s largest entry (at least 1).
pub(super) fn assert_close_m(got: &M, want: &M, tol: f64, what: &str) {
    assert_eq!((got.rows, got.cols), (want.rows, want.cols), "{what}: shape");
    let scale = want.max_abs().max(1.0);
    let err = got.v.iter().zip(&want.v).fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        err <= tol * scale,
        "{what}: max error {err:e} > {tol:e} × {scale}\n got {:?}\nwant {:?}",
        got.v,
        want.v
    );
}

/// Asserts two float slices agree in max norm relative to `want`'s largest entry (at least 1).
pub(super) fn assert_close<T: Float>(got: &[T], want: &[T], what: &str) {
    assert_close_tol(got, want, T::TOL, what);
}

pub(super) fn assert_close_tol<T: Float>(got: &[T], want: &[T], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(1.0f64, |m, x| m.max(x.to_f64().abs()));
    let err = got.iter().zip(want).fold(0.0f64, |m, (a, b)| m.max((a.to_f64() - b.to_f64()).abs()));
    assert!(err <= tol * scale, "{what}: max error {err:e} > {tol:e} × {scale}\n got {got:?}\nwant {want:?}");
}

/// A buffer aligned like XLA's (at least to 8 bytes), of an exact byte length.
#[derive(Debug, Clone)]
pub(super) struct Buf {
    words: Vec<u64>,
    len: usize,
}

impl Buf {
    pub fn zeroed(len: usize) -> Buf {
        Buf { words: vec![0; len.div_ceil(8)], len }
    }

    pub fn of<T: bytemuck::Pod>(data: &[T]) -> Buf {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        let mut buf = Buf::zeroed(bytes.len());
        buf.bytes_mut().copy_from_slice(bytes);
        buf
    }

    pub fn bytes(&self) -> &[u8] {
        &bytemuck::cast_slice(&self.words)[..self.len]
    }

    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut bytemuck::cast_slice_mut(&mut self.words)[..self.len]
    }

    pub fn to_vec<T: bytemuck::Pod>(&self) -> Vec<T> {
        bytemuck::pod_collect_to_vec(self.bytes())
    }
}

/// An input of a test call: dtype, dims, column-major data.
pub(super) struct In {
    pub dtype: DType,
    pub dims: Vec<i64>,
    pub buf: Buf,
}

impl In {
    pub fn new<T: Real>(dims: &[i64], col_major: &[T]) -> In {
        In { dtype: T::DTYPE, dims: dims.to_vec(), buf: Buf::of(col_major) }
    }

    pub fn matrices<T: Float>(t: &Tensor<T>) -> In {
        In::new(&t.dims, &t.col_major())
    }

    pub fn vector<T: Float>(t: &Tensor<T>) -> In {
        In::new(&t.dims, &t.data)
    }
}

/// An expected result: dtype and dims.
pub(super) fn out(dtype: DType, dims: &[i64]) -> (DType, Vec<i64>) {
    (dtype, dims.to_vec())
}

/// Runs `target` with fresh result buffers. With `alias = Some((operand, result))`, that
/// operand is passed as `data: None` and its bytes are put in the result first, as XLA does
/// when it gives both one buffer.
pub(super) fn run(
    target: &str,
    inputs: &[In],
    outs: &[(DType, Vec<i64>)],
    attrs: &Attrs<'_>,
    alias: Option<(usize, usize)>,
) -> Result<Vec<Buf>, KernelError> {
    let mut bufs: Vec<Buf> = outs
        .iter()
        .map(|(dtype, dims)| Buf::zeroed(dims.iter().product::<i64>() as usize * dtype.size_in_bytes()))
        .collect();
    if let Some((o, r)) = alias {
        bufs[r].bytes_mut().copy_from_slice(inputs[o].buf.bytes());
    }
    let operands: Vec<Operand<'_>> = inputs
        .iter()
        .enumerate()
        .map(|(i, input)| Operand {
            dtype: input.dtype,
            dims: &input.dims,
            data: if alias.map(|(o, _)| o) == Some(i) { None } else { Some(input.buf.bytes()) },
        })
        .collect();
    let mut results: Vec<ResultBuf<'_>> = bufs
        .iter_mut()
        .zip(outs)
        .map(|(buf, (dtype, dims))| ResultBuf { dtype: *dtype, dims, data: buf.bytes_mut() })
        .collect();
    call(target, &operands, &mut results, attrs)?;
    drop(results);
    Ok(bufs)
}

/// `lapack_{s|d}{op}_ffi`.
pub(super) fn target<T: Float>(op: &str) -> String {
    format!("lapack_{}{op}_ffi", T::PREFIX)
}

pub(super) fn char_attrs(pairs: &[(&'static str, u8)]) -> Attrs<'static> {
    pairs.iter().map(|&(name, v)| (name, AttrValue::U8(v))).collect()
}

/// Dims of a batch-shaped result: `dims[..len - drop]` followed by `tail`.
pub(super) fn dims_with(dims: &[i64], drop: usize, tail: &[i64]) -> Vec<i64> {
    let mut d = dims[..dims.len() - drop].to_vec();
    d.extend_from_slice(tail);
    d
}
