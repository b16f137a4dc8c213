//! A bundle's weights fail closed: a bundle whose manifest says its variables were bundled
//! (given, init, an NNX module's state) refuses to load when `variables.safetensors` is
//! missing, not a regular file, or not what the manifest lists; init from the seed runs only
//! for an init-only bundle or when asked (`init_variables()`). And a bundle serialized by a
//! JAX newer than the reader knows is refused with the JAX version and what to do.

use std::path::Path;

use crate::common::golden::{assert_close, Golden};
use crate::common::{client, copy_dir, hlo};
use flaxlayer::{Bundle, Error, FlaxLayer, Mode};

fn build(dir: &Path) -> flaxlayer::Result<FlaxLayer> {
    FlaxLayer::builder(dir).client(client()).build()
}

/// `name`'s bundle copied into a temporary directory.
fn copy(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&hlo(name), dir.path());
    dir
}

fn variables_error(r: flaxlayer::Result<FlaxLayer>) -> (String, String) {
    match r {
        Err(Error::BundleVariables { origin, reason, path }) => {
            assert!(path.ends_with("variables.safetensors"), "{path:?}");
            (origin, reason)
        }
        Err(e) => panic!("expected Error::BundleVariables, got {e}"),
        Ok(_) => panic!("expected Error::BundleVariables, the layer was built"),
    }
}

fn inference(layer: &mut FlaxLayer, golden: &Golden) -> Vec<(String, flaxlayer::Tensor)> {
    let x = golden.get("inputs/inputs").clone();
    crate::common::golden::named(&layer.call(&x, Mode::Inference).unwrap())
}

#[test]
fn given_variables_missing_or_not_a_file_refuse_to_load() {
    let dir = copy("pretrained_mlp");
    let file = dir.path().join("variables.safetensors");
    std::fs::remove_file(&file).unwrap();
    let (origin, reason) = variables_error(build(dir.path()));
    assert_eq!((origin.as_str(), reason.as_str()), ("given", "is missing"));
    let text = build(dir.path()).err().unwrap().to_string();
    assert!(text.contains("variables_origin \"given\"") && text.contains("restore the file"), "{text}");
    assert!(matches!(Bundle::open(dir.path()).unwrap().variables(), Err(Error::BundleVariables { .. })));

    // A symlink to /dev/zero (reading it would never end) and a directory.
    std::os::unix::fs::symlink("/dev/zero", &file).unwrap();
    let (_, reason) = variables_error(build(dir.path()));
    assert!(reason.contains("not a regular file"), "{reason}");
    std::fs::remove_file(&file).unwrap();
    std::fs::create_dir(&file).unwrap();
    let (_, reason) = variables_error(build(dir.path()));
    assert!(reason.contains("a directory"), "{reason}");
    std::fs::remove_dir(&file).unwrap();

    // Asked for, init runs: module.init's variables under the seed (golden init/...), not
    // the given ones.
    let golden = Golden::load("pretrained_mlp");
    let layer = FlaxLayer::builder(dir.path()).init_variables().client(client()).build().unwrap();
    assert_close("init under the seed", &layer.variables().unwrap(), &golden.group("init"));
}

#[test]
fn variables_that_do_not_match_the_manifest_refuse_to_load() {
    let dir = copy("pretrained_mlp");
    let file = dir.path().join("variables.safetensors");
    // Another model's variables (other names and shapes), then garbage.
    std::fs::copy(hlo("dense_bn_dropout").join("variables.safetensors"), &file).unwrap();
    let (_, reason) = variables_error(build(dir.path()));
    assert!(reason.starts_with("does not hold the variables the manifest lists"), "{reason}");
    std::fs::write(&file, b"garbage").unwrap();
    let (_, reason) = variables_error(build(dir.path()));
    assert!(reason.starts_with("does not hold the variables the manifest lists"), "{reason}");
    // The bundle's own file loads and gives the golden outputs.
    std::fs::copy(hlo("pretrained_mlp").join("variables.safetensors"), &file).unwrap();
    let golden = Golden::load("pretrained_mlp");
    assert_close("pretrained_mlp", &inference(&mut build(dir.path()).unwrap(), &golden), &golden.group("inference"));
}

