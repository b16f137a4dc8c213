//! One `Arc<FlaxLayer>` shared by 8 threads that call `predict`, `variables()` and `key()` at
//! once: every result must be bit-identical to a single-threaded run. Each device-to-host copy
//! reads a buffer that the other threads read too, which is what this exercises (issue 9: the
//! CPU plugin's external-reference bookkeeping is not thread-safe on its own).
//! Bundle: `hlo/mlp` (scripts/export_examples.py).

use std::path::Path;
use std::sync::Arc;

use flaxlayer::{FlaxLayer, PyTree, Tensor};

const THREADS: usize = 8;
/// Calls of each of `predict`, `variables()` and `key()` per thread. 8 × 2,000 keeps the test
/// at about 10 s in a debug build on 2 cores; the old code aborted within the first hundred.
const CALLS: usize = 2_000;

/// The input of thread `t`: distinct per thread so that mixed-up outputs would show.
fn input(t: usize) -> PyTree {
    let values: Vec<f32> = (0..64).map(|i| ((i * 7 + t * 13) % 17) as f32 / 8.0 - 1.0).collect();
    PyTree::leaf(Tensor::from_vec(vec![1, 64], values).unwrap())
}

/// Whether two lists of named tensors are bit-identical (names, dtypes, shapes, bytes).
fn identical(a: &[(String, &Tensor)], b: &[(String, &Tensor)]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|((na, ta), (nb, tb))| {
            na == nb && ta.dtype() == tb.dtype() && ta.shape() == tb.shape() && ta.as_bytes() == tb.as_bytes()
        })
}

fn leaves(tree: &PyTree) -> Vec<(String, &Tensor)> {
    tree.flatten_with_paths("outputs")
}

fn named(vars: &[(String, Tensor)]) -> Vec<(String, &Tensor)> {
    vars.iter().map(|(n, t)| (n.clone(), t)).collect()
}

#[test]
fn threads_sharing_a_layer_get_single_threaded_results() {
    let bundle = Path::new(env!("CARGO_MANIFEST_DIR")).join("hlo/mlp");
    let layer = Arc::new(FlaxLayer::builder(bundle).build().unwrap());

    // The single-threaded reference.
    let want_outputs: Vec<PyTree> = (0..THREADS).map(|t| layer.predict(input(t)).unwrap()).collect();
    let want_variables = layer.variables().unwrap();
    let want_key = layer.key().unwrap();

    let want_outputs = Arc::new(want_outputs);
    let want_variables = Arc::new(want_variables);
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let layer = layer.clone();
            let want_outputs = want_outputs.clone();
            let want_variables = want_variables.clone();
            std::thread::spawn(move || {
                let x = input(t);
                for call in 0..CALLS {
                    let y = layer.predict(&x).unwrap();
                    assert!(identical(&leaves(&y), &leaves(&want_outputs[t])), "thread {t} call {call}: predict");
                    let vars = layer.variables().unwrap();
                    assert!(identical(&named(&vars), &named(&want_variables)), "thread {t} call {call}: variables");
                    assert_eq!(layer.key().unwrap(), want_key, "thread {t} call {call}: key");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}
