//! Where a layer runs: a client and its device(s), and arrays held there — whole on one
//! device, replicated on several, or split into shards as a JAX named sharding says.

use std::sync::Arc;

use smallvec::SmallVec;

use crate::bundle::{AxisType, Mesh, NamedSharding};
use crate::pjrt::{Buffer, Client, Device};
use crate::tensor::TensorView;
use crate::{Error, Result, Tensor};

/// The client and the devices a layer's computations run on: one device, or the devices of a
/// mesh, in the mesh's device order (JAX's `mesh.devices.flat`).
#[derive(Debug, Clone)]
pub(crate) struct Placement {
    pub client: Client,
    pub devices: Vec<Device>,
    /// The index of the first device among the client's devices.
    pub device_index: usize,
    /// Executables are compiled portable (run on the device named at execution) when a
    /// single-device layer's device is not the client's first.
    pub portable: bool,
}

/// How an array is laid out over a placement's devices: `None` is whole (one device) or
/// replicated (every device); `Some` splits it as a JAX named sharding says.
pub(crate) type Layout = Option<Arc<NamedSharding>>;

impl Placement {
    /// `count` devices of `client` from index `first` on; `what` names the bundle in errors.
    pub fn new(client: Client, first: usize, count: usize, what: &str) -> Result<Placement> {
        let all = client.devices()?;
        if first.checked_add(count).is_none_or(|end| end > all.len()) {
            return Err(Error::TooFewDevices { what: what.to_string(), needed: count, first, available: all.len() });
        }
        let devices = all.into_iter().skip(first).take(count).collect();
        Ok(Placement { client, devices, device_index: first, portable: count == 1 && first != 0 })
    }

    /// The number of devices.
    pub fn len(&self) -> usize {
        self.devices.len()
    }

    /// The PJRT ids of the devices, in order.
    pub fn device_ids(&self) -> Result<Vec<i64>> {
        self.devices.iter().map(|d| d.id().map(i64::from)).collect()
    }

    /// The device executions run on, for an executable compiled portable.
    pub fn execute_device(&self) -> Option<&Device> {
        if self.portable {
            self.devices.first()
        } else {
            None
        }
    }

    /// Uploads a host array for a computation on the first `devices` devices, laid out as
    /// `layout` says: whole on one device, replicated, or one block per device.
    pub fn upload_to(&self, t: &TensorView<'_>, devices: usize, layout: &Layout) -> Result<DeviceArray> {
        let dims = |shape: &[usize]| shape.iter().map(|&d| d as i64).collect::<crate::pjrt::Dims>();
        let targets = self.devices.get(..devices).ok_or_else(|| Error::invalid("devices", format!("{devices} wanted, {} held", self.devices.len())))?;
        let shards = match layout {
            Some(sharding) if devices > 1 => {
                let tiling = sharding.tiling(t.shape())?;
                targets
                    .iter()
                    .zip(&tiling)
                    .map(|(d, slice)| {
                        let block = block_bytes(t, &slice.ranges);
                        self.client.buffer_from_bytes(t.dtype(), &dims(&slice.shape()), &block, d)
                    })
                    .collect::<Result<SmallVec<_>>>()?
            }
            _ => targets.iter().map(|d| self.client.buffer_from_bytes(t.dtype(), &dims(t.shape()), t.as_bytes(), d)).collect::<Result<SmallVec<_>>>()?,
        };
        Ok(DeviceArray { shards, layout: if devices > 1 { layout.clone() } else { None }, whole: (devices > 1).then(|| t.shape().to_vec()) })
    }
}

/// The layout of one argument or result of an array of `shape` over `devices` devices, from
/// the sharding its export recorded, normalized so that equal placements compare equal:
/// `None` for one device, no sharding (XLA keeps unannotated parameters and results
/// replicated) or a sharding that splits nothing; otherwise the sharding with trailing
/// unsplit dimensions, axis types and memory kind left out. A sharding over another number
/// of devices, or one that does not divide `shape` evenly, is an error naming `what` and the
/// mesh axis.
pub(crate) fn slot_layout(sharding: Option<&NamedSharding>, devices: usize, shape: &[usize], what: &str) -> Result<Layout> {
    let Some(sharding) = sharding.filter(|_| devices > 1) else { return Ok(None) };
    let bad = |reason: String| Error::format(what.to_string(), reason);
    let mesh_devices = sharding.mesh.num_devices();
    if mesh_devices != devices {
        return Err(bad(format!("its sharding is over a mesh of {mesh_devices} devices, but the computation runs on {devices}")));
    }
    let block = sharding.shard_shape(shape).map_err(|e| match e {
        Error::InvalidArgument { reason, .. } => bad(format!("shape {shape:?}: {reason}")),
        other => other,
    })?;
    if block == shape {
        return Ok(None);
    }
    let mut spec = sharding.spec.clone();
    while spec.last().is_some_and(Vec::is_empty) {
        spec.pop();
    }
    let mesh = Mesh { axis_types: vec![AxisType::Auto; sharding.mesh.axis_names.len()], ..sharding.mesh.clone() };
    Ok(Some(Arc::new(NamedSharding { mesh, spec, memory_kind: None })))
}

