//! Triton's generate extension for causal LM bundles (docs/generation.md):
//! `POST /v2/models/{m}[/versions/{v}]/generate` answers `{"model_name", "model_version",
//! "output_ids"}`; `.../generate_stream` answers Server-Sent Events, one
//! `data: {"output_ids": [token]}` per token as it comes.
//!
//! Each model version with a `generation` section gets one [`Generator`] (its own layer and
//! cache on the device, besides the layer `infer` uses). Its requests run one at a time, in
//! arrival order of the lock, on tokio's blocking threads; a streaming client that goes away
//! stops its generation at the next token.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde_json::{json, Map, Value};

use super::error::ApiError;
use super::state::{read_body, AppState};

use crate::generate::{GenerateOptions, Sampling};
use crate::Result;

/// The most stop tokens a request may list.
pub const MAX_STOP_TOKENS: usize = 1024;

/// The generate routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v2/models/{model}/generate", post(generate))
        .route("/v2/models/{model}/versions/{version}/generate", post(generate_version))
        .route("/v2/models/{model}/generate_stream", post(stream))
        .route("/v2/models/{model}/versions/{version}/generate_stream", post(stream_version))
}

async fn generate(State(s): State<Arc<AppState>>, Path(model): Path<String>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    at(&s, &model, None, &headers, body, false).await
}

async fn generate_version(State(s): State<Arc<AppState>>, Path((model, version)): Path<(String, String)>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    at(&s, &model, Some(&version), &headers, body, false).await
}

async fn stream(State(s): State<Arc<AppState>>, Path(model): Path<String>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    at(&s, &model, None, &headers, body, true).await
}

async fn stream_version(State(s): State<Arc<AppState>>, Path((model, version)): Path<(String, String)>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    at(&s, &model, Some(&version), &headers, body, true).await
}

async fn at(state: &AppState, name: &str, version: Option<&str>, headers: &HeaderMap, body: Body, streaming: bool) -> Result<Response, ApiError> {
    let (model, started) = state.model_for_request(name, version)?;
    let result = run(state, name, model.version(), headers, body, streaming).await;
    state.account(Some(model), started, result.as_ref().err());
    result
}

async fn run(state: &AppState, name: &str, version: u64, headers: &HeaderMap, body: Body, streaming: bool) -> Result<Response, ApiError> {
    if state.is_draining() {
        return Err(ApiError::Unavailable { reason: "the server is shutting down".into() });
    }
    let generator = state.generators.by_model.get(&(name.to_string(), version)).cloned().ok_or_else(|| {
        ApiError::Unsupported { feature: format!("generate on model {name:?} version {version}: its bundle has no generation section (export it with export_causal_lm)") }
    })?;
    let bytes = read_body(headers, body, state.max_body_bytes, state.limits.body_read_timeout).await?;
    let (prompt, opts) = {
        let g = generator.lock().map_err(|_| ApiError::Unavailable { reason: "the model's generator failed earlier".into() })?;
        parse(&bytes, g.spec())?
    };
    if !streaming {
        let g2 = generator.clone();
        let out = tokio::task::spawn_blocking(move || -> Result<Vec<i64>, ApiError> {
            let mut g = g2.lock().map_err(|_| ApiError::Unavailable { reason: "the model's generator failed earlier".into() })?;
            g.generate(&prompt, &opts, |_| {}).map(|g| g.output_ids).map_err(api_error)
        })
        .await
        .map_err(|e| ApiError::Inference(crate::Error::invalid("generate", format!("the generation task failed: {e}"))))??;
        let body = json!({"model_name": name, "model_version": version.to_string(), "output_ids": out});
        return Ok(([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response());
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    tokio::task::spawn_blocking(move || {
        let event = |v: Value| Bytes::from(format!("data: {v}\n\n"));
        let mut g = match generator.lock() {
            Ok(g) => g,
            Err(_) => {
                let _ = tx.blocking_send(event(json!({"error": "the model's generator failed earlier"})));
                return;
            }
        };
        let tokens = match g.stream(&prompt, &opts) {
            Ok(t) => t,
            Err(e) => {
                let _ = tx.blocking_send(event(json!({"error": e.to_string()})));
                return;
            }
        };
        for t in tokens {
            let msg = match t {
                Ok(t) => json!({"output_ids": [t]}),
                Err(e) => json!({"error": e.to_string()}),
            };
            let last = msg.get("error").is_some();
            if tx.blocking_send(event(msg)).is_err() || last {
                return; // the client went away, or the generation failed
            }
        }
    });
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::new(Events(rx)))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()))
}

/// The events as they come from the generation thread.
struct Events(tokio::sync::mpsc::Receiver<Bytes>);

impl http_body::Body for Events {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<std::result::Result<http_body::Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(http_body::Frame::data(b))))
    }
}

fn api_error(e: crate::Error) -> ApiError {
    match e {
        crate::Error::InvalidArgument { .. } => ApiError::malformed(e.to_string()),
        e => ApiError::Inference(e),
    }
}

