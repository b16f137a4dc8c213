//! Plugin discovery as a deployed binary sees it: `flaxlayer plugin show` run from a directory
//! without `.venv`, with `PJRT_PLUGIN_PATH` and `VIRTUAL_ENV` unset and a private
//! `XDG_DATA_HOME` (the per-user plugin directory), and `flaxlayer plugin install`; and a
//! plugin planted in the working directory, which must never run.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn venv_plugin() -> PathBuf {
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/lib");
    let python = std::fs::read_dir(&lib)
        .expect("./.venv (scripts/setup.sh)")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("python")))
        .expect(".venv/lib/python3.*");
    python.join("site-packages").join(flaxlayer::plugins::DEFAULT_PLUGIN)
}

/// A scratch directory under the target directory (on the same file system as the binary).
fn scratch() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

/// Runs `exe plugin ...` in `cwd` with no plugin configured and `data` as `XDG_DATA_HOME`.
fn run(exe: &Path, args: &[&str], cwd: &Path, data: &Path) -> Output {
    Command::new(exe)
        .args(args)
        .current_dir(cwd)
        .env_remove("PJRT_PLUGIN_PATH")
        .env_remove("VIRTUAL_ENV")
        .env("XDG_DATA_HOME", data)
        .output()
        .unwrap()
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

#[test]
fn when_nothing_loads_every_place_is_named_in_order() {
    let dir = scratch();
    let data = dir.path().join("data");
    let out = run(Path::new(env!("CARGO_BIN_EXE_flaxlayer")), &["plugin", "show"], dir.path(), &data);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    let exe_dir = Path::new(env!("CARGO_BIN_EXE_flaxlayer")).parent().unwrap().canonicalize().unwrap();
    let user_dir = data.join("flaxlayer/plugins");
    let expected = [
        "$PJRT_PLUGIN_PATH: not set".to_string(),
        format!("{}: no such file", exe_dir.join("pjrt_c_api_cpu_plugin.so").display()),
        format!("{}: no such file", exe_dir.join("libpjrt_cpu.so").display()),
        "$VIRTUAL_ENV: not set".to_string(),
        format!("{}: no such file", user_dir.join("pjrt_c_api_cpu_plugin.so").display()),
        format!("{}: no such file", user_dir.join("libpjrt_cpu.so").display()),
        "flaxlayer plugin install".to_string(),
    ];
    let mut at = 0;
    for line in &expected {
        let found = err[at..].find(line.as_str()).unwrap_or_else(|| panic!("{line:?} missing (in order) from:\n{err}"));
        at += found + line.len();
    }
    assert!(!err.contains("<none>"), "{err}");
    let tried_venv = err.lines().any(|l| l.starts_with("  ") && l.contains(".venv"));
    assert!(!tried_venv, "the working directory's .venv is not a place to look:\n{err}");
}

/// Plants, under `cwd`, a library at the path where the default CPU plugin sits in a
/// virtualenv (`.venv/lib/python3.11/site-packages/lammps_jax_pjrt_cpu/pjrt_c_api_cpu_plugin.so`)
/// whose constructor writes `marker` when the library is loaded. Returns its path.
fn plant_plugin(cwd: &Path, marker: &Path) -> PathBuf {
    let dir = cwd.join(".venv/lib/python3.11/site-packages/lammps_jax_pjrt_cpu");
    std::fs::create_dir_all(&dir).unwrap();
    let src = cwd.join("planted.c");
    let marker = marker.to_str().unwrap().replace('\\', "\\\\").replace('"', "\\\"");
    std::fs::write(
        &src,
        format!(
            "#include <stdio.h>\n\
             __attribute__((constructor)) static void planted(void) {{\n\
               FILE* f = fopen(\"{marker}\", \"w\");\n\
               if (f) {{ fputs(\"ran\", f); fclose(f); }}\n\
             }}\n\
             const void* GetPjrtApi(void) {{ return 0; }}\n"
        ),
    )
    .unwrap();
    let so = dir.join("pjrt_c_api_cpu_plugin.so");
    let status = Command::new("cc").args(["-shared", "-fPIC", "-o"]).arg(&so).arg(&src).status().expect("a C compiler (cc)");
    assert!(status.success());
    so
}

#[test]
fn a_plugin_planted_in_the_working_directory_never_runs() {
    // Running flaxlayer inside a downloaded model repository must not execute code from it:
    // the search never looks under the working directory (it used to try ./.venv).
    let dir = scratch();
    let (cwd, data) = (dir.path().join("repo"), dir.path().join("data"));
    let marker = dir.path().join("planted-code-ran");
    let so = plant_plugin(&cwd, &marker);
    let exe = Path::new(env!("CARGO_BIN_EXE_flaxlayer"));
    // The CLI's search (the one every command that makes a client runs).
    let out = run(exe, &["plugin", "show"], &cwd, &data);
    assert!(!out.status.success(), "no plugin should load here:\n{}", text(&out.stdout));
    assert!(!marker.exists(), "the planted plugin ran: {}", text(&out.stderr));
    // The library's search: `Client::new(None)` in a child test process run in that directory.
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "plugin_cli::client_new_in_the_working_directory", "--include-ignored", "--nocapture"])
        .current_dir(&cwd)
        .env_remove("PJRT_PLUGIN_PATH")
        .env_remove("VIRTUAL_ENV")
        .env("XDG_DATA_HOME", &data)
        .output()
        .unwrap();
    assert!(child.status.success(), "{}", text(&child.stderr));
    assert!(text(&child.stdout).contains("1 passed"), "the child test did not run: {}", text(&child.stdout));
    assert!(!marker.exists(), "the planted plugin ran in Client::new");
    // The planted library does run when it is named explicitly: the marker is a real witness.
    let out = run(exe, &["plugin", "show", "--plugin", so.to_str().unwrap()], &cwd, &data);
    assert!(!out.status.success(), "{}", text(&out.stdout));
    assert!(marker.exists(), "the planted library's constructor did not run when loaded on purpose");
}