/// The shape of each device's block of an array of `shape` laid out as `layout` (the whole
/// shape when not split).
pub(crate) fn block_shape(layout: &Layout, shape: &[usize]) -> Result<Vec<usize>> {
    match layout {
        Some(sharding) => sharding.shard_shape(shape),
        None => Ok(shape.to_vec()),
    }
}

/// The bytes of the block `ranges` (one range per dimension) of a row-major array.
fn block_bytes(t: &TensorView<'_>, ranges: &[std::ops::Range<usize>]) -> Vec<u8> {
    let shape = t.shape();
    let item = t.dtype().size_in_bytes();
    let Some((last, outer)) = ranges.split_last() else { return t.as_bytes().to_vec() };
    let row = (last.end - last.start) * item;
    let mut out = Vec::with_capacity(outer.iter().map(|r| r.end - r.start).product::<usize>() * row);
    for_each_row(shape, outer, &mut |offset| {
        let start = (offset * shape[shape.len() - 1] + last.start) * item;
        out.extend_from_slice(&t.as_bytes()[start..start + row]);
    });
    out
}

/// Calls `f` with the row-major row index (over all dimensions but the last) of every row
/// of the block `outer` of an array of `shape`, in order.
fn for_each_row(shape: &[usize], outer: &[std::ops::Range<usize>], f: &mut impl FnMut(usize)) {
    fn walk(shape: &[usize], outer: &[std::ops::Range<usize>], dim: usize, base: usize, f: &mut impl FnMut(usize)) {
        if dim == outer.len() {
            f(base);
            return;
        }
        for i in outer[dim].clone() {
            walk(shape, outer, dim + 1, base * shape[dim] + i, f);
        }
    }
    walk(shape, outer, 0, 0, f)
}

/// An array on the device(s) of a placement: one buffer per device holding it.
#[derive(Debug)]
pub(crate) struct DeviceArray {
    shards: SmallVec<[Buffer; 1]>,
    layout: Layout,
    /// The whole array's shape, when several buffers hold it; one buffer's dimensions are
    /// the array's (no shape is stored for the arrays made on every call).
    whole: Option<Vec<usize>>,
}

impl DeviceArray {
    /// An array held by one buffer on one device.
    pub fn single(buffer: Buffer) -> DeviceArray {
        DeviceArray { shards: smallvec::smallvec![buffer], layout: None, whole: None }
    }

    /// An array held by one buffer per device, laid out as `layout` says (`None`:
    /// replicated), whose whole shape is `shape`.
    pub fn sharded(shards: Vec<Buffer>, layout: Layout, shape: Vec<usize>) -> DeviceArray {
        DeviceArray { shards: shards.into(), layout, whole: Some(shape) }
    }

    /// The buffer of a single-device array.
    pub fn into_single(mut self) -> Result<Buffer> {
        match self.shards.len() {
            1 => Ok(self.shards.remove(0)),
            n => Err(Error::invalid("device array", format!("has {n} shards, not one"))),
        }
    }

    /// The whole array's shape.
    fn shape(&self) -> Vec<usize> {
        match (&self.whole, self.shards.first()) {
            (Some(shape), _) => shape.clone(),
            (None, Some(b)) => b.dims().iter().map(|&d| usize::try_from(d).unwrap_or(0)).collect(),
            (None, None) => Vec::new(),
        }
    }

    /// The buffer on device `i` of the placement.
    pub fn shard(&self, i: usize) -> Result<&Buffer> {
        let n = self.shards.len();
        self.shards.get(i).ok_or_else(|| Error::invalid("device array", format!("no shard {i}: it has {n}")))
    }

    /// Whether the array is held on `devices` devices laid out as `layout`.
    pub fn is_laid_out(&self, devices: usize, layout: &Layout) -> bool {
        self.shards.len() == devices && (devices == 1 || self.layout == *layout)
    }

    /// The shapes of the buffers, one per device holding the array.
    pub fn shard_shapes(&self) -> Vec<Vec<usize>> {
        self.shards.iter().map(|b| b.dims().iter().map(|&d| usize::try_from(d).unwrap_or(0)).collect()).collect()
    }

    /// Whether any shard was deleted (donated to an execution that consumed it).
    pub fn is_deleted(&self) -> bool {
        self.shards.iter().any(|b| b.is_deleted().unwrap_or(true))
    }

