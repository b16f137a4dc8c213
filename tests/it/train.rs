//! `Trainer` against JAX: `hlo/digits_train` (written by `scripts/export_examples.py` with
//! `flaxlayer_export.export_train_step`) carries golden data of the same training loop run in plain JAX,
//! on `hlo/digits/data.safetensors` (`scripts/make_digits.py`). See docs/training.md.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use flaxlayer::layer::{epoch_batches, epoch_permutation};
use flaxlayer::tensor::read_safetensors;
use flaxlayer::{Batch, Bundle, DType, Error, FlaxLayer, PyTree, Tensor, Trainer};

use crate::common::{client, hlo, pick_rows};

const GOLDEN_STEPS: usize = 20;



fn bundle() -> Arc<Bundle> {
    static BUNDLE: OnceLock<Arc<Bundle>> = OnceLock::new();
    BUNDLE.get_or_init(|| Arc::new(Bundle::open(hlo("digits_train")).unwrap())).clone()
}

fn trainer() -> Trainer {
    Trainer::builder(bundle()).client(client()).build().unwrap()
}

type Named = BTreeMap<String, Tensor>;

fn load(path: PathBuf) -> Named {
    read_safetensors(path).unwrap().into_iter().collect()
}

fn data() -> &'static Named {
    static DATA: OnceLock<Named> = OnceLock::new();
    DATA.get_or_init(|| load(hlo("digits").join("data.safetensors")))
}

fn golden() -> &'static Named {
    static GOLDEN: OnceLock<Named> = OnceLock::new();
    GOLDEN.get_or_init(|| load(hlo("digits_train").join("golden.safetensors")))
}

/// Batch `i` (0-based, over epochs) of the documented order for seed 0.
fn nth_batch(i: usize) -> Batch {
    let (x, y) = (&data()["x_train"], &data()["y_train"]);
    let n = x.shape()[0];
    let per_epoch = n / 32;
    let idx = &epoch_batches(0, (i / per_epoch) as u64, n, 32)[i % per_epoch];
    Batch::new(pick_rows(x, idx), pick_rows(y, idx))
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-30)
}

/// Everything a failed step must leave as it was.
type Snapshot = (Vec<(String, Tensor)>, Vec<(String, Tensor)>, [u32; 2], u64);

fn snapshot(t: &Trainer) -> Snapshot {
    (t.layer().variables().unwrap(), t.opt_state().unwrap(), t.layer().key().unwrap(), t.steps())
}

#[test]
fn batch_order_equals_the_python_one() {
    let mut cases = 0;
    for (name, t) in golden() {
        let Some(rest) = name.strip_prefix("batch_order/") else { continue };
        let parts: Vec<u64> = rest.split('/').map(|p| p.parse().unwrap()).collect();
        let (seed, epoch, n) = (parts[0], parts[1], parts[2] as usize);
        let want: Vec<usize> = t.to_vec::<i64>().unwrap().into_iter().map(|v| v as usize).collect();
        assert_eq!(epoch_permutation(seed, epoch, n), want, "{name}");
        cases += 1;
    }
    assert!(cases >= 4, "golden has {cases} batch_order cases");
}

#[test]
fn first_steps_match_jax_golden() {
    let mut t = trainer();
    assert_eq!(t.batch_size(), 32);
    let want_loss = golden()["train/loss"].to_vec::<f32>().unwrap();
    let want_acc = golden()["train/accuracy"].to_vec::<f32>().unwrap();
    assert_eq!(want_loss.len(), GOLDEN_STEPS);
    let mut worst = 0f64;
    for i in 0..GOLDEN_STEPS {
        let m = t.step(&nth_batch(i)).unwrap();
        let loss = m.loss().unwrap();
        let r = rel(loss, want_loss[i] as f64);
        worst = worst.max(r);
        assert!(r <= 1e-5, "step {i}: loss {loss} vs JAX {} (rel {r:e})", want_loss[i]);
        assert_eq!(m.accuracy().unwrap() as f32, want_acc[i], "step {i}: accuracy");
    }
    println!("20 step losses: max rel diff vs JAX {worst:e}");
    assert_eq!(t.steps(), GOLDEN_STEPS as u64);

    let mut worst_var = 0f64;
    for (name, got) in t.layer().variables().unwrap() {
        let want = &golden()[&format!("train/after/{name}")];
        let err = got.max_abs_diff(want).unwrap();
        assert!(err <= 1e-5, "{name} after {GOLDEN_STEPS} steps: max abs diff {err:e}");
        worst_var = worst_var.max(err);
    }
    println!("variables after 20 steps: max abs diff vs JAX {worst_var:e}");
    assert_eq!(t.layer().key().unwrap().to_vec(), golden()["train/key_after"].to_vec::<u32>().unwrap());

    let m = t.evaluate(&data()["x_test"], &data()["y_test"]).unwrap();
    let g = |k: &str| golden()[k].to_vec::<f64>().unwrap()[0];
    assert_eq!(m.get("count").unwrap(), g("train/eval/count"));
    assert!(rel(m.loss().unwrap(), g("train/eval/loss")) <= 1e-5, "eval loss {m:?}");
    assert!((m.accuracy().unwrap() - g("train/eval/accuracy")).abs() < 1e-9, "eval accuracy {m:?}");
    println!("eval after 20 steps: {m:?}");
}

