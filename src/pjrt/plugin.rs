//! Loading a PJRT plugin: dlopen, `GetPjrtApi`, version check, `PJRT_Plugin_Initialize` once.
//!
//! The plugin's `PJRT_Api` table may be shorter than our mirror of it (an older plugin) or a
//! library may hand back a bogus one, so the table is never referenced as a whole: each
//! entry is read through a raw pointer, after checking that the plugin's `struct_size`
//! covers it ([`entry!`](super::entry)).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, OnceLock};

use super::discovery::{self, Candidate, Step};
use super::ffi;
use crate::{Error, ErrorCode, Result};

/// The environment variable that names a plugin `.so` when no path is given.
pub const PLUGIN_PATH_ENV: &str = "PJRT_PLUGIN_PATH";

/// Set to `1` to see the plugin's own log lines (absl INFO and up). Without it, and unless
/// `TF_CPP_MIN_LOG_LEVEL` is set, the plugin is loaded with `TF_CPP_MIN_LOG_LEVEL=1`:
/// warnings and errors only.
pub const PLUGIN_LOG_ENV: &str = "FLAXLAYER_PLUGIN_LOG";

/// The default CPU plugin, relative to a Python `site-packages` directory: the
/// `lammps-jax-pjrt-cpu` wheel that `scripts/setup.sh` installs (chosen by measurement; see
/// README). The other CPU plugins follow it as fallbacks.
pub const DEFAULT_PLUGIN: &str = "lammps_jax_pjrt_cpu/pjrt_c_api_cpu_plugin.so";

pub(crate) const FALLBACK_PLUGINS: [&str; 2] =
    ["xla_plugins/xla_cpu_pjrt/xla_cpu_pjrt.so", "fastatomstruct_xla_cpu/libpjrt_cpu.so"];

/// The smallest table we can use: `struct_size`, `extension_start` and `pjrt_api_version`.
const TABLE_HEAD: usize = std::mem::offset_of!(ffi::PJRT_Api, pjrt_api_version) + std::mem::size_of::<ffi::PJRT_Api_Version>();

/// Where a plugin was found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PluginSource {
    /// The path the caller gave.
    Explicit,
    /// `$PJRT_PLUGIN_PATH`.
    Env,
    /// Next to the running executable.
    BesideExecutable,
    /// A Python virtualenv's `site-packages` (`$VIRTUAL_ENV` or `./.venv`).
    Installed,
    /// The per-user plugin directory that `flaxlayer plugin install` fills.
    UserDir,
}

/// A loaded PJRT plugin: the library and its API table. Loaded once per path and process,
/// and never unloaded (plugins hold process-wide state once initialized).
pub struct Plugin {
    path: PathBuf,
    source: PluginSource,
    api: NonNull<ffi::PJRT_Api>,
    /// The plugin's `PJRT_Api.struct_size`, read once at load.
    table_size: usize,
    /// flaxlayer's XLA FFI handlers on this plugin, registered once ([`Plugin::ffi_handlers`]).
    pub(crate) ffi_handlers: OnceLock<super::FfiHandlers>,
    _lib: libloading::Library,
}

// SAFETY: the PJRT_Api table is immutable after GetPjrtApi returns and its functions may be
// called from any thread (the C API header puts no thread affinity on them; every plugin
// implements them over thread-safe xla::PjRtClient objects). The library handle is only
// kept alive, never used again.
unsafe impl Send for Plugin {}
// SAFETY: see `Send`: shared access only reads the immutable table.
unsafe impl Sync for Plugin {}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (major, minor) = self.api_version();
        f.debug_struct("Plugin")
            .field("path", &self.path)
            .field("source", &self.source)
            .field("api_version", &format!("{major}.{minor}"))
            .finish()
    }
}

fn registry() -> &'static Mutex<HashMap<PathBuf, Arc<Plugin>>> {
    static PLUGINS: OnceLock<Mutex<HashMap<PathBuf, Arc<Plugin>>>> = OnceLock::new();
    PLUGINS.get_or_init(Default::default)
}

