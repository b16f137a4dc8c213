//! numpy's `.npy` files (format versions 1.0, 2.0 and 3.0): one array, C order, little-endian.
//!
//! The header is a Python dict literal; numpy writes it in one fixed form
//! (`{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }`), which is what is parsed
//! here, strictly: the file is untrusted, so every length is checked before anything is
//! allocated, and a header that is not of that form is an error naming the file.

use std::path::Path;

use super::Tensor;
use crate::{DType, Error, Result};

const MAGIC: &[u8] = b"\x93NUMPY";
/// numpy refuses headers above this size too (`_MAX_HEADER_SIZE`).
const MAX_HEADER: usize = 10_000;

/// numpy's `descr` for a dtype. `bfloat16` has none in numpy itself (ml_dtypes writes it as a
/// void type), so it is refused.
fn descr(dtype: DType) -> Option<&'static str> {
    Some(match dtype {
        DType::Bool => "|b1",
        DType::I8 => "|i1",
        DType::I16 => "<i2",
        DType::I32 => "<i4",
        DType::I64 => "<i8",
        DType::U8 => "|u1",
        DType::U16 => "<u2",
        DType::U32 => "<u4",
        DType::U64 => "<u8",
        DType::F16 => "<f2",
        DType::F32 => "<f4",
        DType::F64 => "<f8",
        DType::BF16 => return None,
    })
}

fn dtype_of(descr: &str) -> Option<DType> {
    // `<` little-endian, `|` not applicable (one byte), `=` native (little-endian here).
    let (order, code) = descr.split_at(descr.len().min(1));
    if !matches!(order, "<" | "|" | "=") {
        return None;
    }
    DType::ALL.into_iter().find(|&d| self::descr(d).is_some_and(|s| &s[1..] == code))
}

/// The value of `'key': ` in the header dict, up to the next top-level `,` or `}`.
fn field<'h>(header: &'h str, key: &str) -> Option<&'h str> {
    let start = header.find(&format!("'{key}':"))? + key.len() + 3;
    let rest = header[start..].trim_start();
    let end = if rest.starts_with('(') { rest.find(')')? + 1 } else { rest.find([',', '}'])? };
    Some(rest[..end].trim())
}

fn parse_header(header: &str, what: &str) -> Result<(DType, Vec<usize>)> {
    let bad = |reason: String| Error::format(what, format!("{reason}; expected a .npy file written by numpy.save"));
    let header = header.trim_end_matches(['\n', ' ', '\0']);
    if !(header.starts_with('{') && header.ends_with('}')) {
        return Err(bad(format!("the header {header:?} is not a dict")));
    }
    let descr_text = field(header, "descr").ok_or_else(|| bad("the header has no 'descr'".into()))?;
    let descr_text = descr_text.trim_matches('\'');
    let dtype = dtype_of(descr_text).ok_or_else(|| {
        Error::format(what, format!("dtype {descr_text:?} is not supported: expected a little-endian bool, int, uint or float array (big-endian, complex, string and object arrays are not)"))
    })?;
    match field(header, "fortran_order") {
        Some("False") => {}
        Some("True") => {
            return Err(Error::format(what, "the array is in Fortran order: save it with numpy.save(path, numpy.ascontiguousarray(x))"));
        }
        _ => return Err(bad("the header has no 'fortran_order'".into())),
    }
    let shape_text = field(header, "shape").ok_or_else(|| bad("the header has no 'shape'".into()))?;
    let inner = shape_text
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .ok_or_else(|| bad(format!("the shape {shape_text:?} is not a tuple")))?;
    let shape = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|d| d.parse::<usize>().map_err(|_| bad(format!("the shape {shape_text:?} holds {d:?}, not a size"))))
        .collect::<Result<Vec<_>>>()?;
    Ok((dtype, shape))
}

/// Parses the bytes of a `.npy` file; `what` names it in errors.
pub fn load_npy_bytes(bytes: &[u8], what: &str) -> Result<Tensor> {
    if bytes.len() < MAGIC.len() + 2 || &bytes[..MAGIC.len()] != MAGIC {
        return Err(Error::format(what, "this is not a .npy file (it does not start with \\x93NUMPY): expected a file written by numpy.save"));
    }
    let major = bytes[MAGIC.len()];
    let (len_bytes, utf8) = match major {
        1 => (2, false),
        2 => (4, false),
        3 => (4, true),
        v => return Err(Error::format(what, format!(".npy format version {v} is not supported (1, 2 and 3 are)"))),
    };
    let start = MAGIC.len() + 2;
    let len_field = bytes.get(start..start + len_bytes).ok_or_else(|| Error::format(what, "truncated: the file ends inside its header length"))?;
    let header_len = len_field.iter().rev().fold(0usize, |n, &b| (n << 8) | b as usize);
    if header_len > MAX_HEADER {
        return Err(Error::format(what, format!("a header of {header_len} bytes is more than numpy writes ({MAX_HEADER})")));
    }
    let data_start = start + len_bytes + header_len;
    let header = bytes.get(start + len_bytes..data_start).ok_or_else(|| Error::format(what, "truncated: the file ends inside its header"))?;
    let header = if utf8 {
        std::str::from_utf8(header).map_err(|_| Error::format(what, "the header is not UTF-8"))?
    } else {
        std::str::from_utf8(header).ok().filter(|h| h.is_ascii()).ok_or_else(|| Error::format(what, "the header is not ASCII"))?
    };
    let (dtype, shape) = parse_header(header, what)?;
    let expected = dtype.array_bytes(&shape).map_err(|e| Error::format(what, e.to_string()))?;
    let data = &bytes[data_start..];
    if data.len() != expected {
        return Err(Error::format(
            what,
            format!("a {dtype} array of shape {shape:?} is {expected} bytes, but the file holds {} after its header: it is truncated or corrupt; save it again", data.len()),
        ));
    }
    Tensor::new(dtype, shape, data).map_err(|e| Error::format(what, e.to_string()))
}

