//! Householder reflectors in LAPACK's conventions, shared by geqrf, orgqr and ormqr.
//!
//! A reflector is `H = I - tau * v * vᵀ` with `v[0] = 1` implicit and `v[1..]` stored below
//! the diagonal (dlarfg). A block of `k` reflectors is applied as `I - V T Vᵀ` with `T` upper
//! triangular (dlarft, forward and columnwise), through faer's matrix products (dlarfb).
//!
//! Matrices here are column-major slices with leading dimension `ld`; a block is named by its
//! top-left corner `(r0, c0)` and its size.

use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};

use super::scalar::{norm2, Real};

/// The reflector that maps `(alpha, x)` to `(beta, 0, ..., 0)` (LAPACK's dlarfg).
///
/// Overwrites `x` with `v[1..]` and returns `(beta, tau)`. `tau = 0` (`H = I`) when `x` is
/// zero; otherwise `beta = -sign(alpha) * ‖(alpha, x)‖`, with dlarfg's rescaling of tiny
/// vectors.
pub(crate) fn make_reflector<T: Real>(alpha: T, x: &mut [T]) -> (T, T) {
    let mut xnorm = norm2(x);
    if x.is_empty() || xnorm == T::ZERO {
        return (alpha, T::ZERO);
    }
    let mut alpha = alpha;
    let mut beta = -alpha.hypotenuse(xnorm).with_sign_of(alpha);
    let safe_min = T::SAFE_MIN / T::EPS;
    let mut rescalings = 0;
    if beta.magnitude() < safe_min {
        let inv_safe_min = T::ONE / safe_min;
        loop {
            rescalings += 1;
            scale(x, inv_safe_min);
            beta *= inv_safe_min;
            alpha *= inv_safe_min;
            if !(beta.magnitude() < safe_min && rescalings < 20) {
                break;
            }
        }
        xnorm = norm2(x);
        beta = -alpha.hypotenuse(xnorm).with_sign_of(alpha);
    }
    let tau = (beta - alpha) / beta;
    scale(x, T::ONE / (alpha - beta));
    for _ in 0..rescalings {
        beta *= safe_min;
    }
    (beta, tau)
}

pub(crate) fn scale<T: Real>(x: &mut [T], factor: T) {
    for v in x {
        *v *= factor;
    }
}

fn dot<T: Real>(x: &[T], y: &[T]) -> T {
    x.iter().zip(y).fold(T::ZERO, |acc, (&a, &b)| acc + a * b)
}

fn axpy<T: Real>(alpha: T, x: &[T], y: &mut [T]) {
    for (yi, &xi) in y.iter_mut().zip(x) {
        *yi += alpha * xi;
    }
}

/// Applies `H = I - tau [1; v] [1; v]ᵀ` from the left to columns `cols` of `a`, rows
/// `r .. r + 1 + v.len()` (LAPACK's dlarf, side 'L'). `v` lives in column `vcol < cols.start`.
pub(crate) fn reflect_columns<T: Real>(
    a: &mut [T],
    ld: usize,
    vcol: usize,
    r: usize,
    len: usize,
    tau: T,
    cols: std::ops::Range<usize>,
) {
    if tau == T::ZERO || len == 0 || cols.is_empty() {
        return;
    }
    let (left, right) = a.split_at_mut(cols.start * ld);
    let v = &left[vcol * ld + r + 1..vcol * ld + r + len];
    for c in 0..cols.len() {
        let col = &mut right[c * ld + r..c * ld + r + len];
        let (head, tail) = col.split_at_mut(1);
        let w = head[0] + dot(v, tail);
        head[0] -= tau * w;
        axpy(-tau * w, v, tail);
    }
}

/// Applies `H = I - tau v vᵀ` (`v[0] = 1` implicit) from the right to rows `rows` of columns
/// `c .. c + 1 + v.len()` of `a` (dlarf, side 'R').
pub(crate) fn reflect_rows<T: Real>(
    a: &mut [T],
    ld: usize,
    rows: std::ops::Range<usize>,
    c: usize,
    v: &[T],
    tau: T,
    work: &mut Vec<T>,
) {
    if tau == T::ZERO || rows.is_empty() {
        return;
    }
    let col = |j: usize| (c + j) * ld + rows.start..(c + j) * ld + rows.end;
    // w = C v
    work.clear();
    work.extend_from_slice(&a[col(0)]);
    for (j, &vj) in v.iter().enumerate() {
        axpy(vj, &a[col(j + 1)], work);
    }
    // C -= tau w vᵀ
    axpy(-tau, work, &mut a[col(0)]);
    for (j, &vj) in v.iter().enumerate() {
        axpy(-tau * vj, work, &mut a[col(j + 1)]);
    }
}

