//! geqrf, orgqr, ormqr, and Flax's orthogonal initializer built on them.

use super::*;
use crate::linalg::householder::BlockScratch;
use crate::linalg::qr::{form_q, qr_in_place, Blocking};

const CASES: [&str; 4] = ["tall", "wide", "square", "rankdef"];
/// Blocks of two reflectors from the third on, so the blocked code runs on small fixtures.
const SMALL_BLOCKS: Blocking = Blocking { block: 2, crossover: 2 };

fn geqrf_call<T: Float>(a: &Tensor<T>, alias: bool) -> (Vec<T>, Vec<T>) {
    let (_, m, n) = a.shape();
    let k = m.min(n) as i64;
    let outs = [out(T::DTYPE, &a.dims), out(T::DTYPE, &dims_with(&a.dims, 2, &[k]))];
    let bufs = run(&target::<T>("geqrf"), &[In::matrices(a)], &outs, &Attrs::new(), alias.then_some((0, 0)))
        .expect("geqrf runs");
    (bufs[0].to_vec(), bufs[1].to_vec())
}

fn geqrf_matches_lapack<T: Float>() {
    for case in CASES {
        let a = Tensor::<T>::of(&format!("geqrf/{case}/a"));
        let want = Tensor::<T>::of(&format!("geqrf/{case}/a_out"));
        let tau = Tensor::<T>::of(&format!("geqrf/{case}/tau"));
        for alias in [false, true] {
            let (got, got_tau) = geqrf_call(&a, alias);
            // R, the reflectors below it, and tau: LAPACK's conventions, signs included.
            assert_close(&got, &want.col_major(), &format!("{case} a_out"));
            assert_close(&got_tau, &tau.data, &format!("{case} tau"));
        }
        // The blocked path on the same input.
        let (batch, m, n) = a.shape();
        let k = m.min(n);
        let mut data = a.col_major();
        let mut tau_got = vec![T::ZERO; batch * k];
        let mut scratch = BlockScratch::new();
        for b in 0..batch {
            let matrix = &mut data[b * m * n..(b + 1) * m * n];
            qr_in_place(matrix, m, n, &mut tau_got[b * k..(b + 1) * k], &mut scratch, SMALL_BLOCKS);
        }
        assert_close(&data, &want.col_major(), &format!("{case} blocked a_out"));
        assert_close(&tau_got, &tau.data, &format!("{case} blocked tau"));
    }
}

#[test]
fn geqrf_matches_lapack_f32() {
    geqrf_matches_lapack::<f32>();
}

#[test]
fn geqrf_matches_lapack_f64() {
    geqrf_matches_lapack::<f64>();
}

fn orgqr_call<T: Float>(a: &Tensor<T>, tau: &Tensor<T>, alias: bool) -> Vec<T> {
    let outs = [out(T::DTYPE, &a.dims)];
    let inputs = [In::matrices(a), In::vector(tau)];
    let bufs = run(&target::<T>("orgqr"), &inputs, &outs, &Attrs::new(), alias.then_some((0, 0)))
        .expect("orgqr runs");
    bufs[0].to_vec()
}

fn orgqr_matches_lapack<T: Float>() {
    for case in CASES.iter().copied().chain(["complete", "fewer"]) {
        let a = Tensor::<T>::of(&format!("orgqr/{case}/a"));
        let tau = Tensor::<T>::of(&format!("orgqr/{case}/tau"));
        let want = Tensor::<T>::of(&format!("orgqr/{case}/q"));
        for alias in [false, true] {
            let got = orgqr_call(&a, &tau, alias);
            assert_close(&got, &want.col_major(), &format!("{case} q"));
        }
        let (batch, m, n) = a.shape();
        let k = tau.data.len() / batch;
        let mut data = a.col_major();
        let mut scratch = BlockScratch::new();
        for b in 0..batch {
            let matrix = &mut data[b * m * n..(b + 1) * m * n];
            form_q(matrix, m, n, &tau.data[b * k..(b + 1) * k], &mut scratch, SMALL_BLOCKS);
        }
        assert_close(&data, &want.col_major(), &format!("{case} blocked q"));
    }
}

#[test]
fn orgqr_matches_lapack_f32() {
    orgqr_matches_lapack::<f32>();
}

#[test]
fn orgqr_matches_lapack_f64() {
    orgqr_matches_lapack::<f64>();
}