#[test]
fn save_load_resumes_bit_exactly() {
    let (x, y) = (&data()["x_train"], &data()["y_train"]);
    // Uninterrupted: two epochs.
    let mut a = trainer();
    let mut losses_a = Vec::new();
    for _ in 0..2 {
        a.fit_epoch_with(x, y, |m| losses_a.push(m.loss().unwrap())).unwrap();
    }
    // Interrupted mid-epoch 0: k steps by hand in the documented order, save, load, go on.
    let k = 30;
    let mut b = trainer();
    let mut losses_b: Vec<f64> = (0..k).map(|i| b.step(&nth_batch(i)).unwrap().loss().unwrap()).collect();
    let dir = tempfile::tempdir().unwrap();
    b.save(dir.path()).unwrap();
    let saved = snapshot(&b);
    drop(b);
    let mut c = Trainer::builder(dir.path()).client(client()).load().unwrap();
    assert_eq!(snapshot(&c), saved, "load restores variables, opt_state, key and step");
    assert_eq!(c.epoch(x.shape()[0]), 0);
    for _ in 0..2 {
        c.fit_epoch_with(x, y, |m| losses_b.push(m.loss().unwrap())).unwrap();
    }
    assert_eq!(losses_a.len(), 2 * 44);
    assert_eq!(losses_b, losses_a, "losses differ after resuming");
    assert_eq!(snapshot(&c), snapshot(&a), "variables, opt_state, key or step differ after resuming");
    assert!(crate::common::leftovers(dir.path()).is_empty(), "temp files left: {:?}", crate::common::leftovers(dir.path()));
    // The checkpoint is also a FlaxLayer bundle, which starts from the trained variables.
    let layer = FlaxLayer::builder(dir.path()).client(client()).build().unwrap();
    assert_eq!(layer.variables().unwrap(), saved.0);
}

