//! `flaxlayer serve` refusing bad requests (each with a 4xx and a JSON error naming what was
//! expected), and shutting down gracefully. The bundles are committed ones under `hlo/`
//! (`scripts/export_examples.py`); the answers' values are checked against JAX's in
//! `tests/python/test_serve.py`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::{hlo, Served};

/// Copies a committed bundle into `dest` with its manifest edited by `edit`.
fn bundle_copy(name: &str, dest: &Path, edit: impl FnOnce(&mut Value)) {
    std::fs::create_dir_all(dest).unwrap();
    for e in std::fs::read_dir(hlo(name)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dest.join(e.file_name())).unwrap();
    }
    let path = dest.join("manifest.json");
    let mut m: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut m);
    std::fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
}

/// Marks a single-output method paddable with its output batched (true of the MLP: its rows
/// are independent), or explicitly not paddable.
fn mark(m: &mut Value, paddable: bool) {
    let method = m["default_method"].as_str().unwrap().to_string();
    let meth = &mut m["methods"][&method];
    meth["batching"] = if paddable { json!({"paddable": true, "pad_value": 0.0}) } else { json!({"paddable": false, "reason": "marked so by the test"}) };
    for c in meth["inference"].as_array_mut().unwrap() {
        for r in c["results"].as_array_mut().unwrap() {
            if r["role"] == "output" {
                r["batched"] = json!(true);
            }
        }
    }
}

/// A repository: `fixed` (the MLP, not paddable: batch 1, 8 or 256), `any` (the MLP marked
/// paddable, batched, versions 1 and 2), `slow` (`any` whose batches wait up to 1.5 s for
/// arriving requests) and `mixed` (dict inputs of three dtypes).
fn serve(max_body: usize) -> Served {
    let repo = tempfile::tempdir().unwrap();
    let r = repo.path();
    bundle_copy("mlp", &r.join("fixed/1"), |m| mark(m, false));
    bundle_copy("mlp", &r.join("any/1"), |m| mark(m, true));
    bundle_copy("mlp", &r.join("any/2"), |m| mark(m, true));
    bundle_copy("mlp", &r.join("slow/1"), |m| mark(m, true));
    std::fs::write(r.join("slow/config.json"), r#"{"max_queue_delay_us": 1500000, "warmup": false}"#).unwrap();
    std::fs::create_dir_all(r.join("mixed")).unwrap();
    std::os::unix::fs::symlink(hlo("mixed"), r.join("mixed/1")).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flaxlayer"));
    cmd.args(["serve", "--models", r.to_str().unwrap(), "--port", "0", "--grpc-port", "0", "--max-body-bytes", &max_body.to_string()])
        .stderr(Stdio::inherit());
    Served::start(cmd, repo)
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(Duration::from_secs(30))).build().into()
}

/// POSTs `body` with `headers`; the status and the body.
fn post(url: &str, body: &[u8], headers: &[(&str, &str)]) -> (u16, Vec<u8>) {
    let mut req = agent().post(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut resp = req.send(body).unwrap();
    (resp.status().as_u16(), resp.body_mut().read_to_vec().unwrap())
}

fn get(url: &str) -> (u16, String) {
    let mut resp = agent().get(url).call().unwrap();
    (resp.status().as_u16(), resp.body_mut().read_to_string().unwrap())
}

/// Asserts a JSON error with `status` whose message contains every one of `parts`.
fn assert_refused(what: &str, (status, body): (u16, Vec<u8>), want: u16, parts: &[&str]) {
    let text = String::from_utf8_lossy(&body).to_string();
    assert_eq!(status, want, "{what}: {text}");
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {text}"));
    let msg = v["error"].as_str().unwrap_or_else(|| panic!("{what}: no \"error\" string: {text}"));
    for p in parts {
        assert!(msg.contains(p), "{what}: {msg:?} does not say {p:?}");
    }
}

fn row(n: usize, width: usize) -> Vec<f32> {
    (0..n * width).map(|i| (i % 7) as f32 * 0.25).collect()
}

fn infer_json(inputs: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({ "inputs": inputs })).unwrap()
}

