//! Seeded mutation tests of every file flaxlayer reads from elsewhere: `manifest.json`,
//! `variables.safetensors`, the `.jaxexport` framing, `layer.json` and `trainer.json`. Each
//! mutant must load as a typed error or as a working layer or trainer — never a panic, never
//! an abort (an abort kills this test process). The seed and the iteration counts are fixed,
//! so a run is reproducible; the counts are printed (run with `--nocapture`).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use flaxlayer::{Batch, DType, FlaxLayer, Mode, PyTree, Tensor, Trainer};
use serde_json::Value;

use crate::common::{client, copy_dir, hlo};

/// Mutants per (file, kind of mutation).
const ITERATIONS: usize = 60;

/// SplitMix64: a small, fixed generator for reproducible mutants.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// A byte-level mutant: a flipped, replaced, deleted or duplicated span, or a truncation,
/// within the first `span` bytes.
fn mutate_bytes(bytes: &[u8], span: usize, rng: &mut Rng) -> Vec<u8> {
    let mut b = bytes.to_vec();
    let span = span.min(b.len()).max(1);
    let at = rng.below(span);
    match rng.below(5) {
        0 => b[at] ^= 1 << rng.below(8),
        1 => b[at] = rng.next() as u8,
        2 => {
            let end = (at + 1 + rng.below(16)).min(b.len());
            b.drain(at..end);
        }
        3 => {
            let end = (at + 1 + rng.below(16)).min(b.len());
            let dup = b[at..end].to_vec();
            b.splice(at..at, dup);
        }
        _ => b.truncate(at),
    }
    b
}

/// A JSON-level mutant: one value somewhere in the document replaced by a hostile one.
fn mutate_json(bytes: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(bytes).unwrap();
    let mut paths = Vec::new();
    collect_paths(&v, String::new(), &mut paths);
    let target = paths[rng.below(paths.len())].clone();
    let hostile = [
        Value::Null,
        Value::from(-1),
        Value::from(u64::MAX),
        Value::from(1e308),
        Value::from(i64::MIN),
        Value::from(""),
        Value::from("../../etc/passwd"),
        Value::from("/dev/zero"),
        Value::from("x".repeat(10_000)),
        Value::Array(vec![]),
        Value::Array(vec![Value::from(1u64 << 40), Value::from(1u64 << 40)]),
        serde_json::json!({}),
        Value::Bool(true),
    ];
    *v.pointer_mut(&target).unwrap() = hostile[rng.below(hostile.len())].clone();
    serde_json::to_vec(&v).unwrap()
}

fn collect_paths(v: &Value, at: String, out: &mut Vec<String>) {
    out.push(at.clone());
    match v {
        Value::Object(m) => m.iter().for_each(|(k, c)| collect_paths(c, format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")), out)),
        Value::Array(a) => a.iter().enumerate().for_each(|(i, c)| collect_paths(c, format!("{at}/{i}"), out)),
        _ => {}
    }
}

/// Loads a saved layer and calls it in both modes; `Ok` when everything worked.
fn try_layer(dir: &Path) -> flaxlayer::Result<()> {
    let mut layer = FlaxLayer::builder(dir).client(client()).load()?;
    let x = PyTree::leaf(Tensor::zeros(DType::F32, vec![4, 12])?);
    layer.call(&x, Mode::Inference)?;
    layer.call(&x, Mode::Training)?;
    Ok(())
}

/// Loads a checkpoint and takes one step.
fn try_trainer(dir: &Path) -> flaxlayer::Result<()> {
    let mut t = Trainer::builder(dir).client(client()).load()?;
    let x = Tensor::zeros(DType::F32, vec![32, 64])?;
    let y = Tensor::zeros(DType::I32, vec![32])?;
    t.step(&Batch::new(x, y))?;
    Ok(())
}

/// Mutates `file` of the save in `original` `ITERATIONS` times each way and loads every
/// mutant with `load`; returns (mutants, typed errors).
fn campaign(original: &Path, file: &str, json: bool, span: usize, seed: u64, load: impl Fn(&Path) -> flaxlayer::Result<()>) -> (usize, usize) {
    let mut rng = Rng(seed);
    let bytes = std::fs::read(original.join(file)).unwrap();
    let (mut runs, mut errors) = (0, 0);
    let kinds = if json { 2 } else { 1 };
    for i in 0..ITERATIONS * kinds {
        let mutant = if json && i % 2 == 0 { mutate_json(&bytes, &mut rng) } else { mutate_bytes(&bytes, span, &mut rng) };
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("save");
        copy_dir(original, &dir);
        std::fs::write(dir.join(file), &mutant).unwrap();
        let result = catch_unwind(AssertUnwindSafe(|| load(&dir)));
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                errors += 1;
                assert!(!e.to_string().is_empty());
            }
            Err(_) => panic!("{file}: mutant {i} (seed {seed}) made flaxlayer panic"),
        }
        runs += 1;
    }
    println!("{file}: {runs} mutants, {errors} typed errors, {} loaded and ran", runs - errors);
    (runs, errors)
}

