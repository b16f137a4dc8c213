//! The crate's error type: one `#[non_exhaustive]` enum with structured fields.

use std::path::PathBuf;

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
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No PJRT plugin could be loaded. `tried` lists every path with the reason it failed.
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
    DTypeMismatch { what: String, expected: String, got: String },

    /// A value has the wrong shape.
    #[error("{what}: expected shape {expected:?}, got {got:?}")]
    ShapeMismatch { what: String, expected: Vec<i64>, got: Vec<i64> },

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

    /// An I/O error, with the path it concerns.
    #[error("{path:?}: {source}")]
    Io { path: PathBuf, #[source] source: std::io::Error },

    /// JSON (manifest, config) could not be read or written.
    #[error("{what}: {source}")]
    Json { what: String, #[source] source: serde_json::Error },

    /// safetensors could not be read or written.
    #[error("{what}: {source}")]
    SafeTensors { what: String, #[source] source: safetensors::SafeTensorError },
}

fn format_tried(tried: &[(PathBuf, String)]) -> String {
    tried.iter().map(|(p, why)| format!("  {}: {why}", p.display())).collect::<Vec<_>>().join("\n")
}

impl Error {
    /// An [`Error::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
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
    fn codes_map() {
        assert_eq!(ErrorCode::from_raw(3), ErrorCode::InvalidArgument);
        assert_eq!(ErrorCode::from_raw(99), ErrorCode::Other(99));
    }
}
