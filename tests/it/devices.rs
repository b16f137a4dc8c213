//! Several devices: bundles exported on a mesh (`hlo/dp_mlp`, `tp_mlp`, `mesh2x2_mlp`,
//! `mesh2x4_mlp`, `dp_digits_train`, written by `scripts/export_examples.py` with
//! `export_flax(..., mesh=...)` / `export_train_step(..., mesh=...)`) run with SPMD over the
//! CPU client's virtual devices, against the golden data JAX computed on the same mesh.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use flaxlayer::tensor::read_safetensors;
use flaxlayer::{Bundle, Error, FlaxLayer, Mode, Tensor};

use crate::common::{client, hlo, pick_rows, row_range};

type Named = BTreeMap<String, Tensor>;

fn golden(name: &str) -> Named {
    read_safetensors(hlo(name).join("golden.safetensors")).unwrap().into_iter().collect()
}

/// The largest difference between `got` and `want`, relative to `want`'s largest magnitude
/// (1 at least); panics above `tol`.
fn assert_close(what: &str, got: &Tensor, want: &Tensor, tol: f64) {
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    let (g, w) = (got.to_f64_vec(), want.to_f64_vec());
    let scale = w.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    let worst = g.iter().zip(&w).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max) / scale;
    assert!(worst <= tol, "{what}: differs from JAX by {worst:e} (relative), more than {tol:e}");
}

const TOL: f64 = 1e-5;

fn input(name: &str) -> Tensor {
    golden(name)["inputs/inputs"].clone()
}

#[test]
fn data_parallel_inference_and_training_equal_jax() {
    let g = golden("dp_mlp");
    let mut layer = FlaxLayer::builder(hlo("dp_mlp")).client(client()).build().unwrap();
    assert_eq!(layer.num_devices(), 4);
    let x = input("dp_mlp");
    let y = layer.predict(&x).unwrap();
    assert_close("inference", &y["outputs"], &g["inference/outputs"], TOL);
    for step in 0..2 {
        let y = layer.call(&x, Mode::Training).unwrap();
        assert_close(&format!("training step {step}"), &y["outputs"], &g[&format!("training/{step}/outputs")], TOL);
    }
    let vars: Named = layer.variables().unwrap().into_iter().collect();
    for (name, want) in g.iter().filter_map(|(k, v)| k.strip_prefix("after_training/").map(|n| (n, v))) {
        assert_close(name, &vars[name], want, TOL);
    }
    assert_eq!(layer.key().unwrap().to_vec(), g["key/after_training"].to_vec::<u32>().unwrap());
}

#[test]
fn data_parallel_inference_pads_and_splits_any_batch() {
    // hlo/dp_mlp is exported at batches 4, 8 and 16 (each split 4 ways) and is paddable:
    // 3 rows run padded to 4, 20 rows as 16 + 4 (padded); rows are independent at inference.
    let g = golden("dp_mlp");
    let layer = FlaxLayer::builder(hlo("dp_mlp")).client(client()).build().unwrap();
    let (x, want) = (input("dp_mlp"), &g["inference/outputs"]);
    let y = layer.predict(row_range(&x, 0, 3)).unwrap();
    assert_close("3 rows", &y["outputs"], &row_range(want, 0, 3), TOL);
    let mut twenty = Vec::new();
    for i in 0..20 {
        twenty.extend_from_slice(row_range(&x, i % 8, 1).as_bytes());
    }
    let x20 = Tensor::new(x.dtype(), vec![20, 12], &twenty).unwrap();
    let y = layer.predict(&x20).unwrap();
    for i in 0..20 {
        assert_close(&format!("row {i} of 20"), &row_range(&y["outputs"], i, 1), &row_range(want, i % 8, 1), TOL);
    }
}

