//! safetensors files: reading (checked, zero-copy views or owned tensors) and atomic writing.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use super::{Tensor, TensorView};
use crate::{DType, Error, Result};

/// Tensors and the `__metadata__` map of a safetensors file.
pub type SafeTensorsContents = (Vec<(String, Tensor)>, HashMap<String, String>);

/// Reads every tensor of a safetensors file, sorted by name.
pub fn read_safetensors(path: impl AsRef<Path>) -> Result<Vec<(String, Tensor)>> {
    Ok(read_safetensors_with_metadata(path)?.0)
}

/// Reads every tensor of a safetensors file, sorted by name, and its metadata.
pub fn read_safetensors_with_metadata(path: impl AsRef<Path>) -> Result<SafeTensorsContents> {
    let path = path.as_ref();
    let bytes = crate::files::read(path, crate::files::MAX_WEIGHTS_BYTES)?;
    load_safetensors_bytes_with_metadata(&bytes, &path.display().to_string())
}

/// Reads every tensor of an in-memory safetensors file, sorted by name. `what` names the
/// source in errors.
pub fn load_safetensors_bytes(bytes: &[u8], what: &str) -> Result<Vec<(String, Tensor)>> {
    Ok(load_safetensors_bytes_with_metadata(bytes, what)?.0)
}

/// Reads every tensor of an in-memory safetensors file, sorted by name, and its metadata.
///
/// The bytes are untrusted: the safetensors crate caps the header size and checks every
/// offset, dtype and shape against the buffer; the tensors are then copied out.
pub fn load_safetensors_bytes_with_metadata(bytes: &[u8], what: &str) -> Result<SafeTensorsContents> {
    let st_err = |source| Error::safetensors(what, source);
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes).map_err(st_err)?;
    let out = safetensors_views(bytes, what)?
        .into_iter()
        .map(|(name, v)| Ok((name, v.to_tensor()?)))
        .collect::<Result<Vec<_>>>()?;
    Ok((out, meta.metadata().clone().unwrap_or_default()))
}

