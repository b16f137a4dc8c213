//! Crash consistency of saves: a child process saves a layer (or a trainer checkpoint) over
//! an older save and is killed (`abort`, as `kill -9` would stop it) at every durability
//! point in turn — every file write, fsync and rename of the save. After each crash the
//! directory must load as the old save or the new one, never a mix, and the next save must
//! clean up what the dead writer left.
//!
//! The kill points come from the crate's `fault-injection` feature (`FLAXLAYER_CRASH_AT=k`
//! aborts at the k-th durability point), which the dev-dependency on the crate turns on.

use std::path::{Path, PathBuf};
use std::process::Command;

use flaxlayer::tensor::read_safetensors;
use flaxlayer::{Batch, FlaxLayer, Mode, PyTree, Tensor, Trainer};

use crate::common::{client, copy_dir, hlo, leftovers};

const ROLE_ENV: &str = "FLAXLAYER_CRASH_TEST_ROLE";
const DIR_ENV: &str = "FLAXLAYER_CRASH_TEST_DIR";

fn inputs() -> PyTree {
    PyTree::leaf(Tensor::from_vec(vec![4, 12], (0..48).map(|i| i as f32 / 48.0).collect()).unwrap())
}

/// The digits batch the trainer's step takes (fixed rows, in order).
fn batch() -> Batch {
    let data: std::collections::BTreeMap<String, Tensor> =
        read_safetensors(hlo("digits").join("data.safetensors")).unwrap().into_iter().collect();
    let rows = |t: &Tensor| {
        let row = t.num_bytes() / t.shape()[0];
        let mut shape = t.shape().to_vec();
        shape[0] = 32;
        Tensor::new(t.dtype(), shape, &t.as_bytes()[..32 * row]).unwrap()
    };
    Batch::new(rows(&data["x_train"]), rows(&data["y_train"]))
}

/// The layer's next state: one training call on the old save.
fn advance_layer(dir: &Path) -> FlaxLayer {
    let mut layer = FlaxLayer::builder(dir).client(client()).load().unwrap();
    layer.call(inputs(), Mode::Training).unwrap();
    layer
}

/// The trainer's next state: one step on the old checkpoint.
fn advance_trainer(dir: &Path) -> Trainer {
    let mut t = Trainer::builder(dir).client(client()).load().unwrap();
    t.step(&batch()).unwrap();
    t
}

/// The child process: loads the old save, advances it and saves it over the old one, with
/// `FLAXLAYER_CRASH_AT` set by the parent. Ignored in a normal run: only its parent runs it.
#[test]
#[ignore = "run in a child process by the crash-point tests"]
fn child_saves_over_the_old_save() {
    let role = std::env::var(ROLE_ENV).expect("run by its parent test, which sets the role");
    let dir = std::env::var(DIR_ENV).expect("run by its parent test, which sets the directory");
    let dir = PathBuf::from(dir);
    match role.as_str() {
        "layer" => advance_layer(&dir).save(&dir).unwrap(),
        "trainer" => advance_trainer(&dir).save(&dir).unwrap(),
        other => panic!("unknown role {other}"),
    }
}

/// Runs the child with a crash at durability point `at`; returns whether it crashed.
fn run_child(role: &str, dir: &Path, at: usize) -> bool {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash::child_saves_over_the_old_save", "--include-ignored", "--nocapture", "--test-threads", "1"])
        .env(ROLE_ENV, role)
        .env(DIR_ENV, dir)
        .env("FLAXLAYER_CRASH_AT", at.to_string())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("1 passed"), "the child test did not run:\n{stdout}");
        return false;
    }
    assert!(stderr.contains("fault injection: crashing"), "the child failed without an injected crash:\n{stderr}");
    true
}

/// Kills the save at every durability point; `state` reads what a directory loads as.
fn every_crash_point<S: PartialEq + std::fmt::Debug>(role: &str, old_dir: &Path, new_state: &S, old_state: &S, state: impl Fn(&Path) -> S) {
    for (crashes, at) in (1..200).enumerate() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("save");
        copy_dir(old_dir, &dir);
        let crashed = run_child(role, &dir, at);
        let loaded = state(&dir);
        assert!(loaded == *old_state || loaded == *new_state, "{role}: after a crash at point {at}, the save is neither the old nor the new one");
        if !crashed {
            assert_eq!(loaded, *new_state, "{role}: a save that finished gives the new state");
            assert!(leftovers(root.path()).is_empty(), "{role}: a finished save leaves nothing behind");
            println!("{role}: {crashes} crash points, every one left the old or the new save");
            assert!(crashes >= 5, "{role}: only {crashes} durability points were exercised");
            return;
        }
        // The next save (by a live process) cleans up what the dead one left.
        if at % 4 == 1 {
            if role == "layer" {
                FlaxLayer::builder(&dir).client(client()).load().unwrap().save(&dir).unwrap();
            } else {
                Trainer::builder(&dir).client(client()).load().unwrap().save(&dir).unwrap();
            }
            assert!(leftovers(root.path()).is_empty(), "{role}: leftovers after a crash at {at} survived the next save: {:?}", leftovers(root.path()));
        }
    }
    panic!("{role}: the save never finished");
}

#[test]
fn a_killed_layer_save_leaves_the_old_layer_or_the_new_one() {
    let root = tempfile::tempdir().unwrap();
    let old = root.path().join("old");
    let mut layer = FlaxLayer::builder(hlo("dense_bn_dropout")).client(client()).build().unwrap();
    layer.call(inputs(), Mode::Training).unwrap();
    layer.save(&old).unwrap();
    let state = |dir: &Path| {
        let l = FlaxLayer::builder(dir).client(client()).load().expect("the directory loads");
        (l.variables().unwrap(), l.key().unwrap())
    };
    let old_state = state(&old);
    let new = advance_layer(&old);
    let new_state = (new.variables().unwrap(), new.key().unwrap());
    assert_ne!(old_state, new_state);
    every_crash_point("layer", &old, &new_state, &old_state, state);
}

#[test]
fn a_killed_checkpoint_leaves_the_previous_checkpoint_or_the_new_one() {
    let root = tempfile::tempdir().unwrap();
    let old = root.path().join("old");
    let mut t = Trainer::builder(hlo("digits_train")).client(client()).build().unwrap();
    t.step(&batch()).unwrap();
    t.save(&old).unwrap();
    let state = |dir: &Path| {
        let t = Trainer::builder(dir).client(client()).load().expect("the checkpoint loads");
        (t.layer().variables().unwrap(), t.opt_state().unwrap(), t.layer().key().unwrap(), t.steps())
    };
    let old_state = state(&old);
    let new = advance_trainer(&old);
    let new_state = (new.layer().variables().unwrap(), new.opt_state().unwrap(), new.layer().key().unwrap(), new.steps());
    assert_eq!(new_state.3, old_state.3 + 1);
    every_crash_point("trainer", &old, &new_state, &old_state, state);
}