#[test]
fn bad_requests_get_4xx_with_an_error_naming_the_tensor() {
    let s = serve(64 << 10);
    let infer = |model: &str| format!("{}/v2/models/{model}/infer", s.url);
    let x = |shape: Value, dt: &str, data: Vec<f32>| infer_json(json!([{"name": "inputs", "shape": shape, "datatype": dt, "data": data}]));

    // A good request first: the same server answers it.
    let (status, body) = post(&infer("fixed"), &x(json!([1, 64]), "FP32", row(1, 64)), &[]);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((v["model_name"].as_str(), v["model_version"].as_str()), (Some("fixed"), Some("1")));
    assert_eq!(v["outputs"][0]["shape"], json!([1, 10]));

    assert_refused("not JSON", post(&infer("fixed"), b"{\"inputs\": [", &[]), 400, &["malformed request", "inference request JSON"]);
    assert_refused("no inputs", post(&infer("fixed"), b"{}", &[]), 400, &["missing field `inputs`"]);
    assert_refused("wrong datatype", post(&infer("fixed"), &x(json!([1, 64]), "FP64", row(1, 64)), &[]), 400, &["input \"inputs\"", "expected datatype FP32, got FP64"]);
    assert_refused("unknown datatype", post(&infer("fixed"), &x(json!([1, 64]), "BYTES", row(1, 64)), &[]), 400, &["input \"inputs\"", "a datatype among", "\"BYTES\""]);
    assert_refused("wrong shape", post(&infer("fixed"), &x(json!([1, 63]), "FP32", row(1, 63)), &[]), 400, &["input \"inputs\"", "expected shape [N, 64]", "got [1, 63]"]);
    assert_refused("data and shape disagree", post(&infer("any"), &x(json!([2, 64]), "FP32", row(1, 64)), &[]), 400, &["input \"inputs\"", "expected 128 elements", "got 64"]);
    assert_refused(
        "batch size not exported",
        post(&infer("fixed"), &x(json!([3, 64]), "FP32", row(3, 64)), &[]),
        400,
        &["input \"inputs\"", "expected a batch size in [1, 8, 256]", "not marked paddable", "got 3"],
    );
    let (ok, _) = post(&infer("any"), &x(json!([3, 64]), "FP32", row(3, 64)), &[]);
    assert_eq!(ok, 200, "a paddable bundle takes any batch size");
    assert_refused("empty batch", post(&infer("any"), &x(json!([0, 64]), "FP32", vec![]), &[]), 400, &["batch size", "got 0"]);
    let named = |name: &str| infer_json(json!([{"name": name, "shape": [1, 64], "datatype": "FP32", "data": row(1, 64)}]));
    assert_refused("unknown input", post(&infer("fixed"), &named("image"), &[]), 400, &["unknown input \"image\"", "inputs are: inputs"]);
    let twice = infer_json(json!([{"name": "inputs", "shape": [1, 64], "datatype": "FP32", "data": row(1, 64)}, {"name": "inputs", "shape": [1, 64], "datatype": "FP32", "data": row(1, 64)}]));
    assert_refused("input given twice", post(&infer("fixed"), &twice, &[]), 400, &["\"inputs\" is given twice"]);
    let no_x = infer_json(json!([{"name": "ids", "shape": [3, 4], "datatype": "INT32", "data": vec![1; 12]}, {"name": "scale", "shape": [3, 8], "datatype": "BF16", "data": vec![1.0; 24]}]));
    assert_refused("missing input", post(&infer("mixed"), &no_x, &[]), 400, &["missing input \"x\"", "ids, scale, x"]);
    let big_id = infer_json(json!([{"name": "ids", "shape": [1, 4], "datatype": "INT32", "data": [1, 2, 3, 1u64 << 40]}]));
    assert_refused("integer out of range", post(&infer("mixed"), &big_id, &[]), 400, &["input \"ids\"", "an integer in the range of INT32", "1099511627776"]);
    let mut with_outputs: Value = serde_json::from_slice(&x(json!([1, 64]), "FP32", row(1, 64))).unwrap();
    with_outputs["outputs"] = json!([{"name": "logits"}]);
    assert_refused("unknown output", post(&infer("fixed"), &serde_json::to_vec(&with_outputs).unwrap(), &[]), 400, &["unknown output \"logits\"", "outputs are: outputs"]);

    // Binary tensor data.
    let header = serde_json::to_vec(&json!({"inputs": [{"name": "inputs", "shape": [1, 64], "datatype": "FP32", "parameters": {"binary_data_size": 256}}]})).unwrap();
    let bytes: Vec<u8> = row(1, 64).iter().flat_map(|f| f.to_le_bytes()).collect();
    let len = header.len().to_string();
    let body = [header.clone(), bytes.clone()].concat();
    let (ok, _) = post(&infer("fixed"), &body, &[("Inference-Header-Content-Length", &len)]);
    assert_eq!(ok, 200);
    assert_refused("binary data without the header", post(&infer("fixed"), &body, &[]), 400, &["malformed request"]);
    assert_refused("binary data cut short", post(&infer("fixed"), &body[..body.len() - 4], &[("Inference-Header-Content-Length", &len)]), 400, &["binary_data_size 256 runs past", "252 bytes"]);
    let extra = [body.clone(), vec![0; 8]].concat();
    assert_refused("binary data left over", post(&infer("fixed"), &extra, &[("Inference-Header-Content-Length", &len)]), 400, &["264 bytes of binary data", "add up to 256"]);
    assert_refused("header past the body", post(&infer("fixed"), &body, &[("Inference-Header-Content-Length", "99999")]), 400, &["Inference-Header-Content-Length is 99999"]);
    let wrong_size = serde_json::to_vec(&json!({"inputs": [{"name": "inputs", "shape": [1, 64], "datatype": "FP32", "parameters": {"binary_data_size": 128}}]})).unwrap();
    let n = wrong_size.len().to_string();
    assert_refused("binary size disagrees with the shape", post(&infer("fixed"), &[wrong_size, bytes[..128].to_vec()].concat(), &[("Inference-Header-Content-Length", &n)]), 400, &["input \"inputs\"", "expected 256 bytes", "got binary_data_size 128"]);

    // Models and versions.
    assert_refused("unknown model", post(&infer("resnet"), &x(json!([1, 64]), "FP32", row(1, 64)), &[]), 404, &["unknown model \"resnet\"", "any, fixed, mixed, slow"]);
    let v3 = format!("{}/v2/models/any/versions/3/infer", s.url);
    assert_refused("unknown version", post(&v3, &x(json!([1, 64]), "FP32", row(1, 64)), &[]), 404, &["model \"any\" has no version \"3\"", "available: 1, 2"]);
    let (status, text) = get(&format!("{}/v2/models/resnet", s.url));
    assert_eq!(status, 404, "{text}");
    assert_eq!(get(&format!("{}/v2/models/any/versions/7/ready", s.url)).0, 404);

    // Oversize bodies, with a Content-Length and without one (chunked).
    let big = vec![b' '; 100 << 10];
    assert_refused("oversize body", post(&infer("fixed"), &big, &[]), 413, &["larger than the limit of 65536 bytes"]);
    let mut resp = agent().post(&infer("fixed")).send(ureq::SendBody::from_reader(&mut &big[..])).unwrap();
    assert_refused("oversize chunked body", (resp.status().as_u16(), resp.body_mut().read_to_vec().unwrap()), 413, &["larger than the limit"]);

    // Extensions this server does not have.
    let mut shm: Value = serde_json::from_slice(&x(json!([1, 64]), "FP32", row(1, 64))).unwrap();
    shm["outputs"] = json!([{"name": "outputs", "parameters": {"shared_memory_region": "r", "shared_memory_byte_size": 40}}]);
    assert_refused("shared memory", post(&infer("fixed"), &serde_json::to_vec(&shm).unwrap(), &[]), 400, &["shared-memory extension"]);
    assert_refused("gzip", post(&infer("fixed"), b"\x1f\x8b", &[("Content-Encoding", "gzip")]), 400, &["Content-Encoding \"gzip\""]);

    // TF Serving.
    let predict = |m: &str| format!("{}/v1/models/{m}:predict", s.url);
    let both = serde_json::to_vec(&json!({"instances": [row(1, 64)], "inputs": [row(1, 64)]})).unwrap();
    assert_refused("instances and inputs", post(&predict("fixed"), &both, &[]), 400, &["not both"]);
    let ragged = serde_json::to_vec(&json!({"instances": [row(1, 64), row(1, 32)]})).unwrap();
    assert_refused("ragged rows", post(&predict("any"), &ragged, &[]), 400, &["input \"inputs\" of instance 1", "expected shape [64] like instance 0, got [32]"]);
    let narrow = serde_json::to_vec(&json!({"inputs": [[1.0, 2.0]]})).unwrap();
    assert_refused("wrong shape (columnar)", post(&predict("fixed"), &narrow, &[]), 400, &["input \"inputs\"", "expected shape [N, 64]", "got [1, 2]"]);
    let strings = serde_json::to_vec(&json!({"instances": [vec!["a"; 64]]})).unwrap();
    assert_refused("strings for floats", post(&predict("fixed"), &strings, &[]), 400, &["input \"inputs\"", "a number for a FP32 element", "\"a\""]);
    let ok = serde_json::to_vec(&json!({"instances": [row(1, 64)]})).unwrap();
    assert_refused("unknown model (v1)", post(&predict("resnet"), &ok, &[]), 404, &["unknown model \"resnet\""]);
    assert_refused("classify", post(&format!("{}/v1/models/fixed:classify", s.url), &ok, &[]), 400, &["\"classify\" verb"]);
    assert_refused("wrong signature", post(&predict("fixed"), &serde_json::to_vec(&json!({"signature_name": "train", "instances": [row(1, 64)]})).unwrap(), &[]), 400, &["signature_name", "serving_default"]);
    let (status, text) = get(&format!("{}/v1/models/resnet", s.url));
    assert_eq!(status, 404, "{text}");

    // Anything else.
    let (status, text) = get(&format!("{}/v3/whatever", s.url));
    assert_eq!(status, 404);
    assert!(text.contains("no route for GET /v3/whatever"), "{text}");

    // Failures are counted per model and status.
    let (_, metrics) = get(&format!("{}/metrics", s.url));
    assert!(metrics.contains("flaxlayer_inference_failures_total{model=\"fixed\",version=\"1\",status=\"400\"}"), "{metrics}");
    assert!(metrics.contains("flaxlayer_inference_failures_total{model=\"\",version=\"\",status=\"404\"}"), "{metrics}");
    assert!(metrics.contains("flaxlayer_inference_failures_total{model=\"fixed\",version=\"1\",status=\"413\"}"), "{metrics}");
}

