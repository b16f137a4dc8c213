//! Tensor element types as the KServe v2 protocol names them (`FP32`, `INT64`, `BOOL`, ...),
//! and JSON numbers to and from little-endian tensor bytes, checked for range.

use serde_json::Value;

use super::error::ApiError;
use crate::{DType, Tensor};

/// The KServe v2 name of a dtype (`float32` is `FP32`, `bfloat16` is `BF16`).
pub fn name(dtype: DType) -> &'static str {
    match dtype {
        DType::Bool => "BOOL",
        DType::I8 => "INT8",
        DType::I16 => "INT16",
        DType::I32 => "INT32",
        DType::I64 => "INT64",
        DType::U8 => "UINT8",
        DType::U16 => "UINT16",
        DType::U32 => "UINT32",
        DType::U64 => "UINT64",
        DType::F16 => "FP16",
        DType::BF16 => "BF16",
        DType::F32 => "FP32",
        DType::F64 => "FP64",
        // `DType` is non-exhaustive; every dtype this crate knows is listed above.
        #[allow(unreachable_patterns)]
        _ => "UNKNOWN",
    }
}

/// The dtype of a KServe v2 datatype name; `None` for names this server does not handle
/// (`BYTES`, or anything else).
pub fn parse(name_: &str) -> Option<DType> {
    DType::ALL.into_iter().find(|&d| name(d) == name_)
}

/// Every datatype name this server accepts, for error messages.
pub fn known() -> String {
    DType::ALL.iter().map(|&d| name(d)).collect::<Vec<_>>().join(", ")
}

/// Appends the elements of `data` (a JSON number, bool, or arbitrarily nested arrays of them,
/// read in row-major order) to `out` as `dtype` bytes. Integers must be whole and in range;
/// bools must be `true`/`false` (numbers 0 and 1 are accepted too, as Triton does).
/// `tensor` names the tensor for errors.
pub fn encode_json(tensor: &str, dtype: DType, data: &Value, out: &mut Vec<u8>) -> Result<(), ApiError> {
    match data {
        Value::Array(items) => items.iter().try_for_each(|v| encode_json(tensor, dtype, v, out)),
        scalar => encode_scalar(tensor, dtype, scalar, out),
    }
}

fn encode_scalar(tensor: &str, dtype: DType, v: &Value, out: &mut Vec<u8>) -> Result<(), ApiError> {
    let scalar = match v {
        Value::Bool(b) => Scalar::Bool(*b),
        Value::Number(n) => Scalar::Number(n.clone()),
        other => Scalar::Other(other.to_string()),
    };
    let (bytes, n) = encode_one(tensor, dtype, &scalar)?;
    out.extend_from_slice(&bytes[..n]);
    Ok(())
}

/// One JSON element, as the streaming decoder sees it.
enum Scalar {
    Bool(bool),
    Number(serde_json::Number),
    /// Anything else (a string, `null`, an object), as JSON text for the error.
    Other(String),
}

impl std::fmt::Display for Scalar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scalar::Bool(b) => write!(f, "{b}"),
            Scalar::Number(n) => write!(f, "{n}"),
            Scalar::Other(s) => f.write_str(s),
        }
    }
}