#[test]
fn tensor_parallel_devices_hold_only_their_shards() {
    let g = golden("tp_mlp");
    let layer = FlaxLayer::builder(hlo("tp_mlp")).client(client()).build().unwrap();
    assert_eq!(layer.num_devices(), 4);
    let shards: BTreeMap<String, Vec<Vec<usize>>> = layer.variable_shards().into_iter().collect();
    // Megatron style: Dense_0 split by columns, Dense_1 by rows, Dense_2 replicated.
    assert_eq!(shards["params/Dense_0/kernel"], vec![vec![64, 64]; 4]);
    assert_eq!(shards["params/Dense_0/bias"], vec![vec![64]; 4]);
    assert_eq!(shards["params/Dense_1/kernel"], vec![vec![64, 256]; 4]);
    assert_eq!(shards["params/Dense_1/bias"], vec![vec![256]; 4]);
    assert_eq!(shards["params/Dense_2/kernel"], vec![vec![256, 10]; 4]);
    assert_eq!(shards["params/Dense_2/bias"], vec![vec![10]; 4]);
    let y = layer.predict(input("tp_mlp")).unwrap();
    assert_close("inference", &y["outputs"], &g["inference/outputs"], TOL);
    // The shards put together are the bundle's variables, exactly.
    let bundled: Named = read_safetensors(hlo("tp_mlp").join("variables.safetensors")).unwrap().into_iter().collect();
    let vars: Named = layer.variables().unwrap().into_iter().collect();
    assert_eq!(vars, bundled);
    // Batch 1, on hlo/mlp's golden input (the same MLP and variables, exported for one device).
    let mlp = golden("mlp");
    let y = layer.predict(&mlp["inputs/inputs"]).unwrap();
    assert_close("batch 1 vs hlo/mlp", &y["outputs"], &mlp["inference/outputs"], TOL);
}

#[test]
fn data_and_model_parallel_on_a_2x2_mesh_equal_jax() {
    // PartitionedMLP's own metadata (nn.with_partitioning) splits the kernels over `model`;
    // the batch is split over `data`.
    let g = golden("mesh2x2_mlp");
    let mut layer = FlaxLayer::builder(hlo("mesh2x2_mlp")).client(client()).build().unwrap();
    assert_eq!(layer.num_devices(), 4);
    let shards: BTreeMap<String, Vec<Vec<usize>>> = layer.variable_shards().into_iter().collect();
    assert_eq!(shards["params/Dense_0/kernel"], vec![vec![16, 16]; 4]);
    assert_eq!(shards["params/Dense_1/kernel"], vec![vec![16, 16]; 4]);
    assert_eq!(shards["params/Dense_2/kernel"], vec![vec![16, 4]; 4]);
    let x = input("mesh2x2_mlp");
    assert_close("inference", &layer.predict(&x).unwrap()["outputs"], &g["inference/outputs"], TOL);
    assert_close("training", &layer.call(&x, Mode::Training).unwrap()["outputs"], &g["training/0/outputs"], TOL);
    // Batch 2: one row per `data` slice.
    assert_close("batch 2", &layer.predict(row_range(&x, 0, 2)).unwrap()["outputs"], &row_range(&g["inference/outputs"], 0, 2), TOL);
}

#[test]
fn eight_devices_on_a_2x4_mesh_with_logical_axes() {
    // nn.with_logical_partitioning + rules (mlp -> model) on 2 x 4 devices: needs a client
    // with 8 CPU devices.
    let g = golden("mesh2x4_mlp");
    let layer = FlaxLayer::builder(hlo("mesh2x4_mlp")).cpu_devices(8).build().unwrap();
    assert_eq!(layer.num_devices(), 8);
    let shards: BTreeMap<String, Vec<Vec<usize>>> = layer.variable_shards().into_iter().collect();
    assert_eq!(shards["params/Dense_0/kernel"], vec![vec![16, 8]; 8]);
    assert_eq!(shards["params/Dense_0/bias"], vec![vec![8]; 8]);
    assert_eq!(shards["params/Dense_1/kernel"], vec![vec![8, 16]; 8]);
    assert_eq!(shards["params/Dense_1/bias"], vec![vec![16]; 8]);
    let x = input("mesh2x4_mlp");
    assert_close("inference", &layer.predict(&x).unwrap()["outputs"], &g["inference/outputs"], TOL);
}

