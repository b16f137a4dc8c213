//! What a request can get wrong, or what can go wrong serving it, and the HTTP status and
//! JSON body (`{"error": "..."}`, as both KServe v2 and TF Serving specify) each one gets.

use axum::http::StatusCode;
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
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
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
        json_error(self.status(), &self.to_string())
    }
}

/// A JSON error response: `{"error": message}` with `status`.
pub fn json_error(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({ "error": message }).to_string();
    (status, [(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response()
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
