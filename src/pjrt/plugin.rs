//! Loading a PJRT plugin: dlopen, `GetPjrtApi`, version check, `PJRT_Plugin_Initialize` once.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, OnceLock};

use super::ffi;
use crate::{Error, ErrorCode, Result};

/// The environment variable that names a plugin `.so` when no path is given.
pub const PLUGIN_PATH_ENV: &str = "PJRT_PLUGIN_PATH";

/// The default CPU plugin, relative to a Python `site-packages` directory: the
/// `lammps-jax-pjrt-cpu` wheel that `scripts/setup.sh` installs (chosen by measurement; see
/// README). The other CPU plugins follow it as fallbacks.
pub const DEFAULT_PLUGIN: &str = "lammps_jax_pjrt_cpu/pjrt_c_api_cpu_plugin.so";

const FALLBACK_PLUGINS: [&str; 2] =
    ["xla_plugins/xla_cpu_pjrt/xla_cpu_pjrt.so", "fastatomstruct_xla_cpu/libpjrt_cpu.so"];

const INSTALL_HINT: &str = "Pass a plugin path, set PJRT_PLUGIN_PATH to a PJRT plugin .so, or \
run scripts/setup.sh to install the CPU plugin into .venv (`pip install lammps-jax-pjrt-cpu`). \
GPU: `pip install jax-cuda12-pjrt` and point PJRT_PLUGIN_PATH at its .so; TPU: `libtpu`.";

/// Where a plugin was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginSource {
    /// The path the caller gave.
    Explicit,
    /// `$PJRT_PLUGIN_PATH`.
    Env,
    /// A plugin installed by `scripts/setup.sh` in a virtualenv.
    Installed,
}

/// A loaded PJRT plugin: the library and its API table. Loaded once per path and process,
/// and never unloaded (plugins hold process-wide state once initialized).
pub struct Plugin {
    path: PathBuf,
    source: PluginSource,
    api: NonNull<ffi::PJRT_Api>,
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
    /// Loads a plugin: `path` if given, else `$PJRT_PLUGIN_PATH`, else the plugin that
    /// `scripts/setup.sh` installed. The error names every path tried.
    pub fn load(path: Option<&Path>) -> Result<Arc<Plugin>> {
        let candidates = candidates(path);
        let mut tried = Vec::new();
        for (candidate, source) in candidates {
            match Plugin::load_path(&candidate, source) {
                Ok(p) => return Ok(p),
                Err(e) => tried.push((candidate, e.to_string())),
            }
        }
        if tried.is_empty() {
            tried.push((PathBuf::from("<none>"), "no candidate path".into()));
        }
        Err(Error::PluginNotFound { tried, hint: INSTALL_HINT.into() })
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
        let plugin = Arc::new(Plugin::open(&key, source)?);
        plugin.initialize()?;
        plugins.insert(key, plugin.clone());
        Ok(plugin)
    }

    fn open(path: &Path, source: PluginSource) -> Result<Plugin> {
        let load_err = |reason: String| Error::PluginNotFound {
            tried: vec![(path.to_path_buf(), reason)],
            hint: INSTALL_HINT.into(),
        };
        // SAFETY: loading a shared library runs its initializers. We only load files the user
        // named (or the plugin setup installed) as PJRT plugins, which is what they are for.
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
        let plugin = Plugin { path: path.to_path_buf(), source, api, _lib: lib };
        plugin.check_version()?;
        Ok(plugin)
    }

    fn check_version(&self) -> Result<()> {
        let (major, minor) = self.api_version();
        let expected_major = ffi::PJRT_API_MAJOR as i32;
        if major != expected_major {
            return Err(Error::PluginVersion { path: self.path.clone(), major, minor, expected_major });
        }
        Ok(())
    }

    fn initialize(&self) -> Result<()> {
        let mut a = super::args!(PJRT_Plugin_Initialize_Args);
        super::call!(self, PJRT_Plugin_Initialize, &mut a)
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
        let v = &self.table().pjrt_api_version;
        (v.major_version, v.minor_version)
    }

    fn table(&self) -> &ffi::PJRT_Api {
        // SAFETY: `api` came from GetPjrtApi, points to a static table that lives as long as
        // the library, which `self` keeps loaded. Its first fields (struct_size,
        // extension_start, pjrt_api_version) exist in every API version.
        unsafe { self.api.as_ref() }
    }

