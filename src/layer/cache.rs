//! A persistent cache of compiled executables (`PJRT_Executable_Serialize`, then
//! deserialize-and-load), keyed by the program bytes, the plugin and its version, the compile
//! options and the device kind.
//!
//! It lives in `$FLAXLAYER_CACHE` if that is a path, else in the user's cache directory
//! (`~/.cache/flaxlayer`); `FLAXLAYER_CACHE=0` turns it off. An entry carries a checksum: a
//! corrupt or stale one is recompiled and replaced, never trusted.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::pjrt::{Client, CompileOptions, LoadedExecutable, Program};
use crate::Result;

/// The environment variable that sets the cache directory, or turns the cache off with `0`.
pub const CACHE_ENV: &str = "FLAXLAYER_CACHE";

const MAGIC: &[u8; 8] = b"FLXLEXE1";

/// The cache directory in force, or `None` when caching is off.
pub fn cache_dir() -> Option<PathBuf> {
    match std::env::var_os(CACHE_ENV) {
        Some(v) if v == "0" || v.is_empty() => None,
        Some(v) => Some(PathBuf::from(v)),
        None => dirs::cache_dir().map(|d| d.join("flaxlayer")),
    }
}

/// Compiles `program`, through the cache when it is on.
pub(crate) fn compile(client: &Client, program: Program<'_>, options: &CompileOptions) -> Result<LoadedExecutable> {
    match cache_dir() {
        Some(dir) => compile_cached(&dir, client, program, options),
        None => client.compile(program, options),
    }
}

/// Compiles through the cache in `dir`. Cache I/O failures never fail the compile.
pub(crate) fn compile_cached(dir: &Path, client: &Client, program: Program<'_>, options: &CompileOptions) -> Result<LoadedExecutable> {
    let key = cache_key(client, program, options)?;
    let path = dir.join(format!("{key}.pjrtexe"));
    if let Some(payload) = read_entry(&path) {
        if let Ok(exe) = client.deserialize_executable(&payload) {
            return Ok(exe);
        }
    }
    let exe = client.compile(program, options)?;
    if let Ok(payload) = exe.serialize() {
        let _ = write_entry(dir, &path, &payload);
    }
    Ok(exe)
}

fn cache_key(client: &Client, program: Program<'_>, options: &CompileOptions) -> Result<String> {
    let plugin = client.plugin();
    let (major, minor) = plugin.api_version();
    let plugin_file = std::fs::metadata(plugin.path()).ok();
    let mut h = Sha256::new();
    let mut field = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    let (kind, code) = match program {
        Program::Mlir(c) => ("mlir", c),
        Program::Hlo(c) => ("hlo", c),
    };
    field(kind.as_bytes());
    field(code);
    field(plugin.path().to_string_lossy().as_bytes());
    field(format!("{major}.{minor}").as_bytes());
    field(format!("{:?}", plugin_file.as_ref().map(|m| (m.len(), m.modified().ok()))).as_bytes());
    field(client.platform_name()?.as_bytes());
    field(client.platform_version()?.as_bytes());
    field(&options.to_proto_bytes());
    let kinds: Vec<String> = client.devices()?.iter().map(|d| d.kind().unwrap_or_default()).collect();
    field(kinds.join(",").as_bytes());
    Ok(hex(&h.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An entry's payload, if the file exists and its checksum holds.
fn read_entry(path: &Path) -> Option<Vec<u8>> {
    let bytes = std::fs::read(path).ok()?;
    let rest = bytes.strip_prefix(MAGIC.as_slice())?;
    if rest.len() < 32 {
        return None;
    }
    let (sum, payload) = rest.split_at(32);
    (Sha256::digest(payload).as_slice() == sum).then(|| payload.to_vec())
}

fn write_entry(dir: &Path, path: &Path, payload: &[u8]) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| crate::Error::io(dir, e))?;
    let mut bytes = Vec::with_capacity(MAGIC.len() + 32 + payload.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&Sha256::digest(payload));
    bytes.extend_from_slice(payload);
    crate::atomic::write_atomic(path, &bytes)
}