/// One element as `dtype`'s little-endian bytes (the first `n` of 8).
fn encode_one(tensor: &str, dtype: DType, v: &Scalar) -> Result<([u8; 8], usize), ApiError> {
    let bad = |expected: &str| ApiError::invalid_tensor(tensor, expected.to_string(), format!("{v}"));
    let mut b = [0u8; 8];
    let mut put = |bytes: &[u8]| {
        b[..bytes.len()].copy_from_slice(bytes);
        Ok((b, bytes.len()))
    };
    if dtype == DType::Bool {
        let x = match v {
            Scalar::Bool(x) => *x,
            Scalar::Number(n) if n.as_u64() == Some(0) => false,
            Scalar::Number(n) if n.as_u64() == Some(1) => true,
            _ => return Err(bad("a BOOL element (true or false)")),
        };
        return put(&[u8::from(x)]);
    }
    let Scalar::Number(n) = v else {
        return Err(bad(&format!("a number for a {} element", name(dtype))));
    };
    if dtype.is_float() {
        let x = n.as_f64().ok_or_else(|| bad("a number"))?;
        return match dtype {
            DType::F16 => put(&half::f16::from_f64(x).to_le_bytes()),
            DType::BF16 => put(&half::bf16::from_f64(x).to_le_bytes()),
            DType::F32 => put(&(x as f32).to_le_bytes()),
            _ => put(&x.to_le_bytes()),
        };
    }
    let range = || bad(&format!("an integer in the range of {}", name(dtype)));
    if dtype_is_unsigned(dtype) {
        let x = n.as_u64().ok_or_else(range)?;
        match dtype {
            DType::U8 => put(&[u8::try_from(x).map_err(|_| range())?]),
            DType::U16 => put(&u16::try_from(x).map_err(|_| range())?.to_le_bytes()),
            DType::U32 => put(&u32::try_from(x).map_err(|_| range())?.to_le_bytes()),
            _ => put(&x.to_le_bytes()),
        }
    } else {
        let x = n.as_i64().ok_or_else(range)?;
        match dtype {
            DType::I8 => put(&i8::try_from(x).map_err(|_| range())?.to_le_bytes()),
            DType::I16 => put(&i16::try_from(x).map_err(|_| range())?.to_le_bytes()),
            DType::I32 => put(&i32::try_from(x).map_err(|_| range())?.to_le_bytes()),
            _ => put(&x.to_le_bytes()),
        }
    }
}

/// Decodes a KServe v2 `data` field (JSON text: a number, bool, or nested arrays of them, in
/// row-major order) straight into `dtype` bytes, with no JSON tree: exactly `elements`
/// elements, each checked as [`encode_json`] checks them. The bytes are reserved up front
/// with `try_reserve_exact` (the caller has checked `elements` against the model and the
/// body); more elements than declared stop the decoding at the first extra one.
pub fn decode_data(tensor: &str, dtype: DType, shape: Vec<usize>, data: &str) -> Result<Tensor, ApiError> {
    use serde::de::DeserializeSeed;
    let shown = format!("{shape:?}");
    let mut t = Tensor::zeros(dtype, shape).map_err(|e| ApiError::Internal { reason: format!("{tensor}: {e}") })?;
    let mut sink = Sink { tensor, dtype, out: t.as_mut_bytes(), at: 0, error: None };
    let mut de = serde_json::Deserializer::from_str(data);
    let parsed = Seed(&mut sink).deserialize(&mut de).and_then(|()| de.end());
    if let Some(e) = sink.error {
        return Err(e);
    }
    parsed.map_err(|e| ApiError::malformed(format!("{tensor}: \"data\": {e}")))?;
    if sink.at != sink.out.len() {
        let size = dtype.size_in_bytes();
        let (want, got) = (sink.out.len() / size, sink.at / size);
        return Err(ApiError::invalid_tensor(tensor, format!("{want} elements for shape {shown}"), format!("{got} elements in \"data\"")));
    }
    Ok(t)
}

/// Where [`decode_data`] writes, with the first error (serde's own carries only text).
struct Sink<'a> {
    tensor: &'a str,
    dtype: DType,
    out: &'a mut [u8],
    at: usize,
    error: Option<ApiError>,
}

impl Sink<'_> {
    fn push<E: serde::de::Error>(&mut self, v: Scalar) -> Result<(), E> {
        let (len, size) = (self.out.len(), self.dtype.size_in_bytes());
        let tensor = self.tensor;
        let r = encode_one(self.tensor, self.dtype, &v).and_then(|(b, n)| {
            let dst = self.out.get_mut(self.at..self.at + n).ok_or_else(|| {
                ApiError::invalid_tensor(tensor, format!("{} elements as its shape says", len / size), "more elements in \"data\"")
            })?;
            dst.copy_from_slice(&b[..n]);
            self.at += n;
            Ok(())
        });
        r.map_err(|e| {
            let text = e.to_string();
            self.error.get_or_insert(e);
            E::custom(text)
        })
    }
}

struct Seed<'s, 'a>(&'s mut Sink<'a>);