impl Plugin {
    /// Loads a plugin. With `path`, that file; else `$PJRT_PLUGIN_PATH` if set; else the first
    /// plugin that loads among: known plugin file names next to the executable, the CPU plugin
    /// in `$VIRTUAL_ENV` and in `./.venv`, and the per-user directory that
    /// `flaxlayer plugin install` fills. An explicit path or `$PJRT_PLUGIN_PATH` is never
    /// replaced by another plugin. The error names every candidate and why it failed.
    pub fn load(path: Option<&Path>) -> Result<Arc<Plugin>> {
        let mut tried = Vec::new();
        for step in discovery::steps(path) {
            let Candidate { path, source } = match step {
                Step::Try(candidate) => candidate,
                Step::Skip(place, why) => {
                    tried.push((place, why));
                    continue;
                }
            };
            if !path.is_file() {
                tried.push((path, "no such file".into()));
                continue;
            }
            match Plugin::load_path(&path, source) {
                Ok(p) => return Ok(p),
                Err(Error::PluginNotFound { tried: why, .. }) if why.len() == 1 => tried.push((path, why[0].1.clone())),
                Err(e) => tried.push((path, e.to_string())),
            }
        }
        Err(Error::PluginNotFound { tried, hint: discovery::INSTALL_HINT.into() })
    }

    /// Loads the plugin at exactly `path` (once per process; later calls share it).
    pub fn load_path(path: &Path, source: PluginSource) -> Result<Arc<Plugin>> {
        if !path.is_file() {
            return Err(Error::io(path, std::io::Error::from(std::io::ErrorKind::NotFound)));
        }
        let key = path.canonicalize().map_err(|e| Error::io(path, e))?;
        let mut plugins = registry().lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = plugins.get(&key) {
            return Ok(p.clone());
        }
        quiet_plugin_logs();
        let plugin = Arc::new(Plugin::open(&key, source)?);
        plugin.initialize()?;
        plugins.insert(key, plugin.clone());
        Ok(plugin)
    }

    fn open(path: &Path, source: PluginSource) -> Result<Plugin> {
        let load_err = |reason: String| Error::PluginNotFound {
            tried: vec![(path.to_path_buf(), reason)],
            hint: discovery::INSTALL_HINT.into(),
        };
        // SAFETY: loading a shared library runs its initializers. We only load files the user
        // named (or found where plugins are installed) as PJRT plugins, which is what they are for.
        let lib = unsafe { libloading::Library::new(path) }
            .map_err(|e| load_err(format!("dlopen failed: {e}")))?;
        type GetPjrtApi = unsafe extern "C" fn() -> *const ffi::PJRT_Api;
        // SAFETY: `GetPjrtApi` is the entry point every PJRT plugin exports, with this
        // signature (pjrt_c_api.h).
        let get_api: libloading::Symbol<GetPjrtApi> = unsafe { lib.get(b"GetPjrtApi\0") }
            .map_err(|e| load_err(format!("not a PJRT plugin (no GetPjrtApi): {e}")))?;
        // SAFETY: calling the plugin's entry point; it returns a pointer to a static table.
        let raw = unsafe { get_api() };
        let api = NonNull::new(raw as *mut ffi::PJRT_Api)
            .ok_or_else(|| load_err("GetPjrtApi returned null".into()))?;
        // SAFETY: every PJRT_Api of every version starts with `size_t struct_size`; `api` is
        // non-null and points to the plugin's static table, aligned as C aligns the struct.
        let table_size = unsafe { std::ptr::addr_of!((*api.as_ptr()).struct_size).read() };
        if table_size < TABLE_HEAD {
            return Err(Error::Unsupported { function: "PJRT_Api.pjrt_api_version" });
        }
        let plugin = Plugin { path: path.to_path_buf(), source, api, table_size, ffi_handlers: OnceLock::new(), _lib: lib };
        plugin.check_version()?;
        Ok(plugin)
    }

    fn check_version(&self) -> Result<()> {
        let (major, minor) = self.api_version();
        if major != ffi::PJRT_API_MAJOR {
            return Err(Error::PluginVersion {
                path: self.path.clone(),
                major,
                minor,
                expected_major: ffi::PJRT_API_MAJOR,
            });
        }
        Ok(())
    }

    fn initialize(&self) -> Result<()> {
        let mut a = ffi::PJRT_Plugin_Initialize_Args::new();
        // SAFETY: the args are built by `new()` and carry no pointers.
        unsafe { super::call!(self, PJRT_Plugin_Initialize, &mut a) }
    }

    /// The plugin's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How the plugin was found.
    pub fn source(&self) -> &PluginSource {
        &self.source
    }

    /// The PJRT C API version the plugin implements, `(major, minor)`.
    pub fn api_version(&self) -> (i32, i32) {
        let api = self.api.as_ptr();
        // SAFETY: `open` checked that the table holds at least `TABLE_HEAD` bytes, which
        // include `pjrt_api_version`; read through a raw pointer, no reference to the table.
        let v = unsafe { std::ptr::addr_of!((*api).pjrt_api_version).read() };
        (v.major_version, v.minor_version)
    }

