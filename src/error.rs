//! The crate's error type: one `#[non_exhaustive]` enum with structured fields.

use std::path::PathBuf;

use crate::DType;

/// A `Result` whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// PJRT's error codes (`PJRT_Error_Code`), which mirror `absl::StatusCode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The operation was cancelled.
    Cancelled,
    /// An unknown error.
    Unknown,
    /// An argument was invalid.
    InvalidArgument,
    /// A deadline passed.
    DeadlineExceeded,
    /// Something was not found.
    NotFound,
    /// Something already exists.
    AlreadyExists,
    /// Permission was denied.
    PermissionDenied,
    /// A resource (often memory) ran out.
    ResourceExhausted,
    /// The system was not in the state the call needs.
    FailedPrecondition,
    /// The operation was aborted.
    Aborted,
    /// A value was out of range.
    OutOfRange,
    /// The plugin does not implement the operation.
    Unimplemented,
    /// An internal error of the plugin.
    Internal,
    /// The service is unavailable.
    Unavailable,
    /// Data was lost or corrupted.
    DataLoss,
    /// The caller is not authenticated.
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
/// `Display` is the message for people; `Debug` is the structure (variant and fields), as
/// derived. Errors that wrap another one (I/O, JSON, safetensors, the failure behind
/// [`Error::StateLost`]) include its text in their own message, so `to_string()` is complete,
/// and also return it from `source()`, so the chain can be walked; a printer of whole chains
/// (such as the `flaxlayer` CLI's) skips a source whose text the message already holds.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No PJRT plugin could be loaded. `tried` lists every candidate with the reason it failed.
    #[error("no PJRT plugin could be loaded; tried:\n{}\n{hint}", format_tried(.tried))]
    PluginNotFound {
        /// Every candidate, with why it failed.
        tried: Vec<(PathBuf, String)>,
        /// How to get a plugin.
        hint: String,
    },

    /// The plugin's PJRT C API major version is not the one this crate was built for.
    #[error("PJRT plugin {path:?} has C API {major}.{minor}; this crate needs major version {expected_major}")]
    PluginVersion {
        /// The plugin.
        path: PathBuf,
        /// Its major version.
        major: i32,
        /// Its minor version.
        minor: i32,
        /// The major version this crate speaks.
        expected_major: i32,
    },

    /// A PJRT call returned an error.
    #[error("{call} failed ({code:?}): {message}")]
    Pjrt {
        /// The C API function.
        call: &'static str,
        /// PJRT's error code.
        code: ErrorCode,
        /// PJRT's message.
        message: String,
    },

    /// The plugin does not provide a function of the C API (a null or absent table entry).
    #[error("the PJRT plugin does not provide {function}")]
    Unsupported {
        /// The C API function.
        function: &'static str,
    },

    /// A dtype name or PJRT buffer type that this crate does not handle.
    #[error("unsupported dtype {0}")]
    UnsupportedDType(String),

    /// A value has the wrong dtype.
    #[error("{what}: expected dtype {expected}, got {got}")]
    DTypeMismatch {
        /// The value, e.g. `input "ids"`.
        what: String,
        /// The dtype it must have.
        expected: DType,
        /// The dtype it has.
        got: DType,
    },

    /// A value has the wrong shape.
    #[error("{what}: expected shape {expected:?}, got {got:?}")]
    ShapeMismatch {
        /// The value, e.g. `input "x"`.
        what: String,
        /// The shape it must have.
        expected: Vec<usize>,
        /// The shape it has.
        got: Vec<usize>,
    },

    /// A batch size that no computation of the method was exported for, in a call that cannot
    /// pad or split (training calls, stateful inference, methods not marked paddable).
    #[error("{what}: batch must be one of {available:?}, got {got}{}", reason_suffix(.reason))]
    BatchSize {
        /// The call.
        what: String,
        /// The batch size given.
        got: usize,
        /// The exported batch sizes.
        available: Vec<usize>,
        /// Why the batch cannot be padded or split (empty when not asked).
        reason: String,
    },

    /// A host slice has the wrong number of elements or bytes.
    #[error("{what}: expected {expected} {unit}, got {got}")]
    SizeMismatch {
        /// The value.
        what: String,
        /// The size it must have.
        expected: usize,
        /// The size it has.
        got: usize,
        /// `bytes`, `elements`, `leaves`.
        unit: &'static str,
    },

    /// A call got the wrong number of arguments.
    #[error("{what}: expected {expected} arguments, got {got}")]
    ArgumentCount {
        /// The call.
        what: String,
        /// How many arguments it takes.
        expected: usize,
        /// How many it got.
        got: usize,
    },

    /// A PyTree does not have the expected structure.
    #[error("{path}: expected {expected}, got {got}")]
    TreeMismatch {
        /// The first path where the trees differ (`<root>` for the root).
        path: String,
        /// The node there should be.
        expected: String,
        /// The node there is.
        got: String,
    },

    /// A bundle, manifest, serialized export or weights file is malformed.
    #[error("invalid {what}: {reason}")]
    InvalidFormat {
        /// The file or value.
        what: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A serialized `jax.export.Exported` from a newer (or much older) JAX than this build
    /// reads: its `serialization_version` is outside [`crate::bundle::exported::SUPPORTED_SERIALIZATION_VERSIONS`].
    #[error(
        "{what}: serialization version {version}{} is not one this build of flaxlayer reads ({}..={}, jax 0.10.2 through \
         0.12.x); {advice}",
        jax_suffix(.jax_version), supported.start(), supported.end()
    )]
    UnsupportedSerialization {
        /// The file.
        what: String,
        /// Its `serialization_version`.
        version: u16,
        /// The JAX version that wrote it, when the file says (version 12 and later).
        jax_version: Option<String>,
        /// The versions this build reads.
        supported: std::ops::RangeInclusive<u16>,
        /// What to do about it.
        advice: String,
    },

    /// A bundle's variables file is missing, not a regular file, or does not hold what the
    /// manifest lists, while the manifest says the variables were bundled: the layer refuses
    /// to start rather than run with other weights (e.g. freshly initialised ones).
    #[error("{}: {reason}; the manifest says the bundle's variables were bundled (variables_origin {origin:?}){}", path.display(), variables_hint(.origin))]
    BundleVariables {
        /// The variables file.
        path: PathBuf,
        /// The manifest's `variables_origin` (`given`, `init`, `module`; empty when absent).
        origin: String,
        /// What is wrong with the file.
        reason: String,
    },

    /// Something that was asked for does not exist (a method, a variable, a tensor name).
    #[error("{what} {name:?} not found; available: {available}")]
    NotFound {
        /// The kind of thing (`method`, `variable`, ...).
        what: &'static str,
        /// Its name.
        name: String,
        /// What there is instead.
        available: String,
    },

    /// An argument is out of its allowed range.
    #[error("{what}: {reason}")]
    InvalidArgument {
        /// The argument.
        what: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A bundle runs on more devices than the client has, counted from the layer's first
    /// device.
    #[error(
        "{what} runs on {needed} device(s) from index {first}, but the client has {available}; on CPU, create the \
         client with more: the builder's cpu_devices({}), the CLI's --devices {} or FLAXLAYER_CPU_DEVICES={}",
        first + needed, first + needed, first + needed
    )]
    TooFewDevices {
        /// The bundle.
        what: String,
        /// How many devices it runs on (the most any of its computations was exported for).
        needed: usize,
        /// The index of the layer's first device among the client's.
        first: usize,
        /// How many devices the client has.
        available: usize,
    },

    /// A computation failed on the device after the layer's state had been donated to it: the
    /// params, state or key it held are gone. Every later call refuses with this error;
    /// rebuild the layer (or load a saved one) to continue.
    #[error("the layer's device state was lost when {computation} failed ({cause}); rebuild or reload the layer")]
    StateLost {
        /// The computation that failed.
        computation: String,
        /// Its error, shared by every later call that reports the loss; also the `source()`
        /// (an `Arc<Error>`).
        #[source]
        cause: std::sync::Arc<Error>,
    },

    /// A hoisted inference's prologue (the params-only part, run after a param write) failed:
    /// the call ran nothing else and changed no params, state or key; the layer stays usable
    /// (the prologue runs again on the next call, e.g. after `set_variables`).
    #[error("the params-only prologue {computation} of a hoisted inference failed ({cause}); the layer's params, state and key are as they were")]
    Prologue {
        /// The prologue's file.
        computation: String,
        /// Its error.
        #[source]
        cause: Box<Error>,
    },

    /// A computation calls custom-call targets (`stablehlo.custom_call @target`) that the
    /// PJRT plugin cannot run: XLA's CPU backend does not handle them itself and no handler is
    /// registered for them (e.g. `lapack_sgeqrf_ffi` on a plugin without PJRT's FFI
    /// extension). Raised when the layer or trainer is built, before anything is compiled.
    #[error("{computation} calls custom call {} that the PJRT plugin cannot run: {reason}", targets.join(", "))]
    UnsupportedCustomCall {
        /// The targets, in the manifest's order (those that share the reason).
        targets: Vec<String>,
        /// The computation (bundle file) that calls them.
        computation: String,
        /// Why they cannot run.
        reason: String,
    },

    /// A compile in a child process (the untrusted-bundle mode) crashed, hung past its time
    /// limit, or failed; this process is unharmed.
    #[error("isolated compile of {what}: {reason}")]
    IsolatedCompile {
        /// The program (bundle file).
        what: String,
        /// What happened to the worker.
        reason: String,
    },

    /// An I/O error, with the path it concerns.
    #[error("{}: {cause}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        cause: std::io::Error,
    },

    /// JSON (manifest, config) could not be read or written.
    #[error("{what}: {cause}{}", fix_suffix(.fix))]
    Json {
        /// The file or value.
        what: String,
        /// The JSON error.
        #[source]
        cause: serde_json::Error,
        /// What to do about it, when known (`re-export the bundle`); empty otherwise.
        fix: String,
    },

    /// safetensors could not be read or written. The message says whether the file is not
    /// safetensors at all or a truncated or corrupt one, and what to do.
    #[error("{what}: {}{}", describe_safetensors(.cause), fix_suffix(.fix))]
    SafeTensors {
        /// The file.
        what: String,
        /// The safetensors error.
        #[source]
        cause: safetensors::SafeTensorError,
        /// What to do about it, when known (`re-export the bundle`); empty otherwise.
        fix: String,
    },

}

