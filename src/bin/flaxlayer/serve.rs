//! `flaxlayer serve`: an inference server over a model repository (KServe v2 over HTTP and
//! gRPC, TF Serving REST), until Ctrl-C or SIGTERM.

use std::path::PathBuf;

use anyhow::{Context, Result};
use flaxlayer::server::{shutdown_signal, Server, ServerConfig, DEFAULT_MAX_BODY_BYTES};

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
    /// The port of KServe v2 over gRPC (`inference.GRPCInferenceService`), on the same host (0:
    /// any free port; the address is printed).
    #[arg(long, default_value_t = 8001)]
    grpc_port: u16,
    /// The largest request body accepted, in bytes (larger ones get 413).
    #[arg(long, default_value_t = DEFAULT_MAX_BODY_BYTES)]
    max_body_bytes: usize,
    /// Threads of the HTTP runtime (default: one per core). Model calls run on their own
    /// worker threads (`instances` in MODEL/config.json).
    #[arg(long)]
    http_threads: Option<usize>,
}

pub fn run(args: ServeArgs, common: &Common) -> Result<()> {
    let client = common.client().context("loading the PJRT plugin")?;
    let config = ServerConfig { models: args.models.clone(), max_body_bytes: args.max_body_bytes, untrusted: common.isolation.clone() };
    let server = Server::load(&config, &client).with_context(|| format!("loading the model repository {}", args.models.display()))?;
    for (name, versions) in server.repository().models() {
        for m in versions {
            let batching = if m.merges() { "dynamic batching" } else { "unbatched" };
            println!("model {name} version {}: {} input(s), {} output(s), {batching}", m.version(), m.inputs().len(), m.outputs().len());
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
        let grpc = tokio::net::TcpListener::bind((args.host.as_str(), args.grpc_port)).await.with_context(|| format!("binding {}:{} (--grpc-port)", args.host, args.grpc_port))?;
        println!("listening on http://{}", listener.local_addr()?);
        println!("listening on grpc://{}", grpc.local_addr()?);
        use std::io::Write;
        std::io::stdout().flush()?;
        // One signal stops both listeners.
        let (stop, stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown_signal().await;
            let _ = stop.send(true);
        });
        let on_stop = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|&s| s).await;
        };
        let http = server.run(listener, on_stop(stopped.clone()));
        let grpc = server.run_grpc(grpc, on_stop(stopped));
        tokio::try_join!(async { http.await.context("serving HTTP") }, async { grpc.await.context("serving gRPC") })?;
        Ok::<_, anyhow::Error>(())
    })?;
    drop(rt);
    // Every request has been answered; let the workers go.
    drop(server);
    println!("stopped");
    Ok(())
}
