//! QR: geqrf (Householder factorization), orgqr (form Q), ormqr (multiply by Q), as LAPACK
//! defines them, blocked like dgeqrf/dorgqr with faer's matrix products.

use super::attrs::{bool_attr, Attrs};
use super::buffers::{copy_in, Operand, ResultBuf, Signature};
use super::error::KernelError;
use super::householder::{make_reflector, reflect_columns, reflect_rows, BlockScratch};
use super::scalar::Real;

/// How geqrf and orgqr block their reflectors.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Blocking {
    /// Reflectors per block (LAPACK's `ilaenv` NB for dgeqrf/dorgqr).
    pub block: usize,
    /// Up to this many reflectors, the unblocked code runs alone (LAPACK's NX crossover).
    pub crossover: usize,
}

/// LAPACK's reference values.
pub(crate) const LAPACK_BLOCKING: Blocking = Blocking { block: 32, crossover: 128 };

/// `lapack_?geqrf_ffi`: `a [.., m, n] -> (a_out [.., m, n], tau [.., min(m, n)])`.
pub(crate) fn geqrf<T: Real>(
    target: &str,
    operands: &[Operand<'_>],
    results: &mut [ResultBuf<'_>],
    _attrs: &Attrs<'_>,
) -> Result<(), KernelError> {
    let sig = Signature { target, operands: &["a"], results: &["a_out", "tau"] };
    sig.check_arity(operands, results)?;
    let a = sig.matrices(operands, 0, T::DTYPE)?;
    let (m, n) = (a.rows, a.cols);
    let k = m.min(n);
    sig.check_result(results, 0, T::DTYPE, operands[0].dims)?;
    sig.check_result(results, 1, T::DTYPE, &a.dims_with(&[k]))?;
    let [a_out, tau] = sig.split_results(results)?;
    let a_out = sig.result_data::<T>(0, a_out)?;
    let tau = sig.result_data::<T>(1, tau)?;
    copy_in(&operands[0], a_out);
    let mut scratch = BlockScratch::new();
    for b in 0..a.count {
        let matrix = &mut a_out[b * m * n..(b + 1) * m * n];
        qr_in_place(matrix, m, n, &mut tau[b * k..(b + 1) * k], &mut scratch, LAPACK_BLOCKING);
    }
    Ok(())
}

/// LAPACK's dgeqrf on one column-major `m × n` matrix.
pub(crate) fn qr_in_place<T: Real>(
    a: &mut [T],
    m: usize,
    n: usize,
    tau: &mut [T],
    scratch: &mut BlockScratch<T>,
    blocking: Blocking,
) {
    let Blocking { block, crossover } = blocking;
    let k = m.min(n);
    let mut i = 0;
    if block > 1 && block < k && crossover < k {
        while i < k - crossover {
            let ib = block.min(k - i);
            qr_unblocked(a, m, i, i, m - i, ib, &mut tau[i..i + ib]);
            if i + ib < n {
                scratch.load(a, m, i, i, m - i, &tau[i..i + ib]);
                scratch.apply_to(a, m, i, i + ib, m - i, n - i - ib, ib, true);
            }
            i += block;
        }
    }
    if i < k {
        qr_unblocked(a, m, i, i, m - i, n - i, &mut tau[i..k]);
    }
}

/// LAPACK's dgeqr2 on the `rows × cols` block at `(r0, c0)` of a matrix with leading
/// dimension `ld`.
fn qr_unblocked<T: Real>(
    a: &mut [T],
    ld: usize,
    r0: usize,
    c0: usize,
    rows: usize,
    cols: usize,
    tau: &mut [T],
) {
    for (i, tau_i) in tau.iter_mut().enumerate().take(rows.min(cols)) {
        let (r, c) = (r0 + i, c0 + i);
        let column = &mut a[c * ld + r..c * ld + r0 + rows];
        let Some((head, tail)) = column.split_first_mut() else { return };
        let (beta, t) = make_reflector(*head, tail);
        *tau_i = t;
        // The reflector acts with v[0] = 1; R's diagonal entry is beta.
        *head = beta;
        reflect_columns(a, ld, c, r, rows - i, t, c + 1..c0 + cols);
    }
}

/// `lapack_?orgqr_ffi`: `(a [.., m, n], tau [.., k]) -> a_out [.., m, n]`, the first `n`
/// columns of `H_0 ⋯ H_{k-1}`; needs `m >= n >= k`.
pub(crate) fn orgqr<T: Real>(
    target: &str,
    operands: &[Operand<'_>],
    results: &mut [ResultBuf<'_>],
    _attrs: &Attrs<'_>,
) -> Result<(), KernelError> {
    let sig = Signature { target, operands: &["a", "tau"], results: &["a_out"] };
    sig.check_arity(operands, results)?;
    let a = sig.matrices(operands, 0, T::DTYPE)?;
    let (m, n) = (a.rows, a.cols);
    let k = tau_len::<T>(&sig, operands, a.batch_dims)?;
    if !(m >= n && n >= k) {
        return Err(sig.operand_shape_error(operands, 0, format!("m >= n >= k = {k} (tau's last dim)")));
    }
    sig.check_result(results, 0, T::DTYPE, operands[0].dims)?;
    let tau = sig.operand_data::<T>(operands, 1)?;
    let [a_out] = sig.split_results(results)?;
    let a_out = sig.result_data::<T>(0, a_out)?;
    copy_in(&operands[0], a_out);
    let mut scratch = BlockScratch::new();
    for b in 0..a.count {
        let matrix = &mut a_out[b * m * n..(b + 1) * m * n];
        form_q(matrix, m, n, &tau[b * k..(b + 1) * k], &mut scratch, LAPACK_BLOCKING);
    }
    Ok(())
}

/// The last dim of operand 1 (tau), after checking it is `batch_dims + [k]`.
fn tau_len<T: Real>(
    sig: &Signature<'_>,
    operands: &[Operand<'_>],
    batch_dims: &[i64],
) -> Result<usize, KernelError> {
    let dims = operands[1].dims;
    let k = dims.last().and_then(|&k| usize::try_from(k).ok());
    match k {
        Some(k) if dims.len() == batch_dims.len() + 1 => {
            sig.check_operand(operands, 1, T::DTYPE, &[batch_dims, &[k as i64]].concat())?;
            Ok(k)
        }
        _ => Err(sig.operand_shape_error(operands, 1, format!("{batch_dims:?} + [k]"))),
    }
}

/// LAPACK's dorgqr on one column-major `m × n` matrix holding `k = tau.len()` reflectors.
pub(crate) fn form_q<T: Real>(
    a: &mut [T],
    m: usize,
    n: usize,
    tau: &[T],
    scratch: &mut BlockScratch<T>,
    blocking: Blocking,
) {
    let Blocking { block, crossover } = blocking;
    let k = tau.len();
    let (ki, kk) = if block > 1 && block < k && crossover < k {
        let ki = (k - crossover - 1) / block * block;
        (ki, k.min(ki + block))
    } else {
        (0, 0)
    };
    for j in kk..n {
        a[j * m..j * m + kk].fill(T::ZERO);
    }
    if kk < n {
        form_q_unblocked(a, m, kk, kk, m - kk, n - kk, &tau[kk..]);
    }
    if kk > 0 {
        let mut i = ki as isize;
        while i >= 0 {
            let iu = i as usize;
            let ib = block.min(k - iu);
            if iu + ib < n {
                scratch.load(a, m, iu, iu, m - iu, &tau[iu..iu + ib]);
                scratch.apply_to(a, m, iu, iu + ib, m - iu, n - iu - ib, ib, false);
            }
            form_q_unblocked(a, m, iu, iu, m - iu, ib, &tau[iu..iu + ib]);
            for j in iu..iu + ib {
                a[j * m..j * m + iu].fill(T::ZERO);
            }
            i -= block as isize;
        }
    }
}

/// LAPACK's dorg2r on the `rows × cols` block at `(r0, c0)`, with `tau.len() <= cols`.
fn form_q_unblocked<T: Real>(
    a: &mut [T],
    ld: usize,
    r0: usize,
    c0: usize,
    rows: usize,
    cols: usize,
    tau: &[T],
) {
    let k = tau.len();
    let at = |i: usize, j: usize| (c0 + j) * ld + r0 + i;
    for j in k..cols {
        a[at(0, j)..at(rows, j)].fill(T::ZERO);
        a[at(j, j)] = T::ONE;
    }
    for i in (0..k).rev() {
        if i + 1 < cols {
            a[at(i, i)] = T::ONE;
            reflect_columns(a, ld, c0 + i, r0 + i, rows - i, tau[i], c0 + i + 1..c0 + cols);
        }
        for v in &mut a[at(i + 1, i)..at(rows, i)] {
            *v *= -tau[i];
        }
        a[at(i, i)] = T::ONE - tau[i];
        a[at(0, i)..at(i, i)].fill(T::ZERO);
    }
}

/// `lapack_?ormqr_ffi`: `(a [.., r, k], tau [.., k], c [.., m, n]) -> c_out [.., m, n]`, with
/// `Q = H_0 ⋯ H_{k-1}` applied as `op(Q) C` (`left`) or `C op(Q)`, `op` a transpose when
/// `transpose`; `r` is `m` when `left`, `n` otherwise, and `k <= r`.
pub(crate) fn ormqr<T: Real>(
    target: &str,
    operands: &[Operand<'_>],
    results: &mut [ResultBuf<'_>],
    attrs: &Attrs<'_>,
) -> Result<(), KernelError> {
    let sig = Signature { target, operands: &["a", "tau", "c"], results: &["c_out"] };
    sig.check_arity(operands, results)?;
    let left = bool_attr(target, attrs, "left")?;
    let transpose = bool_attr(target, attrs, "transpose")?;
    let a = sig.matrices(operands, 0, T::DTYPE)?;
    let c = sig.matrices(operands, 2, T::DTYPE)?;
    if a.batch_dims != c.batch_dims {
        return Err(sig.operand_shape_error(operands, 0, format!("batch dims {:?} (c's)", c.batch_dims)));
    }
    let k = tau_len::<T>(&sig, operands, a.batch_dims)?;
    let r = if left { c.rows } else { c.cols };
    if a.rows != r || a.cols < k {
        let side = if left { "c's rows" } else { "c's columns" };
        return Err(sig.operand_shape_error(operands, 0, format!("[.., {r} ({side}), >= {k} (k)]")));
    }
    sig.check_result(results, 0, T::DTYPE, operands[2].dims)?;
    let a_data = sig.operand_data::<T>(operands, 0)?;
    let tau = sig.operand_data::<T>(operands, 1)?;
    let [c_out] = sig.split_results(results)?;
    let c_out = sig.result_data::<T>(0, c_out)?;
    copy_in(&operands[2], c_out);
    let mut work = Vec::new();
    for b in 0..c.count {
        let reflectors = &a_data[b * a.matrix_len()..(b + 1) * a.matrix_len()];
        let matrix = &mut c_out[b * c.matrix_len()..(b + 1) * c.matrix_len()];
        let tau = &tau[b * k..(b + 1) * k];
        multiply_by_q(reflectors, a.rows, tau, matrix, c.rows, c.cols, left, transpose, &mut work);
    }
    Ok(())
}

/// LAPACK's dorm2r: `C := op(Q) C` or `C op(Q)`, reflector by reflector.
#[allow(clippy::too_many_arguments)]
fn multiply_by_q<T: Real>(
    v: &[T],
    ldv: usize,
    tau: &[T],
    c: &mut [T],
    m: usize,
    n: usize,
    left: bool,
    transpose: bool,
    work: &mut Vec<T>,
) {
    let k = tau.len();
    // Q C applies H_{k-1} first; Qᵀ C applies H_0 first; C Q applies H_0 first.
    let forward = left == transpose;
    for step in 0..k {
        let i = if forward { step } else { k - 1 - step };
        let tail = &v[i * ldv + i + 1..(i + 1) * ldv];
        if left {
            reflect_rows_of(c, m, n, i, tail, tau[i]);
        } else {
            reflect_rows(c, m, 0..m, i, tail, tau[i], work);
        }
    }
}

/// `H C` for rows `i ..` of every column of the `m × n` matrix `c`, `v` given apart.
fn reflect_rows_of<T: Real>(c: &mut [T], m: usize, n: usize, i: usize, v: &[T], tau: T) {
    if tau == T::ZERO {
        return;
    }
    for j in 0..n {
        let col = &mut c[j * m + i..(j + 1) * m];
        let (head, tail) = col.split_at_mut(1);
        let w = head[0] + tail.iter().zip(v).fold(T::ZERO, |s, (&x, &y)| s + x * y);
        head[0] -= tau * w;
        for (x, &y) in tail.iter_mut().zip(v) {
            *x -= tau * w * y;
        }
    }
}
