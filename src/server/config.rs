//! Settings: the server's (address, repository, body limit) and each model's, read from the
//! optional `DIR/MODEL/config.json`.

use std::path::{Path, PathBuf};

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
}

impl ServerConfig {
    /// The settings for a repository, with the default body limit.
    pub fn new(models: impl Into<PathBuf>) -> ServerConfig {
        ServerConfig { models: models.into(), max_body_bytes: DEFAULT_MAX_BODY_BYTES, untrusted: None }
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