impl<'de> serde::de::DeserializeSeed<'de> for Seed<'_, '_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Seed<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a number, a bool, or nested arrays of them")
    }
    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<(), E> {
        self.0.push(Scalar::Bool(v))
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<(), E> {
        self.0.push(Scalar::Number(v.into()))
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<(), E> {
        self.0.push(Scalar::Number(v.into()))
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
        let n = serde_json::Number::from_f64(v).ok_or_else(|| E::custom("a non-finite number"))?;
        self.0.push(Scalar::Number(n))
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<(), E> {
        let shown: String = v.chars().take(40).collect();
        self.0.push(Scalar::Other(format!("{shown:?}")))
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        self.0.push(Scalar::Other("null".into()))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, _map: A) -> Result<(), A::Error> {
        self.0.push(Scalar::Other("an object".into()))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Seed(&mut *self.0))?.is_some() {}
        Ok(())
    }
}

fn dtype_is_unsigned(dtype: DType) -> bool {
    matches!(dtype, DType::U8 | DType::U16 | DType::U32 | DType::U64)
}

/// Tensor elements written as JSON, nested by `shape` (a scalar for `[]`; pass `[n]` for a
/// flat list): bools, integers, or floats in their shortest form (16-bit floats widened to
/// `f32`). Non-finite floats are written as `null`, as JSON has no NaN or infinity.
#[derive(Clone, Copy)]
pub struct Elements<'a> {
    dtype: DType,
    /// The nesting; `None`: one flat list.
    shape: Option<&'a [usize]>,
    bytes: &'a [u8],
}

impl<'a> Elements<'a> {
    /// The elements of `bytes` (little-endian `dtype`, row-major), nested by `shape`.
    pub fn new(dtype: DType, shape: &'a [usize], bytes: &'a [u8]) -> Elements<'a> {
        Elements { dtype, shape: Some(shape), bytes }
    }

    /// The elements of `bytes` as one flat list.
    pub fn flat(dtype: DType, bytes: &'a [u8]) -> Elements<'a> {
        Elements { dtype, shape: None, bytes }
    }
}

impl serde::Serialize for Elements<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let size = self.dtype.size_in_bytes();
        let Some(shape) = self.shape else {
            let mut seq = s.serialize_seq(Some(self.bytes.len() / size))?;
            for c in self.bytes.chunks_exact(size) {
                seq.serialize_element(&Elements { dtype: self.dtype, shape: Some(&[]), bytes: c })?;
            }
            return seq.end();
        };
        let Some((&n, rest)) = shape.split_first() else {
            return element(self.dtype, self.bytes, s);
        };
        let step = self.bytes.len().checked_div(n).unwrap_or(0);
        let mut seq = s.serialize_seq(Some(n))?;
        for i in 0..n {
            seq.serialize_element(&Elements { dtype: self.dtype, shape: Some(rest), bytes: &self.bytes[i * step..(i + 1) * step] })?;
        }
        seq.end()
    }
}

/// Named values written as a JSON object, in the order given.
pub struct Named<'a, T>(pub Vec<(&'a str, T)>);

impl<T: serde::Serialize> serde::Serialize for Named<'_, T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

/// Writes the first element of `c`.
fn element<S: serde::Serializer>(dtype: DType, c: &[u8], s: S) -> Result<S::Ok, S::Error> {
    let mut b = [0u8; 8];
    let size = dtype.size_in_bytes().min(c.len());
    b[..size].copy_from_slice(&c[..size]);
    let b2 = [b[0], b[1]];
    let b4 = [b[0], b[1], b[2], b[3]];
    match dtype {
        DType::Bool => s.serialize_bool(b[0] != 0),
        DType::I8 => s.serialize_i8(b[0] as i8),
        DType::I16 => s.serialize_i16(i16::from_le_bytes(b2)),
        DType::I32 => s.serialize_i32(i32::from_le_bytes(b4)),
        DType::I64 => s.serialize_i64(i64::from_le_bytes(b)),
        DType::U8 => s.serialize_u8(b[0]),
        DType::U16 => s.serialize_u16(u16::from_le_bytes(b2)),
        DType::U32 => s.serialize_u32(u32::from_le_bytes(b4)),
        DType::U64 => s.serialize_u64(u64::from_le_bytes(b)),
        DType::F16 => s.serialize_f32(half::f16::from_le_bytes(b2).to_f32()),
        DType::BF16 => s.serialize_f32(half::bf16::from_le_bytes(b2).to_f32()),
        DType::F32 => s.serialize_f32(f32::from_le_bytes(b4)),
        DType::F64 => s.serialize_f64(f64::from_le_bytes(b)),
        #[allow(unreachable_patterns)]
        _ => s.serialize_none(),
    }
}

