//! Host tensors: read from and written to safetensors files, by name.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use safetensors::{Dtype, SafeTensors};

/// The element types the benchmark models use.
#[derive(Clone, Debug)]
pub enum HostData {
    F32(Vec<f32>),
    I32(Vec<i32>),
    I64(Vec<i64>),
}

/// A tensor in host memory: its shape and its elements, row-major.
#[derive(Clone, Debug)]
pub struct HostTensor {
    pub shape: Vec<i64>,
    pub data: HostData,
}

impl HostTensor {
    fn dtype(&self) -> Dtype {
        match self.data {
            HostData::F32(_) => Dtype::F32,
            HostData::I32(_) => Dtype::I32,
            HostData::I64(_) => Dtype::I64,
        }
    }

    fn bytes(&self) -> &[u8] {
        match &self.data {
            HostData::F32(v) => bytemuck::cast_slice(v),
            HostData::I32(v) => bytemuck::cast_slice(v),
            HostData::I64(v) => bytemuck::cast_slice(v),
        }
    }
}

/// Every tensor of a safetensors file, by name.
pub fn load(path: &Path) -> Result<BTreeMap<String, HostTensor>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let file = SafeTensors::deserialize(&bytes).with_context(|| format!("parsing {}", path.display()))?;
    let mut out = BTreeMap::new();
    for (name, view) in file.tensors() {
        let raw = view.data();
        let data = match view.dtype() {
            Dtype::F32 => HostData::F32(bytemuck::pod_collect_to_vec(raw)),
            Dtype::I32 => HostData::I32(bytemuck::pod_collect_to_vec(raw)),
            Dtype::I64 => HostData::I64(bytemuck::pod_collect_to_vec(raw)),
            other => bail!("{}: tensor {name} has dtype {other:?}; expected F32, I32 or I64", path.display()),
        };
        let shape = view.shape().iter().map(|&d| d as i64).collect();
        out.insert(name, HostTensor { shape, data });
    }
    Ok(out)
}

/// Writes named tensors to a safetensors file.
pub fn save(path: &Path, tensors: &[(String, HostTensor)]) -> Result<()> {
    let mut views = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let shape = t.shape.iter().map(|&d| d as usize).collect();
        views.push((name.as_str(), safetensors::tensor::TensorView::new(t.dtype(), shape, t.bytes())?));
    }
    safetensors::serialize_to_file(views, None, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