    /// The API table, once it is known to extend past `offset` (an entry's offset). Reading an
    /// entry beyond the plugin's `struct_size` would read past the end of its table.
    pub(crate) fn entry(&self, offset: usize, name: &'static str) -> Result<&ffi::PJRT_Api> {
        let table = self.table();
        if offset + std::mem::size_of::<usize>() > table.struct_size {
            return Err(Error::Unsupported { function: name });
        }
        Ok(table)
    }

    /// Turns a `PJRT_Error*` into a `Result`: copies the message and code out and destroys the
    /// error at once, so `Error` owns plain Rust data.
    pub(crate) fn check(&self, err: *mut ffi::PJRT_Error, call: &'static str) -> Result<()> {
        let Some(err) = NonNull::new(err) else { return Ok(()) };
        let mut m = super::args!(PJRT_Error_Message_Args);
        m.error = err.as_ptr();
        let message = match self.entry(std::mem::offset_of!(ffi::PJRT_Api, PJRT_Error_Message), "")
            .ok()
            .and_then(|t| t.PJRT_Error_Message)
        {
            Some(f) => {
                // SAFETY: `err` is a live error from this plugin; the message pointer it writes
                // is valid until the error is destroyed, and we copy it before that.
                unsafe { f(&mut m) };
                if m.message.is_null() {
                    String::new()
                } else {
                    // SAFETY: the plugin wrote `message_size` bytes at `message`.
                    let bytes = unsafe { std::slice::from_raw_parts(m.message as *const u8, m.message_size) };
                    String::from_utf8_lossy(bytes).into_owned()
                }
            }
            None => "(plugin gave no error message)".into(),
        };
        let mut c = super::args!(PJRT_Error_GetCode_Args);
        c.error = err.as_ptr();
        let code = match self.table().PJRT_Error_GetCode {
            // SAFETY: as above; GetCode only reads the live error. A failure to read the code
            // leaves `Unknown`.
            Some(f) => {
                let e = unsafe { f(&mut c) };
                if e.is_null() { ErrorCode::from_raw(c.code as i32) } else { ErrorCode::Unknown }
            }
            None => ErrorCode::Unknown,
        };
        let mut d = super::args!(PJRT_Error_Destroy_Args);
        d.error = err.as_ptr();
        if let Some(f) = self.table().PJRT_Error_Destroy {
            // SAFETY: `err` is destroyed exactly once, here, after its message was copied.
            unsafe { f(&mut d) };
        }
        Err(Error::Pjrt { call, code, message })
    }
}

/// The paths to try, in order, with how each was found.
fn candidates(explicit: Option<&Path>) -> Vec<(PathBuf, PluginSource)> {
    if let Some(p) = explicit {
        return vec![(p.to_path_buf(), PluginSource::Explicit)];
    }
    if let Some(p) = std::env::var_os(PLUGIN_PATH_ENV).filter(|p| !p.is_empty()) {
        return vec![(PathBuf::from(p), PluginSource::Env)];
    }
    let mut out = Vec::new();
    for site in site_packages_dirs() {
        for rel in std::iter::once(DEFAULT_PLUGIN).chain(FALLBACK_PLUGINS) {
            out.push((site.join(rel), PluginSource::Installed));
        }
    }
    out
}

/// `site-packages` directories of the virtualenvs where setup may have put a plugin:
/// `$VIRTUAL_ENV`, `./.venv`, and this crate's own `.venv`.
fn site_packages_dirs() -> Vec<PathBuf> {
    let mut venvs: Vec<PathBuf> = Vec::new();
    if let Some(v) = std::env::var_os("VIRTUAL_ENV") {
        venvs.push(PathBuf::from(v));
    }
    venvs.push(PathBuf::from(".venv"));
    venvs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv"));
    let mut out = Vec::new();
    for venv in venvs {
        let Ok(entries) = std::fs::read_dir(venv.join("lib")) else { continue };
        let mut pythons: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("python")))
            .collect();
        pythons.sort();
        out.extend(pythons.into_iter().map(|p| p.join("site-packages")));
    }
    out.dedup();
    out
}

/// Copies a (pointer, length) string the plugin owns.
pub(crate) fn plugin_str(ptr: *const std::os::raw::c_char, len: usize) -> String {
    if ptr.is_null() {
        return String::new();
    }
    // SAFETY: PJRT returns (pointer, size) pairs that are valid for as long as the object that
    // owns them; callers copy them out immediately.
    let bytes = unsafe { std::slice::from_raw_parts(ptr as *const u8, len) };
    String::from_utf8_lossy(bytes).into_owned()
}