#[test]
fn too_few_devices_is_a_typed_error() {
    // An 8-device bundle on the default 4-device CPU client.
    let err = FlaxLayer::builder(hlo("mesh2x4_mlp")).client(client()).build().unwrap_err();
    assert!(matches!(&err, Error::TooFewDevices { needed: 8, first: 0, available: 4, .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("mesh2x4_mlp") && msg.contains("cpu_devices(8)") && msg.contains("--devices 8"), "{msg}");
    // A 4-device bundle from the client's third device on.
    let err = FlaxLayer::builder(hlo("dp_mlp")).client(client()).device(2).build().unwrap_err();
    assert!(matches!(&err, Error::TooFewDevices { needed: 4, first: 2, available: 4, .. }), "{err}");
}

#[test]
fn an_input_that_its_mesh_axis_does_not_divide_is_refused() {
    // tests/fixtures/make_sharding_fixtures.py: batch 3 split over `data` of size 2.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/indivisible_batch");
    let err = FlaxLayer::builder(&dir).client(client()).build().unwrap_err();
    let msg = err.to_string();
    assert!(matches!(&err, Error::InvalidFormat { .. }), "{err}");
    assert!(msg.contains("input \"inputs\"") && msg.contains("\"data\"") && msg.contains("size 3") && msg.contains("split 2 ways"), "{msg}");
}

#[test]
fn predict_from_several_threads_on_a_sharded_layer() {
    let g = golden("mesh2x2_mlp");
    let layer = Arc::new(FlaxLayer::builder(hlo("mesh2x2_mlp")).client(client()).build().unwrap());
    let x = input("mesh2x2_mlp");
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let (layer, x, want) = (layer.clone(), x.clone(), g["inference/outputs"].clone());
            std::thread::spawn(move || {
                for i in 0..20 {
                    // Each thread its own rows: 2 (a one-row-per-slice batch) or all 8.
                    let (start, n) = if (t + i) % 2 == 0 { (2 * ((t + i) % 4), 2) } else { (0, 8) };
                    let y = layer.predict(row_range(&x, start, n)).unwrap();
                    assert_close(&format!("thread {t} call {i}"), &y["outputs"], &row_range(&want, start, n), TOL);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn a_saved_sharded_layer_gathers_its_variables_and_loads_anywhere_the_model_runs() {
    let mut layer = FlaxLayer::builder(hlo("tp_mlp")).client(client()).build().unwrap();
    // Variables of its own (not the bundle's): every one scaled.
    let changed: Vec<(String, Tensor)> = layer
        .variables()
        .unwrap()
        .into_iter()
        .map(|(n, t)| {
            let v: Vec<f32> = t.to_vec::<f32>().unwrap().iter().map(|x| x * 0.75 + 0.01).collect();
            (n, Tensor::from_vec(t.shape().to_vec(), v).unwrap())
        })
        .collect();
    layer.set_variables(&changed).unwrap();
    let x = input("tp_mlp");
    let y = layer.predict(&x).unwrap();
    let dir = tempfile::tempdir().unwrap();
    layer.save(dir.path()).unwrap();
    // One file of whole arrays.
    let saved: Named = read_safetensors(dir.path().join("variables.safetensors")).unwrap().into_iter().collect();
    let want: Named = changed.iter().cloned().collect();
    assert_eq!(saved, want);
    // Back into the same sharded bundle...
    let again = FlaxLayer::builder(dir.path()).client(client()).load().unwrap();
    assert_eq!(again.num_devices(), 4);
    assert_eq!(again.variable_shards(), layer.variable_shards());
    assert_eq!(again.predict(&x).unwrap(), y);
    // ...and into the single-device export of the same model (hlo/mlp).
    let single = FlaxLayer::builder(hlo("mlp")).variables_file(dir.path().join("variables.safetensors")).client(client()).build().unwrap();
    assert_eq!(single.num_devices(), 1);
    let y1 = single.predict(&x).unwrap();
    assert_close("single device", &y1["outputs"], &y["outputs"], TOL);
    assert!(crate::common::leftovers(dir.path()).is_empty());
}

// ---- the data-parallel trainer --------------------------------------------------------

mod trainer {
    use super::*;
    use flaxlayer::layer::epoch_batches;
    use flaxlayer::{Batch, Trainer};

    fn data() -> &'static Named {
        static DATA: OnceLock<Named> = OnceLock::new();
        DATA.get_or_init(|| read_safetensors(hlo("digits").join("data.safetensors")).unwrap().into_iter().collect())
    }

    /// Batch `i` (over epochs) of the documented order for seed 0.
    fn nth_batch(i: usize) -> Batch {
        let (x, y) = (&data()["x_train"], &data()["y_train"]);
        let n = x.shape()[0];
        let idx = &epoch_batches(0, (i / (n / 32)) as u64, n, 32)[i % (n / 32)];
        Batch::new(pick_rows(x, idx), pick_rows(y, idx))
    }

    fn rel(a: f64, b: f64) -> f64 {
        (a - b).abs() / b.abs().max(1e-30)
    }

    #[test]
    fn data_parallel_trainer_equals_jax_data_parallel_steps() {
        let g = golden("dp_digits_train");
        let bundle = Arc::new(Bundle::open(hlo("dp_digits_train")).unwrap());
        let mut t = Trainer::builder(bundle).client(client()).build().unwrap();
        assert_eq!(t.layer().num_devices(), 4);
        let want = g["train/loss"].to_vec::<f32>().unwrap();
        assert_eq!(want.len(), 20);
        let mut worst = 0f64;
        for (i, &w) in want.iter().enumerate() {
            let loss = t.step(&nth_batch(i)).unwrap().loss().unwrap();
            let r = rel(loss, w as f64);
            assert!(r <= 1e-5, "step {i}: loss {loss} vs JAX's data-parallel step {w} (rel {r:e})");
            worst = worst.max(r);
        }
        println!("20 data-parallel steps on 4 devices: max rel loss diff vs JAX {worst:e}");
        for (name, got) in t.layer().variables().unwrap() {
            let err = got.max_abs_diff(&g[&format!("train/after/{name}")]).unwrap();
            assert!(err <= 1e-5, "{name} after 20 steps: max abs diff {err:e}");
        }
        for (name, got) in t.opt_state().unwrap() {
            let err = got.max_abs_diff(&g[&format!("train/after/{name}")]).unwrap();
            assert!(err <= 1e-5, "{name} after 20 steps: max abs diff {err:e}");
        }
        assert_eq!(t.layer().key().unwrap().to_vec(), g["train/key_after"].to_vec::<u32>().unwrap());
        let m = t.evaluate(&data()["x_test"], &data()["y_test"]).unwrap();
        let scalar = |k: &str| g[k].to_vec::<f64>().unwrap()[0];
        assert_eq!(m.get("count").unwrap(), scalar("train/eval/count"));
        assert!(rel(m.loss().unwrap(), scalar("train/eval/loss")) <= 1e-5, "eval {m:?}");
        assert!((m.accuracy().unwrap() - scalar("train/eval/accuracy")).abs() < 1e-9, "eval {m:?}");
    }

    #[test]
    fn a_data_parallel_checkpoint_resumes_exactly() {
        let mut a = Trainer::builder(hlo("dp_digits_train")).client(client()).build().unwrap();
        let losses_a: Vec<f64> = (0..12).map(|i| a.step(&nth_batch(i)).unwrap().loss().unwrap()).collect();
        let mut b = Trainer::builder(hlo("dp_digits_train")).client(client()).build().unwrap();
        let mut losses_b: Vec<f64> = (0..6).map(|i| b.step(&nth_batch(i)).unwrap().loss().unwrap()).collect();
        let dir = tempfile::tempdir().unwrap();
        b.save(dir.path()).unwrap();
        drop(b);
        let mut c = Trainer::builder(dir.path()).client(client()).load().unwrap();
        assert_eq!(c.layer().num_devices(), 4);
        losses_b.extend((6..12).map(|i| c.step(&nth_batch(i)).unwrap().loss().unwrap()));
        assert_eq!(losses_b, losses_a);
        assert_eq!(c.layer().variables().unwrap(), a.layer().variables().unwrap());
        assert_eq!(c.opt_state().unwrap(), a.opt_state().unwrap());
    }
}

#[test]
fn the_manifest_mesh_must_agree_with_the_computations() {
    let bundle = Bundle::open(hlo("tp_mlp")).unwrap();
    let mesh = bundle.manifest().mesh().unwrap();
    assert_eq!((mesh.axis_names().to_vec(), mesh.shape().to_vec()), (vec!["model".to_string()], vec![4]));
    assert_eq!(mesh.variables()["params/Dense_0/kernel"].to_string(), "P(None, 'model')");
    assert_eq!(bundle.variable_sharding("__call__", "params/Dense_1/kernel").unwrap().spec()[0], ["model"]);
    assert!(bundle.variable_sharding("__call__", "params/Dense_2/kernel").is_none_or(|s| s.spec().iter().all(Vec::is_empty)));
    // A manifest that claims another split than the computations record is refused.
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(hlo("tp_mlp")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.path().join(e.file_name())).unwrap();
    }
    let path = dir.path().join("manifest.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let edited = text.replace(r#""params/Dense_0/kernel": [null, "model"]"#, r#""params/Dense_0/kernel": ["model", null]"#);
    assert_ne!(edited, text);
    std::fs::write(&path, edited).unwrap();
    let err = Bundle::open(dir.path()).unwrap_err();
    assert!(err.to_string().contains("params/Dense_0/kernel") && err.to_string().contains("P('model')"), "{err}");
}

// ---- the CLI: --devices N, inspect ------------------------------------------------------

mod cli {
    use super::*;
    use flaxlayer::tensor::write_safetensors;
    use std::process::{Command, Output};

    fn flaxlayer(args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_flaxlayer")).args(args).env_remove("FLAXLAYER_CPU_DEVICES").output().unwrap()
    }

    fn text(out: &Output) -> String {
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    }

    #[test]
    fn run_on_eight_devices_needs_devices_8() {
        let dir = tempfile::tempdir().unwrap();
        let g = golden("mesh2x4_mlp");
        let (input, output) = (dir.path().join("in.safetensors"), dir.path().join("out.safetensors"));
        write_safetensors(&input, &[("inputs", &g["inputs/inputs"])], None).unwrap();
        let bundle = hlo("mesh2x4_mlp");
        let args = ["run", bundle.to_str().unwrap(), "--input", input.to_str().unwrap(), "--output", output.to_str().unwrap()];
        let out = flaxlayer(&args);
        assert!(!out.status.success());
        assert!(text(&out).contains("runs on 8 device(s) from index 0, but the client has 4") && text(&out).contains("--devices 8"), "{}", text(&out));
        let out = flaxlayer(&[&args[..], &["--devices", "8"]].concat());
        assert!(out.status.success(), "{}", text(&out));
        let got: Named = read_safetensors(&output).unwrap().into_iter().collect();
        assert_close("run --devices 8", &got["outputs"], &g["inference/outputs"], TOL);
    }

    #[test]
    fn inspect_shows_the_mesh_and_each_variables_split() {
        let out = flaxlayer(&["inspect", hlo("tp_mlp").to_str().unwrap()]);
        assert!(out.status.success(), "{}", text(&out));
        let t = text(&out);
        assert!(t.contains("mesh: model=4 (4 devices, partitioner shardy)"), "{t}");
        let line = |name: &str| t.lines().find(|l| l.trim_start().starts_with(name)).unwrap_or_else(|| panic!("no {name} in {t}")).to_string();
        assert!(line("params/Dense_0/kernel").contains("P(None, 'model') -> [64, 64] per device"), "{t}");
        assert!(line("params/Dense_1/kernel").contains("P('model') -> [64, 256] per device"), "{t}");
        assert!(line("params/Dense_2/kernel").contains("replicated"), "{t}");
        let t = text(&flaxlayer(&["inspect", hlo("mesh2x4_mlp").to_str().unwrap()]));
        assert!(t.contains("mesh: data=2 x model=4 (8 devices") && t.contains("inputs: float32[8, 16] P('data')"), "{t}");
        let t = text(&flaxlayer(&["inspect", hlo("mlp").to_str().unwrap()]));
        assert!(!t.contains("mesh:") && !t.contains("replicated"), "{t}");
    }

    #[test]
    fn train_and_bench_take_devices() {
        let dir = tempfile::tempdir().unwrap();
        let data = hlo("digits").join("data.safetensors");
        let out = flaxlayer(&[
            "train", hlo("dp_digits_train").to_str().unwrap(), "--data", data.to_str().unwrap(), "--epochs", "1", "--batch-size", "32", "--json",
            "--devices", "4", "--save", dir.path().join("ckpt").to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", text(&out));
        let line: serde_json::Value = serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().next().unwrap()).unwrap();
        assert!(line["test_accuracy"].as_f64().unwrap() > 0.5, "{line}");
        let out = flaxlayer(&["bench", hlo("mesh2x4_mlp").to_str().unwrap(), "--devices", "8", "--iters", "5", "--warmup", "1", "--json"]);
        assert!(out.status.success(), "{}", text(&out));
        let out = flaxlayer(&["bench", hlo("dp_mlp").to_str().unwrap(), "--raw", "--iters", "5", "--warmup", "1"]);
        assert!(!out.status.success() && text(&out).contains("single-device computations only"), "{}", text(&out));
    }
}

mod serve {
    use super::*;
    use serde_json::{json, Value};
    use crate::common::start_server;
    use std::process::{Command, Stdio};

    #[test]
    fn serve_devices_8_serves_sharded_bundles() {
        let repo = tempfile::tempdir().unwrap();
        for name in ["dp_mlp", "mesh2x4_mlp"] {
            std::fs::create_dir_all(repo.path().join(name)).unwrap();
            std::os::unix::fs::symlink(hlo(name), repo.path().join(name).join("1")).unwrap();
        }
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_flaxlayer"));
        cmd.args(["serve", "--models", repo.path().to_str().unwrap(), "--port", "0", "--grpc-port", "0", "--devices", "8"])
            .env_remove("FLAXLAYER_CPU_DEVICES")
            .stderr(Stdio::null());
        let (mut child, url) = start_server(cmd);
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        for (name, n) in [("dp_mlp", 3), ("mesh2x4_mlp", 8)] {
            let g = golden(name);
            let x = row_range(&g["inputs/inputs"], 0, n);
            let body = json!({"inputs": [{"name": "inputs", "shape": x.shape(), "datatype": "FP32", "data": x.to_vec::<f32>().unwrap()}]});
            let mut resp = agent.post(&format!("{url}/v2/models/{name}/infer")).send(serde_json::to_vec(&body).unwrap().as_slice()).unwrap();
            let text = resp.body_mut().read_to_string().unwrap();
            assert_eq!(resp.status().as_u16(), 200, "{name}: {text}");
            let v: Value = serde_json::from_str(&text).unwrap();
            let out = &v["outputs"][0];
            let data: Vec<f32> = out["data"].as_array().unwrap().iter().map(|d| d.as_f64().unwrap() as f32).collect();
            let shape: Vec<usize> = out["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
            assert_close(name, &Tensor::from_vec(shape, data).unwrap(), &row_range(&g["inference/outputs"], 0, n), TOL);
        }
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
