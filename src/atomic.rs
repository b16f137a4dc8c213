//! Crash-safe writes: files written under a temporary name, synced and renamed over the
//! target; directories staged next to the target and swapped with it in one step. Temporary
//! names carry the writer's process id, so the leftovers of a writer that died (`kill -9`)
//! are recognised and removed by the next write.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{Error, Result};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// The marker between a target's name and the writer's process id in temporary names.
const TEMP_MARKER: &str = ".tmp-";

/// A temporary name for `name`: `.{name}.tmp-{kind}-{pid}-{n}`.
pub(crate) fn temp_name(name: &str, kind: &str) -> String {
    format!(".{name}{TEMP_MARKER}{kind}-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// The process id in a temporary name of `name` (any name when `name` is empty).
fn writer_pid(file_name: &str, name: &str) -> Option<u32> {
    let rest = file_name.strip_prefix('.')?;
    let rest = if name.is_empty() { rest.split_once(TEMP_MARKER)?.1 } else { rest.strip_prefix(name)?.strip_prefix(TEMP_MARKER)? };
    let mut parts = rest.rsplitn(3, '-');
    let _counter = parts.next()?;
    parts.next()?.parse().ok()
}

/// Whether process `pid` is alive (on Linux, whether `/proc/{pid}` exists; elsewhere a
/// writer is assumed alive unless it is this process's own leftover).
fn alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    if cfg!(target_os = "linux") {
        Path::new("/proc").join(pid.to_string()).exists()
    } else {
        true
    }
}

/// Removes, in `dir`, the temporary files and staging directories of `name` (of every name
/// when `name` is empty) whose writer is dead. Best effort: what cannot be removed stays.
pub(crate) fn remove_stale(dir: &Path, name: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(pid) = file_name.to_str().and_then(|n| writer_pid(n, name)) else { continue };
        if alive(pid) {
            continue;
        }
        let path = entry.path();
        let _ = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
    }
}

/// A point where a save has made something durable. With the `fault-injection` feature (the
/// crash-consistency tests), the process aborts at the `FLAXLAYER_CRASH_AT`-th such point,
/// as a `kill -9` would stop it there.
pub(crate) fn durability_point(_label: &str) {
    #[cfg(feature = "fault-injection")]
    fault::point(_label);
}

#[cfg(feature = "fault-injection")]
mod fault {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;

    static SEEN: AtomicU64 = AtomicU64::new(0);

    pub(super) fn point(label: &str) {
        static AT: OnceLock<Option<u64>> = OnceLock::new();
        let at = *AT.get_or_init(|| std::env::var("FLAXLAYER_CRASH_AT").ok().and_then(|v| v.parse().ok()));
        let n = SEEN.fetch_add(1, Ordering::SeqCst) + 1;
        if at == Some(n) {
            eprintln!("fault injection: crashing at durability point {n} ({label})");
            std::process::abort();
        }
    }
}

/// Syncs a file's data to disk.
pub(crate) fn sync_file(path: &Path) -> Result<()> {
    std::fs::File::open(path).and_then(|f| f.sync_all()).map_err(|e| Error::io(path, e))?;
    durability_point("file synced");
    Ok(())
}

/// Syncs a directory's entries to disk; best effort where a directory cannot be opened.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    durability_point("directory synced");
    Ok(())
}

/// Removes the temporary file unless the write completed.
struct TempGuard(Option<PathBuf>);

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Writes `bytes` to `path` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |file, _| file.write_all(bytes).map_err(|e| Error::io(path, e)))
}

/// Writes `path` atomically: `fill` writes the whole content into a temporary file in the
/// same directory (given open, and by path), which is then synced and renamed over `path`.
/// Errors name `path`, not the temporary file.
pub fn write_atomic_with(path: &Path, fill: impl FnOnce(&mut std::fs::File, &Path) -> Result<()>) -> Result<()> {
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::invalid(path.display().to_string(), "the path has no UTF-8 file name"))?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    remove_stale(&dir, file_name);
    let tmp = dir.join(temp_name(file_name, "file"));
    // `create_new`: never overwrite a stale or foreign file under the temporary name.
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp).map_err(|e| Error::io(path, e))?;
    let mut guard = TempGuard(Some(tmp.clone()));
    fill(&mut file, &tmp)?;
    drop(file);
    std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(|e| Error::io(path, e))?;
    durability_point("temporary file synced");
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    guard.0 = None;
    durability_point("renamed");
    sync_dir(&dir)
}

