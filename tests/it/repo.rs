//! What the repository itself must hold: no unresolved merge conflicts, no binaries or
//! environments in git, and committed artifacts without absolute paths.

use std::path::Path;
use std::process::Command;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// Files tracked by git. The integration tests are not packaged (Cargo.toml excludes
/// `tests/it`), so they always run in a checkout: no git is a failure, not a skip.
fn tracked_files() -> Option<Vec<String>> {
    let out = Command::new("git").args(["ls-files", "-z"]).current_dir(REPO).output().expect("git runs");
    assert!(out.status.success(), "the integration tests run in a git checkout: {}", String::from_utf8_lossy(&out.stderr));
    let list = String::from_utf8(out.stdout).expect("git ls-files prints UTF-8 paths");
    let files: Vec<String> = list.split('\0').filter(|s| !s.is_empty()).map(str::to_owned).collect();
    assert!(files.len() > 100, "git ls-files listed only {} files", files.len());
    Some(files)
}

fn text(path: &str) -> Option<String> {
    std::fs::read(Path::new(REPO).join(path)).ok().and_then(|b| String::from_utf8(b).ok())
}

#[test]
fn no_file_holds_merge_conflict_markers() {
    let Some(files) = tracked_files() else { return };
    let mut bad = Vec::new();
    for f in &files {
        let Some(t) = text(f) else { continue };
        for (i, line) in t.lines().enumerate() {
            if line.starts_with("<<<<<<< ") || line.starts_with(">>>>>>> ") {
                bad.push(format!("{f}:{}", i + 1));
            }
        }
    }
    assert!(bad.is_empty(), "merge conflict markers at {bad:?}");
}

#[test]
fn no_plugins_environments_or_build_output_in_git() {
    let Some(files) = tracked_files() else { return };
    let bad: Vec<_> = files
        .iter()
        .filter(|f| {
            f.ends_with(".so")
                || f.contains(".so.")
                || f.starts_with(".venv")
                || f.starts_with("target/")
                || f.contains("/target/")
                || f.contains("__pycache__")
        })
        .collect();
    assert!(bad.is_empty(), "files that don't belong in git: {bad:?}");
}

#[test]
fn committed_artifacts_carry_no_absolute_paths() {
    let Some(files) = tracked_files() else { return };
    let needles: [&[u8]; 4] = [b"/home/", b"/work/", b"/tmp/", b"/root/"];
    let mut bad = Vec::new();
    for f in files.iter().filter(|f| f.starts_with("hlo/") || f.starts_with("tests/fixtures/")) {
        let Ok(bytes) = std::fs::read(Path::new(REPO).join(f)) else { continue };
        for n in needles {
            if bytes.windows(n.len()).any(|w| w == n) {
                bad.push(format!("{f}: {}", String::from_utf8_lossy(n)));
            }
        }
    }
    assert!(bad.is_empty(), "absolute paths in committed artifacts: {bad:?}");
}
