//! Flax NNX bundles (`hlo/nnx_*`, written by `scripts/export_examples.py` from
//! `flaxlayer_export.examples.nnx_models`) against JAX: their golden data is the NNX module
//! itself, called in `model.eval()` / `model.train()` mode and reseeded per the RNG contract
//! (README, "The RNG contract"). The runtime treats them as any bundle: `params/...` are the
//! trainable weights; batch stats, RNG keys and counts and a call counter are state, written
//! back after every call.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use flaxlayer::layer::epoch_batches;
use flaxlayer::tensor::read_safetensors;
use flaxlayer::{Batch, Bundle, DType, Error, FlaxLayer, Mode, PyTree, Tensor, Trainer};

use crate::common::golden::{assert_close, named, state_only, Golden};
use crate::common::{client, hlo, pick_rows};

const BUNDLES: [&str; 3] = ["nnx_mlp_bn_dropout", "nnx_attention", "nnx_counter"];

fn layer(name: &str) -> FlaxLayer {
    FlaxLayer::builder(hlo(name)).client(client()).build().unwrap()
}

fn inputs(layer: &FlaxLayer, golden: &Golden) -> PyTree {
    PyTree::from_named_leaves(layer.input_tree(), "inputs", golden.group("inputs")).unwrap()
}

fn variable(layer: &FlaxLayer, name: &str) -> Tensor {
    layer.variables().unwrap().into_iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("variable {name}")).1
}

#[test]
fn inference_matches_the_nnx_module() {
    for name in BUNDLES {
        let golden = Golden::load(name);
        let mut layer = layer(name);
        let out = layer.call(inputs(&layer, &golden), Mode::Inference).unwrap();
        assert_close(&format!("{name} inference"), &named(&out), &golden.group("inference"));
        assert_close(&format!("{name} inference state"), &state_only(layer.variables().unwrap()), &golden.group("inference_state"));
    }
}

#[test]
fn two_training_calls_match_the_nnx_module() {
    for name in BUNDLES {
        let golden = Golden::load(name);
        let mut layer = layer(name);
        let x = inputs(&layer, &golden);
        for step in 0..2 {
            let out = layer.call(&x, Mode::Training).unwrap();
            assert_close(&format!("{name} training/{step}"), &named(&out), &golden.group(&format!("training/{step}")));
        }
        // batch stats, RNG keys and counts, the counter: all written back
        assert_close(&format!("{name} after_training"), &state_only(layer.variables().unwrap()), &golden.group("after_training"));
        assert_eq!(layer.key().unwrap().to_vec(), golden.get("key/after_training").to_vec::<u32>().unwrap(), "{name}: key");
    }
}

#[test]
fn rng_state_is_uint32_key_data_and_state() {
    let layer = layer("nnx_mlp_bn_dropout");
    let non_trainable: Vec<String> = layer.non_trainable_weights().into_iter().map(|w| format!("{w}")).collect();
    assert_eq!(
        non_trainable,
        ["batch_stats/bn/mean: float32[32]", "batch_stats/bn/var: float32[32]", "rngs/dropout/rngs/count: uint32[]", "rngs/dropout/rngs/key: uint32[2]"]
    );
    assert!(layer.trainable_weights().iter().all(|w| w.name.starts_with("params/")));
    // Linear 12->32, BatchNorm(32) scale+bias, Linear 32->3; 64 batch stats, the key's 2 words and the count.
    assert_eq!(layer.count_params(), (12 * 32 + 32) + 64 + (32 * 3 + 3) + 64 + 2 + 1);
}

#[test]
fn init_on_device_builds_the_nnx_module_again() {
    let want = read_safetensors(hlo("nnx_mlp_bn_dropout").join("variables.safetensors")).unwrap();
    let layer = FlaxLayer::builder(hlo("nnx_mlp_bn_dropout")).init_variables().client(client()).build().unwrap();
    assert_close("nnx_mlp_bn_dropout init", &layer.variables().unwrap(), &want);
    let other = FlaxLayer::builder(hlo("nnx_mlp_bn_dropout")).seed(1).init_variables().client(client()).build().unwrap();
    assert_ne!(variable(&other, "params/linear1/kernel"), variable(&layer, "params/linear1/kernel"));
    assert_ne!(variable(&other, "rngs/dropout/rngs/key"), variable(&layer, "rngs/dropout/rngs/key"));
}

