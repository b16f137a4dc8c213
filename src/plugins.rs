//! Where a PJRT plugin comes from: the search for one, and the places `flaxlayer plugin
//! install` fills. This module sits above [`crate::pjrt`], which only loads the path it is
//! given.
//!
//! A plugin is native code that runs with the process's rights, so it is looked for only in
//! places that whoever runs the process controls, in this order:
//! 1. the explicit path (`.plugin(path)`, `--plugin`, [`Client::new`]'s argument);
//! 2. `$PJRT_PLUGIN_PATH`;
//! 3. next to the running executable (the names of [`plugin_file_names`]);
//! 4. `$VIRTUAL_ENV`'s `site-packages` (the CPU plugin wheels, [`DEFAULT_PLUGIN`] first);
//! 5. the per-user plugin directory ([`user_plugin_dir`]) that `flaxlayer plugin install`
//!    fills.
//!
//! The working directory is never searched (nor a `./.venv` in it): running `flaxlayer` inside
//! a downloaded model repository must not load code from it. An explicit path or
//! `$PJRT_PLUGIN_PATH` is the only candidate when given: a plugin the user named is never
//! silently replaced by another. No path of the build machine is used.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::pjrt::{Client, ClientOptions, OptionValue, Plugin, PluginSource};
use crate::{Error, Result};

/// The environment variable that names a plugin `.so` when no path is given.
pub const PLUGIN_PATH_ENV: &str = "PJRT_PLUGIN_PATH";

/// The default CPU plugin, relative to a Python `site-packages` directory: the
/// `lammps-jax-pjrt-cpu` wheel that `scripts/setup.sh` installs (chosen by measurement; see
/// README). The other CPU plugins follow it as fallbacks.
pub const DEFAULT_PLUGIN: &str = "lammps_jax_pjrt_cpu/pjrt_c_api_cpu_plugin.so";

const FALLBACK_PLUGINS: [&str; 2] = ["xla_plugins/xla_cpu_pjrt/xla_cpu_pjrt.so", "fastatomstruct_xla_cpu/libpjrt_cpu.so"];

const INSTALL_HINT: &str = "Pass a plugin path, set PJRT_PLUGIN_PATH to a PJRT plugin .so, put \
the plugin next to the executable, run `flaxlayer plugin install` (the CPU plugin, into the \
per-user plugin directory), or activate a virtualenv that has it (`pip install \
lammps-jax-pjrt-cpu`; scripts/setup.sh installs it into the repository's .venv, which cargo \
commands in the repository use through .cargo/config.toml). The working directory is never \
searched. GPU: `pip install jax-cuda12-pjrt` and point PJRT_PLUGIN_PATH at its .so; TPU: `libtpu`.";

/// A path to try and how it was found.
struct Candidate {
    path: PathBuf,
    source: PluginSource,
}

/// One step of the search: a path to try, or a place skipped and why (for the error).
enum Step {
    Try(Candidate),
    Skip(PathBuf, String),
}

/// The file names a CPU plugin has in its wheel: what is looked for next to the executable
/// and in the per-user directory.
pub fn plugin_file_names() -> Vec<&'static str> {
    std::iter::once(DEFAULT_PLUGIN)
        .chain(FALLBACK_PLUGINS)
        .filter_map(|rel| rel.rsplit('/').next())
        .collect()
}

/// The per-user plugin directory: `<data dir>/flaxlayer/plugins` (on Linux
/// `$XDG_DATA_HOME/flaxlayer/plugins`, by default `~/.local/share/flaxlayer/plugins`), or
/// `None` if the platform has no data directory.
pub fn user_plugin_dir() -> Option<PathBuf> {
    dirs::data_dir().map(|d| d.join("flaxlayer").join("plugins"))
}

/// What the search reads from the process: its environment and executable.
struct Places {
    plugin_path: Option<std::ffi::OsString>,
    exe_dir: Option<PathBuf>,
    virtual_env: Option<std::ffi::OsString>,
    user_dir: Option<PathBuf>,
}

impl Places {
    fn of_this_process() -> Places {
        Places {
            plugin_path: std::env::var_os(PLUGIN_PATH_ENV),
            exe_dir: std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf)),
            virtual_env: std::env::var_os("VIRTUAL_ENV"),
            user_dir: user_plugin_dir(),
        }
    }
}

/// The search, in the order of the module docs.
fn steps(explicit: Option<&Path>, places: Places) -> Vec<Step> {
    let try_ = |path: PathBuf, source: PluginSource| Step::Try(Candidate { path, source });
    if let Some(p) = explicit {
        return vec![try_(p.to_path_buf(), PluginSource::Explicit)];
    }
    if let Some(p) = places.plugin_path.filter(|p| !p.is_empty()) {
        return vec![try_(PathBuf::from(p), PluginSource::Env)];
    }
    let mut steps = vec![Step::Skip(PathBuf::from(format!("${PLUGIN_PATH_ENV}")), "not set".into())];
    match places.exe_dir.filter(|d| d.is_absolute()) {
        Some(dir) => steps.extend(in_dir(&dir, PluginSource::BesideExecutable)),
        None => steps.push(Step::Skip(PathBuf::from("<executable directory>"), "unknown".into())),
    }
    match places.virtual_env.map(PathBuf::from) {
        // A relative $VIRTUAL_ENV would name a place under the working directory.
        Some(venv) if !venv.is_absolute() => {
            steps.push(Step::Skip(venv, "$VIRTUAL_ENV is not an absolute path; the working directory is never searched".into()))
        }
        Some(venv) => match site_packages(&venv) {
            Ok(sites) => {
                for site in sites {
                    for rel in std::iter::once(DEFAULT_PLUGIN).chain(FALLBACK_PLUGINS) {
                        steps.push(try_(site.join(rel), PluginSource::Installed));
                    }
                }
            }
            Err(why) => steps.push(Step::Skip(venv, why)),
        },
        None => steps.push(Step::Skip(PathBuf::from("$VIRTUAL_ENV"), "not set".into())),
    }
    match places.user_dir.filter(|d| d.is_absolute()) {
        Some(dir) => steps.extend(in_dir(&dir, PluginSource::UserDir)),
        None => steps.push(Step::Skip(PathBuf::from("<user data directory>"), "this platform has none".into())),
    }
    steps
}

