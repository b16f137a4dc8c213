//! What a request can get wrong, or what can go wrong serving it, and the HTTP status and
//! JSON body (`{"error": "..."}`, as both KServe v2 and TF Serving specify) each one gets.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// An error answered to a client. Every variant says what was expected and what came.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// No model of that name in the repository (404).
    #[error("unknown model {name:?}; available: {available}")]
    ModelNotFound {
        /// The name asked for.
        name: String,
        /// The models served.
        available: String,
    },
    /// The model has no such version (404).
    #[error("model {model:?} has no version {version:?}; available: {available}")]
    VersionNotFound {
        /// The model.
        model: String,
        /// The version asked for.
        version: String,
        /// The versions served.
        available: String,
    },
    /// The body is not what the protocol says: not JSON, a missing field, a wrong type (400).
    #[error("malformed request: {reason}")]
    Malformed {
        /// What is wrong.
        reason: String,
    },
    /// A tensor (input or output) the model does not have (400).
    #[error("unknown {kind} {name:?}; the model's {kind}s are: {available}")]
    UnknownTensor {
        /// `input` or `output`.
        kind: &'static str,
        /// The name given.
        name: String,
        /// The model's names.
        available: String,
    },
    /// An input of the model that the request does not give (400).
    #[error("missing input {name:?}; the model's inputs are: {available}")]
    MissingInput {
        /// The input.
        name: String,
        /// The model's inputs.
        available: String,
    },
    /// A tensor whose datatype, shape, size or values are not what the model takes (400).
    #[error("{tensor}: expected {expected}, got {got}")]
    InvalidTensor {
        /// The tensor (`input "x"`).
        tensor: String,
        /// What it must be.
        expected: String,
        /// What it is.
        got: String,
    },
    /// A protocol feature this server does not implement (400).
    #[error("{feature} is not supported by this server")]
    Unsupported {
        /// The feature.
        feature: String,
    },
    /// The body is larger than the server's limit (413).
    #[error("request body of {got} bytes is larger than the limit of {limit} bytes (--max-body-bytes)")]
    BodyTooLarge {
        /// The limit.
        limit: usize,
        /// The size sent (at least).
        got: usize,
    },
    /// The server is shutting down, or the model's workers have stopped (503).
    #[error("unavailable: {reason}")]
    Unavailable {
        /// Why.
        reason: String,
    },
    /// The model's queue is full (by requests or by bytes): the client should retry later
    /// (503 with `Retry-After`; gRPC `RESOURCE_EXHAUSTED`).
    #[error("model {model:?} is overloaded: {reason}; retry after {retry_after_s} s")]
    Overloaded {
        /// The model.
        model: String,
        /// Which limit is reached, and how far.
        reason: String,
        /// Seconds the client should wait (the `Retry-After` header).
        retry_after_s: u64,
    },
    /// The client was too slow sending its request (408; the connection is closed).
    #[error("request timeout: {what} took longer than {limit_ms} ms")]
    ClientTimeout {
        /// What was being read.
        what: &'static str,
        /// The limit.
        limit_ms: u128,
    },
    /// The request's deadline passed before its answer was ready (504; gRPC
    /// `DEADLINE_EXCEEDED`); a queued job is dropped before it runs.
    #[error("deadline exceeded: no answer within {limit_ms} ms ({which})")]
    DeadlineExceeded {
        /// The deadline, from the request's start.
        limit_ms: u128,
        /// Whose: the server's --request-timeout or the request's `timeout` parameter.
        which: &'static str,
    },
    /// Something failed inside the server (a handler panicked) (500).
    #[error("internal error: {reason}")]
    Internal {
        /// What failed.
        reason: String,
    },
    /// The model refused or failed the call (400 for bad inputs, else 500).
    #[error("inference failed: {0}")]
    Inference(crate::Error),
}

impl ApiError {
    /// A [`ApiError::Malformed`].
    pub fn malformed(reason: impl Into<String>) -> ApiError {
        ApiError::Malformed { reason: reason.into() }
    }

    /// A [`ApiError::InvalidTensor`].
    pub fn invalid_tensor(tensor: impl Into<String>, expected: impl Into<String>, got: impl Into<String>) -> ApiError {
        ApiError::InvalidTensor { tensor: tensor.into(), expected: expected.into(), got: got.into() }
    }

    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::ModelNotFound { .. } | ApiError::VersionNotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unavailable { .. } | ApiError::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::ClientTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ApiError::DeadlineExceeded { .. } => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Inference(e) if !is_input_error(e) => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// Whether the layer refused the inputs (the client's fault) rather than failing to run them.
fn is_input_error(e: &crate::Error) -> bool {
    use crate::Error as E;
    matches!(
        e,
        E::DTypeMismatch { .. } | E::ShapeMismatch { .. } | E::BatchSize { .. } | E::SizeMismatch { .. } | E::ArgumentCount { .. } | E::TreeMismatch { .. } | E::NotFound { .. }
    )
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = json_error(self.status(), &self.to_string());
        match &self {
            ApiError::Overloaded { retry_after_s, .. } => {
                r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_s));
            }
            // The rest of a slow body is not read: the connection can't carry another request.
            ApiError::ClientTimeout { .. } => {
                r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        r
    }
}

/// A JSON error response: `{"error": message}` with `status`.
pub fn json_error(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({ "error": message }).to_string();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Turns every error response that is not JSON already (the HTTP framework's own rejections:
/// a path that is not UTF-8, a wrong method, a wrong content type) into `{"error": ...}` with
/// the same status, keeping the framework's text as the message.
pub async fn json_rejections(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    // The framework's rejection texts are short; anything else is cut.
    let text = axum::body::to_bytes(body, 4096).await.map(|b| String::from_utf8_lossy(&b).trim().to_string()).unwrap_or_default();
    let message = if text.is_empty() { status.canonical_reason().unwrap_or("error").to_lowercase() } else { text };
    let mut r = json_error(status, &message);
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            r.headers_mut().insert(name.clone(), value.clone());
        }
    }
    r
}

/// The 500 answer of a handler that panicked (the panic's message, when it has one).
pub fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let what = panic.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| panic.downcast_ref::<String>().cloned()).unwrap_or_else(|| "a handler panicked".into());
    ApiError::Internal { reason: format!("the request's handler panicked ({what}); the server goes on") }.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        assert_eq!(ApiError::malformed("x").status(), StatusCode::BAD_REQUEST);
        assert_eq!(ApiError::ModelNotFound { name: "m".into(), available: "a".into() }.status(), StatusCode::NOT_FOUND);
        assert_eq!(ApiError::BodyTooLarge { limit: 1, got: 2 }.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let refused = crate::Error::BatchSize { what: "call".into(), got: 3, available: vec![1], reason: String::new() };
        assert_eq!(ApiError::Inference(refused).status(), StatusCode::BAD_REQUEST);
        let failed = crate::Error::Unsupported { function: "PJRT_Client_Compile" };
        assert_eq!(ApiError::Inference(failed).status(), StatusCode::INTERNAL_SERVER_ERROR);
        let e = ApiError::invalid_tensor("input \"x\"", "datatype FP32", "FP64");
        assert_eq!(e.to_string(), "input \"x\": expected datatype FP32, got FP64");
    }
}
