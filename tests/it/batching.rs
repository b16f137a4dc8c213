//! Any batch size at inference (README "Any batch size"), against JAX: bundles from the
//! exporter's `export_examples` carry JAX's outputs at exactly the sizes the runtime pads or
//! splits to.

use std::collections::BTreeMap;

use flaxlayer::tensor::read_safetensors;
use flaxlayer::{DType, Error, FlaxLayer, Mode, PyTree, Tensor};

use crate::common::{client, hlo, row_range};

type Named = BTreeMap<String, Tensor>;

fn golden(name: &str) -> Named {
    read_safetensors(hlo(name).join("golden.safetensors")).unwrap().into_iter().collect()
}

fn layer(name: &str) -> FlaxLayer {
    FlaxLayer::builder(hlo(name)).client(client()).build().unwrap()
}

fn assert_close(what: &str, got: &Tensor, want: &Tensor, tol: f64) {
    assert_eq!((got.dtype(), got.shape()), (want.dtype(), want.shape()), "{what}");
    let err = got.max_abs_diff(want).unwrap();
    assert!(err <= tol, "{what}: max abs error {err:e} > {tol:e}");
}

#[test]
fn every_batch_from_1_to_40_equals_jax_at_that_size() {
    // `buckets` is exported at [1, 4, 16]: exact sizes, padded ones, and chunks above 16.
    let g = golden("buckets");
    let mut layer = layer("buckets");
    assert_eq!(layer.batch_sizes(Mode::Inference), [1, 4, 16]);
    assert!(layer.batching().paddable());
    for n in 1..=40 {
        let x = PyTree::dict([("a", PyTree::leaf(row_range(&g["rows/a"], 0, n))), ("b", PyTree::leaf(row_range(&g["rows/b"], 0, n)))]);
        for (how, out) in [("predict", layer.predict(&x).unwrap()), ("call", layer.call(&x, Mode::Inference).unwrap())] {
            assert_close(&format!("n={n} {how} output 0 (batched)"), &out["0"], &g[&format!("exact/{n}/0")], 1e-6);
            assert_close(&format!("n={n} {how} output 1 (not batched)"), &out["1"], &g[&format!("exact/{n}/1")], 1e-6);
        }
    }
}

#[test]
fn training_calls_never_pad() {
    let g = golden("buckets");
    let mut layer = layer("buckets");
    let x = PyTree::dict([("a", PyTree::leaf(row_range(&g["rows/a"], 0, 3))), ("b", PyTree::leaf(row_range(&g["rows/b"], 0, 3)))]);
    let before = (layer.variables().unwrap(), layer.key().unwrap());
    let err = layer.call(&x, Mode::Training).unwrap_err();
    assert!(matches!(&err, Error::BatchSize { got: 3, available, .. } if available == &[1, 4, 16]), "{err}");
    assert!(err.to_string().contains("batch must be one of [1, 4, 16]"), "{err}");
    assert_eq!((layer.variables().unwrap(), layer.key().unwrap()), before);
}

#[test]
fn a_model_that_mixes_rows_is_not_paddable() {
    // BatchNorm with batch statistics at inference: padding would change every row.
    let layer = layer("bn_batch_stats");
    assert!(!layer.batching().paddable());
    assert!(layer.batching().reason().unwrap_or("").contains("mixes rows"));
    let x = PyTree::leaf(Tensor::zeros(DType::F32, vec![3, layer.input_specs(Mode::Inference)[0][0].shape[1]]).unwrap());
    let err = layer.predict(&x).unwrap_err();
    assert!(matches!(&err, Error::BatchSize { got: 3, available, reason, .. } if available == &[4, 8] && reason.contains("not paddable")), "{err}");
}

/// Greedy decoding of `prompts` (one row each) for `steps` tokens with `call`.
fn greedy(layer: &mut FlaxLayer, prompts: &Tensor, steps: usize) -> flaxlayer::Result<Vec<Vec<i32>>> {
    let (rows, len) = (prompts.shape()[0], prompts.shape()[1]);
    let p = prompts.to_vec::<i32>().unwrap();
    let column = |c: &[i32]| PyTree::leaf(Tensor::from_vec(vec![rows, 1], c.to_vec()).unwrap());
    let mut logits = PyTree::None;
    for t in 0..len {
        let tokens: Vec<i32> = (0..rows).map(|r| p[r * len + t]).collect();
        logits = layer.call(column(&tokens), Mode::Inference)?;
    }
    let mut out = vec![Vec::new(); rows];
    for _ in 0..steps {
        let l = logits[0].to_vec::<f32>().unwrap();
        let vocab = l.len() / rows;
        let best: Vec<i32> = (0..rows)
            .map(|r| {
                let row = &l[r * vocab..(r + 1) * vocab];
                row.iter().enumerate().fold(0, |b, (i, &v)| if v > row[b] { i } else { b }) as i32
            })
            .collect();
        for (r, &b) in best.iter().enumerate() {
            out[r].push(b);
        }
        logits = layer.call(column(&best), Mode::Inference)?;
    }
    Ok(out)
}

#[test]
fn a_decode_cache_pads_to_the_size_it_was_created_at_and_refuses_more() {
    // `decoder_b4`'s cache holds 4 rows. JAX decoded 3 prompts with a cache of 3 rows; here the
    // 3 rows are padded to 4, and the real rows' tokens must be JAX's.
    let g = golden("decoder_b4");
    let mut layer = layer("decoder_b4");
    assert!(layer.batching().paddable() && layer.batching().stateful());
    for n in [3usize, 4] {
        let want = g[&format!("greedy/{n}/tokens")].to_vec::<i32>().unwrap();
        let steps = want.len() / n;
        let mut fresh = FlaxLayer::builder(hlo("decoder_b4")).client(client()).build().unwrap();
        let got = greedy(&mut fresh, &g[&format!("greedy/{n}/prompt")], steps).unwrap();
        assert_eq!(got.concat(), want, "greedy tokens at n={n}");
    }
    let five = Tensor::zeros(DType::I32, vec![5, 1]).unwrap();
    let err = layer.call(&five, Mode::Inference).unwrap_err();
    assert!(matches!(&err, Error::BatchSize { got: 5, reason, .. } if reason.contains("stateful")), "{err}");
}

#[test]
fn a_bundle_without_batch_marks_keeps_to_its_exported_sizes() {
    // The 1-row `decoder` holds a cache of batch 1 and is marked not paddable.
    let layer = layer("decoder");
    let two = Tensor::zeros(DType::I32, vec![2, 1]).unwrap();
    assert!(matches!(layer.predict(&two), Err(Error::BatchSize { got: 2, .. })));
}
