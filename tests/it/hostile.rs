//! Bundles are files from elsewhere: every truncated or corrupted file of a real bundle
//! (`hlo/dense_bn_dropout`, from `scripts/export_examples.py`) must give a typed error or a
//! working layer, never a panic.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use flaxlayer::{Mode, DType, FlaxLayer, PyTree, Tensor};

use crate::common::{client};

fn source() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("hlo/dense_bn_dropout")
}


/// Builds a layer on `dir` and runs one call of each mode; returns whether all of it worked.
fn try_bundle(dir: &Path) -> bool {
    let result = catch_unwind(AssertUnwindSafe(|| -> flaxlayer::Result<()> {
        let mut layer = FlaxLayer::builder(dir).variables_file(dir.join("variables.safetensors")).client(client()).build()?;
        let x = PyTree::leaf(Tensor::zeros(DType::F32, vec![4, 12])?);
        layer.call(&x, Mode::Inference)?;
        layer.call(&x, Mode::Training)?;
        Ok(())
    }));
    match result {
        Ok(r) => r.is_ok(),
        Err(_) => panic!("a corrupted bundle in {} made flaxlayer panic", dir.display()),
    }
}

fn copy_bundle(to: &Path) -> Vec<String> {
    let mut names = Vec::new();
    for e in std::fs::read_dir(source()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        names.push(e.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    names
}

#[test]
fn the_intact_copy_works() {
    let dir = tempfile::tempdir().unwrap();
    copy_bundle(dir.path());
    assert!(try_bundle(dir.path()));
}

#[test]
fn truncated_files_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    for name in copy_bundle(dir.path()) {
        if name == "golden.safetensors" {
            continue;
        }
        let path = dir.path().join(&name);
        let original = std::fs::read(&path).unwrap();
        // (Not the last few bytes: a flatbuffer may end in alignment padding, and a copy
        // without it is the same computation.)
        for cut in [0, 1, 8, original.len() / 3, original.len() / 2, original.len() - 8] {
            std::fs::write(&path, &original[..cut]).unwrap();
            assert!(!try_bundle(dir.path()), "{name} truncated to {cut} bytes was accepted");
        }
        std::fs::write(&path, &original).unwrap();
    }
}

#[test]
fn flipped_bytes_are_errors_or_harmless_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    for name in copy_bundle(dir.path()) {
        let path = dir.path().join(&name);
        let original = std::fs::read(&path).unwrap();
        // The flatbuffer header and tables of a .jaxexport (its StableHLO payload goes to the
        // plugin's own parser); the whole of the JSON and safetensors files.
        let span = if name.ends_with(".jaxexport") { 96.min(original.len()) } else { original.len() };
        let step = (span / 97).max(1);
        for pos in (0..span).step_by(step) {
            let mut bytes = original.clone();
            bytes[pos] ^= 0x5a;
            std::fs::write(&path, &bytes).unwrap();
            try_bundle(dir.path());
        }
        std::fs::write(&path, &original).unwrap();
    }
}

#[test]
fn a_manifest_that_disagrees_with_the_export_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    copy_bundle(dir.path());
    let path = dir.path().join("manifest.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut m: serde_json::Value = serde_json::from_str(&text).unwrap();
    // One input slot too many in the inference computation.
    let args = m.pointer_mut("/methods/__call__/inference/0/args").unwrap().as_array_mut().unwrap();
    let extra = args.last().unwrap().clone();
    args.push(extra);
    std::fs::write(&path, serde_json::to_vec(&m).unwrap()).unwrap();
    let err = FlaxLayer::builder(dir.path()).client(client()).build().unwrap_err();
    assert!(matches!(err, flaxlayer::Error::InvalidFormat { .. }), "{err}");
}

#[test]
fn files_that_are_devices_or_fifos_are_refused_not_read_forever() {
    // A computation that is a symlink to /dev/zero would be read until memory runs out, and a
    // FIFO would block: both are refused as not regular files.
    let dir = tempfile::tempdir().unwrap();
    copy_bundle(dir.path());
    let victim = dir.path().join("init.jaxexport");
    std::fs::remove_file(&victim).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &victim).unwrap();
    let err = flaxlayer::Bundle::open(dir.path()).unwrap_err();
    assert!(matches!(&err, flaxlayer::Error::InvalidArgument { reason, .. } if reason.contains("not a regular file")), "{err}");
    std::fs::remove_file(&victim).unwrap();
    if std::process::Command::new("mkfifo").arg(&victim).status().map(|s| s.success()).unwrap_or(false) {
        let err = flaxlayer::Bundle::open(dir.path()).unwrap_err();
        assert!(matches!(&err, flaxlayer::Error::InvalidArgument { .. }), "{err}");
    }
}