#[test]
fn an_instance_bundle_has_no_init() {
    for name in ["nnx_attention", "nnx_counter"] {
        let bundle = Bundle::open(hlo(name)).unwrap();
        assert!(bundle.manifest().init().is_none(), "{name}");
        assert_eq!(bundle.manifest().variables_origin(), Some("module"));
        let err = FlaxLayer::builder(hlo(name)).init_variables().client(client()).build().unwrap_err();
        assert!(matches!(&err, Error::InvalidArgument { reason, .. } if reason.contains("no init computation")), "{err}");
        layer(name); // its variables.safetensors is enough
    }
}

#[test]
fn the_layer_key_drives_reseeded_streams_as_for_linen() {
    let golden = Golden::load("nnx_mlp_bn_dropout");
    let first = golden.group("training/0");
    let mut seeded = FlaxLayer::builder(hlo("nnx_mlp_bn_dropout")).seed(1).client(client()).build().unwrap();
    assert_eq!(seeded.key().unwrap(), [0, 1]);
    let x = inputs(&seeded, &golden);
    let a = named(&seeded.call(&x, Mode::Training).unwrap());
    assert!(a[0].1.max_abs_diff(&first[0].1).unwrap() > 1e-3, "seed 1 drew seed 0's dropout mask");
    seeded.set_key([0, 0]).unwrap();
    seeded.set_variables(&read_safetensors(hlo("nnx_mlp_bn_dropout").join("variables.safetensors")).unwrap()).unwrap();
    assert_close("seed 1 layer after set_key([0, 0])", &named(&seeded.call(&x, Mode::Training).unwrap()), &first);
}

#[test]
fn the_modules_own_streams_ignore_the_layer_key() {
    // nnx_attention is exported with rng_streams=(): training draws continue the module's streams.
    let golden = Golden::load("nnx_attention");
    let mut layer = FlaxLayer::builder(hlo("nnx_attention")).seed(5).client(client()).build().unwrap();
    let x = inputs(&layer, &golden);
    for step in 0..2 {
        let out = layer.call(&x, Mode::Training).unwrap();
        assert_close(&format!("nnx_attention seed 5 training/{step}"), &named(&out), &golden.group(&format!("training/{step}")));
    }
    let count = variable(&layer, "rngs/dropout/rngs/count").to_vec::<u32>().unwrap();
    assert_eq!(count, [2], "one dropout draw per training call");
}

#[test]
fn a_padded_batch_gives_the_rows_of_the_nnx_module() {
    // nnx_attention is exported at batch sizes 2 and 4 and marked paddable: one row is padded to 2.
    let golden = Golden::load("nnx_attention");
    let mut layer = layer("nnx_attention");
    assert_eq!(layer.batch_sizes(Mode::Inference), [2, 4]);
    let x = golden.get("inputs/inputs");
    let row = Tensor::new(x.dtype(), [1].iter().chain(&x.shape()[1..]).copied().collect(), &x.as_bytes()[..x.num_bytes() / 2]).unwrap();
    let out = layer.call(PyTree::leaf(row), Mode::Inference).unwrap();
    let want = golden.get("inference/outputs");
    let want_row = Tensor::new(want.dtype(), [1].iter().chain(&want.shape()[1..]).copied().collect(), &want.as_bytes()[..want.num_bytes() / 2]).unwrap();
    assert_close("nnx_attention row 0 at batch 1", &named(&out), &[("outputs".into(), want_row)]);
}

#[test]
fn the_counter_counts_calls_in_both_modes() {
    let golden = Golden::load("nnx_counter");
    let mut layer = layer("nnx_counter");
    let x = inputs(&layer, &golden);
    let count = |l: &FlaxLayer| variable(l, "count/calls").to_vec::<i32>().unwrap()[0];
    assert_eq!(count(&layer), 1, "the exported instance had been called once");
    layer.call(&x, Mode::Inference).unwrap();
    assert_eq!(count(&layer), 2);
    layer.predict(&x).unwrap();
    assert_eq!(count(&layer), 2, "predict writes nothing back");
    layer.call(&x, Mode::Training).unwrap();
    assert_eq!(count(&layer), 4, "training adds 2");
    assert!(layer.batching().stateful());
}

