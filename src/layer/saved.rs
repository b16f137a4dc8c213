//! What [`FlaxLayer::save`](super::FlaxLayer::save) and [`Trainer::save`](super::Trainer::save)
//! share: a saved directory is itself a bundle (manifest and computations copied) plus the
//! saved values and a versioned JSON file, and it is written as a whole or not at all.
//!
//! A save writes a new directory next to the target, syncs it, and swaps it with the target
//! in one step (`renameat2(RENAME_EXCHANGE)` on Linux), so a crash leaves the old save or the
//! new one, never a mix. Every file of one save carries the same save id, and loading refuses
//! files from two different saves.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::atomic::{durability_point, sync_dir, sync_file};
use crate::bundle::Bundle;
use crate::{Error, Result};

/// The safetensors metadata key (and JSON field) that ties the files of one save together.
pub(crate) const SAVE_ID_KEY: &str = "save_id";

/// A fresh id for one save: the time, the process and a counter.
pub(crate) fn new_save_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{nanos:x}-{:x}-{:x}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// Copies the bundle's manifest, computations and init inputs into `dir`.
pub(crate) fn copy_bundle(bundle: &Bundle, dir: &Path) -> Result<()> {
    let manifest = bundle.manifest();
    let files = std::iter::once("manifest.json".to_string())
        .chain(manifest.computations().map(|c| c.file.clone()))
        .chain(manifest.init.as_ref().and_then(|i| i.inputs_file.clone()));
    for file in files {
        let from = bundle.dir().join(&file);
        let bytes = crate::files::read(&from, crate::files::MAX_FILE_BYTES)?;
        write_file(&dir.join(&file), &bytes)?;
    }
    Ok(())
}

/// Writes and syncs one file of a directory being staged.
pub(crate) fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).map_err(|e| Error::io(path, e))?;
    sync_file(path)
}

/// Writes `value` as pretty JSON into a staged directory.
pub(crate) fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let json = serde_json::to_vec_pretty(value).map_err(|e| Error::json(path.display().to_string(), e))?;
    write_file(path, &json)
}

/// Reads a JSON file whose `format` and `version` fields must be `format` and 1.
pub(crate) fn read_json<T: DeserializeOwned>(path: &Path, format: &str) -> Result<T> {
    #[derive(serde::Deserialize)]
    struct Header {
        format: String,
        version: u32,
    }
    let bytes = crate::files::read(path, crate::files::MAX_FILE_BYTES)?;
    let json = |e| Error::json(path.display().to_string(), e);
    let header: Header = serde_json::from_slice(&bytes).map_err(json)?;
    if header.format != format || header.version != 1 {
        return Err(Error::format(
            path.display().to_string(),
            format!("format {:?} version {} (expected {format:?} version 1)", header.format, header.version),
        ));
    }
    serde_json::from_slice(&bytes).map_err(json)
}

/// Checks that a file of a saved directory belongs to the same save as its JSON file.
pub(crate) fn check_save_id(path: &Path, file_id: Option<&String>, save_id: &str) -> Result<()> {
    match file_id {
        Some(id) if id == save_id => Ok(()),
        other => Err(Error::format(
            path.display().to_string(),
            format!(
                "belongs to save {} but the directory's JSON file to save {save_id}: files of two saves are mixed",
                other.map_or("(none)", String::as_str)
            ),
        )),
    }
}

/// Writes the directory `dir` as a whole: `fill` writes every file into a fresh staging
/// directory next to it; the staging directory is synced and swapped with `dir` in one
/// step. Staging directories and temporary files that dead writers left behind are removed
/// first.
pub(crate) fn write_dir(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let (parent, name) = split(dir)?;
    std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
    crate::atomic::remove_stale(&parent, &name);
    if dir.is_dir() {
        crate::atomic::remove_stale(dir, "");
    }
    let staging = parent.join(crate::atomic::temp_name(&name, "saving"));
    std::fs::create_dir(&staging).map_err(|e| Error::io(dir, e))?;
    let guard = RemoveOnDrop(Some(staging.clone()));
    fill(&staging).map_err(|e| rename_in(e, &staging, dir))?;
    sync_dir(&staging)?;
    durability_point("staged");
    crate::atomic::swap_dirs(&staging, dir)?;
    durability_point("swapped");
    sync_dir(&parent)?;
    drop(guard); // the staging path now holds the old directory, if there was one
    Ok(())
}

/// Errors about files in the staging directory name the destination instead.
fn rename_in(e: Error, staging: &Path, dir: &Path) -> Error {
    match e {
        Error::Io { path, cause } => Error::Io { path: path.strip_prefix(staging).map_or(path.clone(), |p| dir.join(p)), cause },
        other => other,
    }
}

fn split(dir: &Path) -> Result<(PathBuf, String)> {
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::invalid(dir.display().to_string(), "a save directory needs a UTF-8 file name"))?
        .to_string();
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((parent, name))
}

/// Removes a directory when dropped (a failed or finished save's staging directory).
struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}
