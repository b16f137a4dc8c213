//! `flaxlayer plugin`: which PJRT plugin loads, and installing the CPU plugin per user.
//!
//! `install` asks pip (with the user's own index configuration: no host is named here) to
//! download the pinned CPU plugin wheel into a temporary directory, then unpacks only its
//! plugin `.so` into the per-user plugin directory, where plugin discovery finds it.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use flaxlayer::pjrt::{Plugin, PluginSource};
use flaxlayer::plugins;

/// The CPU plugin wheel `install` fetches: the default plugin (see README, "PJRT plugins"),
/// pinned as in scripts/requirements.txt.
const PLUGIN_PACKAGE: &str = "lammps-jax-pjrt-cpu";
const PLUGIN_VERSION: &str = "0.11.2";

#[derive(clap::Args)]
pub struct PluginArgs {
    #[command(subcommand)]
    command: PluginCommand,
}

#[derive(clap::Subcommand)]
enum PluginCommand {
    /// Show which plugin loads and how it was found, or every place looked at and why each failed.
    Show(crate::PluginFlag),
    /// Download the CPU plugin wheel with pip and unpack its .so into the per-user plugin directory.
    Install(InstallArgs),
}

#[derive(clap::Args)]
struct InstallArgs {
    /// The Python whose pip downloads the wheel.
    #[arg(long, default_value = "python3")]
    python: String,
    /// The wheel to download (a PJRT plugin package on your pip index).
    #[arg(long, default_value = PLUGIN_PACKAGE)]
    package: String,
    /// Its version.
    #[arg(long, default_value = PLUGIN_VERSION)]
    version: String,
    /// Where to put the plugin (default: the per-user plugin directory).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Install again even when a plugin that loads is already there.
    #[arg(long)]
    force: bool,
    /// Always download the wheel, even when --python already has the package installed.
    #[arg(long)]
    download: bool,
}

pub fn run(args: PluginArgs) -> Result<()> {
    match args.command {
        PluginCommand::Show(flag) => show(flag.plugin.as_deref()),
        PluginCommand::Install(args) => install(args),
    }
}

fn show(path: Option<&Path>) -> Result<()> {
    let plugin = Plugin::load(path)?;
    let (major, minor) = plugin.api_version();
    outln!("plugin: {}", plugin.path().display());
    outln!("found: {}", describe(plugin.source()));
    outln!("PJRT C API: {major}.{minor}");
    Ok(())
}

fn describe(source: &PluginSource) -> &'static str {
    match source {
        PluginSource::Explicit => "the path given (--plugin)",
        PluginSource::Env => "$PJRT_PLUGIN_PATH",
        PluginSource::BesideExecutable => "next to the executable",
        PluginSource::Installed => "a virtualenv's site-packages",
        PluginSource::UserDir => "the per-user plugin directory",
        _ => "elsewhere",
    }
}

