//! The deploy story of the README ("Deploy"): one folder with the `flaxlayer` binary, a
//! bundle and the CPU plugin `.so`, run with an empty environment from another directory. No
//! Python, no virtualenv, no repository: the plugin is found next to the executable, and the
//! outputs are JAX's.

use std::process::Command;

use flaxlayer::tensor::{read_safetensors, write_safetensors};
use flaxlayer::pjrt::Client;

use crate::common::golden::{assert_close, Golden};
use crate::common::{copy_dir, hlo};

#[test]
fn a_folder_with_the_binary_a_bundle_and_the_plugin_runs_with_an_empty_environment() {
    let plugin = Client::new(None).expect("a PJRT plugin (run scripts/setup.sh)").plugin().path().to_path_buf();
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("app");
    std::fs::create_dir(&app).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_flaxlayer"), app.join("flaxlayer")).unwrap();
    std::fs::copy(&plugin, app.join(plugin.file_name().unwrap())).unwrap();
    copy_dir(&hlo("mlp"), &app.join("mlp"));

    let g = Golden::load("mlp");
    let input = dir.path().join("in.safetensors");
    let inputs = g.group("inputs");
    let refs: Vec<(&str, &flaxlayer::Tensor)> = inputs.iter().map(|(n, t)| (n.as_str(), t)).collect();
    write_safetensors(&input, &refs, None).unwrap();
    let output = dir.path().join("out.safetensors");
    // Another working directory (no ./.venv there), no PATH, no HOME, no VIRTUAL_ENV,
    // no PJRT_PLUGIN_PATH, no compile cache.
    let work = dir.path().join("elsewhere");
    std::fs::create_dir(&work).unwrap();
    let out = Command::new(app.join("flaxlayer"))
        .env_clear()
        .env("FLAXLAYER_CACHE", "0")
        .current_dir(&work)
        .args(["run", "../app/mlp", "--input", "../in.safetensors", "--output", "../out.safetensors"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got = read_safetensors(&output).unwrap();
    assert_close("deployed mlp", &got, &g.group("inference"));

    let show = Command::new(app.join("flaxlayer")).env_clear().current_dir(&work).args(["plugin", "show"]).output().unwrap();
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(show.status.success() && text.contains("next to the executable"), "{text}");
}
