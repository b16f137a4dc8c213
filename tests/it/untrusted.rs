//! The untrusted-bundle mode: computations compile in a child process with a time limit. The
//! child is this test binary, run again as the library does it for any program: its
//! `compile_worker` test calls `maybe_run_worker` (no `flaxlayer` CLI involved). Payloads that crash or hang XLA's compiler (fixtures
//! from `tests/fixtures/hostile/make_hostile_bundles.py`, found by fuzzing) must be typed
//! errors here, within the limit, and this process must go on working.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use flaxlayer::layer::cache::CacheSetting;
use flaxlayer::layer::isolate::Isolation;
use flaxlayer::{DType, Error, FlaxLayer, Mode, PyTree, Tensor};

use crate::common::{hlo, client};


fn hostile(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hostile").join(name)
}


/// The current executable (this test binary) as the worker, routed to [`compile_worker`].
fn isolation(timeout: Duration) -> Isolation {
    let args = ["--exact", "--ignored", "--nocapture", "untrusted::compile_worker", "--"];
    Isolation { worker: None, worker_args: args.map(String::from).to_vec(), timeout }
}

/// The worker's entry: what a program's `main` does first. Run only by `isolation`'s child
/// processes (in which it compiles and exits); without a worker request it returns at once.
#[test]
#[ignore = "the compile worker, run by the untrusted tests' child processes"]
fn compile_worker() {
    flaxlayer::layer::isolate::maybe_run_worker();
}

fn x() -> PyTree {
    PyTree::leaf(Tensor::zeros(DType::F32, vec![1, 64]).unwrap())
}

/// Builds a layer on `dir` with isolated compiles and no cache (so every compile happens),
/// and makes one inference call.
fn call_isolated(dir: &Path, timeout: Duration) -> flaxlayer::Result<PyTree> {
    let mut layer = FlaxLayer::builder(dir).untrusted(isolation(timeout)).compile_cache(CacheSetting::Off).client(client()).build()?;
    layer.call(x(), Mode::Inference)
}

#[test]
fn an_isolated_compile_gives_the_same_outputs() {
    let cache = tempfile::tempdir().unwrap();
    let mut trusted = FlaxLayer::builder(hlo("mlp")).compile_cache(CacheSetting::Off).client(client()).build().unwrap();
    let mut isolated = FlaxLayer::builder(hlo("mlp"))
        .untrusted(isolation(Duration::from_secs(120)))
        .compile_cache(CacheSetting::Dir(cache.path().to_path_buf()))
        .client(client())
        .build()
        .unwrap();
    assert_eq!(isolated.call(x(), Mode::Inference).unwrap(), trusted.call(x(), Mode::Inference).unwrap());
    assert_eq!(std::fs::read_dir(cache.path()).unwrap().count(), 1, "the worker's executable went into the compile cache");
}

#[test]
fn compiler_crashes_are_typed_errors() {
    for name in ["crash_double_free", "crash_foreign_exception"] {
        let err = call_isolated(&hostile(name), Duration::from_secs(120)).unwrap_err();
        assert!(matches!(&err, Error::IsolatedCompile { reason, .. } if reason.contains("crashed")), "{name}: {err}");
        println!("{name}: {err}");
    }
    // This process is unharmed: a good bundle still runs.
    assert!(call_isolated(&hlo("mlp"), Duration::from_secs(120)).is_ok());
}

#[test]
fn a_hanging_compile_is_killed_at_the_time_limit() {
    let limit = Duration::from_secs(5);
    let t = Instant::now();
    let err = call_isolated(&hostile("hang"), limit).unwrap_err();
    let took = t.elapsed();
    assert!(matches!(&err, Error::IsolatedCompile { reason, .. } if reason.contains("longer than")), "{err}");
    // The limit applies to the hanging compile (init compiles first, quickly).
    assert!(took < limit + Duration::from_secs(60), "took {took:?}");
}

#[test]
fn a_missing_worker_is_a_clear_error() {
    let iso = Isolation { worker: Some(PathBuf::from("/nonexistent/flaxlayer")), timeout: Duration::from_secs(5), ..Isolation::default() };
    let err = FlaxLayer::builder(hlo("mlp")).untrusted(iso).compile_cache(CacheSetting::Off).client(client()).build().and_then(|mut l| l.call(x(), Mode::Inference)).unwrap_err();
    assert!(matches!(&err, Error::IsolatedCompile { reason, .. } if reason.contains("cannot start")), "{err}");
}

#[test]
fn a_worker_that_does_not_call_the_hook_is_a_clear_error() {
    // This test binary, not routed to `compile_worker`: it does not run the worker, and the
    // library says what is missing instead of hanging or loading garbage.
    let iso = Isolation { worker: None, worker_args: vec![], timeout: Duration::from_secs(60) };
    let err = FlaxLayer::builder(hlo("mlp")).untrusted(iso).compile_cache(CacheSetting::Off).client(client()).build().and_then(|mut l| l.call(x(), Mode::Inference)).unwrap_err();
    assert!(matches!(&err, Error::IsolatedCompile { reason, .. } if reason.contains("maybe_run_worker")), "{err}");
}

#[test]
fn the_cli_is_a_worker_too() {
    // `Isolation::worker` naming another binary that calls the hook: the `flaxlayer` CLI.
    let iso = Isolation { worker: Some(PathBuf::from(env!("CARGO_BIN_EXE_flaxlayer"))), ..Isolation::default() };
    let mut layer = FlaxLayer::builder(hlo("mlp")).untrusted(iso).compile_cache(CacheSetting::Off).client(client()).build().unwrap();
    let mut trusted = FlaxLayer::builder(hlo("mlp")).compile_cache(CacheSetting::Off).client(client()).build().unwrap();
    assert_eq!(layer.call(x(), Mode::Inference).unwrap(), trusted.call(x(), Mode::Inference).unwrap());
}