#[test]
fn init_variables_missing_refuse_too_and_say_how_to_init() {
    let dir = copy("mlp");
    std::fs::remove_file(dir.path().join("variables.safetensors")).unwrap();
    let (origin, _) = variables_error(build(dir.path()));
    assert_eq!(origin, "init");
    let text = build(dir.path()).err().unwrap().to_string();
    assert!(text.contains("init_variables()") && text.contains("--init"), "{text}");
    // The CLI refuses too (rc 1, the reason on stderr), and runs init when told (--init).
    let x = dir.path().join("x.safetensors");
    let golden = Golden::load("mlp");
    flaxlayer::tensor::write_safetensors(&x, &[("inputs", golden.get("inputs/inputs"))], None).unwrap();
    let run = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_flaxlayer"))
            .arg("run")
            .arg(dir.path())
            .args(["--input", x.to_str().unwrap(), "--output", dir.path().join("y.safetensors").to_str().unwrap()])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = run(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("is missing"), "{stderr}");
    assert!(run(&["--init"]).status.success());
}

#[test]
fn an_init_only_bundle_starts_from_init_under_the_seed() {
    // What export_flax(..., bundle_variables=False) writes: no variables file, the manifest
    // says "init-only".
    let dir = copy("mlp");
    std::fs::remove_file(dir.path().join("variables.safetensors")).unwrap();
    let manifest = std::fs::read_to_string(dir.path().join("manifest.json")).unwrap();
    assert!(manifest.contains("\"variables_origin\": \"init\""));
    std::fs::write(dir.path().join("manifest.json"), manifest.replace("\"variables_origin\": \"init\"", "\"variables_origin\": \"init-only\"")).unwrap();
    let bundle = Bundle::open(dir.path()).unwrap();
    assert!(!bundle.ships_variables() && bundle.variables_file().unwrap().is_none());
    let golden = Golden::load("mlp");
    let mut layer = build(dir.path()).unwrap();
    // mlp's variables are init's under its seed, so init on the device gives them again.
    let bundled: Vec<_> = flaxlayer::tensor::read_safetensors(hlo("mlp").join("variables.safetensors")).unwrap();
    assert_close("init-only variables", &layer.variables().unwrap(), &bundled);
    assert_close("init-only inference", &inference(&mut layer, &golden), &golden.group("inference"));
}

/// Sets the `serialization_version` field (the root table's first field, vtable offset 4)
/// of a serialized `jax.export.Exported` in place.
fn set_serialization_version(bytes: &mut [u8], version: u16) {
    let u32_at = |b: &[u8], i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap()) as usize;
    let table = u32_at(bytes, 0);
    let vtable = (table as i64 - i32::from_le_bytes(bytes[table..table + 4].try_into().unwrap()) as i64) as usize;
    let field = u16::from_le_bytes(bytes[vtable + 4..vtable + 6].try_into().unwrap()) as usize;
    assert_ne!(field, 0, "the serialization_version is stored");
    bytes[table + field..table + field + 2].copy_from_slice(&version.to_le_bytes());
}

#[test]
fn serialization_versions_up_to_12_load_and_a_newer_one_says_what_to_do() {
    let dir = copy("mlp");
    let files: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jaxexport"))
        .collect();
    let golden = Golden::load("mlp");
    for (version, ok) in [(12u16, true), (13, false)] {
        for f in &files {
            let mut bytes = std::fs::read(f).unwrap();
            set_serialization_version(&mut bytes, version);
            std::fs::write(f, bytes).unwrap();
        }
        match (Bundle::open(dir.path()), ok) {
            (Ok(b), true) => {
                assert!(b.computation("init.jaxexport").unwrap().exported().serialization_version() == 12);
                assert_close("mlp, version 12", &inference(&mut build(dir.path()).unwrap(), &golden), &golden.group("inference"));
                let out = std::process::Command::new(env!("CARGO_BIN_EXE_flaxlayer")).arg("inspect").arg(dir.path()).output().unwrap();
                let stdout = String::from_utf8_lossy(&out.stdout);
                assert!(stdout.contains("jax.export serialization version: 12\n"), "{stdout}");
            }
            (Err(e @ Error::UnsupportedSerialization { .. }), false) => {
                let text = e.to_string();
                for want in ["serialization version 13", "2..=12", "update flaxlayer", "jax>=0.10.2,<0.13"] {
                    assert!(text.contains(want), "{want:?} not in {text}");
                }
            }
            (r, _) => panic!("version {version}: {r:?}"),
        }
    }
}