fn reason_suffix(reason: &str) -> String {
    if reason.is_empty() {
        String::new()
    } else {
        format!(" ({reason})")
    }
}

fn fix_suffix(fix: &str) -> String {
    if fix.is_empty() {
        String::new()
    } else {
        format!("; {fix}")
    }
}

/// A safetensors error as a user can act on it: not a safetensors file at all (the header
/// cannot be read), or a truncated or corrupt one (the header and the data disagree).
fn describe_safetensors(cause: &safetensors::SafeTensorError) -> String {
    use safetensors::SafeTensorError as E;
    match cause {
        E::InvalidHeader(_) | E::InvalidHeaderStart | E::InvalidHeaderDeserialization(_) | E::HeaderTooLarge | E::HeaderTooSmall | E::InvalidHeaderLength => format!(
            "this is not a safetensors file ({cause}): expected an 8-byte header length, a JSON header and the tensor data, as safetensors' save_file writes them"
        ),
        E::MetadataIncompleteBuffer | E::InvalidOffset(_) | E::TensorInvalidInfo | E::ValidationOverflow | E::InvalidTensorView(..) => {
            format!("the file is truncated or corrupt ({cause}): its header does not match the data that follows")
        }
        other => other.to_string(),
    }
}

fn jax_suffix(v: &Option<String>) -> String {
    v.as_ref().map(|v| format!(" (written by jax {v})")).unwrap_or_default()
}

