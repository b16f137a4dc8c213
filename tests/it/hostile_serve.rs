//! `flaxlayer serve` against hostile clients (issue 22): declared sizes that would have
//! allocated terabytes, overflowing shapes, lying lengths, deep JSON, slow headers, idle and
//! surplus connections, a burst far above the queue limits, abandoned requests. Every case
//! must get a 4xx/5xx JSON answer or a closed connection within its time limit; afterwards
//! the server is alive (ready), its RSS bounded, and it exits 0 on SIGTERM.
//!
//! One server with short limits (1 s header and body timeouts, 2 s idle timeout, a queue of
//! 4 requests) serves the MLP and the CNN (`hlo/`), on 127.0.0.1 only. The whole suite
//! takes about 20 s.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::{hlo, Served};

fn link(repo: &std::path::Path, name: &str, bundle: &str) {
    std::fs::create_dir_all(repo.join(name)).unwrap();
    std::os::unix::fs::symlink(hlo(bundle), repo.join(name).join("1")).unwrap();
}

fn serve() -> Served {
    let repo = tempfile::tempdir().unwrap();
    link(repo.path(), "mlp", "mlp");
    link(repo.path(), "cnn", "cnn");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flaxlayer"));
    cmd.args(["serve", "--models", repo.path().to_str().unwrap(), "--port", "0", "--grpc-port", "0"])
        .args(["--max-body-bytes", "4194304", "--header-read-timeout", "1s", "--body-read-timeout", "1s"])
        .args(["--request-timeout", "20s", "--idle-timeout", "2s", "--max-connections", "48"])
        .args(["--max-queue-requests", "4", "--max-queue-bytes", "8388608"])
        .stderr(Stdio::inherit());
    Served::start(cmd, repo)
}

/// What came back on a connection: the first response (status, headers, body), or none, and
/// whether the server closed the connection.
#[derive(Debug)]
struct Outcome {
    status: Option<u16>,
    head: String,
    body: String,
    closed: bool,
}

/// Reads one response from `s` (or until the server closes, or `limit` passes).
fn read_response(s: &mut TcpStream, limit: Duration) -> Outcome {
    let deadline = Instant::now() + limit;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let mut closed = false;
    loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let length = head.lines().find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap_or(0)));
            if buf.len() >= end + 4 + length.unwrap_or(0) {
                break;
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut chunk) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => break,
            Err(_) => {
                closed = true;
                break;
            }
        }
    }
    let Some(end) = find(&buf, b"\r\n\r\n") else {
        return Outcome { status: None, head: String::new(), body: String::from_utf8_lossy(&buf).to_string(), closed };
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok());
    let length = head.lines().find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").and_then(|v| v.trim().parse::<usize>().ok()));
    let body = &buf[end + 4..];
    let body = &body[..length.unwrap_or(body.len()).min(body.len())];
    Outcome { status, head, body: String::from_utf8_lossy(body).to_string(), closed }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Sends raw bytes on a new connection and reads the answer within `limit`.
fn raw(addr: &str, bytes: &[u8], limit: Duration) -> Outcome {
    let mut s = TcpStream::connect(addr).unwrap();
    let _ = s.write_all(bytes);
    read_response(&mut s, limit)
}

fn post_bytes(path: &str, extra_headers: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!("POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n{extra_headers}\r\n", body.len()).into_bytes();
    r.extend_from_slice(body);
    r
}

/// Asserts a JSON error answer with one of `statuses`; returns its message.
fn assert_json_error(what: &str, o: &Outcome, statuses: &[u16]) -> String {
    let status = o.status.unwrap_or_else(|| panic!("{what}: no answer: {o:?}"));
    assert!(statuses.contains(&status), "{what}: status {status}, expected one of {statuses:?}: {o:?}");
    assert!(o.head.to_ascii_lowercase().contains("content-type: application/json"), "{what}: not JSON: {o:?}");
    let v: Value = serde_json::from_str(&o.body).unwrap_or_else(|e| panic!("{what}: body is not JSON ({e}): {o:?}"));
    v["error"].as_str().unwrap_or_else(|| panic!("{what}: no \"error\": {o:?}")).to_string()
}

fn infer(model: &str, request: Value) -> Vec<u8> {
    post_bytes(&format!("/v2/models/{model}/infer"), "", &serde_json::to_vec(&request).unwrap())
}

fn ready(addr: &str) -> bool {
    let o = raw(addr, b"GET /v2/health/ready HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", Duration::from_secs(5));
    o.status == Some(200)
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()).unwrap()
}

