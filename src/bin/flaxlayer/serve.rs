//! `flaxlayer serve`: an inference server over a model repository (KServe v2 and TF Serving
//! REST), until Ctrl-C or SIGTERM.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use flaxlayer::server::{shutdown_signal, Limits, Server, ServerConfig, DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_QUEUE_BYTES, DEFAULT_MAX_QUEUE_REQUESTS};

use crate::Common;

#[derive(clap::Args)]
pub struct ServeArgs {
    /// The model repository: MODEL/VERSION/ bundle directories (the highest version serves by
    /// default), each model with an optional MODEL/config.json.
    #[arg(long)]
    models: PathBuf,
    /// The address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// The port to listen on (0: any free port; the address is printed).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// The largest request body accepted, in bytes (larger ones get 413).
    #[arg(long, default_value_t = DEFAULT_MAX_BODY_BYTES)]
    max_body_bytes: usize,
    /// Threads of the HTTP runtime (default: one per core). Model calls run on their own
    /// worker threads (`instances` in MODEL/config.json).
    #[arg(long)]
    http_threads: Option<usize>,
    /// The longest a client may take to send a request's headers (then the connection is
    /// closed). A duration: `10s`, `500ms`, `2m`.
    #[arg(long, default_value = "10s", value_parser = duration)]
    header_read_timeout: Duration,
    /// The longest a client may take to send a request's body (then 408, connection closed).
    #[arg(long, default_value = "30s", value_parser = duration)]
    body_read_timeout: Duration,
    /// The longest a request may take from its headers to its answer (then 504; its queued
    /// job is dropped). KServe's `timeout` parameter may shorten it.
    #[arg(long, default_value = "60s", value_parser = duration)]
    request_timeout: Duration,
    /// Close a keep-alive connection after this long with no request.
    #[arg(long, default_value = "60s", value_parser = duration)]
    idle_timeout: Duration,
    /// Connections open at once; more get 503 and are closed.
    #[arg(long, default_value_t = DEFAULT_MAX_CONNECTIONS, value_parser = clap::value_parser!(usize))]
    max_connections: usize,
    /// Requests each model version holds at once (queued or running); more get 503 with
    /// Retry-After. A model's config.json may set its own (`max_queue_requests`).
    #[arg(long, default_value_t = DEFAULT_MAX_QUEUE_REQUESTS)]
    max_queue_requests: usize,
    /// Bytes of input tensors each model version holds at once; more get 503 with
    /// Retry-After. A model's config.json may set its own (`max_queue_bytes`).
    #[arg(long, default_value_t = DEFAULT_MAX_QUEUE_BYTES)]
    max_queue_bytes: usize,
}

/// A duration: a number with a unit (`ms`, `s`, `m`), or seconds without one.
fn duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let x: f64 = number.trim().parse().map_err(|_| format!("expected a duration like 10s, 500ms or 2m, got {s:?}"))?;
    let secs = x * scale;
    if !(secs > 0.0 && secs <= 86_400.0 * 365.0) {
        return Err(format!("expected a duration above zero and at most a year, got {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

pub fn run(args: ServeArgs, common: &Common) -> Result<()> {
    let client = common.client().context("loading the PJRT plugin")?;
    anyhow::ensure!(args.max_connections > 0 && args.max_queue_requests > 0 && args.max_queue_bytes > 0, "--max-connections, --max-queue-requests and --max-queue-bytes must be at least 1");
    let limits = Limits {
        header_read_timeout: args.header_read_timeout,
        body_read_timeout: args.body_read_timeout,
        request_timeout: args.request_timeout,
        idle_timeout: args.idle_timeout,
        max_connections: args.max_connections,
        max_queue_requests: args.max_queue_requests,
        max_queue_bytes: args.max_queue_bytes,
    };
    let config = ServerConfig { models: args.models.clone(), max_body_bytes: args.max_body_bytes, untrusted: common.isolation.clone(), limits };
    let server = Server::load(&config, &client).with_context(|| format!("loading the model repository {}", args.models.display()))?;
    for (name, versions) in server.repository().models() {
        for m in versions {
            let (requests, bytes) = m.queue_limits();
            println!(
                "model {name} version {}: {} input(s), {} output(s), {}; queue up to {requests} requests, {bytes} bytes",
                m.version(),
                m.inputs().len(),
                m.outputs().len(),
                m.batching_summary()
            );
        }
    }
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(n) = args.http_threads {
        rt.worker_threads(n.max(1));
    }
    let rt = rt.build().context("starting the async runtime")?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port)).await.with_context(|| format!("binding {}:{}", args.host, args.port))?;
        println!("listening on http://{}", listener.local_addr()?);
        use std::io::Write;
        std::io::stdout().flush()?;
        server.run(listener, shutdown_signal()).await.context("serving")
    })?;
    drop(rt);
    // Every request has been answered; let the workers go.
    drop(server);
    println!("stopped");
    Ok(())
}