fn install(args: InstallArgs) -> Result<()> {
    let dir = match args.dir {
        Some(d) => d,
        None => plugins::user_plugin_dir().context("this platform has no per-user data directory; pass --dir")?,
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // A plugin that is already there and loads is kept (no download): --force replaces it.
    if !args.force {
        for name in plugins::plugin_file_names() {
            let path = dir.join(name);
            if path.is_file() {
                if let Ok(plugin) = Plugin::load(Some(&path)) {
                    let (major, minor) = plugin.api_version();
                    outln!("already installed: {} (PJRT C API {major}.{minor}); --force installs again", path.display());
                    return Ok(());
                }
            }
        }
    }
    let spec = format!("{}=={}", args.package, args.version);
    // The package already installed in that Python (a virtualenv with it): copy its plugin.
    if !args.download {
        if let Some(from) = installed_plugin(&args.python, &args.package, &args.version) {
            let installed = copy_plugin(&from, &dir)?;
            let plugin = Plugin::load(Some(&installed))
                .with_context(|| format!("the copied plugin {} does not load", installed.display()))?;
            let (major, minor) = plugin.api_version();
            outln!("installed {} from {spec} installed in {} (PJRT C API {major}.{minor})", installed.display(), args.python);
            return Ok(());
        }
    }
    let download = tempfile::tempdir().context("creating a temporary directory")?;
    outln!("downloading {spec} with {} -m pip", args.python);
    let status = Command::new(&args.python)
        .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check", "-d"])
        .arg(download.path())
        .arg(&spec)
        .status()
        .with_context(|| format!("running {} -m pip (pass --python to choose another Python)", args.python))?;
    if !status.success() {
        bail!("pip could not download {spec} ({status})");
    }
    let wheel = find_wheel(download.path())?;
    let installed = unpack_plugin(&args.python, &wheel, &dir)?;
    let plugin = Plugin::load(Some(&installed))
        .with_context(|| format!("the unpacked plugin {} does not load", installed.display()))?;
    let (major, minor) = plugin.api_version();
    outln!("installed {} (PJRT C API {major}.{minor})", installed.display());
    Ok(())
}

/// The plugin `.so` of `package==version` when `python` has it installed.
fn installed_plugin(python: &str, package: &str, version: &str) -> Option<PathBuf> {
    const FIND: &str = r#"
import importlib.metadata as md, sys
package, version, names = sys.argv[1], sys.argv[2], sys.argv[3:]
d = md.distribution(package)
if d.version != version:
    sys.exit(3)
found = [str(d.locate_file(f)) for f in (d.files or []) if f.name in names]
if len(found) != 1:
    sys.exit(4)
print(found[0])
"#;
    let out = Command::new(python).arg("-c").arg(FIND).arg(package).arg(version).args(plugins::plugin_file_names()).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    path.is_file().then_some(path)
}

/// Copies a plugin into `dir` through a temporary name and a rename; returns its path.
fn copy_plugin(from: &Path, dir: &Path) -> Result<PathBuf> {
    let name = from.file_name().context("the plugin path has no file name")?;
    let dest = dir.join(name);
    let tmp = dir.join(format!(".{}.part", name.to_string_lossy()));
    std::fs::copy(from, &tmp).with_context(|| format!("copying {} to {}", from.display(), tmp.display()))?;
    std::fs::rename(&tmp, &dest).with_context(|| format!("renaming {} to {}", tmp.display(), dest.display()))?;
    Ok(dest)
}

fn find_wheel(dir: &Path) -> Result<PathBuf> {
    let wheels: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "whl"))
        .collect();
    match wheels.as_slice() {
        [one] => Ok(one.clone()),
        _ => bail!("expected one wheel from pip in {}, found {}", dir.display(), wheels.len()),
    }
}

/// Unpacks the wheel's plugin `.so` (a known plugin file name) into `dir` with Python's
/// `zipfile`, through a temporary name and a rename; returns its path.
fn unpack_plugin(python: &str, wheel: &Path, dir: &Path) -> Result<PathBuf> {
    const UNPACK: &str = r#"
import os, sys, zipfile
wheel, dest_dir, names = sys.argv[1], sys.argv[2], sys.argv[3:]
with zipfile.ZipFile(wheel) as z:
    members = [m for m in z.namelist() if m.rsplit("/", 1)[-1] in names]
    if len(members) != 1:
        sys.exit(f"expected one plugin .so named {names} in {wheel}, found {members}")
    name = members[0].rsplit("/", 1)[-1]
    tmp = os.path.join(dest_dir, "." + name + ".part")
    with z.open(members[0]) as src, open(tmp, "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
        dst.flush()
        os.fsync(dst.fileno())
    os.replace(tmp, os.path.join(dest_dir, name))
    print(name)
"#;
    let out = Command::new(python)
        .arg("-c")
        .arg(UNPACK)
        .arg(wheel)
        .arg(dir)
        .args(plugins::plugin_file_names())
        .output()
        .with_context(|| format!("running {python} to unpack {}", wheel.display()))?;
    if !out.status.success() {
        bail!("unpacking {} failed: {}", wheel.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    let name = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Ok(dir.join(name))
}