/// The shape of a nested JSON array (a scalar has shape `[]`), checking that it is
/// rectangular. `tensor` names the tensor for errors.
pub fn shape_of(tensor: &str, v: &Value) -> Result<Vec<usize>, ApiError> {
    let Value::Array(items) = v else { return Ok(Vec::new()) };
    let Some(first) = items.first() else { return Ok(vec![0]) };
    let inner = shape_of(tensor, first)?;
    for item in &items[1..] {
        let s = shape_of(tensor, item)?;
        if s != inner {
            return Err(ApiError::malformed(format!("{tensor}: a ragged array (rows of shapes {inner:?} and {s:?}); tensors must be rectangular")));
        }
    }
    let mut shape = vec![items.len()];
    shape.extend(inner);
    Ok(shape)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_round_trip_and_bytes_is_refused() {
        for d in DType::ALL {
            assert_eq!(parse(name(d)), Some(d));
        }
        assert_eq!(parse("BYTES"), None);
        assert_eq!(parse("fp32"), None, "names are case-sensitive");
    }

    #[test]
    fn json_elements_encode_with_range_checks() {
        let mut out = Vec::new();
        encode_json("x", DType::I8, &json!([[1, -2], [127, -128]]), &mut out).unwrap();
        assert_eq!(out, vec![1, 254, 127, 128]);
        let e = encode_json("x", DType::I8, &json!([128]), &mut Vec::new()).unwrap_err();
        assert_eq!(e.to_string(), "x: expected an integer in the range of INT8, got 128");
        assert!(encode_json("x", DType::U16, &json!([-1]), &mut Vec::new()).is_err());
        assert!(encode_json("x", DType::I32, &json!([1.5]), &mut Vec::new()).is_err());
        assert!(encode_json("x", DType::F32, &json!(["1"]), &mut Vec::new()).is_err());
        let mut out = Vec::new();
        encode_json("b", DType::Bool, &json!([true, false, 1]), &mut out).unwrap();
        assert_eq!(out, vec![1, 0, 1]);
        let mut out = Vec::new();
        encode_json("h", DType::BF16, &json!([1.5, 2]), &mut out).unwrap();
        assert_eq!(to_json(DType::BF16, &[2], &out), "[1.5,2.0]");
    }

    fn to_json(dtype: DType, shape: &[usize], bytes: &[u8]) -> String {
        serde_json::to_string(&Elements::new(dtype, shape, bytes)).unwrap()
    }

    #[test]
    fn every_dtype_round_trips_through_json() {
        for d in DType::ALL {
            let data = if d == DType::Bool { json!([true, false]) } else { json!([1, 0]) };
            let mut out = Vec::new();
            encode_json("t", d, &data, &mut out).unwrap();
            assert_eq!(out.len(), 2 * d.size_in_bytes(), "{d}");
            let back: Value = serde_json::from_str(&to_json(d, &[2], &out)).unwrap();
            if d == DType::Bool {
                assert_eq!(back, data);
            } else {
                assert_eq!(back[0].as_f64(), Some(1.0), "{d}");
                assert_eq!(back[1].as_f64(), Some(0.0), "{d}");
            }
        }
        assert_eq!(to_json(DType::F32, &[1], &f32::NAN.to_le_bytes()), "[null]");
        assert_eq!(to_json(DType::F32, &[], &0.1f32.to_le_bytes()), "0.1");
        assert_eq!(to_json(DType::I64, &[], &(-3i64).to_le_bytes()), "-3");
    }

    #[test]
    fn shapes_and_nesting() {
        assert_eq!(shape_of("t", &json!([[1, 2, 3], [4, 5, 6]])).unwrap(), vec![2, 3]);
        assert_eq!(shape_of("t", &json!(7)).unwrap(), Vec::<usize>::new());
        assert!(shape_of("t", &json!([[1, 2], [3]])).is_err());
        let bytes: Vec<u8> = (0..6i32).flat_map(i32::to_le_bytes).collect();
        assert_eq!(to_json(DType::I32, &[2, 3], &bytes), "[[0,1,2],[3,4,5]]");
        assert_eq!(serde_json::to_string(&Elements::flat(DType::I32, &bytes)).unwrap(), "[0,1,2,3,4,5]");
        let named = Named(vec![("b", Elements::new(DType::I32, &[], &bytes[..4])), ("a", Elements::flat(DType::I32, &bytes[4..8]))]);
        assert_eq!(serde_json::to_string(&named).unwrap(), r#"{"b":0,"a":[1]}"#);
    }
}