#[test]
fn mutated_layer_files_give_typed_errors() {
    let root = tempfile::tempdir().unwrap();
    let saved = root.path().join("layer");
    FlaxLayer::builder(hlo("dense_bn_dropout")).client(client()).build().unwrap().save(&saved).unwrap();
    let mut total = 0;
    for (i, (file, json, span)) in [
        ("manifest.json", true, usize::MAX),
        ("layer.json", true, usize::MAX),
        ("variables.safetensors", false, usize::MAX),
        ("init.jaxexport", false, 128),
        ("__call__.inference.b4.jaxexport", false, 128),
    ]
    .into_iter()
    .enumerate()
    {
        let (runs, errors) = campaign(&saved, file, json, span, 1000 + i as u64, try_layer);
        assert!(errors > 0, "{file}: no mutant was refused");
        total += runs;
    }
    println!("layer files: {total} mutants in all");
}

#[test]
fn mutated_checkpoint_files_give_typed_errors() {
    let root = tempfile::tempdir().unwrap();
    let saved = root.path().join("checkpoint");
    Trainer::builder(hlo("digits_train")).client(client()).build().unwrap().save(&saved).unwrap();
    let mut total = 0;
    for (i, (file, json, span)) in
        [("trainer.json", true, usize::MAX), ("opt_state.safetensors", false, 4096)].into_iter().enumerate()
    {
        let (runs, errors) = campaign(&saved, file, json, span, 2000 + i as u64, try_trainer);
        assert!(errors > 0, "{file}: no mutant was refused");
        total += runs;
    }
    println!("checkpoint files: {total} mutants in all");
}

#[test]
fn a_step_count_at_the_end_of_u64_is_an_error_not_a_wrap() {
    let root = tempfile::tempdir().unwrap();
    let saved = root.path().join("checkpoint");
    Trainer::builder(hlo("digits_train")).client(client()).build().unwrap().save(&saved).unwrap();
    let path = saved.join("trainer.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    v["steps"] = Value::from(u64::MAX);
    std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
    let mut t = Trainer::builder(&saved).client(client()).load().unwrap();
    let before = t.layer().variables().unwrap();
    let err = try_trainer_step(&mut t).unwrap_err();
    assert!(matches!(&err, flaxlayer::Error::InvalidArgument { reason, .. } if reason.contains("overflows")), "{err}");
    assert_eq!(t.steps(), u64::MAX);
    assert_eq!(t.layer().variables().unwrap(), before, "a refused step changes nothing");
}

fn try_trainer_step(t: &mut Trainer) -> flaxlayer::Result<flaxlayer::TrainMetrics> {
    t.step(&Batch::new(Tensor::zeros(DType::F32, vec![32, 64])?, Tensor::zeros(DType::I32, vec![32])?))
}

#[test]
fn a_saved_layer_never_loads_the_plugin_its_json_names() {
    // layer.json and trainer.json of older versions named the plugin to dlopen; a file from
    // elsewhere must not choose native code. Point it at a file that is not a plugin at all:
    // if it were loaded, the load would fail.
    let root = tempfile::tempdir().unwrap();
    let saved = root.path().join("layer");
    FlaxLayer::builder(hlo("mlp")).client(client()).build().unwrap().save(&saved).unwrap();
    let evil = root.path().join("evil.so");
    std::fs::write(&evil, b"not a shared library").unwrap();
    let path = saved.join("layer.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    v["config"]["plugin"] = Value::from(evil.to_str().unwrap());
    v["plugin"] = Value::from(evil.to_str().unwrap());
    std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
    let layer = FlaxLayer::load(&saved).expect("loads on the environment's plugin");
    assert_ne!(layer.client().plugin().path(), evil.as_path());
}