    /// The whole array on the host, consuming it: for an array held whole, the copy takes the
    /// exclusive path (no PJRT reference counting, see `Buffer::copy_to_host_exclusive`).
    pub fn into_tensor(mut self) -> Result<Tensor> {
        if self.shards.len() != 1 {
            return self.to_tensor();
        }
        let shape = self.shape();
        let buffer = &mut self.shards[0];
        let mut t = Tensor::zeros(buffer.dtype(), shape)?;
        buffer.copy_to_host_exclusive(t.as_mut_bytes())?;
        Ok(t)
    }

    /// The whole array on the host: the one buffer, or its shards put together.
    pub fn to_tensor(&self) -> Result<Tensor> {
        let first = self.shard(0)?;
        let Some(sharding) = self.layout.as_ref().filter(|_| self.shards.len() > 1) else {
            let mut t = Tensor::zeros(first.dtype(), self.shape())?;
            first.copy_to_host_bytes(t.as_mut_bytes())?;
            return Ok(t);
        };
        let shape = self.shape();
        let mut whole = Tensor::zeros(first.dtype(), shape.clone())?;
        let item = first.dtype().size_in_bytes();
        for (buffer, slice) in self.shards.iter().zip(sharding.tiling(&shape)?) {
            let mut block = Tensor::zeros(buffer.dtype(), slice.shape())?;
            buffer.copy_to_host_bytes(block.as_mut_bytes())?;
            let Some((last, outer)) = slice.ranges.split_last() else { continue };
            let row = (last.end - last.start) * item;
            let (src, dst) = (block.as_bytes(), whole.as_mut_bytes());
            let mut k = 0;
            for_each_row(&shape, outer, &mut |offset| {
                let start = (offset * shape[shape.len() - 1] + last.start) * item;
                dst[start..start + row].copy_from_slice(&src[k * row..(k + 1) * row]);
                k += 1;
            });
        }
        Ok(whole)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sharding(sizes: &[usize], spec: &[&[&str]], types: AxisType) -> NamedSharding {
        let names = ["data", "model"][..sizes.len()].iter().map(|s| s.to_string()).collect();
        NamedSharding {
            mesh: Mesh { axis_names: names, axis_sizes: sizes.to_vec(), axis_types: vec![types; sizes.len()] },
            spec: spec.iter().map(|d| d.iter().map(|s| s.to_string()).collect()).collect(),
            memory_kind: Some("device".into()),
        }
    }

    #[test]
    fn layouts_compare_by_placement() {
        // One device, no sharding, or nothing split: whole or replicated.
        let split = sharding(&[2, 2], &[&["data"]], AxisType::Explicit);
        assert_eq!(slot_layout(Some(&split), 1, &[4, 3], "x").unwrap(), None);
        assert_eq!(slot_layout(None, 4, &[4, 3], "x").unwrap(), None);
        assert_eq!(slot_layout(Some(&sharding(&[2, 2], &[&[], &[]], AxisType::Auto)), 4, &[4, 3], "x").unwrap(), None);
        // Trailing unsplit dimensions, axis types and memory kinds do not matter.
        let a = slot_layout(Some(&split), 4, &[4, 3], "x").unwrap();
        let b = slot_layout(Some(&sharding(&[2, 2], &[&["data"], &[]], AxisType::Auto)), 4, &[4, 3], "x").unwrap();
        assert!(a.is_some() && a == b);
        assert_eq!(block_shape(&a, &[4, 3]).unwrap(), [2, 3]);
        // Errors name the slot and the axis.
        let e = slot_layout(Some(&split), 4, &[3, 3], "f: input \"x\"").unwrap_err();
        assert!(e.to_string().contains("input \"x\"") && e.to_string().contains("[\"data\"]") && e.to_string().contains("size 3"), "{e}");
        let e = slot_layout(Some(&split), 8, &[4, 3], "f: input \"x\"").unwrap_err();
        assert!(e.to_string().contains("mesh of 4 devices, but the computation runs on 8"), "{e}");
    }

    #[test]
    fn blocks_of_a_row_major_array() {
        let t = Tensor::from_vec(vec![2, 3, 4], (0..24).map(|i| i as f32).collect()).unwrap();
        let b = block_bytes(&t.view(), &[1..2, 0..3, 2..4]);
        let got: Vec<f32> = bytemuck::cast_slice(&b).to_vec();
        assert_eq!(got, [14.0, 15.0, 18.0, 19.0, 22.0, 23.0]);
        let all = block_bytes(&t.view(), &[0..2, 0..3, 0..4]);
        assert_eq!(all, t.as_bytes());
    }
}
