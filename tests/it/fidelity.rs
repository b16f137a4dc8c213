//! Fidelity to what the exporter bundled (issue 9): a bundle's own variables are the ones a
//! layer starts from, and `init` sees the inputs `module.init(key, x)` saw.

use std::collections::BTreeMap;
use std::process::Command;

use flaxlayer::tensor::{read_safetensors, write_safetensors};
use flaxlayer::{Error, FlaxLayer, Mode, Tensor};

use crate::common::{client, hlo};

type Named = BTreeMap<String, Tensor>;

fn load(path: std::path::PathBuf) -> Named {
    read_safetensors(path).unwrap().into_iter().collect()
}

fn group(g: &Named, prefix: &str) -> Named {
    g.iter().filter_map(|(k, v)| k.strip_prefix(prefix).map(|n| (n.to_string(), v.clone()))).collect()
}

fn assert_close(what: &str, got: &Named, want: &Named, tol: f64) {
    assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>(), "{what}: names");
    for (name, w) in want {
        let err = got[name].max_abs_diff(w).unwrap();
        assert!(err <= tol, "{what}/{name}: max abs error {err:e} > {tol:e}");
    }
}

#[test]
fn a_bundle_with_given_variables_runs_with_them_from_the_builder() {
    // `pretrained_mlp` was exported with variables= that differ from its init under the seed.
    let g = load(hlo("pretrained_mlp").join("golden.safetensors"));
    let mut layer = FlaxLayer::builder(hlo("pretrained_mlp")).client(client()).build().unwrap();
    let vars: Named = layer.variables().unwrap().into_iter().collect();
    assert_close("variables", &vars, &load(hlo("pretrained_mlp").join("variables.safetensors")), 0.0);
    // JAX's outputs with the given variables.
    let out = layer.call(&g["inputs/inputs"], Mode::Inference).unwrap();
    assert_close("outputs", &BTreeMap::from([("outputs".to_string(), out[0].clone())]), &group(&g, "inference/"), 2e-5);
    // Asking for init gives module.init's variables under the seed, which are other ones.
    let fresh = FlaxLayer::builder(hlo("pretrained_mlp")).init_variables().client(client()).build().unwrap();
    let init: Named = fresh.variables().unwrap().into_iter().collect();
    assert_close("init_variables", &init, &group(&g, "init/"), 1e-6);
    assert!(init["params/Dense_0/bias"].max_abs_diff(&vars["params/Dense_0/bias"]).unwrap() > 0.1);
}

#[test]
fn a_bundle_with_given_variables_runs_with_them_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let g = load(hlo("pretrained_mlp").join("golden.safetensors"));
    let (input, output) = (dir.path().join("in.safetensors"), dir.path().join("out.safetensors"));
    write_safetensors(&input, &[("inputs", &g["inputs/inputs"])], None).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_flaxlayer"))
        .args(["run", hlo("pretrained_mlp").to_str().unwrap(), "--input", input.to_str().unwrap(), "--output", output.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_close("cli outputs", &load(output), &group(&g, "inference/"), 2e-5);
}

#[test]
fn data_dependent_init_sees_the_init_inputs() {
    // ActNorm sets loc/scale from the first batch: zeros as init inputs would be off by 1e6.
    // Its variables.safetensors is module.init(key, x) (variables_origin "init"), so the golden
    // data holds no second copy of it: init on the device is compared with that file.
    let g = load(hlo("actnorm").join("golden.safetensors"));
    assert!(g.keys().all(|k| !k.starts_with("init")), "golden repeats the variables: {:?}", g.keys());
    let layer = FlaxLayer::builder(hlo("actnorm")).init_variables().client(client()).build().unwrap();
    let vars: Named = layer.variables().unwrap().into_iter().collect();
    let want = load(hlo("actnorm").join("variables.safetensors"));
    assert_close("init on the device vs module.init(key, x)", &vars, &want, 1e-6);
}

#[test]
fn data_dependent_init_without_its_inputs_is_refused() {
    // A bundle whose init reads its inputs but that does not store them (an older export).
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(hlo("actnorm")).unwrap() {
        let e = e.unwrap();
        if e.file_name() != "init_inputs.safetensors" {
            std::fs::copy(e.path(), dir.path().join(e.file_name())).unwrap();
        }
    }
    let path = dir.path().join("manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    m["init"].as_object_mut().unwrap().remove("inputs_file");
    std::fs::write(&path, serde_json::to_vec(&m).unwrap()).unwrap();
    let err = FlaxLayer::builder(dir.path()).init_variables().client(client()).build().unwrap_err();
    assert!(matches!(&err, Error::InvalidArgument { reason, .. } if reason.contains("data-dependent")), "{err}");
    // Its own bundled variables still work.
    assert!(FlaxLayer::builder(dir.path()).client(client()).build().is_ok());
}

#[test]
fn init_that_ignores_its_inputs_needs_none() {
    // An MLP's init uses only the inputs' shapes: no init inputs are stored or needed.
    assert!(!hlo("mlp").join("init_inputs.safetensors").exists());
    let layer = FlaxLayer::builder(hlo("mlp")).init_variables().client(client()).build().unwrap();
    let want = load(hlo("mlp").join("variables.safetensors"));
    let got: Named = layer.variables().unwrap().into_iter().collect();
    assert_close("mlp init", &got, &want, 1e-6);
}
