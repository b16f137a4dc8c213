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
    Show,
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
}

pub fn run(args: PluginArgs, plugin: Option<PathBuf>) -> Result<()> {
    match args.command {
        PluginCommand::Show => show(plugin.as_deref()),
        PluginCommand::Install(args) => install(args),
    }
}

fn show(path: Option<&Path>) -> Result<()> {
    let plugin = Plugin::load(path)?;
    let (major, minor) = plugin.api_version();
    println!("plugin: {}", plugin.path().display());
    println!("found: {}", describe(plugin.source()));
    println!("PJRT C API: {major}.{minor}");
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
    let download = tempfile::tempdir().context("creating a temporary directory")?;
    let spec = format!("{}=={}", args.package, args.version);
    println!("downloading {spec} with {} -m pip", args.python);
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
    let plugin = Plugin::load_path(&installed, PluginSource::UserDir)
        .with_context(|| format!("the unpacked plugin {} does not load", installed.display()))?;
    let (major, minor) = plugin.api_version();
    println!("installed {} (PJRT C API {major}.{minor})", installed.display());
    Ok(())
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
