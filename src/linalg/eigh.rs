//! syevd: eigenvalues (ascending) and eigenvectors of symmetric matrices, through faer's
//! tridiagonal divide and conquer.

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::evd::{self_adjoint_evd, self_adjoint_evd_scratch, ComputeEigenvectors};
use faer::{ColMut, MatMut, MatRef, Par};

use super::attrs::{char_attr, Attrs, EIG_MODE, UPLO};
use super::buffers::{copy_in, Operand, ResultBuf, Signature};
use super::error::KernelError;
use super::scalar::Real;

/// `lapack_?syevd_ffi`: `a [.., n, n], uplo, mode -> (a_out [.., n, n], w [.., n],
/// info i32 [..])`.
///
/// Reads the `uplo` triangle. `w` is ascending, as LAPACK sorts it. With `mode = 'V'`,
/// `a_out` holds orthonormal eigenvectors in columns (`A = V diag(w) Vᵀ`); with `'N'` it
/// keeps the input (LAPACK leaves it overwritten with scratch). A matrix with a NaN or
/// infinite entry gets NaN eigenvalues and vectors and `info = 0`, as OpenBLAS's LAPACK
/// returns; a failure to converge gives `info = 1` (LAPACK: `info > 0`), which JAX turns
/// into NaNs.
pub(crate) fn syevd<T: Real>(
    target: &str,
    operands: &[Operand<'_>],
    results: &mut [ResultBuf<'_>],
    attrs: &Attrs<'_>,
) -> Result<(), KernelError> {
    let sig = Signature { target, operands: &["a"], results: &["a_out", "w", "info"] };
    sig.check_arity(operands, results)?;
    let lower = char_attr(target, attrs, &UPLO)? == b'L';
    let vectors = char_attr(target, attrs, &EIG_MODE)? == b'V';
    let a = sig.matrices(operands, 0, T::DTYPE)?;
    let n = a.rows;
    if a.cols != n {
        return Err(sig.operand_shape_error(operands, 0, "square matrices".into()));
    }
    sig.check_result(results, 0, T::DTYPE, operands[0].dims)?;
    sig.check_result(results, 1, T::DTYPE, &a.dims_with(&[n]))?;
    sig.check_result(results, 2, crate::DType::I32, a.batch_dims)?;
    let [a_out, w, info] = sig.split_results(results)?;
    let a_out = sig.result_data::<T>(0, a_out)?;
    let w = sig.result_data::<T>(1, w)?;
    let info = sig.result_data::<i32>(2, info)?;
    copy_in(&operands[0], a_out);
    if n == 0 {
        info.fill(0);
        return Ok(());
    }
    let compute = if vectors { ComputeEigenvectors::Yes } else { ComputeEigenvectors::No };
    let mut mem = MemBuffer::new(self_adjoint_evd_scratch::<T>(n, compute, Par::Seq, Default::default()));
    let mut input = vec![T::ZERO; n * n];
    for b in 0..a.count {
        let matrix = &mut a_out[b * n * n..(b + 1) * n * n];
        let values = &mut w[b * n..(b + 1) * n];
        input.copy_from_slice(matrix);
        let source = MatRef::from_column_major_slice(&input, n, n);
        let source = if lower { source } else { source.transpose() };
        if !triangle_is_finite(source) {
            values.fill(T::NAN);
            if vectors {
                matrix.fill(T::NAN);
            }
            info[b] = 0;
            continue;
        }
        let vectors_out = vectors.then(|| MatMut::from_column_major_slice_mut(&mut *matrix, n, n));
        let values_out = ColMut::from_slice_mut(values).as_diagonal_mut();
        let stack = MemStack::new(&mut mem);
        let result = self_adjoint_evd(source, values_out, vectors_out, Par::Seq, stack, Default::default());
        info[b] = i32::from(result.is_err());
    }
    Ok(())
}

/// Whether every entry of the lower triangle is finite.
fn triangle_is_finite<T: Real>(a: MatRef<'_, T>) -> bool {
    (0..a.ncols()).all(|j| (j..a.nrows()).all(|i| a[(i, j)].finite()))
}
