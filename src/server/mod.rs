//! An inference server for a repository of bundles (`flaxlayer serve`), speaking the protocols
//! clients already use: the Open Inference Protocol v2 (KServe v2) over HTTP/REST with Triton's
//! binary tensor data extension and over gRPC ([`grpc`]: `inference.GRPCInferenceService`), and
//! TensorFlow Serving's REST `predict`. Requests to a model
//! are merged into batches when the bundle allows it. Inference only: every call is
//! [`predict`](crate::FlaxLayer::predict) over the bundle's variables, which are never changed.
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
mod conn;
mod datatype;
mod error;
pub mod grpc;
mod generate;
mod generators;
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

pub use batcher::{Admission, Full, QueueLimits};
pub use config::{
    Limits, ModelConfig, ServerConfig, DEFAULT_BODY_READ_TIMEOUT, DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_QUEUE_BYTES, DEFAULT_MAX_QUEUE_DELAY_US, DEFAULT_MAX_QUEUE_REQUESTS, DEFAULT_REQUEST_TIMEOUT, MODEL_CONFIG_FILE,
};
pub use error::ApiError;
pub use metrics::Metrics;
pub use model::{Deadline, Model, Ticket};
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
        let generators = generators::Generators::load(&repo, client)?;
        let state = AppState { repo, metrics, max_body_bytes: config.max_body_bytes, limits: config.limits.clone(), draining: AtomicBool::new(false), generators };
        Ok(Server { state: Arc::new(state) })
    }

    /// The models served.
    pub fn repository(&self) -> &Repository {
        &self.state.repo
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.state.metrics
    }

    /// The limits it serves under.
    pub fn limits(&self) -> &Limits {
        &self.state.limits
    }

    /// Whether shutdown has begun (readiness is then false).
    pub fn is_draining(&self) -> bool {
        self.state.is_draining()
    }

    /// Every route: KServe v2 (`/v2/...`, with Triton's generate extension for generation
    /// bundles), TF Serving (`/v1/models/...`) and `/metrics`;
    /// anything else is a JSON 404. A handler that panics answers 500, and every error the
    /// framework answers by itself (a wrong method, a path that is not UTF-8) is JSON too.
    pub fn router(&self) -> Router {
        let routes = Router::new()
            .merge(kserve::routes())
            .merge(tfserving::routes())
            .merge(generate::routes())
            .route("/metrics", get(metrics_text))
            .fallback(no_route)
            .with_state(self.state.clone());
        harden(routes)
    }

    /// Serves HTTP/1.1 on `listener` until `shutdown` completes, then refuses new
    /// connections, turns readiness off and returns once every in-flight request has been
    /// answered. Each connection lives under the [`Limits`]: headers read within
    /// `header_read_timeout`, closed when idle for `idle_timeout`, at most `max_connections`
    /// at once (those over it get a 503 and are closed).
    pub async fn run(&self, listener: tokio::net::TcpListener, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        let state = self.state.clone();
        conn::serve(listener, self.router(), &self.state.limits, shutdown, move || state.draining.store(true, Ordering::Relaxed)).await
    }
}

impl Server {
    /// Serves KServe v2 over gRPC (`inference.GRPCInferenceService`) on `listener` until
    /// `shutdown` completes, then turns readiness off, refuses new connections and requests,
    /// and returns once every in-flight request has been answered (at most 30 s later). Runs
    /// beside [`Server::run`] (give both the same shutdown): the two share the models and
    /// their batchers. Messages are limited to the body limit (`RESOURCE_EXHAUSTED` above it).
    pub async fn run_grpc(&self, listener: tokio::net::TcpListener, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        grpc::serve(self.state.clone(), listener, shutdown).await
    }
}

/// A router whose handlers' panics answer 500 (the connection stays up), and whose
/// framework rejections are JSON.
fn harden(router: Router) -> Router {
    router.layer(tower_http::catch_panic::CatchPanicLayer::custom(error::panic_response)).layer(axum::middleware::map_response(error::json_rejections))
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

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn answer(app: Router, method: &str, uri: &str) -> (StatusCode, String, String) {
        let r = app.oneshot(Request::builder().method(method).uri(uri).body(Body::empty()).unwrap()).await.unwrap();
        let status = r.status();
        let ct = r.headers().get(header::CONTENT_TYPE).map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
        let body = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        (status, ct, String::from_utf8_lossy(&body).to_string())
    }

    #[tokio::test]
    async fn panics_and_framework_rejections_answer_json() {
        async fn boom() -> &'static str {
            panic!("on purpose")
        }
        async fn named(axum::extract::Path(name): axum::extract::Path<String>) -> String {
            name
        }
        let app = harden(Router::new().route("/boom", get(boom)).route("/m/{name}", get(named)));
        let (status, ct, body) = answer(app.clone(), "GET", "/boom").await;
        assert_eq!((status, ct.as_str()), (StatusCode::INTERNAL_SERVER_ERROR, "application/json"));
        assert!(body.contains("panicked (on purpose)"), "{body}");
        let (status, ct, body) = answer(app.clone(), "POST", "/boom").await;
        assert_eq!((status, ct.as_str()), (StatusCode::METHOD_NOT_ALLOWED, "application/json"), "{body}");
        let (status, ct, body) = answer(app.clone(), "GET", "/m/%FF").await;
        assert_eq!((status, ct.as_str()), (StatusCode::BAD_REQUEST, "application/json"), "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(v["error"].as_str().unwrap().contains("UTF-8"), "{body}");
        let (status, _, body) = answer(app, "GET", "/m/ok").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
    }
}
