//! The layer's state after an execution that fails on the device (issue 9, item 5).
//!
//! `tests/fixtures/fail_if` (`scripts/make_fault_fixtures.py`) is a stateful bundle: every call
//! counts itself in a `counter` collection and runs the test-only custom call
//! `flaxlayer_test_fail_if` on `x[0, 0]`, which the crate registers with its `fault-injection`
//! feature (the integration tests enable it) and which fails when its input is positive. So a
//! test can make an execution fail after the layer donated its state (`counter`, and the key
//! in training) to it.
//!
//! What XLA does (measured here, `xla_consumes_donated_buffers_even_when_the_execution_fails`):
//! the CPU plugin deletes donated buffers when an execution that took them fails. The layer
//! therefore reports `Error::StateLost` and refuses every later use of its state.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use flaxlayer::pjrt::{CompileOptions, Program};
use flaxlayer::tensor::read_safetensors;
use flaxlayer::{DType, Error, FlaxLayer, Mode, Tensor};

use crate::common::client;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fail_if")
}

fn golden() -> BTreeMap<String, Tensor> {
    read_safetensors(fixture().join("golden.safetensors")).unwrap().into_iter().collect()
}

fn layer() -> FlaxLayer {
    FlaxLayer::builder(fixture()).client(client()).build().unwrap()
}

/// The golden inputs (`x[0, 0] = -1.5`), or with `x[0, 0] = first`.
fn inputs(first: Option<f32>) -> Tensor {
    let x = golden()["inputs/inputs"].clone();
    let mut v = x.to_vec::<f32>().unwrap();
    if let Some(first) = first {
        v[0] = first;
    }
    Tensor::from_vec(x.shape().to_vec(), v).unwrap()
}

type Snapshot = (Vec<(String, Tensor)>, [u32; 2]);

fn snapshot(layer: &FlaxLayer) -> Snapshot {
    (layer.variables().unwrap(), layer.key().unwrap())
}

fn counter(layer: &FlaxLayer) -> (i32, f32) {
    let vars: BTreeMap<_, _> = layer.variables().unwrap().into_iter().collect();
    (vars["counter/calls"].to_vec::<i32>().unwrap()[0], vars["counter/total"].to_vec::<f32>().unwrap()[0])
}

#[test]
fn the_fixture_runs_the_test_target_as_jax_did() {
    let (g, mut layer) = (golden(), layer());
    let out = layer.call(inputs(None), Mode::Inference).unwrap();
    assert!(out.as_tensor().unwrap().max_abs_diff(&g["inference/outputs"]).unwrap() <= 1e-6);
    assert_eq!(counter(&layer), (1, -1.5), "the custom call's copy of x[0, 0] reached the state");
    let mut layer = self::layer();
    for step in 0..2 {
        let out = layer.call(inputs(None), Mode::Training).unwrap();
        assert!(out.as_tensor().unwrap().max_abs_diff(&g[&format!("training/{step}/outputs")]).unwrap() <= 1e-6);
    }
    assert_eq!(counter(&layer), (2, -3.0));
    assert_eq!(layer.key().unwrap().to_vec(), g["key/after_training"].to_vec::<u32>().unwrap());
}

#[test]
fn xla_consumes_donated_buffers_even_when_the_execution_fails() {
    // `state + fail_if(x)`, the state donated (aliased to the result), as the layer runs it.
    const PROGRAM: &str = r#"
module @m {
  func.func public @main(%state: tensor<2xf32> {tf.aliasing_output = 0 : i32}, %x: tensor<f32>) -> tensor<2xf32> {
    %c = stablehlo.custom_call @flaxlayer_test_fail_if(%x) {api_version = 4 : i32} : (tensor<f32>) -> tensor<f32>
    %b = stablehlo.broadcast_in_dim %c, dims = [] : (tensor<f32>) -> tensor<2xf32>
    %y = stablehlo.add %state, %b : tensor<2xf32>
    return %y : tensor<2xf32>
  }
}"#;
    let c = client();
    let exe = c.compile(Program::Mlir(PROGRAM.as_bytes()), &CompileOptions::default()).unwrap();
    let dev = c.device(0).unwrap();
    let state = c.buffer_from_slice(&[1f32, 2.], &[2], &dev).unwrap();
    let (good, bad) = (c.buffer_from_slice(&[-0.5f32], &[], &dev).unwrap(), c.buffer_from_slice(&[3f32], &[], &dev).unwrap());
    // Not donated: a failed execution leaves the buffer alive and readable.
    let err = exe.execute(&[&state, &bad], &[false, false]).unwrap_err();
    assert!(matches!(&err, Error::Pjrt { message, .. } if message.contains("failure injected on purpose")), "{err}");
    assert!(!state.is_deleted().unwrap());
    assert_eq!(exe.execute(&[&state, &good], &[false, false]).unwrap()[0].to_vec::<f32>().unwrap(), [0.5, 1.5]);
    // Donated: the failed execution took it.
    assert!(exe.execute(&[&state, &bad], &[true, false]).is_err());
    assert!(state.is_deleted().unwrap(), "XLA keeps a donated buffer deleted after a failed execution");
}

