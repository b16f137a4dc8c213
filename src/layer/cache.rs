//! A persistent cache of compiled executables (`PJRT_Executable_Serialize`, then
//! deserialize-and-load), keyed by the program bytes, the plugin and its version, the compile
//! options, `$XLA_FLAGS`, the device kind and the host CPU's features.
//!
//! **Off in the library unless asked.** A library writes nowhere but where its user said: a
//! layer caches only when `$FLAXLAYER_CACHE` names a directory, or when the builder is given
//! `.compile_cache(CacheSetting::FromEnv)` (the user's cache directory, `~/.cache/flaxlayer`,
//! unless `$FLAXLAYER_CACHE` says otherwise) or `CacheSetting::Dir(path)`. The `flaxlayer`
//! command line and server turn it on (`FromEnv`); `FLAXLAYER_CACHE=0` turns it off everywhere.
//! An entry carries a checksum: a corrupt or stale one is recompiled and replaced.
//!
//! **An entry is native code.** Loading one runs what it holds, so the cache directory must be
//! as trusted as the binary: this module creates it private to the user (mode 0700), and the
//! key includes the CPU features, so a cache shared between machines never hands one CPU code
//! compiled for instructions it lacks.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::isolate::{self, Isolation};
use crate::pjrt::{Client, CompileOptions, LoadedExecutable, Program};
use crate::Result;

/// The environment variable that sets the cache directory, or turns the cache off with `0`.
pub const CACHE_ENV: &str = "FLAXLAYER_CACHE";

const MAGIC: &[u8; 8] = b"FLXLEXE1";

/// Where a layer keeps compiled executables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum CacheSetting {
    /// The library's default: `$FLAXLAYER_CACHE` if it names a directory, else no cache, so
    /// that a program using the crate writes nothing outside the paths it gave.
    #[default]
    EnvOnly,
    /// `$FLAXLAYER_CACHE` if set (`0` turns the cache off), else the user's cache directory
    /// (`~/.cache/flaxlayer`): the `flaxlayer` command line's and server's setting.
    FromEnv,
    /// No cache: every computation compiles.
    Off,
    /// This directory.
    Dir(PathBuf),
}

impl CacheSetting {
    /// The directory this setting names, or `None` when caching is off.
    pub fn dir(&self) -> Option<PathBuf> {
        self.dir_given(std::env::var_os(CACHE_ENV))
    }

    /// The directory with `$FLAXLAYER_CACHE` set to `env`.
    fn dir_given(&self, env: Option<std::ffi::OsString>) -> Option<PathBuf> {
        match self {
            CacheSetting::EnvOnly => env.and_then(|v| cache_dir_from(Some(v))),
            CacheSetting::FromEnv => cache_dir_from(env),
            CacheSetting::Off => None,
            CacheSetting::Dir(d) => Some(d.clone()),
        }
    }
}

/// The cache directory of [`CacheSetting::FromEnv`] (the command line's): `$FLAXLAYER_CACHE`,
/// else the user's cache directory; `None` when caching is off.
pub fn cache_dir() -> Option<PathBuf> {
    cache_dir_from(std::env::var_os(CACHE_ENV))
}

fn cache_dir_from(setting: Option<std::ffi::OsString>) -> Option<PathBuf> {
    match setting {
        Some(v) if v == "0" || v.is_empty() => None,
        Some(v) => Some(PathBuf::from(v)),
        None => dirs::cache_dir().map(|d| d.join("flaxlayer")),
    }
}

/// What the cache did for one compile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Loaded a valid entry.
    Hit,
    /// No entry: compiled and stored.
    Miss,
    /// An entry was corrupt or would not load: compiled and replaced it.
    Replaced,
}

/// How one compile is done: the cache directory (if any) and the isolation (if any).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CompileSetting<'a> {
    pub cache: Option<&'a Path>,
    pub isolation: Option<&'a Isolation>,
    /// What the program is, for errors (the bundle file).
    pub what: &'a str,
}

/// Compiles `program`, through the cache when there is one, in a child process when the
/// setting isolates it.
pub(crate) fn compile(setting: CompileSetting<'_>, client: &Client, program: Program<'_>, options: &CompileOptions) -> Result<LoadedExecutable> {
    match setting.cache {
        Some(dir) => compile_cached(dir, setting, client, program, options).map(|(exe, _)| exe),
        None => compile_now(setting, client, program, options),
    }
}

/// Compiles with no cache: here, or in a worker whose executable is loaded here.
fn compile_now(setting: CompileSetting<'_>, client: &Client, program: Program<'_>, options: &CompileOptions) -> Result<LoadedExecutable> {
    match (setting.isolation, program) {
        (Some(iso), Program::Mlir(code)) => isolate::load(client, &iso.compile(client, code, options, setting.what)?, setting.what),
        _ => client.compile(program, options),
    }
}

