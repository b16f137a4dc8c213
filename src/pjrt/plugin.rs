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

use super::ffi;
use crate::{Error, ErrorCode, Result};

/// A kernel registered on a plugin, and the plugin's answer (its error as text).
pub(crate) type RegisteredKernel = (super::Kernel, std::result::Result<(), String>);

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
    /// The active Python virtualenv's `site-packages` (`$VIRTUAL_ENV`).
    Installed,
    /// The per-user plugin directory that `flaxlayer plugin install` fills.
    UserDir,
}

/// A loaded PJRT plugin: the library and its API table. Loaded once per path and process,
/// and never unloaded (plugins hold process-wide state once initialized).
///
/// **Trust.** Loading a plugin runs native code with the process's rights: the library's
/// initializers when it is opened, then `GetPjrtApi` and `PJRT_Plugin_Initialize`, and every
/// call after. [`Plugin::load_path`] therefore assumes its path names a PJRT plugin that the
/// user running the process trusts as they trust the executable; this type makes no attempt
/// to contain a hostile library. The search in [`crate::plugins`] only looks where that
/// user (or the installer of the executable) put files, never in the working directory.
/// Once its code ran, a library is never closed, even when a later check refuses it: a
/// `dlclose` would unmap code that the library may have registered to run later (thread
/// locals, `atexit` handlers, threads it started).
pub struct Plugin {
    path: PathBuf,
    source: PluginSource,
    api: NonNull<ffi::PJRT_Api>,
    /// The plugin's `PJRT_Api.struct_size`, read once at load.
    table_size: usize,
    /// The kernels registered on this plugin ([`Plugin::register_ffi_kernel`]): by (target,
    /// platform), the kernel and the plugin's answer.
    pub(crate) ffi_kernels: Mutex<HashMap<(String, String), RegisteredKernel>>,
    /// The library, leaked on purpose: never closed (see the type's docs).
    _lib: &'static libloading::Library,
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
    /// Loads the plugin at exactly `path` (once per process; later calls share it). A library
    /// that is not a usable PJRT plugin is refused, and stays loaded (its initializers already
    /// ran).
    ///
    /// The safe way to load a plugin is [`Plugin::load`] (or [`Client::new`](super::Client::new)),
    /// which takes a path the caller names or searches only the places of [`crate::plugins`].
    ///
    /// # Safety
    ///
    /// The file's code runs in this process with its rights: its initializers when it is
    /// opened, then `GetPjrtApi` and `PJRT_Plugin_Initialize`, and every PJRT call after. The
    /// caller must know that `path` names a PJRT plugin it trusts as it trusts its own
    /// executable (see the type's docs): nothing here can contain a hostile or broken library.
    pub unsafe fn load_path(path: &Path, source: PluginSource) -> Result<Arc<Plugin>> {
        Plugin::load_trusted(path, source)
    }

    /// [`Plugin::load_path`] for the crate's own searches ([`crate::plugins`]): `path` is a
    /// file the user named (an explicit path, `$PJRT_PLUGIN_PATH`) or put in one of the places
    /// the plugin search documents, which hold code trusted as the executable is (see the
    /// type's docs).
    pub(crate) fn load_trusted(path: &Path, source: PluginSource) -> Result<Arc<Plugin>> {
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
            hint: "the file is not a PJRT plugin this crate can load".into(),
        };
        // SAFETY: loading a shared library runs its initializers. The caller names a file it
        // trusts as a PJRT plugin (the trust documented on `Plugin`), which is what it is for.
        let lib = unsafe { libloading::Library::new(path) }
            .map_err(|e| load_err(format!("dlopen failed: {e}")))?;
        // Its initializers ran: it is never closed, whatever the checks below say.
        let lib: &'static libloading::Library = Box::leak(Box::new(lib));
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
        let plugin = Plugin { path: path.to_path_buf(), source, api, table_size, ffi_kernels: Mutex::default(), _lib: lib };
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