/// Q from orgqr times R from geqrf gives back A, and Q's columns are orthonormal.
fn qr_reconstructs<T: Float>() {
    for case in CASES {
        let a = Tensor::<T>::of(&format!("geqrf/{case}/a"));
        let (batch, m, n) = a.shape();
        let k = m.min(n);
        let (factored, tau) = geqrf_call(&a, false);
        let factored = Tensor::from_col_major(&a.dims, &factored);
        // orgqr on the first k columns, as jnp.linalg.qr(mode="reduced") calls it.
        let mut q_in = Vec::new();
        for b in 0..batch {
            let f = factored.matrix(b);
            q_in.extend((0..m).flat_map(|i| (0..k).map(move |j| (i, j))).map(|(i, j)| f.data[i * n + j]));
        }
        let q_dims = dims_with(&a.dims, 1, &[k as i64]);
        let q_in = Tensor { dims: q_dims.clone(), data: q_in };
        let tau = Tensor { dims: dims_with(&a.dims, 2, &[k as i64]), data: tau };
        let q = Tensor::from_col_major(&q_dims, &orgqr_call(&q_in, &tau, false));
        for b in 0..batch {
            let q = M::of(&q.matrix(b));
            let f = factored.matrix(b);
            let r = M::from_fn(k, n, |i, j| if i <= j { f.at(i, j) } else { 0.0 });
            assert_close_m(&q.mul(&r), &M::of(&a.matrix(b)), T::TOL * 10.0, &format!("{case}: QR = A"));
            assert_close_m(&q.t().mul(&q), &M::eye(k), T::TOL * 10.0, &format!("{case}: QᵀQ = I"));
        }
    }
}

#[test]
fn qr_reconstructs_f32() {
    qr_reconstructs::<f32>();
}

#[test]
fn qr_reconstructs_f64() {
    qr_reconstructs::<f64>();
}

fn ormqr_matches_lapack<T: Float>() {
    let a = Tensor::<T>::of("ormqr/a");
    let tau = Tensor::<T>::of("ormqr/tau");
    for (side, left) in [("L", true), ("R", false)] {
        let c = Tensor::<T>::of(&format!("ormqr/c_{}", if left { "left" } else { "right" }));
        for (trans, transpose) in [("N", false), ("T", true)] {
            let want = Tensor::<T>::of(&format!("ormqr/{side}{trans}/c_out"));
            let attrs = Attrs::new()
                .with("left", AttrValue::Bool(left))
                .with("transpose", AttrValue::Bool(transpose));
            for alias in [None, Some((2, 0))] {
                let inputs = [In::matrices(&a), In::vector(&tau), In::matrices(&c)];
                let bufs = run(&target::<T>("ormqr"), &inputs, &[out(T::DTYPE, &c.dims)], &attrs, alias)
                    .expect("ormqr runs");
                assert_close(&bufs[0].to_vec::<T>(), &want.col_major(), &format!("ormqr {side}{trans}"));
            }
        }
    }
}

#[test]
fn ormqr_matches_lapack_f32() {
    ormqr_matches_lapack::<f32>();
}

#[test]
fn ormqr_matches_lapack_f64() {
    ormqr_matches_lapack::<f64>();
}

/// `jax.nn.initializers.orthogonal()` (what Flax's LSTM/GRU cells use): QR of a normal draw,
/// Q's columns scaled by sign(diag(R)), transposed for wide shapes. JAX's output is the oracle.
fn orthogonal_init_matches_jax<T: Float>() {
    for i in 0..3 {
        let z = Tensor::<T>::of(&format!("orthogonal/{i}/z"));
        let want = Tensor::<T>::of(&format!("orthogonal/{i}/out"));
        let (_, m, n) = z.shape();
        let (factored, tau) = geqrf_call(&z, false);
        let r = Tensor::from_col_major(&z.dims, &factored).matrix(0);
        let tau = Tensor { dims: vec![n as i64], data: tau };
        let q = Tensor::from_col_major(
            &z.dims,
            &orgqr_call(&Tensor::from_col_major(&z.dims, &factored), &tau, false),
        );
        let q = q.matrix(0);
        let signed = M::from_fn(m, n, |a, b| q.at(a, b) * r.at(b, b).signum());
        let got = if want.dims[0] as usize == m { signed } else { signed.t() };
        assert_close_m(&got, &M::of(&want.matrix(0)), T::TOL, &format!("orthogonal init {i}"));
    }
}

#[test]
fn orthogonal_init_matches_jax_f32() {
    orthogonal_init_matches_jax::<f32>();
}

#[test]
fn orthogonal_init_matches_jax_f64() {
    orthogonal_init_matches_jax::<f64>();
}
