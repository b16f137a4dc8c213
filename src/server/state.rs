//! What every handler shares (the repository, the metrics, the body limit, whether the server
//! is draining), reading a request body under the limit, and accounting for each inference
//! request in the metrics.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes, HttpBody};
use axum::http::{header, HeaderMap};

use super::config::Limits;
use super::error::ApiError;
use super::metrics::{observe, FailureLabels, Metrics};
use super::model::{Deadline, Model};
use super::repository::Repository;

/// The handlers' shared state.
pub struct AppState {
    /// The models.
    pub repo: Repository,
    /// The metrics.
    pub metrics: Arc<Metrics>,
    /// The largest body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Timeouts, connection and queue limits.
    pub limits: Limits,
    /// Set once shutdown has begun: readiness turns false while in-flight requests finish.
    pub draining: AtomicBool,
    /// The generators of the generation bundles (`generators.rs`).
    pub generators: super::generators::Generators,
}

impl AppState {
    /// The deadline of a request that started at `started`: `--request-timeout` after it.
    pub fn deadline(&self, started: Instant) -> Deadline {
        let limit = self.limits.request_timeout;
        // A limit too large to add is no limit: a year.
        let at = started.checked_add(limit).unwrap_or_else(|| started + Duration::from_secs(365 * 86_400));
        Deadline { at, limit, which: "the server's --request-timeout" }
    }

    /// Whether shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// The model an inference request names, with the time the request started; a model that
    /// isn't there is counted as a failure of no model.
    pub fn model_for_request(&self, name: &str, version: Option<&str>) -> Result<(&Arc<Model>, Instant), ApiError> {
        let started = Instant::now();
        match self.repo.get(name, version) {
            Ok(m) => Ok((m, started)),
            Err(e) => {
                self.account(None, started, Some(&e));
                Err(e)
            }
        }
    }

    /// Counts one inference request answered with `error` (or successfully): for `model` when
    /// it was found (requests, failures by status, duration), else as a failure of no model.
    pub fn account(&self, model: Option<&Model>, started: Instant, error: Option<&ApiError>) {
        let Some(model) = model else {
            if let Some(e) = error {
                let labels = FailureLabels { model: String::new(), version: String::new(), status: e.status().as_u16() };
                self.metrics.failures.get_or_create(&labels).inc();
            }
            return;
        };
        let labels = model.labels();
        self.metrics.requests.get_or_create(labels).inc();
        match error {
            None => observe(&self.metrics.request_seconds.get_or_create(labels), started.elapsed()),
            Some(e) => {
                let failure = FailureLabels { model: labels.model.clone(), version: labels.version.clone(), status: e.status().as_u16() };
                self.metrics.failures.get_or_create(&failure).inc();
            }
        }
    }
}

/// Reads a request body of at most `limit` bytes within `timeout` (else 408). A
/// `Content-Length` over the limit is refused before anything is read; a body that ends
/// before its `Content-Length` is refused by the HTTP layer; compressed bodies are refused (no
/// `Content-Encoding` is supported).
pub async fn read_body(headers: &HeaderMap, body: Body, limit: usize, timeout: Duration) -> Result<Bytes, ApiError> {
    match tokio::time::timeout(timeout, read_body_untimed(headers, body, limit)).await {
        Ok(r) => r,
        Err(_) => Err(ApiError::ClientTimeout { what: "sending the request body", limit_ms: timeout.as_millis() }),
    }
}

async fn read_body_untimed(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    if let Some(enc) = headers.get(header::CONTENT_ENCODING) {
        if enc.as_bytes() != b"identity" {
            return Err(ApiError::Unsupported { feature: format!("Content-Encoding {:?}", String::from_utf8_lossy(enc.as_bytes())) });
        }
    }
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    if let Some(n) = declared.filter(|&n| n > limit) {
        return Err(ApiError::BodyTooLarge { limit, got: n });
    }
    let mut body = body;
    let mut buf = Vec::new();
    buf.try_reserve_exact(declared.unwrap_or(0).min(limit)).map_err(|e| ApiError::Internal { reason: format!("reserving the body's {} bytes: {e}", declared.unwrap_or(0)) })?;
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        let frame = frame.map_err(|e| ApiError::malformed(format!("reading the body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            let got = buf.len().saturating_add(data.len());
            if got > limit {
                return Err(ApiError::BodyTooLarge { limit, got });
            }
            if declared.is_some_and(|n| got > n) {
                return Err(ApiError::malformed(format!("the body is longer than its Content-Length {}", declared.unwrap_or(0))));
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(Bytes::from(buf))
}