#[test]
fn torn_or_corrupt_checkpoints_are_refused() {
    let mut t = trainer();
    t.step(&nth_batch(0)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    t.save(dir.path()).unwrap();
    let opt = std::fs::read(dir.path().join("opt_state.safetensors")).unwrap();
    t.step(&nth_batch(1)).unwrap();
    t.save(dir.path()).unwrap();
    // opt_state from step 1 beside trainer.json of step 2: files of two saves.
    std::fs::write(dir.path().join("opt_state.safetensors"), &opt).unwrap();
    let err = Trainer::builder(dir.path()).client(client()).load().unwrap_err();
    assert!(matches!(&err, Error::InvalidFormat { reason, .. } if reason.contains("two saves are mixed")), "{err}");
    std::fs::write(dir.path().join("trainer.json"), b"{").unwrap();
    assert!(matches!(Trainer::builder(dir.path()).client(client()).load(), Err(Error::Json { .. })));
}

#[test]
fn a_bad_batch_is_a_typed_error_and_changes_nothing() {
    let mut t = trainer();
    t.step(&nth_batch(0)).unwrap();
    let before = snapshot(&t);
    let good = nth_batch(1);
    let (x, y) = (good.leaves()[0].1.clone(), good.leaves()[1].1.clone());

    let err = t.step(&Batch::new(Tensor::zeros(DType::F32, vec![32, 63]).unwrap(), y.clone())).unwrap_err();
    assert!(
        matches!(&err, Error::ShapeMismatch { what, expected, got } if what.contains("\"x\"") && expected == &[32, 64] && got == &[32, 63]),
        "{err}"
    );
    let err = t.step(&Batch::new(pick_rows(&x, &(0..16).collect::<Vec<_>>()), pick_rows(&y, &(0..16).collect::<Vec<_>>()))).unwrap_err();
    assert!(matches!(&err, Error::ShapeMismatch { what, .. } if what.contains("\"x\"") && what.contains("32")), "{err}");
    let err = t.step(&Batch::new(x.clone(), Tensor::zeros(DType::I64, vec![32]).unwrap())).unwrap_err();
    assert!(
        matches!(&err, Error::DTypeMismatch { what, expected, got } if what.contains("\"y\"") && *expected == DType::I32 && *got == DType::I64),
        "{err}"
    );
    let err = t.step(&Batch::new(x.clone(), Tensor::zeros(DType::F32, vec![32]).unwrap())).unwrap_err();
    assert!(matches!(&err, Error::DTypeMismatch { what, .. } if what.contains("\"y\"")), "{err}");
    let err = t.step(&Batch::from_named(vec![("x".into(), x.clone())])).unwrap_err();
    assert!(matches!(&err, Error::NotFound { name, .. } if name == "y"), "{err}");
    let mut extra = good.leaves().to_vec();
    extra.push(("z".into(), Tensor::scalar(1f32)));
    let err = t.step(&Batch::from_named(extra)).unwrap_err();
    assert!(matches!(&err, Error::NotFound { name, .. } if name == "z"), "{err}");
    let err = t.evaluate(&Tensor::zeros(DType::F32, vec![5, 8]).unwrap(), &Tensor::zeros(DType::I32, vec![5]).unwrap()).unwrap_err();
    assert!(matches!(&err, Error::ShapeMismatch { what, .. } if what.contains("\"x\"")), "{err}");
    let err = t.fit_epoch(&x, &Tensor::zeros(DType::I32, vec![31]).unwrap()).unwrap_err();
    assert!(matches!(&err, Error::InvalidArgument { .. }), "{err}");
    assert_eq!(snapshot(&t), before, "a failed step changed the trainer");

    // And it still trains exactly as if nothing had happened.
    let mut clean = trainer();
    clean.step(&nth_batch(0)).unwrap();
    assert_eq!(t.step(&good).unwrap(), clean.step(&good).unwrap());
    assert_eq!(snapshot(&t), snapshot(&clean));
}

#[test]
fn a_bundle_without_train_section_is_refused() {
    let err = Trainer::builder(hlo("mlp")).client(client()).build().unwrap_err();
    assert!(matches!(&err, Error::InvalidArgument { reason, .. } if reason.contains("train section")), "{err}");
}

#[test]
fn trains_digits_to_95_percent_test_accuracy() {
    let d = data();
    let mut t = trainer();
    let started = std::time::Instant::now();
    let mut reached = None;
    for epoch in 1..=10 {
        let train = t.fit_epoch(&d["x_train"], &d["y_train"]).unwrap();
        let test = t.evaluate(&d["x_test"], &d["y_test"]).unwrap();
        println!("epoch {epoch}: train {train:?} test {test:?}");
        if test.accuracy().unwrap() >= 0.95 {
            reached = Some((epoch, test.accuracy().unwrap()));
            break;
        }
    }
    let (epochs, acc) = reached.expect("did not reach 95% test accuracy in 10 epochs");
    println!("reached test accuracy {acc:.4} after {epochs} epochs in {:.2?}", started.elapsed());

    // The trained variables serve inference through a FlaxLayer: the same predictions.
    let layer = t.to_flax_layer().unwrap();
    assert_eq!(layer.variables().unwrap(), t.layer().variables().unwrap());
    let (x, y) = (&d["x_test"], &d["y_test"]);
    let idx: Vec<usize> = (0..320).collect();
    let mut correct = 0;
    for chunk in idx.chunks(32) {
        let logits = layer.predict(PyTree::leaf(pick_rows(x, chunk))).unwrap();
        let logits = logits.as_tensor().unwrap().to_vec::<f32>().unwrap();
        let labels = pick_rows(y, chunk).to_vec::<i32>().unwrap();
        for (row, &label) in logits.chunks(10).zip(&labels) {
            let best = row.iter().enumerate().fold(0, |b, (i, &v)| if v > row[b] { i } else { b });
            correct += usize::from(best as i32 == label);
        }
    }
    let m = t.evaluate(&pick_rows(x, &idx), &pick_rows(y, &idx)).unwrap();
    assert_eq!(correct as f64, (m.accuracy().unwrap() * 320.0).round(), "FlaxLayer vs Trainer predictions");
}

#[test]
fn cli_train_json() {
    let dir = tempfile::tempdir().unwrap();
    let save = dir.path().join("ckpt");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flaxlayer"))
        .args(["train", hlo("digits_train").to_str().unwrap(), "--data"])
        .arg(hlo("digits").join("data.safetensors"))
        .args(["--epochs", "2", "--batch-size", "32", "--json", "--save"])
        .arg(&save)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "stdout {stdout}\nstderr {}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["epoch"], (i + 1) as u64, "{l}");
        for k in ["loss", "train_accuracy", "test_accuracy"] {
            assert!(l[k].as_f64().is_some(), "{k} missing in {l}");
        }
    }
    assert!(lines[1]["loss"].as_f64() < lines[0]["loss"].as_f64());
    assert!(save.join("trainer.json").is_file());

    // --resume continues at epoch 3, as one more epoch of an uninterrupted run would.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flaxlayer"))
        .args(["train", hlo("digits_train").to_str().unwrap(), "--data"])
        .arg(hlo("digits").join("data.safetensors"))
        .args(["--epochs", "1", "--batch-size", "32", "--json", "--resume"])
        .arg(&save)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let l: serde_json::Value = serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert_eq!(l["epoch"], 3);

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flaxlayer"))
        .args(["train", hlo("digits_train").to_str().unwrap(), "--data"])
        .arg(hlo("digits").join("data.safetensors"))
        .args(["--epochs", "1", "--batch-size", "16"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("--batch-size 16") && stderr.contains("32"), "{stderr}");
}
