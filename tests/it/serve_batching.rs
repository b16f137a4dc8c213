//! Dynamic batching of models whose inference returns state it does not change (issue 22): a
//! linen BatchNorm bundle (`hlo/dense_bn_dropout`: running averages returned unchanged) and an
//! NNX bundle with `Rngs` and BatchNorm (`hlo/nnx_mlp_bn_dropout`) are served with merged
//! batches — `/metrics` shows batches of several requests — and every answer is JAX's
//! (`golden.safetensors`) and the same as the unbatched server's. A model whose inference
//! changes its state (`hlo/nnx_counter`) stays unbatched.

use std::process::{Command, Stdio};
use std::time::Duration;

use flaxlayer::Tensor;
use serde_json::{json, Value};

use crate::common::golden::Golden;
use crate::common::{hlo, Served};

const BUNDLES: [&str; 2] = ["dense_bn_dropout", "nnx_mlp_bn_dropout"];

/// Each bundle twice: `NAME` (default settings, batches waiting up to 20 ms for arriving
/// requests) and `NAME_single` (dynamic batching off).
fn serve() -> (Served, Vec<String>) {
    let repo = tempfile::tempdir().unwrap();
    for b in BUNDLES {
        for (name, config) in [(b.to_string(), r#"{"max_queue_delay_us": 20000}"#), (format!("{b}_single"), r#"{"dynamic_batching": false}"#)] {
            let dir = repo.path().join(&name);
            std::fs::create_dir_all(&dir).unwrap();
            std::os::unix::fs::symlink(hlo(b), dir.join("1")).unwrap();
            std::fs::write(dir.join("config.json"), config).unwrap();
        }
    }
    // A custom counter that inference advances (`stateful` in its manifest): never merged.
    std::fs::create_dir_all(repo.path().join("counter")).unwrap();
    std::os::unix::fs::symlink(hlo("nnx_counter"), repo.path().join("counter/1")).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flaxlayer"));
    cmd.args(["serve", "--models", repo.path().to_str().unwrap(), "--port", "0", "--grpc-port", "0"]).stderr(Stdio::inherit());
    (Served::start(cmd, repo), BUNDLES.iter().map(|s| s.to_string()).collect())
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(Duration::from_secs(30))).build().into()
}

fn get(url: &str) -> String {
    agent().get(url).call().unwrap().body_mut().read_to_string().unwrap()
}

/// One row through KServe v2 JSON; its outputs.
fn infer_row(url: &str, model: &str, row: &[f32]) -> Vec<f32> {
    let body = json!({"inputs": [{"name": "inputs", "shape": [1, row.len()], "datatype": "FP32", "data": row}]});
    let mut r = agent().post(&format!("{url}/v2/models/{model}/infer")).send(&serde_json::to_vec(&body).unwrap()[..]).unwrap();
    let text = r.body_mut().read_to_string().unwrap();
    assert_eq!(r.status().as_u16(), 200, "{model}: {text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    v["outputs"][0]["data"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

/// The batches of `model` that ran, and those of one request, from `/metrics`.
fn batches(url: &str, model: &str) -> (f64, f64) {
    let text = get(&format!("{url}/metrics"));
    let labels = format!("model=\"{model}\",version=\"1\"");
    let value = |l: &str| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let series = |name: &str, extra: &str| text.lines().filter(|l| l.starts_with(name) && l.contains(&labels) && l.contains(extra)).map(value).sum::<f64>();
    (series("flaxlayer_batch_requests_count{", ""), series("flaxlayer_batch_requests_bucket{", "le=\"1.0\""))
}

fn rows(t: &Tensor) -> Vec<Vec<f32>> {
    let width = t.shape()[1];
    t.to_vec::<f32>().unwrap().chunks(width).map(<[f32]>::to_vec).collect()
}

#[test]
fn batchnorm_and_nnx_bundles_are_batched_and_answer_like_jax() {
    let (s, bundles) = serve();
    let counter: Value = serde_json::from_str(&get(&format!("{}/v2/models/counter", s.url))).unwrap();
    assert_eq!(counter["parameters"]["dynamic_batching"], json!(false), "{counter}");
    assert!(counter["parameters"]["batching"].as_str().unwrap().contains("changes state"), "{counter}");
    for b in &bundles {
        let meta: Value = serde_json::from_str(&get(&format!("{}/v2/models/{b}", s.url))).unwrap();
        assert_eq!(meta["parameters"]["dynamic_batching"], json!(true), "{b}: {meta}");
        let single: Value = serde_json::from_str(&get(&format!("{}/v2/models/{b}_single", s.url))).unwrap();
        assert_eq!(single["parameters"]["dynamic_batching"], json!(false), "{b}: {single}");
        assert!(single["parameters"]["batching"].as_str().unwrap().contains("dynamic_batching is off"), "{single}");

        let golden = Golden::load(b);
        let inputs = rows(golden.get("inputs/inputs"));
        let want = rows(golden.get("inference/outputs"));
        let unbatched: Vec<Vec<f32>> = inputs.iter().map(|r| infer_row(&s.url, &format!("{b}_single"), r)).collect();
        // 8 clients, each sending every row 3 times, until batches of several requests ran
        // (at most 5 rounds).
        for round in 0..5 {
            let clients: Vec<_> = (0..8)
                .map(|c| {
                    let (url, b, inputs) = (s.url.clone(), b.clone(), inputs.clone());
                    std::thread::spawn(move || (0..12).map(|k| ((c + k) % inputs.len(), infer_row(&url, &b, &inputs[(c + k) % inputs.len()]))).collect::<Vec<_>>())
                })
                .collect();
            for c in clients {
                for (i, got) in c.join().unwrap() {
                    for (j, (&g, &w)) in got.iter().zip(&want[i]).enumerate() {
                        assert!((g - w).abs() <= 1e-5 + 1e-5 * w.abs(), "{b} row {i} output {j}: served {g}, JAX {w}");
                    }
                    assert_eq!(got, unbatched[i], "{b} row {i}: batched and unbatched serving differ");
                }
            }
            let (count, single) = batches(&s.url, b);
            if count > single {
                break;
            }
            assert!(round < 4, "{b}: no batch merged several requests ({count} batches, {single} of one request)");
        }
        let (count, single) = batches(&s.url, b);
        eprintln!("{b}: {count} batches, {single} of one request");
        let (_, alone) = batches(&s.url, &format!("{b}_single"));
        let (all, _) = batches(&s.url, &format!("{b}_single"));
        assert_eq!(all, alone, "{b}_single merged requests");
    }
}
