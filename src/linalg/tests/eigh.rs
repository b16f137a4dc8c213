//! syevd: ascending eigenvalues as LAPACK's, V diag(w) Vᵀ = A, orthonormal V.

use super::*;

fn syevd_call<T: Float>(a: &Tensor<T>, uplo: u8, mode: u8, alias: bool) -> (Vec<T>, Vec<T>, Vec<i32>) {
    let (_, n, _) = a.shape();
    let outs = [
        out(T::DTYPE, &a.dims),
        out(T::DTYPE, &dims_with(&a.dims, 2, &[n as i64])),
        out(DType::I32, &dims_with(&a.dims, 2, &[])),
    ];
    let attrs = char_attrs(&[("uplo", uplo), ("mode", mode)]);
    let bufs = run(&target::<T>("syevd"), &[In::matrices(a)], &outs, &attrs, alias.then_some((0, 0)))
        .expect("syevd runs");
    (bufs[0].to_vec(), bufs[1].to_vec(), bufs[2].to_vec())
}

fn syevd_matches_lapack<T: Float>() {
    for case in ["batch", "big", "repeated"] {
        let a = Tensor::<T>::of(&format!("syevd/{case}/a"));
        let (batch, n, _) = a.shape();
        for uplo in [b'L', b'U'] {
            let u = uplo as char;
            let w = Tensor::<T>::of(&format!("syevd/{case}/{u}/w"));
            let info = Tensor::<i32>::load(&format!("{}/syevd/{case}/{u}/info", T::PREFIX));
            for alias in [false, true] {
                let (v, got_w, got_info) = syevd_call(&a, uplo, b'V', alias);
                assert_eq!(got_info, info.data, "{case} {u}: info");
                // Same values in the same (ascending) order.
                assert_close(&got_w, &w.data, &format!("{case} {u}: w"));
                let v = Tensor::from_col_major(&a.dims, &v);
                for b in 0..batch {
                    let input = a.matrix(b);
                    let sym = M::from_fn(n, n, |i, j| {
                        let (r, c) = if (i >= j) == (uplo == b'L') { (i, j) } else { (j, i) };
                        input.at(r, c)
                    });
                    let vm = M::of(&v.matrix(b));
                    let d = M::from_fn(n, n, |i, j| if i == j { got_w[b * n + i].to_f64() } else { 0.0 });
                    let tol = T::TOL * 10.0;
                    assert_close_m(
                        &vm.mul(&d).mul(&vm.t()),
                        &sym,
                        tol,
                        &format!("{case}[{b}] {u}: V W Vᵀ = A"),
                    );
                    assert_close_m(&vm.t().mul(&vm), &M::eye(n), tol, &format!("{case}[{b}] {u}: VᵀV = I"));
                }
            }
            // Values only.
            let (untouched, got_w, got_info) = syevd_call(&a, uplo, b'N', false);
            assert_eq!(got_info, info.data, "{case} {u}: info, mode N");
            assert_close(&got_w, &w.data, &format!("{case} {u}: w, mode N"));
            assert_eq!(untouched, a.col_major(), "{case} {u}: mode N keeps a");
        }
    }
}

#[test]
fn syevd_matches_lapack_f32() {
    syevd_matches_lapack::<f32>();
}

#[test]
fn syevd_matches_lapack_f64() {
    syevd_matches_lapack::<f64>();
}

/// NaN input: LAPACK (OpenBLAS's) returns info 0 and NaN values; so do we, vectors included.
fn syevd_nan_like_lapack<T: Float>() {
    let a = Tensor::<T>::of("syevd/nan/a");
    for uplo in [b'L', b'U'] {
        let u = uplo as char;
        let info = Tensor::<i32>::load(&format!("{}/syevd/nan/{u}/info", T::PREFIX));
        let w = Tensor::<T>::of(&format!("syevd/nan/{u}/w"));
        let (v, got_w, got_info) = syevd_call(&a, uplo, b'V', false);
        assert_eq!(got_info, info.data);
        assert!(w.data.iter().all(|x| x.nan()) && got_w.iter().all(|x| x.nan()));
        assert!(v.iter().all(|x| x.nan()));
    }
}

#[test]
fn syevd_nan_like_lapack_f32() {
    syevd_nan_like_lapack::<f32>();
}

#[test]
fn syevd_nan_like_lapack_f64() {
    syevd_nan_like_lapack::<f64>();
}