#[test]
fn shutdown_finishes_the_requests_in_flight_and_refuses_new_ones() {
    use std::io::Write;
    let mut s = serve(64 << 20);
    let url = format!("{}/v2/models/slow/infer", s.url);
    let addr = s.url.trim_start_matches("http://").to_string();
    // A request whose body never ends keeps the `slow` model's next batch waiting for it (up to
    // the model's 1.5 s delay), so the complete request after it is in flight when the signal
    // comes.
    let mut stuck = std::net::TcpStream::connect(&addr).unwrap();
    stuck.write_all(b"POST /v2/models/slow/infer HTTP/1.1\r\nHost: test\r\nContent-Length: 1000\r\n\r\n{").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let in_flight = std::thread::spawn(move || post(&url, &infer_json(json!([{"name": "inputs", "shape": [2, 64], "datatype": "FP32", "data": row(2, 64)}])), &[]));
    std::thread::sleep(Duration::from_millis(300));
    let kill = Command::new("kill").args(["-TERM", &s.child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    std::thread::sleep(Duration::from_millis(200));
    assert!(!in_flight.is_finished(), "the request waits in the queue");
    assert!(std::net::TcpStream::connect(&addr).is_err(), "a draining server refuses new connections");
    drop(stuck);
    let (status, body) = in_flight.join().unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["outputs"][0]["shape"], json!([2, 10]));
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(status) = s.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the server did not stop");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "{exit:?}");
}