#[test]
fn save_and_load_keep_the_rng_state() {
    let golden = Golden::load("nnx_mlp_bn_dropout");
    let mut layer = layer("nnx_mlp_bn_dropout");
    let x = inputs(&layer, &golden);
    layer.call(&x, Mode::Training).unwrap();
    let dir = tempfile::tempdir().unwrap();
    layer.save(dir.path()).unwrap();
    let mut loaded = FlaxLayer::builder(dir.path()).client(client()).load().unwrap();
    assert_eq!(loaded.variables().unwrap(), layer.variables().unwrap());
    assert_eq!(loaded.key().unwrap(), layer.key().unwrap());
    assert_eq!(layer.call(&x, Mode::Training).unwrap(), loaded.call(&x, Mode::Training).unwrap());
}

// ---- nnx_digits_train: the Trainer on an NNX module ----

type Named = BTreeMap<String, Tensor>;

fn digits() -> &'static Named {
    static DATA: OnceLock<Named> = OnceLock::new();
    DATA.get_or_init(|| read_safetensors(hlo("digits").join("data.safetensors")).unwrap().into_iter().collect())
}

fn trainer() -> Trainer {
    Trainer::builder(hlo("nnx_digits_train")).client(client()).build().unwrap()
}

#[test]
fn nnx_digits_first_steps_match_jax() {
    let golden = Golden::load("nnx_digits_train");
    let (x, y) = (&digits()["x_train"], &digits()["y_train"]);
    let want_loss = golden.get("train/loss").to_vec::<f32>().unwrap();
    let want_acc = golden.get("train/accuracy").to_vec::<f32>().unwrap();
    let per_epoch = x.shape()[0] / 32;
    let mut t = trainer();
    for (i, (&loss, &acc)) in want_loss.iter().zip(&want_acc).enumerate() {
        let idx = &epoch_batches(0, (i / per_epoch) as u64, x.shape()[0], 32)[i % per_epoch];
        let m = t.step(&Batch::new(pick_rows(x, idx), pick_rows(y, idx))).unwrap();
        let rel = (m.loss().unwrap() - loss as f64).abs() / loss as f64;
        assert!(rel <= 1e-5, "step {i}: loss {} vs JAX {loss}", m.loss().unwrap());
        assert_eq!(m.accuracy().unwrap() as f32, acc, "step {i}: accuracy");
    }
    let after = golden.group("train/after");
    let vars: Vec<(String, Tensor)> = t.layer().variables().unwrap();
    let want: Vec<(String, Tensor)> = after.into_iter().filter(|(n, _)| !n.starts_with("opt_state/")).collect();
    assert_close("nnx_digits_train variables after the golden steps", &vars, &want);
    assert_eq!(t.layer().key().unwrap().to_vec(), golden.get("train/key_after").to_vec::<u32>().unwrap());
}

#[test]
fn nnx_digits_trains_to_95_percent_test_accuracy() {
    let d = digits();
    let mut t = trainer();
    let mut reached = None;
    for epoch in 1..=10 {
        let train = t.fit_epoch(&d["x_train"], &d["y_train"]).unwrap();
        let test = t.evaluate(&d["x_test"], &d["y_test"]).unwrap();
        println!("epoch {epoch}: train {train:?} test {test:?}");
        if test.accuracy().unwrap() >= 0.95 {
            reached = Some(epoch);
            break;
        }
    }
    let epochs = reached.expect("the NNX MLP did not reach 95% test accuracy in 10 epochs");
    println!("reached 95% after {epochs} epochs");
    // The trained NNX variables serve inference as a FlaxLayer, RNG state and all.
    let layer = t.to_flax_layer().unwrap();
    assert_eq!(layer.variables().unwrap(), t.layer().variables().unwrap());
    let logits = layer.predict(PyTree::leaf(pick_rows(&d["x_test"], &(0..32).collect::<Vec<_>>()))).unwrap();
    assert_eq!(logits.as_tensor().unwrap().dtype(), DType::F32);
}
