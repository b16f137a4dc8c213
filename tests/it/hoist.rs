//! Hoisted inference (issue 25): the exporter splits inference into a params-only prologue
//! and a per-call body; the layer runs the prologue after each param write and keeps its
//! results (the residuals) on the device.
//!
//! `tests/fixtures/hoist` (`scripts/make_hoist_fixtures.py`) has real params-only work
//! (Hugging Face's `Conv1D` with `kernel.T`, a bfloat16 cast of a kernel, and a `gate` param
//! through the test-only custom call `flaxlayer_test_fail_if`, which fails when it is
//! positive), a training step, and golden data from JAX: the outputs with the bundled params,
//! with new params (`hoist/set/...`), and after the first training step.

use std::path::{Path, PathBuf};

use flaxlayer::layer::epoch_batches;
use flaxlayer::{Batch, Error, FlaxLayer, Mode, Tensor, Trainer};

use crate::common::golden::assert_close;
use crate::common::{client, pick_rows};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hoist")
}

fn golden() -> Vec<(String, Tensor)> {
    flaxlayer::tensor::read_safetensors(fixture().join("golden.safetensors")).unwrap()
}

fn group(prefix: &str) -> Vec<(String, Tensor)> {
    let p = format!("{prefix}/");
    golden().into_iter().filter_map(|(k, v)| k.strip_prefix(&p).map(|k| (k.to_string(), v))).collect()
}

fn get(name: &str) -> Tensor {
    golden().into_iter().find(|(k, _)| k == name).unwrap_or_else(|| panic!("golden {name}")).1
}

fn layer() -> FlaxLayer {
    FlaxLayer::builder(fixture()).client(client()).build().unwrap()
}

fn outputs(layer: &mut FlaxLayer) -> Vec<(String, Tensor)> {
    let out = layer.call(get("inputs/inputs"), Mode::Inference).unwrap();
    vec![("outputs".to_string(), out.as_tensor().unwrap().clone())]
}

fn predicted(layer: &FlaxLayer) -> Vec<(String, Tensor)> {
    let out = layer.predict(get("inputs/inputs")).unwrap();
    vec![("outputs".to_string(), out.as_tensor().unwrap().clone())]
}

#[test]
fn hoisted_inference_equals_jax() {
    let mut l = layer();
    assert!(l.runs_hoisted(), "the bundle's inference is hoisted");
    assert_eq!(l.residual_bytes(), 0, "no residuals before the first call");
    assert_close("hoisted call", &outputs(&mut l), &group("inference"));
    assert_close("hoisted predict", &predicted(&l), &group("inference"));
    let h = l.method_spec().unwrap().inference()[0].hoisted().cloned().unwrap();
    assert_eq!(l.residual_bytes(), h.residual_bytes(), "the residuals the manifest announces are on the device");
    assert!(h.residual_bytes() > 0 && h.prologue().results().len() == 3, "{h:?}");
    // the plain computation gives the same
    let mut plain = FlaxLayer::builder(fixture()).client(client()).without_hoisted().build().unwrap();
    assert!(!plain.runs_hoisted());
    assert_close("plain call", &outputs(&mut plain), &group("inference"));
    assert_eq!(plain.residual_bytes(), 0);
}

#[test]
fn set_variables_recomputes_the_residuals() {
    let mut l = layer();
    assert_close("before", &outputs(&mut l), &group("inference"));
    l.set_variables(&group("hoist/set")).unwrap();
    assert_close("after set_variables (predict)", &predicted(&l), &group("hoist/set_outputs"));
    assert_close("after set_variables (call)", &outputs(&mut l), &group("hoist/set_outputs"));
    // setting only state (none here) or the same names again keeps working
    l.set_variables(&group("hoist/set")).unwrap();
    assert_close("after setting again", &outputs(&mut l), &group("hoist/set_outputs"));
}

#[test]
fn a_trainer_step_reaches_hoisted_inference() {
    let mut t = Trainer::builder(fixture()).client(client()).build().unwrap();
    let x = get("inputs/inputs");
    let n = x.shape()[0];
    // warm the residuals at the bundled params first: the step must make them stale
    let before = t.layer().predict(&x).unwrap().as_tensor().unwrap().clone();
    assert_close("before the step", &[("outputs".into(), before)], &group("inference"));
    let idx = &epoch_batches(0, 0, n, n)[0];
    // export_train_step's golden loop trained on the same rows (x_train = the sample inputs)
    let y_train = golden_y(n);
    t.step(&Batch::new(pick_rows(&x, idx), pick_rows(&y_train, idx))).unwrap();
    for (name, got) in t.layer().variables().unwrap() {
        let want = get(&format!("train/after/{name}"));
        assert!(got.max_abs_diff(&want).unwrap() <= 1e-5, "{name} after the step");
    }
    let after = t.layer().predict(&x).unwrap().as_tensor().unwrap().clone();
    assert_close("after a trainer step", &[("outputs".into(), after)], &group("hoist/after_train_outputs"));
}

/// The mse targets of the golden training loop (`hoist/y_train`; its inputs are the sample
/// inputs).
fn golden_y(n: usize) -> Tensor {
    let y = get("hoist/y_train");
    assert_eq!(y.shape()[0], n);
    y
}

#[test]
fn a_failing_prologue_leaves_the_layer_as_it_was() {
    let mut l = layer();
    assert_close("first", &outputs(&mut l), &group("inference"));
    let mut bad = group("hoist/set");
    for (name, t) in &mut bad {
        if name == "params/gate" {
            *t = Tensor::scalar(1.0f32); // flaxlayer_test_fail_if fails on a positive input
        }
    }
    l.set_variables(&bad).unwrap();
    let (vars, key) = (l.variables().unwrap(), l.key().unwrap());
    let err = l.call(get("inputs/inputs"), Mode::Inference).unwrap_err();
    assert!(matches!(err, Error::Prologue { .. }), "{err:?}");
    assert!(err.to_string().contains("prologue"), "{err}");
    let err = l.predict(get("inputs/inputs")).unwrap_err();
    assert!(matches!(err, Error::Prologue { .. }), "{err:?}");
    assert_eq!(l.residual_bytes(), 0, "no stale residuals are kept");
    assert_close("variables after the failed call", &l.variables().unwrap(), &vars);
    assert_eq!(l.key().unwrap(), key);
    // the layer is usable: good params make it run again
    l.set_variables(&group("hoist/set")).unwrap();
    assert_close("after the failure", &outputs(&mut l), &group("hoist/set_outputs"));
}

#[test]
fn generation_bundles_run_the_hoisted_decode_and_prefill() {
    // hlo/lm_gpt2 (HF GPT-2's Conv1D) is hoisted; tests/it/generate.rs checks its tokens
    // against Hugging Face's generate, so generation goes through the hoisted split there.
    let l = FlaxLayer::builder(crate::common::hlo("lm_gpt2")).client(client()).build().unwrap();
    assert!(l.runs_hoisted());
    let m = l.bundle().manifest();
    let prologues: std::collections::BTreeSet<&str> =
        m.methods().values().filter_map(|s| s.inference()[0].hoisted()).map(|h| h.prologue().file()).collect();
    assert_eq!(prologues.len(), 1, "decode and every prefill share one prologue: {prologues:?}");
    assert!(m.methods()["decode"].inference()[0].hoisted().is_some() && m.methods()["prefill_8"].inference()[0].hoisted().is_some());
}