/// Compiles through the cache in `dir`. Cache I/O failures never fail the compile.
pub(crate) fn compile_cached(
    dir: &Path,
    setting: CompileSetting<'_>,
    client: &Client,
    program: Program<'_>,
    options: &CompileOptions,
) -> Result<(LoadedExecutable, Outcome)> {
    let key = cache_key(client, program, options)?;
    let path = dir.join(format!("{key}.pjrtexe"));
    let outcome = match read_entry(&path) {
        Some(Some(payload)) => match client.deserialize_trusted(&payload) {
            Ok(exe) => return Ok((exe, Outcome::Hit)),
            Err(_) => Outcome::Replaced,
        },
        Some(None) => Outcome::Replaced,
        None => Outcome::Miss,
    };
    if let (Some(iso), Program::Mlir(code)) = (setting.isolation, program) {
        let payload = iso.compile(client, code, options, setting.what)?;
        let _ = write_entry(dir, &path, &payload);
        return Ok((isolate::load(client, &payload, setting.what)?, outcome));
    }
    let exe = client.compile(program, options)?;
    if let Ok(payload) = exe.serialize() {
        let _ = write_entry(dir, &path, &payload);
    }
    Ok((exe, outcome))
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
    // Plugins read XLA's flags from the environment; executables compiled under other flags
    // are other executables.
    field(std::env::var_os("XLA_FLAGS").unwrap_or_default().as_encoded_bytes());
    let kinds: Vec<String> = client.devices()?.iter().map(|d| d.kind().unwrap_or_default()).collect();
    field(kinds.join(",").as_bytes());
    field(cpu_features().as_bytes());
    Ok(hex(&h.finalize()))
}

/// The host CPU's architecture and the instruction-set extensions XLA's CPU code generator
/// may use, as detected at run time: every feature XLA's loader of compiled CPU code checks
/// (`adx`, `sha`, `vaes`, `vpclmulqdq`, the `xsave` family among them), so an executable is
/// never taken from the cache on a CPU that lacks one it was compiled for.
pub(crate) fn cpu_features() -> String {
    let mut found: Vec<&str> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! detect {
            ($($f:tt),*) => {$(
                if std::arch::is_x86_feature_detected!($f) {
                    found.push($f);
                }
            )*};
        }
        detect!(
            "sse3", "ssse3", "sse4.1", "sse4.2", "popcnt", "avx", "avx2", "fma", "f16c", "bmi1", "bmi2", "lzcnt",
            "movbe", "avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl", "avx512vnni", "avx512bf16",
            "avx512fp16", "avx512vbmi", "avx512ifma", "avxvnni", "adx", "aes", "pclmulqdq", "sha", "vaes",
            "vpclmulqdq", "xsave", "xsaveopt", "xsavec", "xsaves"
        );
    }
    #[cfg(target_arch = "aarch64")]
    {
        macro_rules! detect {
            ($($f:tt),*) => {$(
                if std::arch::is_aarch64_feature_detected!($f) {
                    found.push($f);
                }
            )*};
        }
        detect!("neon", "fp16", "dotprod", "bf16", "i8mm", "sve", "sve2", "sme");
    }
    format!("{}:{}", std::env::consts::ARCH, found.join(","))
}

/// Lower-case hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Creates the cache directory (and its parents) if missing, the directory itself private to
/// the user (0700): its entries are native code.
fn create_private_dir(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir).map_err(|e| crate::Error::io(dir, e))
}

/// `None` when there is no entry; `Some(None)` for a corrupt one; else its payload.
fn read_entry(path: &Path) -> Option<Option<Vec<u8>>> {
    let bytes = crate::files::read(path, crate::files::MAX_FILE_BYTES).ok()?;
    let Some(rest) = bytes.strip_prefix(MAGIC.as_slice()).filter(|r| r.len() >= 32) else {
        return Some(None);
    };
    let (sum, payload) = rest.split_at(32);
    Some((Sha256::digest(payload).as_slice() == sum).then(|| payload.to_vec()))
}

