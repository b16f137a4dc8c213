//! gesdd / gesvd: descending singular values as LAPACK's, U S Vᵀ = A, orthonormal factors.

use super::*;

const CASES: [&str; 5] = ["tall", "wide", "square", "big", "rankdef"];

struct Svd<T> {
    s: Vec<T>,
    u: Tensor<T>,
    vt: Tensor<T>,
    info: Vec<i32>,
}

fn svd_call<T: Float>(a: &Tensor<T>, routine: &str, mode: u8, full_shapes: bool, alias: bool) -> Svd<T> {
    let (_, m, n) = a.shape();
    let k = m.min(n);
    let full = mode == b'A' || (mode == b'N' && full_shapes);
    let (uc, vr) = if full { (m, n) } else { (k, k) };
    let u_dims = dims_with(&a.dims, 2, &[m as i64, uc as i64]);
    let vt_dims = dims_with(&a.dims, 2, &[vr as i64, n as i64]);
    let outs = [
        out(T::DTYPE, &a.dims),
        out(T::DTYPE, &dims_with(&a.dims, 2, &[k as i64])),
        out(T::DTYPE, &u_dims),
        out(T::DTYPE, &vt_dims),
        out(DType::I32, &dims_with(&a.dims, 2, &[])),
    ];
    let attrs = char_attrs(&[("mode", mode)]);
    let bufs = run(&target::<T>(routine), &[In::matrices(a)], &outs, &attrs, alias.then_some((0, 0)))
        .expect("svd runs");
    Svd {
        s: bufs[1].to_vec(),
        u: Tensor::from_col_major(&u_dims, &bufs[2].to_vec::<T>()),
        vt: Tensor::from_col_major(&vt_dims, &bufs[3].to_vec::<T>()),
        info: bufs[4].to_vec(),
    }
}

fn svd_matches_lapack<T: Float>(routine: &str) {
    for case in CASES {
        let a = Tensor::<T>::of(&format!("{routine}/{case}/a"));
        let s = Tensor::<T>::of(&format!("{routine}/{case}/s"));
        let info = Tensor::<i32>::load(&format!("{}/{routine}/{case}/info", T::PREFIX));
        let (batch, m, n) = a.shape();
        let k = m.min(n);
        for (mode, alias) in [(b'A', false), (b'S', true), (b'S', false)] {
            let got = svd_call(&a, routine, mode, false, alias);
            assert_eq!(got.info, info.data, "{case}: info");
            assert_close(&got.s, &s.data, &format!("{case}: s"));
            let tol = T::TOL * 10.0;
            for b in 0..batch {
                let u = M::of(&got.u.matrix(b));
                let vt = M::of(&got.vt.matrix(b));
                let sigma = M::from_fn(u.cols, vt.rows, |i, j| {
                    if i == j && i < k {
                        got.s[b * k + i].to_f64()
                    } else {
                        0.0
                    }
                });
                let what = format!("{case}[{b}] mode {}", mode as char);
                assert_close_m(
                    &u.mul(&sigma).mul(&vt),
                    &M::of(&a.matrix(b)),
                    tol,
                    &format!("{what}: U S Vᵀ = A"),
                );
                assert_close_m(&u.t().mul(&u), &M::eye(u.cols), tol, &format!("{what}: UᵀU = I"));
                assert_close_m(&vt.mul(&vt.t()), &M::eye(vt.rows), tol, &format!("{what}: VᵀV = I"));
            }
        }
        for full_shapes in [true, false] {
            let got = svd_call(&a, routine, b'N', full_shapes, false);
            assert_eq!(got.info, info.data, "{case}: info, mode N");
            assert_close(&got.s, &s.data, &format!("{case}: s, mode N"));
            assert!(
                got.u.data.iter().chain(&got.vt.data).all(|&x| x == T::ZERO),
                "{case}: mode N zeroes U, VT"
            );
        }
    }
}

#[test]
fn gesdd_matches_lapack_f32() {
    svd_matches_lapack::<f32>("gesdd");
}

#[test]
fn gesdd_matches_lapack_f64() {
    svd_matches_lapack::<f64>("gesdd");
}

#[test]
fn gesvd_matches_lapack_f32() {
    svd_matches_lapack::<f32>("gesvd");
}

#[test]
fn gesvd_matches_lapack_f64() {
    svd_matches_lapack::<f64>("gesvd");
}

/// NaN input: gesdd's info is -4, gesvd's 0; infinite input: 0. Outputs are NaN (JAX makes
/// them NaN for any nonzero info anyway).
fn svd_non_finite_like_lapack<T: Float>() {
    for routine in ["gesdd", "gesvd"] {
        for case in ["nan", "inf"] {
            let a = Tensor::<T>::of(&format!("{routine}/{case}/a"));
            let info = Tensor::<i32>::load(&format!("{}/{routine}/{case}/info", T::PREFIX));
            let got = svd_call(&a, routine, b'A', false, false);
            assert_eq!(got.info, info.data, "{routine} {case}: info");
            assert!(got.s.iter().all(|x| x.nan()), "{routine} {case}: s is NaN");
        }
    }
}

#[test]
fn svd_non_finite_like_lapack_f32() {
    svd_non_finite_like_lapack::<f32>();
}

#[test]
fn svd_non_finite_like_lapack_f64() {
    svd_non_finite_like_lapack::<f64>();
}