/// Run by `a_plugin_planted_in_the_working_directory_never_runs` in a child process whose
/// working directory holds a planted `.venv`.
#[test]
#[ignore = "run in a child process by a_plugin_planted_in_the_working_directory_never_runs"]
fn client_new_in_the_working_directory() {
    let err = flaxlayer::pjrt::Client::new(None).unwrap_err();
    assert!(matches!(err, flaxlayer::Error::PluginNotFound { .. }), "{err}");
    let tried_venv = err.to_string().lines().any(|l| l.starts_with("  ") && l.contains(".venv"));
    assert!(!tried_venv, "{err}");
}

#[test]
fn a_plugin_next_to_the_executable_is_found() {
    let dir = scratch();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let exe = bin.join("flaxlayer");
    std::fs::hard_link(env!("CARGO_BIN_EXE_flaxlayer"), &exe)
        .or_else(|_| std::fs::copy(env!("CARGO_BIN_EXE_flaxlayer"), &exe).map(drop))
        .unwrap();
    std::os::unix::fs::symlink(venv_plugin(), bin.join("pjrt_c_api_cpu_plugin.so")).unwrap();
    let out = run(&exe, &["plugin", "show"], dir.path(), &dir.path().join("data"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("found: next to the executable"), "{stdout}");
    assert!(stdout.contains("PJRT C API: 0."), "{stdout}");
}

#[test]
#[ignore = "network: pip downloads the plugin wheel; FLAXLAYER_NETWORK_TESTS=1 scripts/test.sh runs it"]
fn plugin_install_fills_the_per_user_directory_that_discovery_reads() {
    // pip downloads the pinned wheel with the machine's own index configuration (as
    // scripts/setup.sh does); only its .so is unpacked.
    let dir = scratch();
    let data = dir.path().join("data");
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    let exe = Path::new(env!("CARGO_BIN_EXE_flaxlayer"));
    let out = run(exe, &["plugin", "install", "--download", "--python", python.to_str().unwrap()], dir.path(), &data);
    assert!(out.status.success(), "{}\n{}", text(&out.stdout), text(&out.stderr));
    let user_dir = data.join("flaxlayer/plugins");
    let files: Vec<String> = std::fs::read_dir(&user_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(files, ["pjrt_c_api_cpu_plugin.so"]);
    let out = run(exe, &["plugin", "show"], dir.path(), &data);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("found: the per-user plugin directory"), "{stdout}");
    let installed = user_dir.join("pjrt_c_api_cpu_plugin.so").canonicalize().unwrap();
    assert!(stdout.contains(&installed.display().to_string()), "{stdout}");
}

#[test]
fn plugin_install_reuses_what_is_there() {
    // A Python that has the pinned package installed (the repo's .venv): its plugin is copied,
    // no download; a second install keeps the plugin that loads.
    let dir = scratch();
    let data = dir.path().join("data");
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    let exe = Path::new(env!("CARGO_BIN_EXE_flaxlayer"));
    let out = run(exe, &["plugin", "install", "--python", python.to_str().unwrap()], dir.path(), &data);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(stdout.contains("installed in") && !stdout.contains("downloading"), "{stdout}");
    let installed = data.join("flaxlayer/plugins/pjrt_c_api_cpu_plugin.so");
    assert!(installed.is_file());
    let out = run(exe, &["plugin", "install", "--python", "/nonexistent/python"], dir.path(), &data);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(stdout.starts_with("already installed:") && stdout.contains("--force"), "{stdout}");
}
