//! trsm: triangular solve with many right-hand sides (alpha = 1), through faer.

use faer::linalg::triangular_solve::{
    solve_lower_triangular_in_place, solve_unit_lower_triangular_in_place,
    solve_unit_upper_triangular_in_place, solve_upper_triangular_in_place,
};
use faer::{MatMut, MatRef, Par};

use super::attrs::{char_attr, Attrs, DIAG, SIDE, TRANS_X, UPLO};
use super::buffers::{copy_in, Operand, ResultBuf, Signature};
use super::error::KernelError;
use super::scalar::Real;

/// The letters of a trsm call: `side`, `uplo`, `trans_x`, `diag`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TrsmParams {
    pub left: bool,
    pub lower: bool,
    pub transpose: bool,
    pub unit_diag: bool,
}

/// `lapack_?trsm_ffi`: `(a [.., k, k], b [.., m, n]) -> b_out [.., m, n]` solving
/// `op(A) X = B` (`side = 'L'`, `k = m`) or `X op(A) = B` (`side = 'R'`, `k = n`). Only the
/// `uplo` triangle of `a` is read; `diag = 'U'` takes its diagonal as ones; `trans_x` is
/// `'N'`, `'T'` or `'C'` (the same as `'T'` for real types).
pub(crate) fn trsm<T: Real>(
    target: &str,
    operands: &[Operand<'_>],
    results: &mut [ResultBuf<'_>],
    attrs: &Attrs<'_>,
) -> Result<(), KernelError> {
    let sig = Signature { target, operands: &["a", "b"], results: &["b_out"] };
    sig.check_arity(operands, results)?;
    let params = TrsmParams {
        left: char_attr(target, attrs, &SIDE)? == b'L',
        lower: char_attr(target, attrs, &UPLO)? == b'L',
        transpose: char_attr(target, attrs, &TRANS_X)? != b'N',
        unit_diag: char_attr(target, attrs, &DIAG)? == b'U',
    };
    let b = sig.matrices(operands, 1, T::DTYPE)?;
    let k = if params.left { b.rows } else { b.cols };
    sig.check_operand(operands, 0, T::DTYPE, &b.dims_with(&[k, k]))?;
    sig.check_result(results, 0, T::DTYPE, operands[1].dims)?;
    let a = sig.operand_data::<T>(operands, 0)?;
    let [b_out] = sig.split_results(results)?;
    let b_out = sig.result_data::<T>(0, b_out)?;
    copy_in(&operands[1], b_out);
    let (m, n) = (b.rows, b.cols);
    if m == 0 || n == 0 {
        return Ok(());
    }
    for i in 0..b.count {
        let tri = MatRef::from_column_major_slice(&a[i * k * k..(i + 1) * k * k], k, k);
        let rhs = MatMut::from_column_major_slice_mut(&mut b_out[i * m * n..(i + 1) * m * n], m, n);
        solve(tri, rhs, params);
    }
    Ok(())
}

/// Solves in place. `X op(A) = B` is `op(A)ᵀ Xᵀ = Bᵀ`, so the right side becomes a left
/// solve on transposed views; `Aᵀ` is lower exactly when `A` is upper.
pub(crate) fn solve<T: Real>(a: MatRef<'_, T>, b: MatMut<'_, T>, params: TrsmParams) {
    let (a, b, transpose) =
        if params.left { (a, b, params.transpose) } else { (a, b.transpose_mut(), !params.transpose) };
    let (a, lower) = if transpose { (a.transpose(), !params.lower) } else { (a, params.lower) };
    match (lower, params.unit_diag) {
        (true, false) => solve_lower_triangular_in_place(a, b, Par::Seq),
        (true, true) => solve_unit_lower_triangular_in_place(a, b, Par::Seq),
        (false, false) => solve_upper_triangular_in_place(a, b, Par::Seq),
        (false, true) => solve_unit_upper_triangular_in_place(a, b, Par::Seq),
    }
}