/// The request body: `{"input_ids": [int, ...], "parameters": {"max_new_tokens": int,
/// "temperature": number, "top_k": int, "top_p": number, "seed": int, "stop_token_ids":
/// [int, ...]}}`, every field checked; anything else is refused.
fn parse(bytes: &[u8], spec: &crate::bundle::GenerationSpec) -> Result<(Vec<i64>, GenerateOptions), ApiError> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| ApiError::malformed(format!("the body is not JSON: {e}")))?;
    let Value::Object(body) = v else {
        return Err(ApiError::malformed("the body must be a JSON object with input_ids and parameters"));
    };
    if let Some(k) = body.keys().find(|k| !matches!(k.as_str(), "input_ids" | "parameters" | "id")) {
        return Err(ApiError::malformed(format!("unknown field {k:?}; the body takes input_ids and parameters")));
    }
    let ids = |v: &Value, what: &str, max: usize| -> Result<Vec<i64>, ApiError> {
        let arr = v.as_array().ok_or_else(|| ApiError::invalid_tensor(what, "an array of token ids", kind(v)))?;
        if arr.len() > max {
            return Err(ApiError::invalid_tensor(what, format!("at most {max} token ids"), format!("{}", arr.len())));
        }
        arr.iter()
            .map(|x| match x.as_i64() {
                Some(t) if t >= 0 && (t as u64) < spec.vocab_size as u64 => Ok(t),
                _ => Err(ApiError::invalid_tensor(what, format!("token ids in 0..{}", spec.vocab_size), x.to_string())),
            })
            .collect()
    };
    let prompt = ids(body.get("input_ids").ok_or_else(|| ApiError::malformed("missing input_ids"))?, "input_ids", spec.max_len)?;
    if prompt.is_empty() {
        return Err(ApiError::invalid_tensor("input_ids", "at least one token id", "[]"));
    }
    let empty = Map::new();
    let params = match body.get("parameters") {
        None => &empty,
        Some(Value::Object(p)) => p,
        Some(v) => return Err(ApiError::malformed(format!("parameters must be an object, got {}", kind(v)))),
    };
    if let Some(k) = params.keys().find(|k| !matches!(k.as_str(), "max_new_tokens" | "temperature" | "top_k" | "top_p" | "seed" | "stop_token_ids")) {
        return Err(ApiError::malformed(format!("unknown parameter {k:?}; known: max_new_tokens, temperature, top_k, top_p, seed, stop_token_ids")));
    }
    let uint = |k: &str| -> Result<Option<u64>, ApiError> {
        params.get(k).map(|v| v.as_u64().ok_or_else(|| ApiError::malformed(format!("parameter {k} must be a non-negative integer, got {v}")))).transpose()
    };
    let float = |k: &str| -> Result<Option<f32>, ApiError> {
        params.get(k).map(|v| v.as_f64().filter(|x| x.is_finite()).map(|x| x as f32).ok_or_else(|| ApiError::malformed(format!("parameter {k} must be a number, got {v}")))).transpose()
    };
    let room = spec.max_len + 1 - prompt.len();
    let max_new_tokens = match uint("max_new_tokens")? {
        None => 16.min(room),
        Some(n) if n >= 1 && n <= room as u64 => n as usize,
        Some(n) => return Err(ApiError::malformed(format!("max_new_tokens {n} must be in 1..={room} ({} prompt tokens, max_len {})", prompt.len(), spec.max_len))),
    };
    let (temperature, top_k, top_p, seed) = (float("temperature")?, uint("top_k")?, float("top_p")?, uint("seed")?);
    if let Some(t) = temperature.filter(|t| *t <= 0.0) {
        return Err(ApiError::malformed(format!("temperature {t} must be positive")));
    }
    if let Some(p) = top_p.filter(|p| !(*p > 0.0 && *p <= 1.0)) {
        return Err(ApiError::malformed(format!("top_p {p} must be in (0, 1]")));
    }
    let top_k = top_k.map(|k| u32::try_from(k).ok().filter(|k| *k <= i32::MAX as u32).ok_or_else(|| ApiError::malformed(format!("top_k {k} is too large")))).transpose()?;
    let sampled = temperature.is_some() || top_k.is_some() || top_p.is_some() || seed.is_some();
    let sampling = sampled.then(|| Sampling { temperature: temperature.unwrap_or(1.0), top_k: top_k.unwrap_or(0), top_p: top_p.unwrap_or(1.0), seed: seed.unwrap_or(0) });
    let stop_token_ids = match params.get("stop_token_ids") {
        None => Vec::new(),
        Some(v) => ids(v, "parameters.stop_token_ids", MAX_STOP_TOKENS)?,
    };
    Ok((prompt, GenerateOptions { max_new_tokens, sampling, stop_token_ids, stop_on_eos: true }))
}

fn kind(v: &Value) -> String {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
    .to_string()
}
