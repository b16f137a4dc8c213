//! Reading files that come from elsewhere (bundles, weights, saved layers): regular files
//! only, read with a hard size limit.

use std::io::Read;
use std::path::Path;

use crate::{Error, Result};

/// The largest computation, manifest or JSON file a bundle may hold: 1 GiB.
pub(crate) const MAX_FILE_BYTES: u64 = 1 << 30;

/// The largest weights file: 64 GiB.
pub(crate) const MAX_WEIGHTS_BYTES: u64 = 64 << 30;

/// Reads `path` whole, refusing anything but a regular file (a device such as `/dev/zero`,
/// a FIFO, a directory) and anything longer than `limit` bytes. The limit holds whatever the
/// file's metadata claims: at most `limit + 1` bytes are ever read.
pub(crate) fn read(path: &Path, limit: u64) -> Result<Vec<u8>> {
    // Look before opening: opening a FIFO for reading blocks until a writer comes.
    let before = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !before.is_file() {
        return Err(Error::invalid(path.display().to_string(), "is not a regular file"));
    }
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(Error::invalid(path.display().to_string(), "is not a regular file"));
    }
    if meta.len() > limit {
        return Err(too_long(path, meta.len(), limit));
    }
    let mut bytes = Vec::new();
    bytes
        .try_reserve_exact(usize::try_from(meta.len()).unwrap_or(0))
        .map_err(|e| Error::invalid(path.display().to_string(), format!("cannot allocate {} bytes: {e}", meta.len())))?;
    file.take(limit + 1).read_to_end(&mut bytes).map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > limit {
        return Err(too_long(path, bytes.len() as u64, limit));
    }
    Ok(bytes)
}

fn too_long(path: &Path, len: u64, limit: u64) -> Error {
    Error::format(path.display().to_string(), format!("{len} bytes is more than the {limit}-byte limit"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_fifos_and_directories_are_refused() {
        assert!(matches!(read(Path::new("/dev/zero"), 1 << 20), Err(Error::InvalidArgument { .. })));
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(read(dir.path(), 1 << 20), Err(Error::InvalidArgument { .. })));
        let link = dir.path().join("zero");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        assert!(matches!(read(&link, 1 << 20), Err(Error::InvalidArgument { .. })), "a symlink to a device is a device");
        assert!(matches!(read(&dir.path().join("missing"), 10), Err(Error::Io { .. })));
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status().map(|s| s.success()).unwrap_or(false);
        if made {
            assert!(matches!(read(&fifo, 10), Err(Error::InvalidArgument { .. })), "a FIFO is refused, not waited on");
        }
    }

    #[test]
    fn the_limit_holds() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, [7u8; 100]).unwrap();
        assert_eq!(read(&p, 100).unwrap().len(), 100);
        assert!(matches!(read(&p, 99), Err(Error::InvalidFormat { .. })));
    }
}
