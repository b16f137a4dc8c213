//! A closed-loop gRPC load generator for `flaxlayer serve --grpc-port` (KServe v2
//! `ModelInfer`), built on tonic's client: `C` concurrent callers, each sending its next request
//! as soon as its last one is answered, for `S` seconds, over `N` HTTP/2 connections (gRPC
//! multiplexes; the callers are spread over the connections). Every request carries the same
//! FP32 input of the given shape as `raw_input_contents`. Prints one line:
//! `RESULT {"requests": .., "errors": .., "duration_us": .., "p50_us": .., "p99_us": ..}`.
//!
//! ```text
//! cargo bench --features serve --bench grpc_load -- --addr 127.0.0.1:8001 --model mlp \
//!     --shape 1,64 --concurrency 8 --seconds 5 [--connections 1] [--threads 2]
//! ```
//! scripts/bench_serve.sh runs it for the gRPC rows of BENCHMARKS.md.

use std::time::{Duration, Instant};

use flaxlayer::server::grpc::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use flaxlayer::server::grpc::proto::model_infer_request::InferInputTensor;
use flaxlayer::server::grpc::proto::ModelInferRequest;

struct Args {
    addr: String,
    model: String,
    input: String,
    shape: Vec<i64>,
    concurrency: usize,
    connections: usize,
    threads: usize,
    seconds: f64,
}

fn parse() -> Result<Args, String> {
    let mut a = Args { addr: String::new(), model: String::new(), input: "inputs".into(), shape: vec![1, 64], concurrency: 1, connections: 1, threads: 2, seconds: 5.0 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        // `cargo bench` passes --bench to every bench binary.
        if flag == "--bench" {
            continue;
        }
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let num = |v: String| v.parse::<usize>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--addr" => a.addr = value()?,
            "--model" => a.model = value()?,
            "--input" => a.input = value()?,
            "--shape" => a.shape = value()?.split(',').map(|d| d.trim().parse::<i64>().map_err(|e| format!("--shape: {e}"))).collect::<Result<_, _>>()?,
            "--concurrency" => a.concurrency = num(value()?)?.max(1),
            "--connections" => a.connections = num(value()?)?.max(1),
            "--threads" => a.threads = num(value()?)?.max(1),
            "--seconds" => a.seconds = value()?.parse::<f64>().map_err(|e| format!("--seconds: {e}"))?,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if a.addr.is_empty() || a.model.is_empty() {
        return Err("usage: grpc_load --addr HOST:PORT --model NAME [--input NAME] [--shape 1,64] [--concurrency C] [--connections N] [--threads T] [--seconds S]".into());
    }
    Ok(a)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // `cargo test --all-targets` runs every bench once with no arguments: there is no server
    // to load then, so it only checks that this builds.
    if std::env::args().len() == 1 {
        eprintln!("grpc_load: a load generator for scripts/bench_serve.sh (no arguments: nothing to do)");
        return Ok(());
    }
    let args = parse()?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(args.threads).enable_all().build()?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let elements: i64 = args.shape.iter().product();
    let raw: Vec<u8> = (0..elements).flat_map(|i| ((i % 17) as f32 * 0.125 - 1.0).to_le_bytes()).collect();
    let request = ModelInferRequest {
        model_name: args.model.clone(),
        inputs: vec![InferInputTensor { name: args.input.clone(), datatype: "FP32".into(), shape: args.shape.clone(), ..Default::default() }],
        raw_input_contents: vec![raw],
        ..Default::default()
    };
    let mut channels = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", args.addr))?.tcp_nodelay(true);
        channels.push(endpoint.connect().await?);
    }
    // A warm-up call per connection, unmeasured.
    for ch in &channels {
        GrpcInferenceServiceClient::new(ch.clone()).model_infer(request.clone()).await?;
    }
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(args.seconds);
    let mut tasks = Vec::with_capacity(args.concurrency);
    for c in 0..args.concurrency {
        let mut client = GrpcInferenceServiceClient::new(channels[c % channels.len()].clone()).max_decoding_message_size(usize::MAX);
        let request = request.clone();
        tasks.push(tokio::spawn(async move {
            let (mut latencies, mut errors) = (Vec::new(), 0u64);
            while Instant::now() < until {
                let t = Instant::now();
                match client.model_infer(request.clone()).await {
                    Ok(_) => latencies.push(t.elapsed().as_micros() as u64),
                    Err(_) => errors += 1,
                }
            }
            (latencies, errors)
        }));
    }
    let (mut latencies, mut errors) = (Vec::new(), 0u64);
    for t in tasks {
        let (l, e) = t.await?;
        latencies.extend(l);
        errors += e;
    }
    let duration_us = started.elapsed().as_micros() as u64;
    latencies.sort_unstable();
    let pct = |p: f64| latencies.get(((latencies.len() as f64 * p).ceil() as usize).saturating_sub(1)).copied().unwrap_or(0);
    println!(
        "RESULT {{\"requests\": {}, \"errors\": {errors}, \"duration_us\": {duration_us}, \"p50_us\": {}, \"p99_us\": {}}}",
        latencies.len(),
        pct(0.50),
        pct(0.99)
    );
    Ok(())
}
