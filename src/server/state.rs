//! What every handler shares (the repository, the metrics, the body limit, whether the server
//! is draining), reading a request body under the limit, and accounting for each inference
//! request in the metrics.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes, HttpBody};
use axum::http::{header, HeaderMap};

use super::error::ApiError;
use super::metrics::{observe, FailureLabels, Metrics};
use super::model::Model;
use super::repository::Repository;

/// The handlers' shared state.
pub struct AppState {
    /// The models.
    pub repo: Repository,
    /// The metrics.
    pub metrics: Arc<Metrics>,
    /// The largest body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Set once shutdown has begun: readiness turns false while in-flight requests finish.
    pub draining: AtomicBool,
    /// The generators of the generation bundles (`generate.rs`).
    pub generators: super::generate::Generators,
}

impl AppState {
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

/// Reads a request body of at most `limit` bytes. A `Content-Length` over the limit is refused
/// before anything is read; compressed bodies are refused (no `Content-Encoding` is supported).
pub async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, ApiError> {
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
    let mut buf = Vec::with_capacity(declared.unwrap_or(0).min(limit));
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        let frame = frame.map_err(|e| ApiError::malformed(format!("reading the body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return Err(ApiError::BodyTooLarge { limit, got: buf.len() + data.len() });
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(Bytes::from(buf))
}
