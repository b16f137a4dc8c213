//! getrf: LU with partial pivoting, as LAPACK's recursive dgetrf2 computes it.
//!
//! The pivot of a column is its first entry of largest magnitude (idamax). A zero pivot does
//! not stop the factorization: the column is left unscaled and `info` records the first such
//! column (1-based), so `det` of a singular matrix is an exact zero, as with LAPACK.

use faer::linalg::matmul::matmul;
use faer::linalg::triangular_solve::solve_unit_lower_triangular_in_place;
use faer::{Accum, MatMut, Par};

use super::attrs::Attrs;
use super::buffers::{copy_in, Operand, ResultBuf, Signature};
use super::error::KernelError;
use super::scalar::Real;

/// Below this many columns, the unblocked right-looking code factors a panel.
pub(crate) const UNBLOCKED_COLS: usize = 16;

/// `lapack_?getrf_ffi`: `a [.., m, n] -> (a_out [.., m, n], ipiv i32 [.., min(m, n)],
/// info i32 [..])`; `ipiv` is 1-based like LAPACK's.
pub(crate) fn getrf<T: Real>(
    target: &str,
    operands: &[Operand<'_>],
    results: &mut [ResultBuf<'_>],
    _attrs: &Attrs<'_>,
) -> Result<(), KernelError> {
    let sig = Signature { target, operands: &["a"], results: &["a_out", "ipiv", "info"] };
    sig.check_arity(operands, results)?;
    let a = sig.matrices(operands, 0, T::DTYPE)?;
    let (m, n) = (a.rows, a.cols);
    let k = m.min(n);
    sig.check_result(results, 0, T::DTYPE, operands[0].dims)?;
    sig.check_result(results, 1, crate::DType::I32, &a.dims_with(&[k]))?;
    sig.check_result(results, 2, crate::DType::I32, a.batch_dims)?;
    let [a_out, ipiv, info] = sig.split_results(results)?;
    let a_out = sig.result_data::<T>(0, a_out)?;
    let ipiv = sig.result_data::<i32>(1, ipiv)?;
    let info = sig.result_data::<i32>(2, info)?;
    if i32::try_from(m).is_err() || i32::try_from(n).is_err() {
        return Err(sig.operand_shape_error(operands, 0, "dims that fit LAPACK's int32".into()));
    }
    copy_in(&operands[0], a_out);
    let mut pivots = vec![0usize; k];
    for b in 0..a.count {
        let matrix = &mut a_out[b * m * n..(b + 1) * m * n];
        let first_zero = lu_in_place(matrix, m, 0, 0, m, n, &mut pivots, UNBLOCKED_COLS);
        for (dst, &p) in ipiv[b * k..(b + 1) * k].iter_mut().zip(&pivots) {
            *dst = p as i32 + 1;
        }
        info[b] = first_zero.map_or(0, |j| j as i32 + 1);
    }
    Ok(())
}

/// Factors the `rows × cols` block at `(r0, c0)` of a column-major matrix with leading
/// dimension `ld`, swapping rows within the block's columns only. `pivots[j]` gets the
/// (block-relative) row swapped with row `j`; returns the first column with a zero pivot.
/// Panels of at most `unblocked_cols` columns are factored unblocked.
#[allow(clippy::too_many_arguments)]
pub(crate) fn lu_in_place<T: Real>(
    a: &mut [T],
    ld: usize,
    r0: usize,
    c0: usize,
    rows: usize,
    cols: usize,
    pivots: &mut [usize],
    unblocked_cols: usize,
) -> Option<usize> {
    let k = rows.min(cols);
    if k == 0 {
        return None;
    }
    if cols <= unblocked_cols.max(1) || rows == 1 {
        return lu_unblocked(a, ld, r0, c0, rows, cols, pivots);
    }
    let n1 = k / 2;
    let n2 = cols - n1;
    let first = lu_in_place(a, ld, r0, c0, rows, n1, &mut pivots[..n1], unblocked_cols);
    swap_rows(a, ld, r0, c0 + n1..c0 + cols, &pivots[..n1], 0);
    {
        let block = MatMut::from_column_major_slice_with_stride_mut(&mut a[c0 * ld + r0..], rows, cols, ld);
        let (a11, a12, a21, a22) = block.split_at_mut(n1, n1);
        let mut a12 = a12;
        solve_unit_lower_triangular_in_place(a11.as_ref(), a12.as_mut(), Par::Seq);
        matmul(a22, Accum::Add, a21.as_ref(), a12.as_ref(), -T::ONE, Par::Seq);
    }
    let second = lu_in_place(a, ld, r0 + n1, c0 + n1, rows - n1, n2, &mut pivots[n1..k], unblocked_cols);
    for p in &mut pivots[n1..k] {
        *p += n1;
    }
    swap_rows(a, ld, r0, c0..c0 + n1, &pivots[n1..k], n1);
    first.or(second.map(|j| j + n1))
}

/// Applies the interchanges `row offset + j <-> row pivots[j]` (block-relative rows from `r0`)
/// to the given columns, in order (LAPACK's dlaswp).
fn swap_rows<T: Real>(
    a: &mut [T],
    ld: usize,
    r0: usize,
    columns: std::ops::Range<usize>,
    pivots: &[usize],
    offset: usize,
) {
    for c in columns {
        let column = &mut a[c * ld + r0..(c + 1) * ld];
        for (j, &p) in pivots.iter().enumerate() {
            column.swap(offset + j, p);
        }
    }
}

/// LAPACK's dgetf2 (right-looking, one column at a time) on the block at `(r0, c0)`.
fn lu_unblocked<T: Real>(
    a: &mut [T],
    ld: usize,
    r0: usize,
    c0: usize,
    rows: usize,
    cols: usize,
    pivots: &mut [usize],
) -> Option<usize> {
    let mut first_zero = None;
    for j in 0..rows.min(cols) {
        let column = c0 + j;
        let p = j + first_largest(&a[column * ld + r0 + j..column * ld + r0 + rows]);
        pivots[j] = p;
        let pivot = a[column * ld + r0 + p];
        if pivot != T::ZERO {
            if p != j {
                for c in c0..c0 + cols {
                    a.swap(c * ld + r0 + j, c * ld + r0 + p);
                }
            }
            let below = &mut a[column * ld + r0 + j + 1..column * ld + r0 + rows];
            if pivot.magnitude() >= T::SAFE_MIN {
                let inverse = T::ONE / pivot;
                below.iter_mut().for_each(|v| *v *= inverse);
            } else {
                below.iter_mut().for_each(|v| *v /= pivot);
            }
        } else if first_zero.is_none() {
            first_zero = Some(j);
        }
        // Rank-one update of the trailing block.
        let (left, right) = a.split_at_mut((column + 1) * ld);
        let l = &left[column * ld + r0 + j + 1..column * ld + r0 + rows];
        for c in 0..c0 + cols - column - 1 {
            let col = &mut right[c * ld + r0 + j..c * ld + r0 + rows];
            let (u, rest) = col.split_at_mut(1);
            let factor = u[0];
            for (x, &lv) in rest.iter_mut().zip(l) {
                *x -= factor * lv;
            }
        }
    }
    first_zero
}

/// Index of the first entry of largest magnitude (BLAS idamax; NaN is never chosen over an
/// earlier entry).
fn first_largest<T: Real>(x: &[T]) -> usize {
    let mut best = 0;
    let mut max = match x.first() {
        Some(v) => v.magnitude(),
        None => return 0,
    };
    for (i, v) in x.iter().enumerate().skip(1) {
        let m = v.magnitude();
        if m > max {
            max = m;
            best = i;
        }
    }
    best
}
