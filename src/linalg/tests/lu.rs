//! getrf: LU with partial pivoting, pivots and info exactly as LAPACK's.

use super::*;
use crate::linalg::lu::lu_in_place;

const CASES: [&str; 6] = ["square", "tall", "wide", "big", "singular", "ties"];

fn getrf_call<T: Float>(a: &Tensor<T>, alias: bool) -> (Vec<T>, Vec<i32>, Vec<i32>) {
    let (_, m, n) = a.shape();
    let k = m.min(n) as i64;
    let outs = [
        out(T::DTYPE, &a.dims),
        out(DType::I32, &dims_with(&a.dims, 2, &[k])),
        out(DType::I32, &dims_with(&a.dims, 2, &[])),
    ];
    let bufs = run(&target::<T>("getrf"), &[In::matrices(a)], &outs, &Attrs::new(), alias.then_some((0, 0)))
        .expect("getrf runs");
    (bufs[0].to_vec(), bufs[1].to_vec(), bufs[2].to_vec())
}

fn getrf_matches_lapack<T: Float>() {
    for case in CASES {
        let a = Tensor::<T>::of(&format!("getrf/{case}/a"));
        let want = Tensor::<T>::of(&format!("getrf/{case}/a_out"));
        let ipiv = Tensor::<i32>::load(&format!("{}/getrf/{case}/ipiv", T::PREFIX));
        let info = Tensor::<i32>::load(&format!("{}/getrf/{case}/info", T::PREFIX));
        for alias in [false, true] {
            let (got, got_ipiv, got_info) = getrf_call(&a, alias);
            assert_eq!(got_ipiv, ipiv.data, "{case}: ipiv");
            assert_eq!(got_info, info.data, "{case}: info");
            assert_close(&got, &want.col_major(), &format!("{case}: L and U"));
        }
        // The recursive path with two-column panels. Its products round differently, so the
        // singular matrices whose zero pivots come out of cancellation (2 and 3) can differ
        // from LAPACK in the last bits, and with them the pivots: they are left out.
        let (batch, m, n) = a.shape();
        let k = m.min(n);
        let want_lu = want.col_major();
        for b in (0..batch).filter(|&b| case != "singular" || b < 2) {
            let mut data = a.col_major()[b * m * n..(b + 1) * m * n].to_vec();
            let mut pivots = vec![0; k];
            let first_zero = lu_in_place(&mut data, m, 0, 0, m, n, &mut pivots, 2);
            let pivots: Vec<i32> = pivots.iter().map(|&p| p as i32 + 1).collect();
            assert_eq!(pivots, ipiv.data[b * k..(b + 1) * k], "{case}[{b}]: recursive ipiv");
            assert_eq!(first_zero.map_or(0, |j| j as i32 + 1), info.data[b], "{case}[{b}]: recursive info");
            assert_close(
                &data,
                &want_lu[b * m * n..(b + 1) * m * n],
                &format!("{case}[{b}]: recursive L and U"),
            );
        }
    }
}

#[test]
fn getrf_matches_lapack_f32() {
    getrf_matches_lapack::<f32>();
}

#[test]
fn getrf_matches_lapack_f64() {
    getrf_matches_lapack::<f64>();
}

/// P·L·U = A, with P from the 1-based interchanges.
fn getrf_reconstructs<T: Float>() {
    for case in CASES {
        let a = Tensor::<T>::of(&format!("getrf/{case}/a"));
        let (batch, m, n) = a.shape();
        let k = m.min(n);
        let (lu, ipiv, _) = getrf_call(&a, false);
        let lu = Tensor::from_col_major(&a.dims, &lu);
        for b in 0..batch {
            let f = lu.matrix(b);
            let l = M::from_fn(m, k, |i, j| match i.cmp(&j) {
                std::cmp::Ordering::Greater => f.at(i, j),
                std::cmp::Ordering::Equal => 1.0,
                std::cmp::Ordering::Less => 0.0,
            });
            let u = M::from_fn(k, n, |i, j| if i <= j { f.at(i, j) } else { 0.0 });
            let mut rows: Vec<usize> = (0..m).collect();
            for (j, &p) in ipiv[b * k..(b + 1) * k].iter().enumerate() {
                rows.swap(j, p as usize - 1);
            }
            let lu_product = l.mul(&u);
            // Row j of P A is row rows[j] of A: undo the permutation on L U.
            let mut pa = M::from_fn(m, n, |_, _| 0.0);
            for (j, &r) in rows.iter().enumerate() {
                for c in 0..n {
                    pa.v[r * n + c] = lu_product.at(j, c);
                }
            }
            assert_close_m(&pa, &M::of(&a.matrix(b)), T::TOL * 10.0, &format!("{case}[{b}]: P L U = A"));
        }
    }
}

#[test]
fn getrf_reconstructs_f32() {
    getrf_reconstructs::<f32>();
}

#[test]
fn getrf_reconstructs_f64() {
    getrf_reconstructs::<f64>();
}

/// A singular matrix keeps finite factors with an exact zero pivot, so det = 0 exactly.
#[test]
fn getrf_singular_gives_exact_zero_pivot() {
    let a = Tensor::<f64>::of("getrf/singular/a");
    let (lu, _, info) = getrf_call(&a, false);
    assert!(lu.iter().all(|v| v.is_finite()), "finite factors: {lu:?}");
    let first = Tensor::from_col_major(&a.dims, &lu).matrix(0);
    assert_eq!(info[0], 4);
    assert_eq!(first.at(3, 3), 0.0);
}