fn metric(addr: &str, prefix: &str) -> f64 {
    let o = raw(addr, b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", Duration::from_secs(5));
    o.body.lines().filter(|l| l.starts_with(prefix)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

const T: Duration = Duration::from_secs(5);

#[test]
fn hostile_clients_get_json_errors_or_closed_connections_and_the_server_survives() {
    let mut s = serve();
    let addr = s.addr().to_string();
    let pid = s.child.id();
    let idle_rss = rss_kib(pid);

    // Issue 22's crashes: declared shapes allocated before any check (1 TiB; capacity
    // overflow). Each is refused with 400 before anything is allocated.
    for (shape, dtype) in [(json!([4294967296u64, 64]), "FP32"), (json!([1u64 << 62]), "UINT8"), (json!([1u64 << 61]), "FP32"), (json!([1u64 << 61, 64]), "FP32")] {
        let o = raw(&addr, &infer("mlp", json!({"inputs": [{"name": "inputs", "shape": shape, "datatype": dtype, "data": [0]}]})), T);
        assert_json_error(&format!("shape {shape} {dtype}"), &o, &[400]);
    }
    // The same with binary data declared (and not sent).
    let o = raw(&addr, &infer("mlp", json!({"inputs": [{"name": "inputs", "shape": [1u64 << 40, 64], "datatype": "FP32", "parameters": {"binary_data_size": 1u64 << 48}}]})), T);
    assert_json_error("a terabyte of binary data declared", &o, &[400]);
    // A product that overflows 64 bits, and one that fits but passes the queue's bytes.
    let o = raw(&addr, &infer("mlp", json!({"inputs": [{"name": "inputs", "shape": [u64::MAX, 64], "datatype": "FP32", "data": [0]}]})), T);
    assert_json_error("overflowing shape", &o, &[400]);
    let o = raw(&addr, &infer("mlp", json!({"inputs": [{"name": "inputs", "shape": [1000, 64], "datatype": "FP32", "data": [0]}]})), T);
    let msg = assert_json_error("shape larger than the data", &o, &[400]);
    assert!(msg.contains("too short"), "{msg}");

    // Lying lengths.
    let body = serde_json::to_vec(&json!({"inputs": [{"name": "inputs", "shape": [1, 64], "datatype": "FP32", "parameters": {"binary_data_size": 256}}]})).unwrap();
    let binary = vec![0u8; 256];
    let with = |header_len: usize, bin: &[u8]| {
        let mut b = body.clone();
        b.extend_from_slice(bin);
        post_bytes("/v2/models/mlp/infer", &format!("Inference-Header-Content-Length: {header_len}\r\n"), &b)
    };
    let o = raw(&addr, &with(body.len(), &binary), T);
    assert_eq!(o.status, Some(200), "the honest binary request: {o:?}");
    assert_json_error("binary_data_size larger than the binary part", &raw(&addr, &with(body.len(), &binary[..100]), T), &[400]);
    assert_json_error("binary_data_size smaller than the binary part", &raw(&addr, &with(body.len(), &[binary.clone(), vec![0; 8]].concat()), T), &[400]);
    assert_json_error("Inference-Header-Content-Length past the body", &raw(&addr, &with(body.len() + 10_000, &binary), T), &[400]);
    assert_json_error("Inference-Header-Content-Length cutting the JSON", &raw(&addr, &with(body.len() - 5, &binary), T), &[400]);
    let o = raw(&addr, &post_bytes("/v2/models/mlp/infer", "Inference-Header-Content-Length: 99999999999999999999999\r\n", &body), T);
    assert_json_error("Inference-Header-Content-Length not a number", &o, &[400]);
    // Content-Length larger than the body: the body never ends; 408 (or a close) after the
    // 1 s body timeout.
    let t = Instant::now();
    let o = raw(&addr, b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n{\"inputs\": [", T);
    if o.status.is_some() {
        assert_json_error("Content-Length larger than the body", &o, &[408]);
    } else {
        assert!(o.closed, "{o:?}");
    }
    assert!(t.elapsed() < T, "{:?}", t.elapsed());
    // Content-Length smaller than the body: the first bytes are the request (bad JSON); the
    // rest is not a request.
    let o = raw(&addr, b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\n\r\n{\"inputs\": [{\"name\": \"inputs\"}]}", T);
    assert_json_error("Content-Length smaller than the body", &o, &[400]);
    // Content-Length over the body limit: refused before the body is read.
    let o = raw(&addr, b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: t\r\nContent-Length: 99999999999\r\n\r\n", T);
    assert_json_error("Content-Length over the limit", &o, &[413]);
    let o = raw(&addr, b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: t\r\nContent-Length: 184467440737095516160\r\n\r\n", T);
    assert!(o.status.is_none_or(|s| (400..500).contains(&s)) && (o.status.is_some() || o.closed), "Content-Length past u64: {o:?}");

    // Deeply nested JSON: the whole body, and one input's data.
    let deep = format!("{}{}", "[".repeat(200_000), "]".repeat(200_000));
    assert_json_error("deeply nested body", &raw(&addr, &post_bytes("/v2/models/mlp/infer", "", deep.as_bytes()), T), &[400]);
    let nested = format!(r#"{{"inputs": [{{"name": "inputs", "shape": [1, 64], "datatype": "FP32", "data": {}0{}}}]}}"#, "[".repeat(100_000), "]".repeat(100_000));
    assert_json_error("deeply nested data", &raw(&addr, &post_bytes("/v2/models/mlp/infer", "", nested.as_bytes()), T), &[400]);
    let o = raw(&addr, &post_bytes("/v1/models/mlp:predict", "", format!(r#"{{"instances": {deep}}}"#).as_bytes()), T);
    assert_json_error("deeply nested TF Serving body", &o, &[400]);

    // The framework's own rejections are JSON too.
    assert_json_error("model name not UTF-8", &raw(&addr, b"GET /v2/models/%FF%FE/ready HTTP/1.1\r\nHost: t\r\n\r\n", T), &[400]);
    assert_json_error("wrong method", &raw(&addr, b"DELETE /v2/health/live HTTP/1.1\r\nHost: t\r\n\r\n", T), &[405]);
    assert_json_error("unknown route", &raw(&addr, b"GET /v3/nothing HTTP/1.1\r\nHost: t\r\n\r\n", T), &[404]);
    assert_json_error("bad JSON", &raw(&addr, &post_bytes("/v2/models/mlp/infer", "", b"{\"inputs\": [}"), T), &[400]);
    assert_json_error("gzip body", &raw(&addr, &post_bytes("/v2/models/mlp/infer", "Content-Encoding: gzip\r\n", b"xx"), T), &[400]);
    // KServe's timeout parameter: 1 µs passes before the answer can come.
    let row: Vec<f32> = vec![0.5; 64];
    let o = raw(&addr, &infer("mlp", json!({"parameters": {"timeout": 1}, "inputs": [{"name": "inputs", "shape": [1, 64], "datatype": "FP32", "data": row}]})), T);
    let msg = assert_json_error("a 1 µs timeout parameter", &o, &[504]);
    assert!(msg.contains("timeout parameter"), "{msg}");

    // Slow headers: connections dribbling a byte every 300 ms are closed by the 1 s header
    // timeout, while others are served.
    let t = Instant::now();
    let slow: Vec<_> = (0..12)
        .map(|_| {
            let a = addr.clone();
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(&a).unwrap();
                let request = b"GET /v2/health/ready HTTP/1.1\r\nHost: t\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
                for b in request.iter() {
                    if s.write_all(&[*b]).is_err() {
                        return true;
                    }
                    std::thread::sleep(Duration::from_millis(300));
                    if t.elapsed() > Duration::from_secs(8) {
                        return false;
                    }
                }
                // Every byte went: the server must at least have closed on its timeout.
                let o = read_response(&mut s, Duration::from_secs(2));
                o.closed
            })
        })
        .collect();
    assert!(ready(&addr), "the server answers while slow clients dribble");
    for h in slow {
        assert!(h.join().unwrap(), "a slow-header connection was not closed");
    }
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());

    // An idle keep-alive connection is closed after the 2 s idle timeout.
    let mut s1 = TcpStream::connect(&addr).unwrap();
    s1.write_all(b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let o = read_response(&mut s1, T);
    assert_eq!(o.status, Some(200));
    let t = Instant::now();
    let o = read_response(&mut s1, Duration::from_secs(6));
    assert!(o.closed && o.status.is_none(), "idle connection: {o:?}");
    assert!(t.elapsed() < Duration::from_secs(6));

    // Connections over the limit (48) get a JSON 503 and are closed.
    let held: Vec<TcpStream> = (0..48).map(|_| TcpStream::connect(&addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut extra = TcpStream::connect(&addr).unwrap();
    let o = read_response(&mut extra, T);
    let msg = assert_json_error("a connection over the limit", &o, &[503]);
    assert!(msg.contains("--max-connections"), "{msg}");
    drop(held);
    std::thread::sleep(Duration::from_millis(300));

    // A burst far above the queue limit (4 requests): 320 CNN requests of 64 rows from 32
    // clients. Each is answered 200 or 503 with Retry-After; some are shed.
    let rows = 64usize;
    let image: Vec<f32> = (0..rows * 28 * 28).map(|i| (i % 17) as f32 / 17.0).collect();
    let bin: Vec<u8> = image.iter().flat_map(|x| x.to_le_bytes()).collect();
    let header = serde_json::to_vec(&json!({"inputs": [{"name": "inputs", "shape": [rows, 28, 28, 1], "datatype": "FP32", "parameters": {"binary_data_size": bin.len()}}]})).unwrap();
    let request = {
        let mut b = header.clone();
        b.extend_from_slice(&bin);
        post_bytes("/v2/models/cnn/infer", &format!("Inference-Header-Content-Length: {}\r\n", header.len()), &b)
    };
    let t = Instant::now();
    let clients: Vec<_> = (0..32)
        .map(|_| {
            let (a, r) = (addr.clone(), request.clone());
            std::thread::spawn(move || {
                // (answered, shed by the queue, shed by the connection limit)
                let mut counts = (0usize, 0usize, 0usize);
                for _ in 0..10 {
                    let o = raw(&a, &r, Duration::from_secs(30));
                    match o.status {
                        Some(200) => counts.0 += 1,
                        Some(503) => {
                            assert!(o.head.to_ascii_lowercase().contains("retry-after: 1"), "{o:?}");
                            let v: Value = serde_json::from_str(&o.body).unwrap();
                            let msg = v["error"].as_str().unwrap();
                            if msg.contains("overloaded") {
                                counts.1 += 1;
                            } else {
                                assert!(msg.contains("--max-connections"), "{o:?}");
                                counts.2 += 1;
                            }
                        }
                        _ => panic!("burst: {o:?}"),
                    }
                }
                counts
            })
        })
        .collect();
    let mut peak_rss = 0;
    while clients.iter().any(|c| !c.is_finished()) {
        peak_rss = peak_rss.max(rss_kib(pid));
        std::thread::sleep(Duration::from_millis(20));
        assert!(t.elapsed() < Duration::from_secs(60), "the burst did not end");
    }
    let (ok, shed, refused) = clients.into_iter().map(|c| c.join().unwrap()).fold((0, 0, 0), |a, b| (a.0 + b.0, a.1 + b.1, a.2 + b.2));
    assert_eq!(ok + shed + refused, 320);
    assert!(ok > 0 && shed > 0, "{ok} answered, {shed} shed by the queue, {refused} by the connection limit");
    eprintln!("burst: {ok} answered, {shed} shed by the queue, {refused} by the connection limit in {:?}; RSS idle {idle_rss} KiB, peak {peak_rss} KiB", t.elapsed());
    assert!(metric(&addr, "flaxlayer_shed_requests_total{model=\"cnn\"") >= shed as f64);

    // Abandoned requests: clients that send a request and hang up while it is queued behind
    // others; their jobs are dropped unrun.
    let before = metric(&addr, "flaxlayer_abandoned_jobs_total{model=\"cnn\"");
    let big = {
        let rows = 256usize;
        let bin = vec![0u8; rows * 28 * 28 * 4];
        let header = serde_json::to_vec(&json!({"inputs": [{"name": "inputs", "shape": [rows, 28, 28, 1], "datatype": "FP32", "parameters": {"binary_data_size": bin.len()}}]})).unwrap();
        let mut b = header.clone();
        b.extend_from_slice(&bin);
        post_bytes("/v2/models/cnn/infer", &format!("Inference-Header-Content-Length: {}\r\n", header.len()), &b)
    };
    // A job is abandoned only if its client hangs up after the server queued it and before it
    // runs: how long that window lasts depends on the machine's speed (the CNN at 256 rows
    // took ~20 ms here on a quiet machine, far longer under load), so the rounds hang up after
    // different delays until one lands in the window.
    for round in 0..36 {
        let gone: Vec<TcpStream> = (0..4)
            .map(|_| {
                let mut c = TcpStream::connect(&addr).unwrap();
                c.write_all(&big).unwrap();
                c
            })
            .collect();
        std::thread::sleep(Duration::from_millis([1, 3, 6, 12, 25, 50][round % 6]));
        drop(gone);
        std::thread::sleep(Duration::from_millis(400));
        if metric(&addr, "flaxlayer_abandoned_jobs_total{model=\"cnn\"") > before {
            break;
        }
    }
    assert!(metric(&addr, "flaxlayer_abandoned_jobs_total{model=\"cnn\"") > before, "no abandoned job was dropped");

    // Alive, ready, memory back near idle, and a clean exit.
    std::thread::sleep(Duration::from_millis(500));
    assert!(ready(&addr));
    let after = rss_kib(pid);
    eprintln!("RSS after the suite: {after} KiB (idle {idle_rss} KiB, burst peak {peak_rss} KiB)");
    assert!(peak_rss < idle_rss + 600 * 1024, "RSS under the burst: {peak_rss} KiB from {idle_rss} KiB idle");
    assert!(after < idle_rss + 300 * 1024, "RSS after the suite: {after} KiB from {idle_rss} KiB idle");
    let kill = Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
    assert!(kill.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(status) = s.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the server did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "{exit:?}");
}
