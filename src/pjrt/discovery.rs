//! Where a PJRT plugin is looked for, in order:
//! 1. the explicit path (`.plugin(path)`, `--plugin`);
//! 2. `$PJRT_PLUGIN_PATH`;
//! 3. next to the running executable (known plugin file names);
//! 4. `$VIRTUAL_ENV`'s `site-packages`;
//! 5. `./.venv`'s `site-packages`;
//! 6. the per-user plugin directory ([`user_plugin_dir`]) that `flaxlayer plugin install`
//!    fills.
//!
//! An explicit path or `$PJRT_PLUGIN_PATH` is the only candidate when given: a plugin the
//! user named is never silently replaced by another. No path of the build machine is used.

use std::path::{Path, PathBuf};

use super::plugin::{PluginSource, DEFAULT_PLUGIN, FALLBACK_PLUGINS, PLUGIN_PATH_ENV};

pub(crate) const INSTALL_HINT: &str = "Pass a plugin path, set PJRT_PLUGIN_PATH to a PJRT \
plugin .so, put the plugin next to the executable, run `flaxlayer plugin install` (the CPU \
plugin, into the per-user plugin directory), or install it into the active virtualenv \
(`pip install lammps-jax-pjrt-cpu`; scripts/setup.sh does this for ./.venv). GPU: `pip install \
jax-cuda12-pjrt` and point PJRT_PLUGIN_PATH at its .so; TPU: `libtpu`.";

/// A path to try and how it was found.
pub(crate) struct Candidate {
    pub path: PathBuf,
    pub source: PluginSource,
}

/// One step of the search: a path to try, or a place skipped and why (for the error).
pub(crate) enum Step {
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

/// The search, in order.
pub(crate) fn steps(explicit: Option<&Path>) -> Vec<Step> {
    let try_ = |path: PathBuf, source: PluginSource| Step::Try(Candidate { path, source });
    if let Some(p) = explicit {
        return vec![try_(p.to_path_buf(), PluginSource::Explicit)];
    }
    if let Some(p) = std::env::var_os(PLUGIN_PATH_ENV).filter(|p| !p.is_empty()) {
        return vec![try_(PathBuf::from(p), PluginSource::Env)];
    }
    let mut steps = vec![Step::Skip(PathBuf::from(format!("${PLUGIN_PATH_ENV}")), "not set".into())];
    match std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf)) {
        Some(dir) => steps.extend(in_dir(&dir, PluginSource::BesideExecutable)),
        None => steps.push(Step::Skip(PathBuf::from("<executable directory>"), "unknown".into())),
    }
    let mut venvs = Vec::new();
    match std::env::var_os("VIRTUAL_ENV").filter(|v| !v.is_empty()) {
        Some(v) => venvs.push(PathBuf::from(v)),
        None => steps.push(Step::Skip(PathBuf::from("$VIRTUAL_ENV"), "not set".into())),
    }
    venvs.push(PathBuf::from(".venv"));
    let mut seen = Vec::new();
    for venv in venvs {
        let key = venv.canonicalize().unwrap_or_else(|_| venv.clone());
        if seen.contains(&key) {
            continue;
        }
        seen.push(key);
        match site_packages(&venv) {
            Ok(sites) => {
                for site in sites {
                    for rel in std::iter::once(DEFAULT_PLUGIN).chain(FALLBACK_PLUGINS) {
                        steps.push(try_(site.join(rel), PluginSource::Installed));
                    }
                }
            }
            Err(why) => steps.push(Step::Skip(venv, why)),
        }
    }
    match user_plugin_dir() {
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
fn site_packages(venv: &Path) -> Result<Vec<PathBuf>, String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_the_wheels_basenames() {
        assert_eq!(plugin_file_names(), ["pjrt_c_api_cpu_plugin.so", "xla_cpu_pjrt.so", "libpjrt_cpu.so"]);
    }

    #[test]
    fn an_explicit_path_is_the_only_candidate() {
        let steps = steps(Some(Path::new("/x/libfoo.so")));
        let [Step::Try(c)] = steps.as_slice() else { panic!("one candidate") };
        assert_eq!(c.path, Path::new("/x/libfoo.so"));
        assert_eq!(c.source, PluginSource::Explicit);
    }
}