/// The reflectors of columns `c0 .. c0 + k` of `a`, rows `r0 .. r0 + rows`, as an explicit
/// `rows × k` matrix: zeros above the diagonal, ones on it, the stored `v` below.
pub(crate) fn explicit_reflectors<T: Real>(
    a: &[T],
    ld: usize,
    r0: usize,
    c0: usize,
    rows: usize,
    k: usize,
    out: &mut Vec<T>,
) {
    out.clear();
    out.resize(rows * k, T::ZERO);
    for j in 0..k {
        let dst = &mut out[j * rows..(j + 1) * rows];
        if j < rows {
            dst[j] = T::ONE;
            let src = &a[(c0 + j) * ld + r0 + j + 1..(c0 + j) * ld + r0 + rows];
            dst[j + 1..].copy_from_slice(src);
        }
    }
}

/// The `k × k` upper triangular `T` with `H_0 ⋯ H_{k-1} = I - V T Vᵀ` (LAPACK's dlarft,
/// 'Forward', 'Columnwise'), from the explicit `rows × k` reflectors `v` and `tau`.
pub(crate) fn block_factor<T: Real>(v: &[T], rows: usize, tau: &[T], t: &mut Vec<T>) {
    let k = tau.len();
    t.clear();
    t.resize(k * k, T::ZERO);
    for i in 0..k {
        if tau[i] == T::ZERO {
            continue; // column i of T stays zero
        }
        let vi = &v[i * rows + i..(i + 1) * rows];
        for j in 0..i {
            let vj = &v[j * rows + i..(j + 1) * rows];
            t[i * k + j] = -tau[i] * dot(vj, vi);
        }
        // T[0:i, i] = T[0:i, 0:i] T[0:i, i], rows in increasing order read only later entries.
        for j in 0..i {
            let mut s = T::ZERO;
            for l in j..i {
                s += t[l * k + j] * t[i * k + l];
            }
            t[i * k + j] = s;
        }
        t[i * k + i] = tau[i];
    }
}

/// A block of reflectors made explicit (`v`, `t`) and the scratch for applying it.
pub(crate) struct BlockScratch<T> {
    v: Vec<T>,
    t: Vec<T>,
    w: Vec<T>,
    tw: Vec<T>,
}

impl<T: Real> BlockScratch<T> {
    pub fn new() -> Self {
        BlockScratch { v: Vec::new(), t: Vec::new(), w: Vec::new(), tw: Vec::new() }
    }

    /// Loads the reflectors of the `rows × k` block at `(r0, c0)` of `a` and their `T`.
    pub fn load(&mut self, a: &[T], ld: usize, r0: usize, c0: usize, rows: usize, tau: &[T]) {
        explicit_reflectors(a, ld, r0, c0, rows, tau.len(), &mut self.v);
        block_factor(&self.v, rows, tau, &mut self.t);
    }

    /// `C := (I - V T Vᵀ) C`, or with `Tᵀ` when `transpose` (LAPACK's dlarfb, side 'L',
    /// forward, columnwise), for the loaded `k` reflectors and `C` the `rows × cols` block of
    /// `a` at `(r0, c0)`.
    #[allow(clippy::too_many_arguments)]
    pub fn apply_to(
        &mut self,
        a: &mut [T],
        ld: usize,
        r0: usize,
        c0: usize,
        rows: usize,
        cols: usize,
        k: usize,
        transpose: bool,
    ) {
        if rows == 0 || cols == 0 {
            return;
        }
        if k == 0 {
            return;
        }
        let mut c = MatMut::from_column_major_slice_with_stride_mut(&mut a[c0 * ld + r0..], rows, cols, ld);
        let v = MatRef::from_column_major_slice(&self.v, rows, k);
        let t = MatRef::from_column_major_slice(&self.t, k, k);
        let t = if transpose { t.transpose() } else { t };
        self.w.clear();
        self.w.resize(k * cols, T::ZERO);
        self.tw.clear();
        self.tw.resize(k * cols, T::ZERO);
        let mut w = MatMut::from_column_major_slice_mut(&mut self.w, k, cols);
        let mut tw = MatMut::from_column_major_slice_mut(&mut self.tw, k, cols);
        matmul(w.as_mut(), Accum::Replace, v.transpose(), c.as_ref(), T::ONE, Par::Seq);
        matmul(tw.as_mut(), Accum::Replace, t, w.as_ref(), T::ONE, Par::Seq);
        matmul(c.as_mut(), Accum::Add, v, tw.as_ref(), -T::ONE, Par::Seq);
    }
}