/// The bytes of a `.npy` file (format 1.0, or 2.0 when the header needs it) holding `tensor`.
pub fn serialize_npy(tensor: &Tensor) -> Result<Vec<u8>> {
    let d = descr(tensor.dtype()).ok_or_else(|| {
        Error::invalid("write_npy", "numpy has no bfloat16 dtype: convert to float32, or write safetensors, which has one")
    })?;
    let dims: Vec<String> = tensor.shape().iter().map(usize::to_string).collect();
    let shape = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!("{{'descr': '{d}', 'fortran_order': False, 'shape': {shape}, }}");
    // numpy pads the header with spaces and a newline so that the data starts 64-byte aligned.
    let (version, len_bytes) = if MAGIC.len() + 2 + 2 + header.len() < u16::MAX as usize { (1u8, 2) } else { (2u8, 4) };
    let unpadded = MAGIC.len() + 2 + len_bytes + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    let mut out = Vec::with_capacity(MAGIC.len() + 2 + len_bytes + header.len() + tensor.num_bytes());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[version, 0]);
    let n = header.len() as u32;
    out.extend_from_slice(&n.to_le_bytes()[..len_bytes]);
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(tensor.as_bytes());
    Ok(out)
}

/// Reads a `.npy` file.
pub fn read_npy(path: &Path) -> Result<Tensor> {
    let bytes = crate::files::read(path, crate::files::MAX_WEIGHTS_BYTES)?;
    load_npy_bytes(&bytes, &path.display().to_string())
}

/// Writes a `.npy` file atomically.
pub fn write_npy(path: &Path, tensor: &Tensor) -> Result<()> {
    let bytes = serialize_npy(tensor)?;
    crate::atomic::write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_every_numpy_dtype() {
        for dtype in DType::ALL.into_iter().filter(|&d| d != DType::BF16) {
            for shape in [vec![], vec![3], vec![2, 3], vec![0, 4]] {
                let t = Tensor::zeros(dtype, shape.clone()).unwrap();
                let bytes = serialize_npy(&t).unwrap();
                let header_end = bytes.len() - t.num_bytes();
                assert_eq!(header_end % 64, 0, "data starts 64-byte aligned");
                assert_eq!(load_npy_bytes(&bytes, "t").unwrap(), t, "{dtype} {shape:?}");
            }
        }
        let t = Tensor::from_vec(vec![2, 2], vec![1.5f32, -2.0, 3.0, 4.0]).unwrap();
        assert_eq!(load_npy_bytes(&serialize_npy(&t).unwrap(), "t").unwrap(), t);
        assert!(serialize_npy(&Tensor::zeros(DType::BF16, vec![2]).unwrap()).is_err());
    }

    #[test]
    fn reads_what_numpy_writes() {
        // numpy.save(f, numpy.arange(6, dtype="<i4").reshape(2, 3))
        let header = "{'descr': '<i4', 'fortran_order': False, 'shape': (2, 3), }";
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        let padded = format!("{header}{}\n", " ".repeat(128 - 10 - header.len() - 1));
        bytes.extend_from_slice(&(padded.len() as u16).to_le_bytes());
        bytes.extend_from_slice(padded.as_bytes());
        for i in 0..6i32 {
            bytes.extend_from_slice(&i.to_le_bytes());
        }
        let t = load_npy_bytes(&bytes, "arange.npy").unwrap();
        assert_eq!(t.shape(), &[2, 3]);
        assert_eq!(t.to_vec::<i32>().unwrap(), vec![0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn hostile_files_are_errors_naming_the_file() {
        let t = Tensor::from_vec(vec![3], vec![1.0f64, 2.0, 3.0]).unwrap();
        let good = serialize_npy(&t).unwrap();
        for n in 0..good.len() {
            let e = load_npy_bytes(&good[..n], "cut.npy").unwrap_err();
            assert!(e.to_string().contains("cut.npy"), "{e}");
        }
        let e = load_npy_bytes(b"PK\x03\x04 a zip", "x.npz").unwrap_err();
        assert!(e.to_string().contains("not a .npy file"), "{e}");
        for (from, to) in [("'<f8'", "'>f8'"), ("'<f8'", "'O'  "), ("False", "True "), ("(3,)", "(x,)"), ("(3,)", "(99999999999999999999,)")] {
            let text = String::from_utf8_lossy(&good).replace(from, to);
            let e = load_npy_bytes(text.as_bytes(), "bad.npy").unwrap_err();
            assert!(e.to_string().contains("bad.npy"), "{from} -> {to}: {e}");
        }
        // A shape whose size overflows, and a header length beyond numpy's.
        let text = String::from_utf8_lossy(&good).replace("(3,)", "(18446744073709551615, 9)");
        assert!(load_npy_bytes(text.as_bytes(), "huge.npy").is_err());
        let mut long = good.clone();
        long[8..10].copy_from_slice(&u16::MAX.to_le_bytes());
        assert!(load_npy_bytes(&long, "long.npy").is_err());
    }
}
