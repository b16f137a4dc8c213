//! Frozen inference (`export_flax(..., frozen=True)`): hlo/mlp_frozen and hlo/decoder_frozen
//! carry, besides the usual computations, inference with the bundle's params compiled in as
//! constants. A layer runs those only while its params are the ones loaded from the bundle's
//! `variables.safetensors`; any change to a param, other variables, or another variables file
//! must send inference back to the computations that take the params as arguments, or it
//! would compute with stale weights.

use std::sync::Arc;

use flaxlayer::tensor::{read_safetensors, write_safetensors};
use flaxlayer::{Bundle, FlaxLayer, Mode, PyTree, Tensor};

use crate::common::golden::{assert_close, Golden};
use crate::common::{client, copy_dir, hlo};

fn layer_at(dir: &std::path::Path) -> FlaxLayer {
    FlaxLayer::builder(Arc::new(Bundle::open(dir).unwrap())).client(client()).build().unwrap()
}

fn inputs(golden: &Golden) -> Tensor {
    golden.get("inputs/inputs").clone()
}

fn outputs(tree: PyTree) -> Tensor {
    tree.as_tensor().unwrap().clone()
}

/// Every param of `layer` as zeros: a relu MLP then outputs exactly zero, whatever its input,
/// while the frozen program (the bundle's weights as constants) would not.
fn zero_params(layer: &FlaxLayer) -> Vec<(String, Tensor)> {
    layer.trainable_weights().iter().map(|s| (s.name.clone(), Tensor::zeros(s.dtype, s.shape.clone()).unwrap())).collect()
}

fn assert_all_zero(t: &Tensor) {
    assert!(t.to_vec::<f32>().unwrap().iter().all(|&v| v == 0.0), "outputs are not zero: stale frozen weights? {t:?}");
}

#[test]
fn frozen_inference_equals_jax_and_runs_the_frozen_program() {
    let golden = Golden::load("mlp_frozen");
    let mut layer = layer_at(&hlo("mlp_frozen"));
    assert!(layer.runs_frozen(), "a frozen bundle with its own variables runs the frozen computations");
    let out = outputs(layer.call(inputs(&golden), Mode::Inference).unwrap());
    assert_close("mlp_frozen inference", &[("outputs".into(), out)], &golden.group("inference"));
    let out = outputs(layer.predict(inputs(&golden)).unwrap());
    assert_close("mlp_frozen predict", &[("outputs".into(), out)], &golden.group("inference"));
    // The same weights through the computations with params as arguments (hlo/mlp is the same
    // module under the same seed): the same outputs.
    assert_close("mlp inference", &[("outputs".into(), outputs(layer_at(&hlo("mlp")).predict(inputs(&golden)).unwrap()))], &golden.group("inference"));
}

#[test]
fn frozen_inference_takes_any_batch_size() {
    let golden = Golden::load("mlp_frozen");
    let x = inputs(&golden);
    let rows: Vec<f32> = (0..5).flat_map(|_| x.to_vec::<f32>().unwrap()).collect();
    let batch = Tensor::from_vec(vec![5, 64], rows).unwrap();
    let layer = layer_at(&hlo("mlp_frozen"));
    let out = outputs(layer.predict(batch).unwrap());
    let want = golden.get("inference/outputs").to_vec::<f32>().unwrap();
    for row in out.to_vec::<f32>().unwrap().chunks(want.len()) {
        let err = row.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(err <= 2e-5, "a row of a padded frozen batch differs from JAX by {err}");
    }
}

#[test]
fn changed_params_leave_the_frozen_program() {
    let golden = Golden::load("mlp_frozen");
    let mut layer = layer_at(&hlo("mlp_frozen"));
    layer.set_variables(&zero_params(&layer)).unwrap();
    assert!(!layer.runs_frozen());
    assert_all_zero(&outputs(layer.call(inputs(&golden), Mode::Inference).unwrap()));
    assert_all_zero(&outputs(layer.predict(inputs(&golden)).unwrap()));

    // Setting the bundle's own values again still counts as a change: the layer can't know
    // they are equal without comparing them, and the computations with params as arguments
    // give the same outputs.
    let mut layer = layer_at(&hlo("mlp_frozen"));
    let params: Vec<(String, Tensor)> = layer.variables().unwrap();
    layer.set_variables(&params).unwrap();
    assert!(!layer.runs_frozen());
    let out = outputs(layer.predict(inputs(&golden)).unwrap());
    assert_close("after set_variables", &[("outputs".into(), out)], &golden.group("inference"));
}

#[test]
fn other_variables_never_run_the_frozen_program() {
    let golden = Golden::load("mlp_frozen");
    let bundle = Arc::new(Bundle::open(hlo("mlp_frozen")).unwrap());
    let given = zero_params(&layer_at(&hlo("mlp_frozen")));
    let layer = FlaxLayer::builder(bundle.clone()).variables(given.clone()).client(client()).build().unwrap();
    assert!(!layer.runs_frozen(), "given variables");
    assert_all_zero(&outputs(layer.predict(inputs(&golden)).unwrap()));

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("zeros.safetensors");
    let refs: Vec<(&str, &Tensor)> = given.iter().map(|(n, t)| (n.as_str(), t)).collect();
    write_safetensors(&file, &refs, None).unwrap();
    let layer = FlaxLayer::builder(bundle.clone()).variables_file(&file).client(client()).build().unwrap();
    assert!(!layer.runs_frozen(), "a variables file");
    assert_all_zero(&outputs(layer.predict(inputs(&golden)).unwrap()));

    let layer = FlaxLayer::builder(bundle).init_variables().client(client()).build().unwrap();
    assert!(!layer.runs_frozen(), "init on the device");
}

#[test]
fn an_edited_variables_file_in_the_bundle_is_not_the_frozen_one() {
    // Someone replaced the bundle's variables.safetensors (fine-tuned weights, say): its
    // SHA-256 no longer matches the manifest's, so the constants are stale.
    let golden = Golden::load("mlp_frozen");
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&hlo("mlp_frozen"), dir.path());
    let vars = read_safetensors(dir.path().join("variables.safetensors")).unwrap();
    let zeroed: Vec<(String, Tensor)> = vars.iter().map(|(n, t)| (n.clone(), Tensor::zeros(t.dtype(), t.shape().to_vec()).unwrap())).collect();
    let refs: Vec<(&str, &Tensor)> = zeroed.iter().map(|(n, t)| (n.as_str(), t)).collect();
    write_safetensors(dir.path().join("variables.safetensors"), &refs, None).unwrap();
    let layer = layer_at(dir.path());
    assert!(!layer.runs_frozen());
    assert_all_zero(&outputs(layer.predict(inputs(&golden)).unwrap()));
}

#[test]
fn frozen_decoder_decodes_jax_greedy_tokens_and_keeps_frozen_through_cache_writes() {
    let golden = Golden::load("decoder_frozen");
    let prompt = golden.get("greedy/prompt").to_vec::<i32>().unwrap();
    let want = golden.get("greedy/tokens").to_vec::<i32>().unwrap();
    let mut layer = layer_at(&hlo("decoder_frozen"));
    assert!(layer.runs_frozen());
    let got = crate::common::greedy_decode(&mut layer, &prompt, want.len());
    assert_eq!(got, want, "greedy tokens of the frozen decoder");
    // Each step wrote the cache (state, not params): still the frozen program.
    assert!(layer.runs_frozen());
    // A training call writes the cache and advances the key, never the params.
    layer.call(PyTree::leaf(Tensor::from_vec(vec![1, 1], vec![1]).unwrap()), Mode::Training).unwrap();
    assert!(layer.runs_frozen());
}
