//! potrf: Cholesky factorization, as LAPACK's recursive dpotrf2 computes it.
//!
//! Only the `uplo` triangle is read and written; the other keeps its input values. A leading
//! minor that is not positive definite stops the factorization with `info` = its order
//! (1-based), as LAPACK does; JAX then replaces that matrix with NaNs.

use faer::linalg::matmul::triangular::{matmul, BlockStructure};
use faer::linalg::triangular_solve::solve_lower_triangular_in_place;
use faer::{Accum, MatMut, Par};

use super::attrs::{char_attr, Attrs, UPLO};
use super::buffers::{copy_in, Operand, ResultBuf, Signature};
use super::error::KernelError;
use super::scalar::Real;

/// Below this order, the unblocked right-looking code runs.
pub(crate) const UNBLOCKED: usize = 32;

/// `lapack_?potrf_ffi`: `a [.., n, n], uplo -> (a_out [.., n, n], info i32 [..])`.
pub(crate) fn potrf<T: Real>(
    target: &str,
    operands: &[Operand<'_>],
    results: &mut [ResultBuf<'_>],
    attrs: &Attrs<'_>,
) -> Result<(), KernelError> {
    let sig = Signature { target, operands: &["a"], results: &["a_out", "info"] };
    sig.check_arity(operands, results)?;
    let uplo = char_attr(target, attrs, &UPLO)?;
    let a = sig.matrices(operands, 0, T::DTYPE)?;
    let n = a.rows;
    if a.cols != n {
        return Err(sig.operand_shape_error(operands, 0, "square matrices".into()));
    }
    sig.check_result(results, 0, T::DTYPE, operands[0].dims)?;
    sig.check_result(results, 1, crate::DType::I32, a.batch_dims)?;
    let [a_out, info] = sig.split_results(results)?;
    let a_out = sig.result_data::<T>(0, a_out)?;
    let info = sig.result_data::<i32>(1, info)?;
    copy_in(&operands[0], a_out);
    let mut transposed = Vec::new();
    for b in 0..a.count {
        let matrix = &mut a_out[b * n * n..(b + 1) * n * n];
        let failed = if uplo == b'L' {
            cholesky_lower(matrix, n, 0, n, UNBLOCKED)
        } else {
            // Aᵀ's lower triangle is A's upper one: factor it there, write Uᵀ back.
            transpose_into(matrix, n, &mut transposed);
            let failed = cholesky_lower(&mut transposed, n, 0, n, UNBLOCKED);
            copy_upper_from_transposed(matrix, n, &transposed);
            failed
        };
        info[b] = failed.map_or(0, |j| j as i32 + 1);
    }
    Ok(())
}

/// Factors `A = L Lᵀ` in the lower triangle of the order-`size` block at `(r0, r0)` of a
/// column-major matrix with leading dimension `ld`. Returns the first column whose pivot is
/// not positive (NaN included). Blocks of order at most `unblocked` are factored unblocked.
pub(crate) fn cholesky_lower<T: Real>(
    a: &mut [T],
    ld: usize,
    r0: usize,
    size: usize,
    unblocked: usize,
) -> Option<usize> {
    if size <= unblocked.max(1) {
        return cholesky_unblocked(a, ld, r0, size);
    }
    let n1 = size / 2;
    if let Some(j) = cholesky_lower(a, ld, r0, n1, unblocked) {
        return Some(j);
    }
    {
        let block = MatMut::from_column_major_slice_with_stride_mut(&mut a[r0 * ld + r0..], size, size, ld);
        let (l11, _, a21, a22) = block.split_at_mut(n1, n1);
        let mut a21 = a21;
        // A21 := A21 L11⁻ᵀ, i.e. L11 A21ᵀ = A21ᵀ.
        solve_lower_triangular_in_place(l11.as_ref(), a21.as_mut().transpose_mut(), Par::Seq);
        // A22 -= A21 A21ᵀ, lower triangle only.
        matmul(
            a22,
            BlockStructure::TriangularLower,
            Accum::Add,
            a21.as_ref(),
            BlockStructure::Rectangular,
            a21.as_ref().transpose(),
            BlockStructure::Rectangular,
            -T::ONE,
            Par::Seq,
        );
    }
    cholesky_lower(a, ld, r0 + n1, size - n1, unblocked).map(|j| j + n1)
}

/// Right-looking unblocked Cholesky (LAPACK's dpotf2 order of operations per column). On
/// failure the failing diagonal entry holds the non-positive value, as dpotf2 leaves it.
fn cholesky_unblocked<T: Real>(a: &mut [T], ld: usize, r0: usize, size: usize) -> Option<usize> {
    for j in 0..size {
        let c = r0 + j;
        let diag = a[c * ld + c];
        // NaN is not positive either.
        let positive = diag > T::ZERO;
        if !positive {
            return Some(j);
        }
        let root = diag.square_root();
        a[c * ld + c] = root;
        let (left, right) = a.split_at_mut((c + 1) * ld);
        let l = &mut left[c * ld + c + 1..c * ld + r0 + size];
        let inverse = T::ONE / root;
        l.iter_mut().for_each(|v| *v *= inverse);
        for k in 0..size - j - 1 {
            // Column c + 1 + k, rows from its diagonal down.
            let col = &mut right[k * ld + c + 1 + k..k * ld + r0 + size];
            let factor = l[k];
            for (x, &lv) in col.iter_mut().zip(&l[k..]) {
                *x -= factor * lv;
            }
        }
    }
    None
}

fn transpose_into<T: Real>(a: &[T], n: usize, out: &mut Vec<T>) {
    out.clear();
    out.resize(n * n, T::ZERO);
    for j in 0..n {
        for i in 0..n {
            out[i * n + j] = a[j * n + i];
        }
    }
}

/// Writes the lower triangle of `t` (the transposed factor) into the upper triangle of `a`.
fn copy_upper_from_transposed<T: Real>(a: &mut [T], n: usize, t: &[T]) {
    for j in 0..n {
        for i in 0..=j {
            a[j * n + i] = t[i * n + j];
        }
    }
}