fn in_dir(dir: &Path, source: PluginSource) -> Vec<Step> {
    plugin_file_names()
        .into_iter()
        .map(|name| Step::Try(Candidate { path: dir.join(name), source: source.clone() }))
        .collect()
}

/// The `lib/python3*/site-packages` directories of a virtualenv.
fn site_packages(venv: &Path) -> std::result::Result<Vec<PathBuf>, String> {
    let lib = venv.join("lib");
    let entries = std::fs::read_dir(&lib).map_err(|e| format!("no virtualenv here ({}: {e})", lib.display()))?;
    let mut pythons: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("python")))
        .map(|p| p.join("site-packages"))
        .collect();
    pythons.sort();
    if pythons.is_empty() {
        return Err(format!("no {}/python*/site-packages", lib.display()));
    }
    Ok(pythons)
}

/// Finds and loads a plugin: with `path`, that file; else the first that loads in the search
/// order of the module docs. The error names every place looked at and why each failed.
pub fn find(path: Option<&Path>) -> Result<Arc<Plugin>> {
    let mut tried = Vec::new();
    for step in steps(path, Places::of_this_process()) {
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
        match Plugin::load_trusted(&path, source) {
            Ok(p) => return Ok(p),
            Err(Error::PluginNotFound { tried: why, .. }) if why.len() == 1 => tried.push((path, why[0].1.clone())),
            Err(e) => tried.push((path, e.to_string())),
        }
    }
    Err(Error::PluginNotFound { tried, hint: INSTALL_HINT.into() })
}

impl Plugin {
    /// [`find`]: the plugin at `path`, else the first found in the documented search order
    /// ([`crate::plugins`]).
    pub fn load(path: Option<&Path>) -> Result<Arc<Plugin>> {
        find(path)
    }
}

impl Client {
    /// Creates a client on the plugin that [`find`] finds (`path`, else `$PJRT_PLUGIN_PATH`,
    /// else the search of [`crate::plugins`]), in low-latency mode where the plugin has it: a
    /// CPU plugin runs executions on the calling thread ([`ClientOptions::cpu_synchronous`]).
    /// A plugin that refuses that option gets none.
    pub fn new(plugin_path: Option<&Path>) -> Result<Client> {
        let plugin = find(plugin_path)?;
        Client::with_options(plugin.clone(), &ClientOptions::cpu_synchronous()).or_else(|_| Client::with_plugin(plugin))
    }

    /// [`Client::new`] with `n` devices on a CPU plugin (the `cpu_device_count` option; the
    /// CPU plugins default to 4). A plugin that refuses the option is an error.
    pub fn with_cpu_devices(plugin_path: Option<&Path>, n: usize) -> Result<Client> {
        let plugin = find(plugin_path)?;
        let n = i64::try_from(n).map_err(|_| Error::invalid("cpu_device_count", format!("{n} does not fit an i64")))?;
        let options = ClientOptions::cpu_synchronous().set("cpu_device_count", OptionValue::Int64(n));
        Client::with_options(plugin, &options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_the_wheels_basenames() {
        assert_eq!(plugin_file_names(), ["pjrt_c_api_cpu_plugin.so", "xla_cpu_pjrt.so", "libpjrt_cpu.so"]);
    }

    #[test]
    fn an_explicit_path_is_the_only_candidate() {
        let steps = steps(Some(Path::new("/x/libfoo.so")), Places::of_this_process());
        let [Step::Try(c)] = steps.as_slice() else { panic!("one candidate") };
        assert_eq!(c.path, Path::new("/x/libfoo.so"));
        assert_eq!(c.source, PluginSource::Explicit);
    }

    #[test]
    fn no_candidate_is_relative_to_the_working_directory() {
        // Relative places would resolve under the working directory: none is tried. (The
        // integration test `plugin_cli::a_plugin_planted_in_the_working_directory_never_runs`
        // runs the whole search in a directory with a planted plugin.)
        let relative = |p: &str| Some(PathBuf::from(p));
        let places = Places {
            plugin_path: None,
            exe_dir: relative("bin"),
            virtual_env: Some(".venv".into()),
            user_dir: relative("plugins"),
        };
        let relative_steps = steps(None, places);
        let tried: Vec<&Path> = relative_steps.iter().filter_map(|s| if let Step::Try(c) = s { Some(c.path.as_path()) } else { None }).collect();
        assert!(tried.is_empty(), "relative candidates: {tried:?}");
        let absolute = Places {
            plugin_path: None,
            exe_dir: Some("/opt/app/bin".into()),
            virtual_env: Some("/home/u/venv".into()),
            user_dir: Some("/home/u/.local/share/flaxlayer/plugins".into()),
        };
        let tried: Vec<PathBuf> = steps(None, absolute).into_iter().filter_map(|s| if let Step::Try(c) = s { Some(c.path) } else { None }).collect();
        assert_eq!(tried.first(), Some(&PathBuf::from("/opt/app/bin/pjrt_c_api_cpu_plugin.so")));
        assert_eq!(tried.len(), 6, "3 names beside the executable and 3 in the user dir (the venv has no lib/): {tried:?}");
    }
}
