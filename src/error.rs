//! The crate's error type: one `#[non_exhaustive]` enum with structured fields.

use std::path::PathBuf;

use crate::DType;

/// A `Result` whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// PJRT's error codes (`PJRT_Error_Code`), which mirror `absl::StatusCode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorCode {
    Cancelled,
    Unknown,
    InvalidArgument,
    DeadlineExceeded,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    ResourceExhausted,
    FailedPrecondition,
    Aborted,
    OutOfRange,
    Unimplemented,
    Internal,
    Unavailable,
    DataLoss,
    Unauthenticated,
    /// A code this crate does not know.
    Other(i32),
}

impl ErrorCode {
    /// Maps PJRT's integer code.
    pub fn from_raw(code: i32) -> Self {
        use ErrorCode::*;
        match code {
            1 => Cancelled,
            2 => Unknown,
            3 => InvalidArgument,
            4 => DeadlineExceeded,
            5 => NotFound,
            6 => AlreadyExists,
            7 => PermissionDenied,
            8 => ResourceExhausted,
            9 => FailedPrecondition,
            10 => Aborted,
            11 => OutOfRange,
            12 => Unimplemented,
            13 => Internal,
            14 => Unavailable,
            15 => DataLoss,
            16 => Unauthenticated,
            other => Other(other),
        }
    }
}

/// Everything that can go wrong in `flaxlayer`.
///
/// `Debug` prints the same text as `Display`, so `fn main() -> flaxlayer::Result<()>` shows a
/// readable message. Errors that wrap another one (I/O, JSON, safetensors) include its text in
/// their own message and do not repeat it as a `source()`, so `anyhow`'s `{:#}` prints it once.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No PJRT plugin could be loaded. `tried` lists every candidate with the reason it failed.
    #[error("no PJRT plugin could be loaded; tried:\n{}\n{hint}", format_tried(.tried))]
    PluginNotFound { tried: Vec<(PathBuf, String)>, hint: String },

    /// The plugin's PJRT C API major version is not the one this crate was built for.
    #[error("PJRT plugin {path:?} has C API {major}.{minor}; this crate needs major version {expected_major}")]
    PluginVersion { path: PathBuf, major: i32, minor: i32, expected_major: i32 },

    /// A PJRT call returned an error.
    #[error("{call} failed ({code:?}): {message}")]
    Pjrt { call: &'static str, code: ErrorCode, message: String },

    /// The plugin does not provide a function of the C API (a null or absent table entry).
    #[error("the PJRT plugin does not provide {function}")]
    Unsupported { function: &'static str },

    /// A dtype name or PJRT buffer type that this crate does not handle.
    #[error("unsupported dtype {0}")]
    UnsupportedDType(String),

    /// A value has the wrong dtype.
    #[error("{what}: expected dtype {expected}, got {got}")]
    DTypeMismatch { what: String, expected: DType, got: DType },

    /// A value has the wrong shape.
    #[error("{what}: expected shape {expected:?}, got {got:?}")]
    ShapeMismatch { what: String, expected: Vec<usize>, got: Vec<usize> },

    /// A batch size that no computation of the method was exported for, in a call that cannot
    /// pad or split (training calls, stateful inference, methods not marked paddable).
    #[error("{what}: batch must be one of {available:?}, got {got}{}", reason_suffix(.reason))]
    BatchSize { what: String, got: usize, available: Vec<usize>, reason: String },

    /// A host slice has the wrong number of elements or bytes.
    #[error("{what}: expected {expected} {unit}, got {got}")]
    SizeMismatch { what: String, expected: usize, got: usize, unit: &'static str },

    /// A call got the wrong number of arguments.
    #[error("{what}: expected {expected} arguments, got {got}")]
    ArgumentCount { what: String, expected: usize, got: usize },

    /// A PyTree does not have the expected structure.
    #[error("{path}: expected {expected}, got {got}")]
    TreeMismatch { path: String, expected: String, got: String },

    /// A bundle, manifest, serialized export or weights file is malformed.
    #[error("invalid {what}: {reason}")]
    InvalidFormat { what: String, reason: String },

    /// Something that was asked for does not exist (a method, a variable, a tensor name).
    #[error("{what} {name:?} not found; available: {available}")]
    NotFound { what: &'static str, name: String, available: String },

    /// An argument is out of its allowed range.
    #[error("{what}: {reason}")]
    InvalidArgument { what: String, reason: String },

    /// A computation failed on the device after the layer's state had been donated to it: the
    /// params, state or key it held are gone. Every later call refuses with this error;
    /// rebuild the layer (or load a saved one) to continue.
    #[error("the layer's device state was lost when {computation} failed ({cause}); rebuild or reload the layer")]
    StateLost { computation: String, cause: String },

    /// An I/O error, with the path it concerns.
    #[error("{}: {cause}", path.display())]
    Io { path: PathBuf, cause: std::io::Error },

    /// JSON (manifest, config) could not be read or written.
    #[error("{what}: {cause}")]
    Json { what: String, cause: serde_json::Error },

    /// safetensors could not be read or written.
    #[error("{what}: {cause}")]
    SafeTensors { what: String, cause: safetensors::SafeTensorError },
}

impl std::fmt::Debug for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

fn reason_suffix(reason: &str) -> String {
    if reason.is_empty() {
        String::new()
    } else {
        format!(" ({reason})")
    }
}

fn format_tried(tried: &[(PathBuf, String)]) -> String {
    tried.iter().map(|(p, why)| format!("  {}: {why}", p.display())).collect::<Vec<_>>().join("\n")
}

impl Error {
    /// An [`Error::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, cause: std::io::Error) -> Self {
        Error::Io { path: path.into(), cause }
    }

    /// An [`Error::Json`] for `what`.
    pub fn json(what: impl Into<String>, cause: serde_json::Error) -> Self {
        Error::Json { what: what.into(), cause }
    }

    /// An [`Error::SafeTensors`] for `what`.
    pub fn safetensors(what: impl Into<String>, cause: safetensors::SafeTensorError) -> Self {
        Error::SafeTensors { what: what.into(), cause }
    }

    /// An [`Error::InvalidFormat`].
    pub fn format(what: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidFormat { what: what.into(), reason: reason.into() }
    }

    /// An [`Error::InvalidArgument`].
    pub fn invalid(what: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidArgument { what: what.into(), reason: reason.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ensure_send_sync<T: Send + Sync + 'static>() {}

    #[test]
    fn error_is_send_sync() {
        ensure_send_sync::<Error>();
    }

    #[test]
    fn debug_reads_like_display_and_io_says_its_cause_once() {
        let e = Error::io("/no/such/file", std::io::Error::from(std::io::ErrorKind::NotFound));
        assert_eq!(format!("{e:?}"), e.to_string());
        assert_eq!(e.to_string(), "/no/such/file: entity not found");
        assert!(std::error::Error::source(&e).is_none(), "the cause is in the message, not repeated as a source");
        let e = Error::DTypeMismatch { what: "input \"x\"".into(), expected: DType::F32, got: DType::I64 };
        assert_eq!(format!("{e:?}"), "input \"x\": expected dtype float32, got int64");
        let e = Error::BatchSize { what: "input \"x\"".into(), got: 3, available: vec![1, 8], reason: String::new() };
        assert_eq!(e.to_string(), "input \"x\": batch must be one of [1, 8], got 3");
    }

    #[test]
    fn codes_map() {
        assert_eq!(ErrorCode::from_raw(3), ErrorCode::InvalidArgument);
        assert_eq!(ErrorCode::from_raw(99), ErrorCode::Other(99));
    }
}