fn variables_hint(origin: &str) -> &'static str {
    match origin {
        "init" => "; re-export the bundle or restore the file, or build the layer with init_variables() (CLI: --init) to start from init under the seed",
        _ => "; re-export the bundle or restore the file, or pass the variables (variables_file / variables)",
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
        Error::Json { what: what.into(), cause, fix: String::new() }
    }

    /// An [`Error::SafeTensors`] for `what`.
    pub fn safetensors(what: impl Into<String>, cause: safetensors::SafeTensorError) -> Self {
        Error::SafeTensors { what: what.into(), cause, fix: String::new() }
    }

    /// An [`Error::InvalidFormat`].
    pub fn format(what: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidFormat { what: what.into(), reason: reason.into() }
    }

    /// The same error, saying what to do about a file that is corrupt or truncated (`fix`,
    /// such as "re-export the bundle"), for the errors that describe a file's contents.
    pub(crate) fn with_fix(self, fix: &str) -> Self {
        match self {
            Error::SafeTensors { what, cause, .. } => Error::SafeTensors { what, cause, fix: fix.to_string() },
            Error::Json { what, cause, .. } => Error::Json { what, cause, fix: fix.to_string() },
            Error::InvalidFormat { what, reason } => Error::InvalidFormat { what, reason: format!("{reason}; {fix}") },
            other => other,
        }
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
    fn debug_is_structural_and_causes_are_sources() {
        let e = Error::io("/no/such/file", std::io::Error::from(std::io::ErrorKind::NotFound));
        assert_eq!(e.to_string(), "/no/such/file: entity not found");
        assert!(format!("{e:?}").starts_with("Io { path: \"/no/such/file\", cause: Kind(NotFound)"), "{e:?}");
        let source = std::error::Error::source(&e).expect("the I/O error is the source");
        assert!(source.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound));
        let json = serde_json::from_str::<u32>("x").unwrap_err();
        let e = Error::json("manifest.json", json);
        assert!(std::error::Error::source(&e).is_some_and(|s| s.is::<serde_json::Error>()));
        let e = Error::safetensors("v.safetensors", safetensors::SafeTensorError::HeaderTooSmall);
        assert!(std::error::Error::source(&e).is_some_and(|s| s.is::<safetensors::SafeTensorError>()));
        let failed = Error::Pjrt { call: "PJRT_LoadedExecutable_Execute", code: ErrorCode::Internal, message: "boom".into() };
        let e = Error::StateLost { computation: "f.jaxexport".into(), cause: std::sync::Arc::new(failed) };
        let cause = std::error::Error::source(&e).and_then(|s| s.downcast_ref::<std::sync::Arc<Error>>());
        assert!(matches!(cause.map(|c| &**c), Some(Error::Pjrt { message, .. }) if message == "boom"), "{e:?}");
        let e = Error::DTypeMismatch { what: "input \"x\"".into(), expected: DType::F32, got: DType::I64 };
        assert_eq!(format!("{e:?}"), "DTypeMismatch { what: \"input \\\"x\\\"\", expected: F32, got: I64 }");
        assert_eq!(e.to_string(), "input \"x\": expected dtype float32, got int64");
        let e = Error::BatchSize { what: "input \"x\"".into(), got: 3, available: vec![1, 8], reason: String::new() };
        assert_eq!(e.to_string(), "input \"x\": batch must be one of [1, 8], got 3");
    }

    #[test]
    fn unsupported_custom_call_names_targets_computation_and_reason() {
        let e = Error::UnsupportedCustomCall {
            targets: vec!["lapack_sgeqrf_ffi".into(), "lapack_sorgqr_ffi".into()],
            computation: "init.jaxexport".into(),
            reason: "the PJRT plugin has no FFI extension".into(),
        };
        assert_eq!(
            e.to_string(),
            "init.jaxexport calls custom call lapack_sgeqrf_ffi, lapack_sorgqr_ffi that the PJRT plugin cannot run: \
             the PJRT plugin has no FFI extension"
        );
    }

    #[test]
    fn codes_map() {
        assert_eq!(ErrorCode::from_raw(3), ErrorCode::InvalidArgument);
        assert_eq!(ErrorCode::from_raw(99), ErrorCode::Other(99));
    }
}
