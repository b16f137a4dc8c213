//! One host-to-host ONNX Runtime call: host inputs in, host outputs out.

use std::borrow::Cow;

use anyhow::{bail, Result};
use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, TensorElementType, TensorRef};

use crate::host::{HostData, HostTensor};

/// Runs the session on `inputs` (in the session's input order) and copies every output into
/// host memory owned by the caller, as a service handing results on would.
pub fn call(session: &mut Session, names: &[String], inputs: &[HostTensor]) -> Result<Vec<HostTensor>> {
    let mut values: Vec<(Cow<'_, str>, SessionInputValue<'_>)> = Vec::with_capacity(inputs.len());
    for (name, t) in names.iter().zip(inputs) {
        let shape = &t.shape[..];
        let value: SessionInputValue<'_> = match &t.data {
            HostData::F32(v) => TensorRef::from_array_view((shape, &v[..]))?.into(),
            HostData::I32(v) => TensorRef::from_array_view((shape, &v[..]))?.into(),
            HostData::I64(v) => TensorRef::from_array_view((shape, &v[..]))?.into(),
        };
        values.push((Cow::Borrowed(name.as_str()), value));
    }
    let outputs = session.run(values)?;
    outputs.values().map(|v| to_host(&v)).collect()
}

fn to_host(value: &DynValue) -> Result<HostTensor> {
    let ty = match value.dtype() {
        ort::value::ValueType::Tensor { ty, .. } => *ty,
        other => bail!("output of type {other:?}; expected a tensor"),
    };
    let (shape, data) = match ty {
        TensorElementType::Float32 => {
            let (s, d) = value.try_extract_tensor::<f32>()?;
            (s, HostData::F32(d.to_vec()))
        }
        TensorElementType::Int32 => {
            let (s, d) = value.try_extract_tensor::<i32>()?;
            (s, HostData::I32(d.to_vec()))
        }
        TensorElementType::Int64 => {
            let (s, d) = value.try_extract_tensor::<i64>()?;
            (s, HostData::I64(d.to_vec()))
        }
        other => bail!("output of element type {other:?}; expected f32, i32 or i64"),
    };
    Ok(HostTensor { shape: shape.to_vec(), data })
}