/// Puts the directory `staging` in place of `dir` in one step: on Linux the two are
/// exchanged atomically (`renameat2(RENAME_EXCHANGE)`), so `dir` names the old directory or
/// the new one at every instant, and `staging` then holds the old one. Where there is no
/// `dir` yet, one rename. Elsewhere, two renames: a crash between them leaves the new
/// directory under the staging name and the old one under a `.old` name.
pub(crate) fn swap_dirs(staging: &Path, dir: &Path) -> Result<()> {
    if !dir.exists() {
        return std::fs::rename(staging, dir).map_err(|e| Error::io(dir, e));
    }
    if !dir.is_dir() {
        return Err(Error::invalid(dir.display().to_string(), "exists and is not a directory"));
    }
    exchange(staging, dir)
}

#[cfg(target_os = "linux")]
fn exchange(staging: &Path, dir: &Path) -> Result<()> {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    renameat_with(CWD, staging, CWD, dir, RenameFlags::EXCHANGE).map_err(|e| Error::io(dir, e.into()))
}

#[cfg(not(target_os = "linux"))]
fn exchange(staging: &Path, dir: &Path) -> Result<()> {
    let old = staging.with_extension("old");
    std::fs::rename(dir, &old).map_err(|e| Error::io(dir, e))?;
    std::fs::rename(staging, dir).map_err(|e| Error::io(dir, e))?;
    std::fs::rename(&old, staging).map_err(|e| Error::io(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_and_replaces_leaving_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.bin");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let missing = dir.path().join("no/such/dir/f.bin");
        let e = write_atomic(&missing, b"x").unwrap_err();
        assert!(matches!(&e, Error::Io { path, .. } if path == &missing), "errors name the destination: {e}");
    }

    #[test]
    fn leftovers_of_dead_writers_are_removed_and_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        // A pid that is not running: pid_max is at most 2^22 on Linux.
        let dead = dir.path().join(".f.bin.tmp-file-4194305-0");
        let mine = dir.path().join(temp_name("f.bin", "file"));
        let other = dir.path().join(".g.bin.tmp-file-4194305-1");
        for p in [&dead, &mine, &other] {
            std::fs::write(p, b"x").unwrap();
        }
        let stale_dir = dir.path().join(".layer.tmp-saving-4194305-2");
        std::fs::create_dir(&stale_dir).unwrap();
        write_atomic(&dir.path().join("f.bin"), b"new").unwrap();
        assert!(!dead.exists(), "a dead writer's temp file is removed");
        assert!(mine.exists(), "a live writer's temp file is kept");
        assert!(other.exists(), "another file's temp files are left to its own writes");
        remove_stale(dir.path(), "layer");
        assert!(!stale_dir.exists());
        assert_eq!(writer_pid(".x.tmp-file-12-3", "x"), Some(12));
        assert_eq!(writer_pid(".x.tmp-file-12-3", ""), Some(12));
        assert_eq!(writer_pid("x.tmp-file-12-3", "x"), None);
    }

    #[test]
    fn directories_are_swapped() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("d");
        let staging = root.path().join("s");
        std::fs::create_dir(&staging).unwrap();
        std::fs::write(staging.join("a"), b"new").unwrap();
        swap_dirs(&staging, &dir).unwrap();
        assert_eq!(std::fs::read(dir.join("a")).unwrap(), b"new");
        std::fs::create_dir(&staging).unwrap();
        std::fs::write(staging.join("a"), b"newer").unwrap();
        swap_dirs(&staging, &dir).unwrap();
        assert_eq!(std::fs::read(dir.join("a")).unwrap(), b"newer");
        assert_eq!(std::fs::read(staging.join("a")).unwrap(), b"new", "the old directory is now under the staging name");
    }
}
