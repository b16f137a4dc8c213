//! What [`FlaxLayer::save`](super::FlaxLayer::save) and [`Trainer::save`](super::Trainer::save)
//! share: a saved directory is itself a bundle (manifest and computations copied), plus a
//! versioned JSON file written last.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::bundle::Bundle;
use crate::{Error, Result};

/// Creates `dir` and copies the bundle's manifest and computations into it, atomically each.
pub(super) fn copy_bundle(bundle: &Bundle, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let src = bundle.dir();
    let files = std::iter::once("manifest.json".to_string()).chain(bundle.manifest().computations().map(|c| c.file.clone()));
    for file in files {
        let bytes = std::fs::read(src.join(&file)).map_err(|e| Error::io(src.join(&file), e))?;
        crate::atomic::write_atomic(&dir.join(&file), &bytes)?;
    }
    Ok(())
}

/// Writes `value` as pretty JSON, atomically.
pub(super) fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let json = serde_json::to_vec_pretty(value).map_err(|source| Error::Json { what: path.display().to_string(), source })?;
    crate::atomic::write_atomic(path, &json)
}

/// Reads a JSON file whose `format` and `version` fields must be `format` and 1.
pub(super) fn read_json<T: DeserializeOwned>(path: &Path, format: &str) -> Result<T> {
    #[derive(serde::Deserialize)]
    struct Header {
        format: String,
        version: u32,
    }
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let json = |source| Error::Json { what: path.display().to_string(), source };
    let header: Header = serde_json::from_slice(&bytes).map_err(json)?;
    if header.format != format || header.version != 1 {
        return Err(Error::format(
            path.display().to_string(),
            format!("format {:?} version {} (expected {format:?} version 1)", header.format, header.version),
        ));
    }
    serde_json::from_slice(&bytes).map_err(json)
}
