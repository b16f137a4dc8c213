//! trsm: every side/uplo/trans/diag combination against BLAS dtrsm.

use super::*;

fn trsm_call<T: Float>(a: &Tensor<T>, b: &Tensor<T>, letters: [u8; 4], alias: bool) -> Vec<T> {
    let [side, uplo, trans, diag] = letters;
    let attrs = char_attrs(&[("side", side), ("uplo", uplo), ("trans_x", trans), ("diag", diag)]);
    let bufs = run(
        &target::<T>("trsm"),
        &[In::matrices(a), In::matrices(b)],
        &[out(T::DTYPE, &b.dims)],
        &attrs,
        alias.then_some((1, 0)),
    )
    .expect("trsm runs");
    bufs[0].to_vec()
}

fn trsm_matches_blas<T: Float>() {
    let a = Tensor::<T>::of("trsm/a");
    for side in [b'L', b'R'] {
        let b = Tensor::<T>::of(&format!("trsm/b_{}", side as char));
        for uplo in [b'L', b'U'] {
            for trans in [b'N', b'T'] {
                for diag in [b'N', b'U'] {
                    let name: String = [side, uplo, trans, diag].iter().map(|&c| c as char).collect();
                    let want = Tensor::<T>::of(&format!("trsm/{name}/b_out"));
                    for alias in [false, true] {
                        let got = trsm_call(&a, &b, [side, uplo, trans, diag], alias);
                        assert_close(&got, &want.col_major(), &format!("trsm {name}"));
                    }
                }
            }
        }
    }
    // 'C' is 'T' for real matrices.
    let b = Tensor::<T>::of("trsm/b_L");
    let want = Tensor::<T>::of("trsm/LUTN/b_out");
    assert_close(&trsm_call(&a, &b, *b"LUCN", false), &want.col_major(), "trsm LUCN");
}

#[test]
fn trsm_matches_blas_f32() {
    trsm_matches_blas::<f32>();
}

#[test]
fn trsm_matches_blas_f64() {
    trsm_matches_blas::<f64>();
}

/// op(A) X = B holds for the solution, with A's other triangle ignored.
#[test]
fn trsm_solves() {
    let a = Tensor::<f64>::of("trsm/a");
    let b = Tensor::<f64>::of("trsm/b_L");
    let x = Tensor::from_col_major(&b.dims, &trsm_call(&a, &b, *b"LLTN", false));
    for i in 0..2 {
        let full = a.matrix(i);
        let lower = M::from_fn(5, 5, |r, c| if r >= c { full.at(r, c) } else { 0.0 });
        assert_close_m(&lower.t().mul(&M::of(&x.matrix(i))), &M::of(&b.matrix(i)), 1e-12, "Lᵀ X = B");
    }
}
