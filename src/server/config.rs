//! Settings: the server's (repository, [`Limits`]) and each model's, read from the optional
//! `DIR/MODEL/config.json`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::layer::isolate::Isolation;
use crate::{Error, Result};

/// The default limit of a request body: 64 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 << 20;

/// The default longest wait of a forming batch for arriving requests: 500 µs.
pub const DEFAULT_MAX_QUEUE_DELAY_US: u64 = 500;

/// The name of a model's settings file, beside its version directories.
pub const MODEL_CONFIG_FILE: &str = "config.json";

/// How the server runs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The model repository: `DIR/MODEL/VERSION/` bundle directories.
    pub models: PathBuf,
    /// The largest request body accepted, in bytes; larger ones get 413.
    pub max_body_bytes: usize,
    /// Compile the bundles in a child process with a time limit (bundles from elsewhere).
    pub untrusted: Option<Isolation>,
    /// Timeouts, connection and queue limits.
    pub limits: Limits,
}

impl ServerConfig {
    /// The settings for a repository, with the default limits.
    pub fn new(models: impl Into<PathBuf>) -> ServerConfig {
        ServerConfig { models: models.into(), max_body_bytes: DEFAULT_MAX_BODY_BYTES, untrusted: None, limits: Limits::default() }
    }
}

/// What a client may hold of the server, and for how long. Every limit has a safe default;
/// `flaxlayer serve` sets each with a flag (docs/serving.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// The longest a client may take to send a request's headers, counted from when the
    /// server starts reading that request; then the connection is closed. Default 10 s.
    pub header_read_timeout: Duration,
    /// The longest a client may take to send a request's body, once its headers came; then it
    /// gets 408 and the connection is closed. Default 30 s.
    pub body_read_timeout: Duration,
    /// The longest a request may take from its headers to its answer (reading, queueing,
    /// running); then it gets 504 and its queued job is dropped. KServe's `timeout` request
    /// parameter (microseconds) may shorten it, not lengthen it. Default 60 s.
    pub request_timeout: Duration,
    /// A keep-alive connection with no request in flight is closed after this long. Default
    /// 60 s.
    pub idle_timeout: Duration,
    /// Connections open at once; those over it get 503 and are closed. Default 1024.
    pub max_connections: usize,
    /// Requests admitted to one model version (queued or running) at once; more get 503 with
    /// `Retry-After`. Default 512 (a model's `config.json` may set its own).
    pub max_queue_requests: usize,
    /// Bytes of input tensors admitted to one model version (queued or running) at once; more
    /// get 503 with `Retry-After`. Default 256 MiB (a model's `config.json` may set its own).
    pub max_queue_bytes: usize,
}

/// The default [`Limits::header_read_timeout`].
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The default [`Limits::body_read_timeout`].
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// The default [`Limits::request_timeout`].
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// The default [`Limits::idle_timeout`].
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// The default [`Limits::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// The default [`Limits::max_queue_requests`].
pub const DEFAULT_MAX_QUEUE_REQUESTS: usize = 512;
/// The default [`Limits::max_queue_bytes`].
pub const DEFAULT_MAX_QUEUE_BYTES: usize = 256 << 20;

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            body_read_timeout: DEFAULT_BODY_READ_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_queue_requests: DEFAULT_MAX_QUEUE_REQUESTS,
            max_queue_bytes: DEFAULT_MAX_QUEUE_BYTES,
        }
    }
}

/// One model's settings, from `DIR/MODEL/config.json` (every field optional).
///
/// ```json
/// {"max_batch_size": 64, "max_queue_delay_us": 500, "dynamic_batching": true, "instances": 1}
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// Merge concurrent requests into one call, when the bundle allows it (its method is
    /// marked paddable, its outputs say which carry the batch axis, and its inference writes
    /// no state). Default `true`.
    pub dynamic_batching: bool,
    /// The most rows a merged batch holds. Default: the largest exported batch size. A single
    /// request with more rows runs alone.
    pub max_batch_size: Option<usize>,
    /// The longest a forming batch waits for requests still arriving (received, not yet
    /// queued), counted from its first request, in microseconds. Default 500. A batch runs at
    /// once when it is full or when no request to the model is arriving.
    pub max_queue_delay_us: u64,
    /// Worker threads running the model's calls, each taking the next batch. Default 1.
    pub instances: usize,
    /// The bundle method to serve. Default: the bundle's default method.
    pub method: Option<String>,
    /// Run every exported batch size on zeros at start-up, so no client waits for a compile,
    /// and time each size to plan chunks. Default `true`.
    pub warmup: bool,
    /// Requests admitted at once (queued or running); default: the server's
    /// `--max-queue-requests`.
    pub max_queue_requests: Option<usize>,
    /// Bytes of inputs admitted at once; default: the server's `--max-queue-bytes`.
    pub max_queue_bytes: Option<usize>,
}

impl Default for ModelConfig {
    fn default() -> ModelConfig {
        ModelConfig {
            dynamic_batching: true,
            max_batch_size: None,
            max_queue_delay_us: DEFAULT_MAX_QUEUE_DELAY_US,
            instances: 1,
            method: None,
            warmup: true,
            max_queue_requests: None,
            max_queue_bytes: None,
        }
    }
}

impl ModelConfig {
    /// Reads `model_dir/config.json`, or the defaults when there is none.
    pub fn load(model_dir: &Path) -> Result<ModelConfig> {
        let path = model_dir.join(MODEL_CONFIG_FILE);
        if !path.exists() {
            return Ok(ModelConfig::default());
        }
        let bytes = crate::files::read(&path, crate::files::MAX_FILE_BYTES)?;
        let config: ModelConfig = serde_json::from_slice(&bytes).map_err(|e| Error::json(path.display().to_string(), e))?;
        config.validate(&path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<()> {
        let what = || path.display().to_string();
        if self.instances == 0 || self.instances > 64 {
            return Err(Error::invalid(what(), format!("instances must be 1 to 64, got {}", self.instances)));
        }
        if self.max_queue_requests == Some(0) || self.max_queue_bytes == Some(0) {
            return Err(Error::invalid(what(), "max_queue_requests and max_queue_bytes must be at least 1"));
        }
        if self.max_batch_size == Some(0) {
            return Err(Error::invalid(what(), "max_batch_size must be at least 1"));
        }
        if self.max_queue_delay_us > 10_000_000 {
            return Err(Error::invalid(what(), format!("max_queue_delay_us must be at most 10 s, got {}", self.max_queue_delay_us)));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_when_absent_and_typos_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(ModelConfig::load(dir.path()).unwrap(), ModelConfig::default());
        std::fs::write(dir.path().join(MODEL_CONFIG_FILE), r#"{"max_batch_size": 32, "max_queue_delay_us": 0}"#).unwrap();
        let c = ModelConfig::load(dir.path()).unwrap();
        assert_eq!((c.max_batch_size, c.max_queue_delay_us, c.dynamic_batching, c.instances), (Some(32), 0, true, 1));
        std::fs::write(dir.path().join(MODEL_CONFIG_FILE), r#"{"max_batch": 32}"#).unwrap();
        let e = ModelConfig::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("unknown field `max_batch`"), "{e}");
        std::fs::write(dir.path().join(MODEL_CONFIG_FILE), r#"{"instances": 0}"#).unwrap();
        assert!(matches!(ModelConfig::load(dir.path()), Err(Error::InvalidArgument { .. })));
    }
}