/// Views every tensor of an in-memory safetensors file without copying, sorted by name. The
/// bytes are untrusted and checked as in [`load_safetensors_bytes`].
pub fn safetensors_views<'a>(bytes: &'a [u8], what: &str) -> Result<Vec<(String, TensorView<'a>)>> {
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|source| Error::safetensors(what, source))?;
    let mut out = Vec::with_capacity(st.len());
    for (name, view) in st.iter() {
        let dtype = DType::from_safetensors(view.dtype())
            .map_err(|e| Error::format(what, format!("tensor {name:?}: {e}")))?;
        let v = TensorView::new(dtype, view.shape().to_vec(), view.data())
            .map_err(|e| Error::format(what, format!("tensor {name:?}: {e}")))?;
        out.push((name.to_string(), v));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Checks names are unique (safetensors keys tensors by name).
fn check_unique_names<S: AsRef<str>>(tensors: &[(S, &Tensor)], what: &str) -> Result<()> {
    let mut seen = HashSet::new();
    for (name, _) in tensors {
        if !seen.insert(name.as_ref()) {
            return Err(Error::invalid(what, format!("tensor name {:?} appears twice", name.as_ref())));
        }
    }
    Ok(())
}

/// Serializes tensors to safetensors bytes.
pub fn serialize_safetensors<S: AsRef<str>>(
    tensors: &[(S, &Tensor)],
    metadata: Option<HashMap<String, String>>,
) -> Result<Vec<u8>> {
    check_unique_names(tensors, "serialize_safetensors")?;
    let items = tensors.iter().map(|(n, t)| (n.as_ref(), *t));
    safetensors::serialize(items, metadata)
        .map_err(|source| Error::safetensors("serialize_safetensors", source))
}

/// Writes tensors to a safetensors file atomically: the file is written under a temporary
/// name in the same directory, synced, then renamed over `path`, so readers see either the
/// old file or the whole new one.
pub fn write_safetensors<S: AsRef<str>>(
    path: impl AsRef<Path>,
    tensors: &[(S, &Tensor)],
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let path = path.as_ref();
    let what = path.display().to_string();
    check_unique_names(tensors, &what)?;
    crate::atomic::write_atomic_with(path, |_, tmp| {
        let items = tensors.iter().map(|(n, t)| (n.as_ref(), *t));
        safetensors::serialize_to_file(items, metadata, tmp)
            .map_err(|source| Error::safetensors(what.clone(), source))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::bf16;

    fn sample_tensors() -> Vec<(String, Tensor)> {
        vec![
            ("b/bool".into(), Tensor::from_bools(vec![3], &[true, false, true]).unwrap()),
            ("a/f32".into(), Tensor::from_vec(vec![2, 2], vec![1.0f32, 2., 3., 4.]).unwrap()),
            ("c/bf16".into(), Tensor::from_vec(vec![1], vec![bf16::from_f32(0.5)]).unwrap()),
            ("d/i64".into(), Tensor::from_vec(vec![], vec![-7i64]).unwrap()),
            ("e/u8_empty".into(), Tensor::zeros(DType::U8, vec![0, 3]).unwrap()),
            ("f/f64".into(), Tensor::from_vec(vec![3], vec![1.0f64, -2.0, 3.5]).unwrap()),
        ]
    }

    #[test]
    fn safetensors_file_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let tensors = sample_tensors();
        let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
        write_safetensors(&path, &refs, Some(meta.clone())).unwrap();
        // Same bytes as the crate's own serializer.
        assert_eq!(std::fs::read(&path).unwrap(), serialize_safetensors(&refs, Some(meta.clone())).unwrap());
        let (back, back_meta) = read_safetensors_with_metadata(&path).unwrap();
        let mut expected = tensors.clone();
        expected.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(back, expected);
        assert_eq!(back_meta, meta);
        // Overwrite in place; no temporary files are left behind.
        write_safetensors(&path, &refs[..1], None).unwrap();
        assert_eq!(read_safetensors(&path).unwrap().len(), 1);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("w.safetensors")]);
    }

    #[test]
    fn safetensors_write_errors_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let t = Tensor::scalar(1.0f32);
        let path = dir.path().join("dup.safetensors");
        let e = write_safetensors(&path, &[("x", &t), ("x", &t)], None).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
        let e = write_safetensors(dir.path().join("missing/dir/x.safetensors"), &[("x", &t)], None).unwrap_err();
        assert!(matches!(e, Error::Io { .. }), "{e}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        assert!(matches!(read_safetensors(&path), Err(Error::Io { .. })));
    }

    #[test]
    fn safetensors_bad_bytes() {
        for bad in [&b""[..], &b"\x01\x00"[..], &[0xff; 8][..], &b"\x02\x00\x00\x00\x00\x00\x00\x00{]"[..]] {
            let e = load_safetensors_bytes(bad, "bad").unwrap_err();
            assert!(matches!(e, Error::SafeTensors { .. }), "{e}");
        }
        // A header claiming more data than there is.
        let t = Tensor::from_vec(vec![4], vec![1.0f32; 4]).unwrap();
        let bytes = serialize_safetensors(&[("x", &t)], None).unwrap();
        let e = load_safetensors_bytes(&bytes[..bytes.len() - 1], "short").unwrap_err();
        assert!(matches!(e, Error::SafeTensors { .. }), "{e}");
        // A dtype this crate does not handle.
        let header = br#"{"x":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[0,2]}}"#;
        let mut f8 = (header.len() as u64).to_le_bytes().to_vec();
        f8.extend_from_slice(header);
        f8.extend_from_slice(&[0, 0]);
        let e = load_safetensors_bytes(&f8, "f8").unwrap_err();
        assert!(matches!(e, Error::InvalidFormat { .. }), "{e}");
        // A bool that is not 0 or 1.
        let header = br#"{"x":{"dtype":"BOOL","shape":[2],"data_offsets":[0,2]}}"#;
        let mut b = (header.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(header);
        b.extend_from_slice(&[1, 7]);
        let e = load_safetensors_bytes(&b, "bool").unwrap_err();
        assert!(matches!(e, Error::InvalidFormat { .. }), "{e}");
        // Truncations of a good file never panic.
        let good = serialize_safetensors(&sample_tensors().iter().map(|(n, t)| (n.as_str(), t)).collect::<Vec<_>>(), None).unwrap();
        for n in 0..good.len() {
            assert!(load_safetensors_bytes(&good[..n], "cut").is_err());
        }
    }
}