    /// The raw table, for [`entry!`](super::entry) and the extension walk.
    pub(crate) fn api_ptr(&self) -> *const ffi::PJRT_Api {
        self.api.as_ptr()
    }

    /// Whether the plugin's table holds `end` bytes: whether a slot ending there exists.
    pub(crate) fn table_covers(&self, end: usize) -> bool {
        end <= self.table_size
    }

    /// Turns a `PJRT_Error*` into a `Result`: copies the message and code out and destroys the
    /// error at once, so `Error` owns plain Rust data.
    ///
    /// # Safety
    /// `err` is null or an error that this plugin returned and that nothing destroyed yet; it
    /// is destroyed here and must not be used afterwards.
    pub(crate) unsafe fn check(&self, err: *mut ffi::PJRT_Error, call: &'static str) -> Result<()> {
        let Some(err) = NonNull::new(err) else { return Ok(()) };
        // SAFETY: `err` is a live error of this plugin (the caller's contract).
        let message = unsafe { self.error_message(err) };
        // SAFETY: as above.
        let code = unsafe { self.error_code(err) };
        let mut d = ffi::PJRT_Error_Destroy_Args::new();
        d.error = err.as_ptr();
        if let Ok(destroy) = super::entry!(self, PJRT_Error_Destroy) {
            // SAFETY: `err` is destroyed exactly once, here, after its message was copied.
            unsafe { destroy(&mut d) };
        }
        Err(Error::Pjrt { call, code, message })
    }

    /// # Safety
    /// `err` is a live error of this plugin.
    unsafe fn error_message(&self, err: NonNull<ffi::PJRT_Error>) -> String {
        let Ok(message) = super::entry!(self, PJRT_Error_Message) else {
            return "(plugin gave no error message)".into();
        };
        let mut m = ffi::PJRT_Error_Message_Args::new();
        m.error = err.as_ptr();
        // SAFETY: `err` is live (the caller's contract); the message pointer it writes is
        // valid until the error is destroyed, and we copy it before that.
        unsafe { message(&mut m) };
        // SAFETY: the plugin wrote `message_size` bytes at `message`, owned by `err`.
        unsafe { plugin_str(m.message, m.message_size) }
    }

    /// # Safety
    /// `err` is a live error of this plugin.
    unsafe fn error_code(&self, err: NonNull<ffi::PJRT_Error>) -> ErrorCode {
        let Ok(get_code) = super::entry!(self, PJRT_Error_GetCode) else { return ErrorCode::Unknown };
        let mut c = ffi::PJRT_Error_GetCode_Args::new();
        c.error = err.as_ptr();
        // SAFETY: GetCode only reads the live error. A failure to read the code leaves
        // `Unknown` (and that second error is leaked rather than risk recursing).
        let failed = unsafe { get_code(&mut c) };
        if failed.is_null() { ErrorCode::from_raw(c.code as i32) } else { ErrorCode::Unknown }
    }
}

/// Keeps the plugin's INFO logs (and absl's "All log messages before absl::InitializeLog()"
/// warning that comes with the first of them) off the user's stderr: sets
/// `TF_CPP_MIN_LOG_LEVEL=1` before the first plugin is loaded, unless the user set it or
/// asked for the logs with `FLAXLAYER_PLUGIN_LOG=1`. Measured with the CPU plugins: level 1
/// removes both lines and keeps warnings and errors.
fn quiet_plugin_logs() {
    let wants_logs = std::env::var_os(PLUGIN_LOG_ENV).is_some_and(|v| !v.is_empty() && v != "0");
    if wants_logs || std::env::var_os("TF_CPP_MIN_LOG_LEVEL").is_some() {
        return;
    }
    // Setting the environment races with C code reading it on other threads. It happens
    // once, under the plugin registry lock, before the plugin (the only reader of this
    // variable) is loaded; Rust's own readers take std's environment lock.
    std::env::set_var("TF_CPP_MIN_LOG_LEVEL", "1");
}

/// Copies a (pointer, length) string the plugin owns.
///
/// # Safety
/// `ptr` is null or points to `len` readable bytes that stay valid during the call.
pub(crate) unsafe fn plugin_str(ptr: *const std::os::raw::c_char, len: usize) -> String {
    if ptr.is_null() {
        return String::new();
    }
    // SAFETY: the caller's contract.
    let bytes = unsafe { std::slice::from_raw_parts(ptr as *const u8, len) };
    String::from_utf8_lossy(bytes).into_owned()
}
