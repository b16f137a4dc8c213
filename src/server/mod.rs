//! An inference server for a repository of bundles (`flaxlayer serve`), speaking the protocols
//! clients already use: the Open Inference Protocol v2 (KServe v2) over HTTP/REST with Triton's
//! binary tensor data extension, and TensorFlow Serving's REST `predict`. Requests to a model
//! are merged into batches when the bundle allows it. Inference only: every call is
//! [`predict`](crate::Layer::predict) over the bundle's variables, which are never changed.
//!
//! The pipeline: [`Repository`] (`DIR/MODEL/VERSION/`, [`ModelConfig`] per model) →
//! [`Model`] (signature, request checks) → the dynamic batcher (worker threads) →
//! `kserve` / `tfserving` handlers; [`Metrics`] at `GET /metrics`; [`ApiError`] for every
//! refusal. Built with the `serve` feature.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use flaxlayer::server::{shutdown_signal, Server, ServerConfig};
//! let client = flaxlayer::pjrt::Client::new(None)?;
//! let server = Server::load(&ServerConfig::new("models"), &client)?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8000").await?;
//! server.run(listener, shutdown_signal()).await?;
//! # Ok(()) }
//! ```

mod batcher;
mod config;
mod datatype;
mod error;
mod generate;
mod kserve;
mod metrics;
mod model;
mod repository;
mod state;
mod tfserving;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

pub use config::{ModelConfig, ServerConfig, DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_QUEUE_DELAY_US, MODEL_CONFIG_FILE};
pub use error::ApiError;
pub use metrics::Metrics;
pub use model::Model;
pub use repository::Repository;

use crate::pjrt::Client;
use crate::Result;
use state::AppState;

/// A loaded model repository with its workers, ready to answer HTTP requests.
///
/// Dropping it lets every model's workers finish their queued requests, then joins them.
pub struct Server {
    state: Arc<AppState>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("repository", &self.state.repo).finish()
    }
}

impl Server {
    /// Loads (and warms up) every model of the repository on `client`'s devices, and starts
    /// each model's workers.
    pub fn load(config: &ServerConfig, client: &Client) -> Result<Server> {
        let metrics = Arc::new(Metrics::new());
        let repo = Repository::load(config, client, &metrics)?;
        let generators = generate::Generators::load(&repo, client)?;
        let state = AppState { repo, metrics, max_body_bytes: config.max_body_bytes, draining: AtomicBool::new(false), generators };
        Ok(Server { state: Arc::new(state) })
    }

    /// The models served.
    pub fn repository(&self) -> &Repository {
        &self.state.repo
    }

    /// Every route: KServe v2 (`/v2/...`, with Triton's generate extension for generation
    /// bundles), TF Serving (`/v1/models/...`) and `/metrics`;
    /// anything else is a JSON 404.
    pub fn router(&self) -> Router {
        Router::new()
            .merge(kserve::routes())
            .merge(tfserving::routes())
            .merge(generate::routes())
            .route("/metrics", get(metrics_text))
            .fallback(no_route)
            .with_state(self.state.clone())
    }

    /// Serves on `listener` until `shutdown` completes, then refuses new connections, turns
    /// readiness off and returns once every in-flight request has been answered.
    pub async fn run(&self, listener: tokio::net::TcpListener, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        let state = self.state.clone();
        let drain = async move {
            shutdown.await;
            state.draining.store(true, Ordering::Relaxed);
        };
        axum::serve(listener, self.router()).with_graceful_shutdown(drain).await
    }
}

/// Completes on Ctrl-C (SIGINT) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], state.metrics.encode()).into_response()
}

async fn no_route(method: Method, uri: Uri) -> Response {
    error::json_error(StatusCode::NOT_FOUND, &format!("no route for {method} {}; see /v2 (KServe v2), /v1/models/NAME (TF Serving), /metrics", uri.path()))
}
