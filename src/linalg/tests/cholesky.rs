//! potrf: the uplo triangle as LAPACK's, the other untouched, info as LAPACK's.

use super::*;
use crate::linalg::cholesky::cholesky_lower;

const CASES: [&str; 4] = ["spd", "big", "nonspd", "lopsided"];

fn potrf_call<T: Float>(a: &Tensor<T>, uplo: u8, alias: bool) -> (Vec<T>, Vec<i32>) {
    let outs = [out(T::DTYPE, &a.dims), out(DType::I32, &dims_with(&a.dims, 2, &[]))];
    let attrs = char_attrs(&[("uplo", uplo)]);
    let bufs = run(&target::<T>("potrf"), &[In::matrices(a)], &outs, &attrs, alias.then_some((0, 0)))
        .expect("potrf runs");
    (bufs[0].to_vec(), bufs[1].to_vec())
}

fn in_triangle(uplo: u8, i: usize, j: usize) -> bool {
    if uplo == b'L' {
        i >= j
    } else {
        i <= j
    }
}

fn potrf_matches_lapack<T: Float>() {
    for case in CASES {
        for uplo in [b'L', b'U'] {
            let u = uplo as char;
            let a = Tensor::<T>::of(&format!("potrf/{case}/{u}/a"));
            let want = Tensor::<T>::of(&format!("potrf/{case}/{u}/a_out"));
            let info = Tensor::<i32>::load(&format!("{}/potrf/{case}/{u}/info", T::PREFIX));
            for alias in [false, true] {
                let (got, got_info) = potrf_call(&a, uplo, alias);
                assert_eq!(got_info, info.data, "{case} {u}: info");
                let got = Tensor::from_col_major(&a.dims, &got);
                let (batch, n, _) = a.shape();
                for b in (0..batch).filter(|&b| info.data[b] == 0) {
                    let (g, w, input) = (got.matrix(b), want.matrix(b), a.matrix(b));
                    let factor = |m: &Mat<T>| {
                        M::from_fn(n, n, |i, j| if in_triangle(uplo, i, j) { m.at(i, j) } else { 0.0 })
                    };
                    assert_close_m(&factor(&g), &factor(&w), T::TOL, &format!("{case}[{b}] {u}: factor"));
                    for i in 0..n {
                        for j in (0..n).filter(|&j| !in_triangle(uplo, i, j)) {
                            assert_eq!(
                                g.at(i, j),
                                input.at(i, j),
                                "{case}[{b}] {u}: other triangle at ({i}, {j})"
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn potrf_matches_lapack_f32() {
    potrf_matches_lapack::<f32>();
}

#[test]
fn potrf_matches_lapack_f64() {
    potrf_matches_lapack::<f64>();
}

/// L Lᵀ = A from the lower triangle, with the recursive path forced on small blocks.
fn potrf_reconstructs<T: Float>() {
    for case in ["spd", "big", "lopsided"] {
        let a = Tensor::<T>::of(&format!("potrf/{case}/L/a"));
        let (batch, n, _) = a.shape();
        let mut data = a.col_major();
        for b in 0..batch {
            let failed = cholesky_lower(&mut data[b * n * n..(b + 1) * n * n], n, 0, n, 2);
            assert_eq!(failed, None, "{case}[{b}]");
        }
        let got = Tensor::from_col_major(&a.dims, &data);
        for b in 0..batch {
            let g = got.matrix(b);
            let l = M::from_fn(n, n, |i, j| if i >= j { g.at(i, j) } else { 0.0 });
            let input = a.matrix(b);
            let sym = M::from_fn(n, n, |i, j| input.at(i.max(j), i.min(j)));
            assert_close_m(&l.mul(&l.t()), &sym, T::TOL, &format!("{case}[{b}]: L Lᵀ = A"));
        }
        let want = Tensor::<T>::of(&format!("potrf/{case}/L/a_out"));
        let lower = |t: &Tensor<T>, b: usize| {
            let m = t.matrix(b);
            M::from_fn(n, n, |i, j| if i >= j { m.at(i, j) } else { 0.0 })
        };
        for b in 0..batch {
            assert_close_m(
                &lower(&got, b),
                &lower(&want, b),
                T::TOL,
                &format!("{case}[{b}]: recursive factor"),
            );
        }
    }
    // Failures are found by the recursive path too, at the same minor.
    let a = Tensor::<T>::of("potrf/nonspd/L/a");
    let info = Tensor::<i32>::load(&format!("{}/potrf/nonspd/L/info", T::PREFIX));
    let (batch, n, _) = a.shape();
    let mut data = a.col_major();
    for b in 0..batch {
        let failed = cholesky_lower(&mut data[b * n * n..(b + 1) * n * n], n, 0, n, 1);
        assert_eq!(failed.map_or(0, |j| j as i32 + 1), info.data[b], "nonspd[{b}] recursive info");
    }
}

#[test]
fn potrf_reconstructs_f32() {
    potrf_reconstructs::<f32>();
}

#[test]
fn potrf_reconstructs_f64() {
    potrf_reconstructs::<f64>();
}

/// A NaN pivot fails (reference LAPACK's dpotrf2 rule); JAX turns the matrix into NaNs.
#[test]
fn potrf_nan_pivot_fails() {
    let a = Tensor { dims: vec![2, 2], data: vec![f64::NAN, 0.0, 0.0, 1.0] };
    let (_, info) = potrf_call(&a, b'L', false);
    assert_eq!(info, [1]);
}