/// `err` is the typed `StateLost` of a failure in the inference computation.
fn assert_lost(what: &str, err: Error) {
    let Error::StateLost { computation, cause } = &err else { panic!("{what}: {err}") };
    assert_eq!(computation, "__call__.inference.b4.jaxexport", "{what}");
    assert!(cause.contains("flaxlayer_test_fail_if: input 2 > 0"), "{what}: {cause}");
}

#[test]
fn an_execution_that_fails_after_donation_loses_the_state_and_every_later_use_refuses() {
    let mut layer = layer();
    layer.call(inputs(None), Mode::Inference).unwrap();
    // (a) The failure after donation is the typed StateLost, naming the computation and why.
    assert_lost("call", layer.call(inputs(Some(2.0)), Mode::Inference).unwrap_err());
    // (b) Nothing touches the deleted buffers again: every use of the state refuses.
    let good = inputs(None);
    assert_lost("call", layer.call(&good, Mode::Inference).unwrap_err());
    assert_lost("training call", layer.call(&good, Mode::Training).unwrap_err());
    assert_lost("predict", layer.predict(&good).unwrap_err());
    assert_lost("variables", layer.variables().unwrap_err());
    assert_lost("key", layer.key().unwrap_err());
    assert_lost("set_key", layer.set_key([0, 1]).unwrap_err());
    let vars = self::layer().variables().unwrap();
    assert_lost("set_variables", layer.set_variables(&vars).unwrap_err());
    let dir = tempfile::tempdir().unwrap();
    assert_lost("save", layer.save(dir.path().join("saved")).unwrap_err());
    assert!(!dir.path().join("saved").exists());
    // A rebuilt layer works.
    let mut fresh = self::layer();
    fresh.call(&good, Mode::Inference).unwrap();
    assert_eq!(counter(&fresh), (1, -1.5));
}

#[test]
fn a_training_call_that_fails_loses_the_state_too() {
    let mut layer = layer();
    let err = layer.call(inputs(Some(2.0)), Mode::Training).unwrap_err();
    assert!(matches!(&err, Error::StateLost { computation, .. } if computation == "__call__.training.b4.jaxexport"), "{err}");
    assert!(matches!(layer.key(), Err(Error::StateLost { .. })));
}

#[test]
fn a_failure_before_donation_leaves_the_state_intact() {
    // (c) Inputs refused before anything runs: nothing is donated, nothing changes.
    let mut layer = layer();
    layer.call(inputs(None), Mode::Training).unwrap();
    let before = snapshot(&layer);
    let wrong_shape = Tensor::zeros(DType::F32, vec![4, 6]).unwrap();
    let err = layer.call(&wrong_shape, Mode::Training).unwrap_err();
    assert!(matches!(&err, Error::ShapeMismatch { .. }), "{err}");
    let wrong_dtype = Tensor::zeros(DType::F64, vec![4, 5]).unwrap();
    let err = layer.call(&wrong_dtype, Mode::Inference).unwrap_err();
    assert!(matches!(&err, Error::DTypeMismatch { .. }), "{err}");
    assert_eq!(snapshot(&layer), before);
    // A failure on the device in `predict`, which donates nothing, changes nothing either.
    let err = layer.predict(inputs(Some(2.0))).unwrap_err();
    assert!(matches!(&err, Error::Pjrt { message, .. } if message.contains("failure injected on purpose")), "{err}");
    assert_eq!(snapshot(&layer), before);
    // And the layer goes on as if nothing had happened.
    layer.call(inputs(None), Mode::Training).unwrap();
    let g = golden();
    assert_eq!(counter(&layer), (2, -3.0));
    assert_eq!(layer.key().unwrap().to_vec(), g["key/after_training"].to_vec::<u32>().unwrap());
}
