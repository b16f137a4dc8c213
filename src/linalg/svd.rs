//! gesdd / gesvd: singular value decomposition, through faer's divide and conquer.
//!
//! Both targets have the same contract in jaxlib (`gesvd` is the QR-iteration algorithm,
//! `gesdd` divide and conquer); both are served by the same faer SVD here.

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::svd::{svd, svd_scratch, ComputeSvdVectors};
use faer::{ColMut, MatMut, MatRef, Par};

use super::attrs::{char_attr, Attrs, SVD_MODE};
use super::buffers::{copy_in, Operand, ResultBuf, Signature};
use super::error::KernelError;
use super::scalar::Real;

/// Which LAPACK routine's `info` convention to follow for NaN input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SvdRoutine {
    /// dgesdd checks for NaN and returns `info = -4`.
    Gesdd,
    /// dgesvd does not check: `info = 0` and NaN outputs.
    Gesvd,
}

/// `lapack_?gesdd_ffi` / `lapack_?gesvd_ffi`: `a [.., m, n], mode -> (a_out [.., m, n],
/// s [.., k], u [.., m, m | k], vt [.., n | k, n], info i32 [..])`, `k = min(m, n)`.
///
/// `mode = 'A'`: full `u` (m × m) and `vt` (n × n); `'S'`: thin (m × k, k × n); `'N'`: only
/// `s`, with `u` and `vt` of either shape filled with zeros; `'O'` is refused, as jaxlib
/// refuses it. `s` is descending, `A = U diag(s) VT`. `a_out` keeps the input (LAPACK leaves
/// it overwritten). NaN input: NaN outputs, `info = -4` for gesdd and 0 for gesvd; infinite
/// input: NaN outputs, `info = 0` (what OpenBLAS's LAPACK returns). No convergence: `info = 1`.
pub(crate) fn gesdd<T: Real>(
    target: &str,
    operands: &[Operand<'_>],
    results: &mut [ResultBuf<'_>],
    attrs: &Attrs<'_>,
) -> Result<(), KernelError> {
    singular_value_decomposition::<T>(target, operands, results, attrs, SvdRoutine::Gesdd)
}

/// See [`gesdd`].
pub(crate) fn gesvd<T: Real>(
    target: &str,
    operands: &[Operand<'_>],
    results: &mut [ResultBuf<'_>],
    attrs: &Attrs<'_>,
) -> Result<(), KernelError> {
    singular_value_decomposition::<T>(target, operands, results, attrs, SvdRoutine::Gesvd)
}

fn singular_value_decomposition<T: Real>(
    target: &str,
    operands: &[Operand<'_>],
    results: &mut [ResultBuf<'_>],
    attrs: &Attrs<'_>,
    routine: SvdRoutine,
) -> Result<(), KernelError> {
    let sig = Signature { target, operands: &["a"], results: &["a_out", "s", "u", "vt", "info"] };
    sig.check_arity(operands, results)?;
    let mode = char_attr(target, attrs, &SVD_MODE)?;
    if mode == b'O' {
        return Err(KernelError::Unimplemented { target: sig.target(), what: "mode 'O'".into() });
    }
    let a = sig.matrices(operands, 0, T::DTYPE)?;
    let (m, n) = (a.rows, a.cols);
    let k = m.min(n);
    let (full_u, thin_u) = (a.dims_with(&[m, m]), a.dims_with(&[m, k]));
    let (full_vt, thin_vt) = (a.dims_with(&[n, n]), a.dims_with(&[k, n]));
    sig.check_result(results, 0, T::DTYPE, operands[0].dims)?;
    sig.check_result(results, 1, T::DTYPE, &a.dims_with(&[k]))?;
    match mode {
        b'A' => {
            sig.check_result(results, 2, T::DTYPE, &full_u)?;
            sig.check_result(results, 3, T::DTYPE, &full_vt)?;
        }
        b'S' => {
            sig.check_result(results, 2, T::DTYPE, &thin_u)?;
            sig.check_result(results, 3, T::DTYPE, &thin_vt)?;
        }
        _ => {
            sig.check_result_any(results, 2, T::DTYPE, &[&full_u, &thin_u])?;
            sig.check_result_any(results, 3, T::DTYPE, &[&full_vt, &thin_vt])?;
        }
    }
    sig.check_result(results, 4, crate::DType::I32, a.batch_dims)?;
    let [a_out, s, u, vt, info] = sig.split_results(results)?;
    let u_cols = if u.dims == full_u.as_slice() { m } else { k };
    let vt_rows = if vt.dims == full_vt.as_slice() { n } else { k };
    let a_out = sig.result_data::<T>(0, a_out)?;
    let s = sig.result_data::<T>(1, s)?;
    let u = sig.result_data::<T>(2, u)?;
    let vt = sig.result_data::<T>(3, vt)?;
    let info = sig.result_data::<i32>(4, info)?;
    copy_in(&operands[0], a_out);
    let compute = match mode {
        b'A' => ComputeSvdVectors::Full,
        b'S' => ComputeSvdVectors::Thin,
        _ => ComputeSvdVectors::No,
    };
    if compute == ComputeSvdVectors::No {
        u.fill(T::ZERO);
        vt.fill(T::ZERO);
    }
    if k == 0 {
        // An empty matrix: U and VT of full shape are identities (JAX itself never calls this).
        if compute == ComputeSvdVectors::Full {
            fill_identities(u, m);
            fill_identities(vt, n);
        }
        info.fill(0);
        return Ok(());
    }
    let mut mem = MemBuffer::new(svd_scratch::<T>(m, n, compute, compute, Par::Seq, Default::default()));
    for b in 0..a.count {
        let input = MatRef::from_column_major_slice(&a_out[b * m * n..(b + 1) * m * n], m, n);
        let values = &mut s[b * k..(b + 1) * k];
        let u = &mut u[b * m * u_cols..(b + 1) * m * u_cols];
        let vt = &mut vt[b * vt_rows * n..(b + 1) * vt_rows * n];
        if let Some(has_nan) = non_finite(input) {
            values.fill(T::NAN);
            if compute != ComputeSvdVectors::No {
                u.fill(T::NAN);
                vt.fill(T::NAN);
            }
            info[b] = if has_nan && routine == SvdRoutine::Gesdd { -4 } else { 0 };
            continue;
        }
        let (u_out, v_out) = if compute == ComputeSvdVectors::No {
            (None, None)
        } else {
            let u_out = MatMut::from_column_major_slice_mut(u, m, u_cols);
            // faer writes V (n × vt_rows); VT's column-major storage is V's row-major one.
            let v_out = MatMut::from_column_major_slice_mut(vt, vt_rows, n).transpose_mut();
            (Some(u_out), Some(v_out))
        };
        let values_out = ColMut::from_slice_mut(values).as_diagonal_mut();
        let stack = MemStack::new(&mut mem);
        let result = svd(input, values_out, u_out, v_out, Par::Seq, stack, Default::default());
        info[b] = i32::from(result.is_err());
    }
    Ok(())
}

/// `None` if every entry is finite, else whether one is NaN.
fn non_finite<T: Real>(a: MatRef<'_, T>) -> Option<bool> {
    let mut any = false;
    for j in 0..a.ncols() {
        for i in 0..a.nrows() {
            let v = a[(i, j)];
            if v.nan() {
                return Some(true);
            }
            any |= !v.finite();
        }
    }
    any.then_some(false)
}

/// Sets every `n × n` matrix of `data` to the identity.
fn fill_identities<T: Real>(data: &mut [T], n: usize) {
    data.fill(T::ZERO);
    for matrix in data.chunks_exact_mut((n * n).max(1)) {
        for i in 0..n {
            matrix[i * n + i] = T::ONE;
        }
    }
}