fn write_entry(dir: &Path, path: &Path, payload: &[u8]) -> Result<()> {
    create_private_dir(dir)?;
    let mut bytes = Vec::with_capacity(MAGIC.len() + 32 + payload.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&Sha256::digest(payload));
    bytes.extend_from_slice(payload);
    crate::atomic::write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mlp() -> Vec<u8> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("hlo/pjrt/mlp.mlirbc");
        std::fs::read(path).unwrap()
    }

    fn entries(dir: &Path) -> Vec<PathBuf> {
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect()
    }

    #[test]
    fn setting_zero_turns_the_cache_off() {
        assert_eq!(cache_dir_from(Some("0".into())), None);
        assert_eq!(cache_dir_from(Some("".into())), None);
        assert_eq!(cache_dir_from(Some("/x/y".into())), Some(PathBuf::from("/x/y")));
        assert!(cache_dir_from(None).is_some_and(|d| d.ends_with("flaxlayer")));
    }

    #[test]
    fn the_library_caches_only_where_asked() {
        // The default writes nowhere unless $FLAXLAYER_CACHE names a directory.
        assert_eq!(CacheSetting::default(), CacheSetting::EnvOnly);
        assert_eq!(CacheSetting::EnvOnly.dir_given(None), None);
        assert_eq!(CacheSetting::EnvOnly.dir_given(Some("0".into())), None);
        assert_eq!(CacheSetting::EnvOnly.dir_given(Some("/c".into())), Some(PathBuf::from("/c")));
        // The command line's setting falls back to the user's cache directory.
        assert!(CacheSetting::FromEnv.dir_given(None).is_some_and(|d| d.ends_with("flaxlayer")));
        assert_eq!(CacheSetting::FromEnv.dir_given(Some("0".into())), None);
        assert_eq!(CacheSetting::Off.dir_given(Some("/c".into())), None);
        assert_eq!(CacheSetting::Dir("/d".into()).dir_given(None), Some(PathBuf::from("/d")));
    }

    #[test]
    fn miss_then_hit_then_corrupt_entries_are_replaced() {
        let client = Client::new(None).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let code = mlp();
        let opts = CompileOptions::default();
        let (_, first) = compile_cached(dir.path(), CompileSetting::default(), &client, Program::Mlir(&code), &opts).unwrap();
        assert_eq!(first, Outcome::Miss);
        let files = entries(dir.path());
        assert_eq!(files.len(), 1);
        let (_, second) = compile_cached(dir.path(), CompileSetting::default(), &client, Program::Mlir(&code), &opts).unwrap();
        assert_eq!(second, Outcome::Hit);

        // A flipped payload byte fails the checksum: recompiled and replaced, never trusted.
        let mut bytes = std::fs::read(&files[0]).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&files[0], &bytes).unwrap();
        let (_, third) = compile_cached(dir.path(), CompileSetting::default(), &client, Program::Mlir(&code), &opts).unwrap();
        assert_eq!(third, Outcome::Replaced);
        let (_, fourth) = compile_cached(dir.path(), CompileSetting::default(), &client, Program::Mlir(&code), &opts).unwrap();
        assert_eq!(fourth, Outcome::Hit);

        // A valid checksum over bytes PJRT cannot load (stale format): replaced as well.
        let junk = b"not an executable";
        let mut entry = MAGIC.to_vec();
        entry.extend_from_slice(&Sha256::digest(junk));
        entry.extend_from_slice(junk);
        std::fs::write(&files[0], &entry).unwrap();
        let (_, fifth) = compile_cached(dir.path(), CompileSetting::default(), &client, Program::Mlir(&code), &opts).unwrap();
        assert_eq!(fifth, Outcome::Replaced);
        std::fs::write(&files[0], b"short").unwrap();
        let (_, sixth) = compile_cached(dir.path(), CompileSetting::default(), &client, Program::Mlir(&code), &opts).unwrap();
        assert_eq!(sixth, Outcome::Replaced);
    }

    #[test]
    fn the_key_depends_on_program_and_options() {
        let client = Client::new(None).unwrap();
        let code = mlp();
        let a = cache_key(&client, Program::Mlir(&code), &CompileOptions::default()).unwrap();
        let b = cache_key(&client, Program::Mlir(&code[..code.len() - 1]), &CompileOptions::default()).unwrap();
        let portable = CompileOptions { portable: true, ..CompileOptions::default() };
        let c = cache_key(&client, Program::Mlir(&code), &portable).unwrap();
        let d = cache_key(&client, Program::Hlo(&code), &CompileOptions::default()).unwrap();
        assert_eq!(a, cache_key(&client, Program::Mlir(&code), &CompileOptions::default()).unwrap());
        assert!(a != b && a != c && a != d);
    }

    #[test]
    fn the_key_has_the_cpu_features_and_the_directory_is_private() {
        let f = cpu_features();
        assert!(f.starts_with(std::env::consts::ARCH), "{f}");
        #[cfg(target_arch = "x86_64")]
        assert_eq!(f.contains("avx2"), std::arch::is_x86_feature_detected!("avx2"), "{f}");
        #[cfg(target_arch = "x86_64")]
        {
            let listed = |name: &str| f.split([':', ',']).any(|x| x == name);
            assert_eq!(listed("adx"), std::arch::is_x86_feature_detected!("adx"), "{f}");
            assert_eq!(listed("vpclmulqdq"), std::arch::is_x86_feature_detected!("vpclmulqdq"), "{f}");
            assert_eq!(listed("xsave"), std::arch::is_x86_feature_detected!("xsave"), "{f}");
            assert_eq!(listed("sha"), std::arch::is_x86_feature_detected!("sha"), "{f}");
        }
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b/cache");
        create_private_dir(&dir).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
    }
}
