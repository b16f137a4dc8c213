//! Where a layer runs: a client and its device(s), and arrays held there.

use smallvec::SmallVec;

use crate::pjrt::{Buffer, Client, Device};
use crate::tensor::TensorView;
use crate::{Error, Result, Tensor};

/// The client and the devices a layer's computations run on. Today one device; a layer over
/// several devices holds one shard (or replica) of every array per device.
#[derive(Debug, Clone)]
pub(crate) struct Placement {
    pub client: Client,
    pub devices: Vec<Device>,
    /// The index of the first device among the client's devices.
    pub device_index: usize,
    /// Executables are compiled portable (run on the device named at execution) when the
    /// device is not the client's first.
    pub portable: bool,
}

impl Placement {
    /// The device `index` of `client`.
    pub fn single(client: Client, index: usize) -> Result<Placement> {
        let device = client.device(index)?;
        Ok(Placement { client, devices: vec![device], device_index: index, portable: index != 0 })
    }

    /// The device executions run on, for an executable compiled portable.
    pub fn execute_device(&self) -> Option<&Device> {
        if self.portable {
            self.devices.first()
        } else {
            None
        }
    }

    /// Uploads a host array to every device of the placement.
    pub fn upload(&self, t: &TensorView<'_>) -> Result<DeviceArray> {
        let dims: Vec<i64> = t.shape().iter().map(|&d| d as i64).collect();
        let shards = self
            .devices
            .iter()
            .map(|d| self.client.buffer_from_bytes(t.dtype(), &dims, t.as_bytes(), d))
            .collect::<Result<SmallVec<_>>>()?;
        Ok(DeviceArray { shards })
    }

    /// Uploads raw `uint32[2]` key data.
    pub fn upload_key(&self, key: [u32; 2]) -> Result<DeviceArray> {
        let t = Tensor::from_vec(vec![2], key.to_vec())?;
        self.upload(&t.view())
    }
}

/// An array on the device(s) of a placement: one buffer per device.
#[derive(Debug)]
pub(crate) struct DeviceArray {
    shards: SmallVec<[Buffer; 1]>,
}

impl DeviceArray {
    /// An array held by one buffer on one device.
    pub fn single(buffer: Buffer) -> DeviceArray {
        DeviceArray { shards: smallvec::smallvec![buffer] }
    }

    /// The buffer of a single-device array.
    pub fn into_single(mut self) -> Result<Buffer> {
        match self.shards.len() {
            1 => Ok(self.shards.remove(0)),
            n => Err(Error::invalid("device array", format!("has {n} shards, not one"))),
        }
    }

    /// The buffer on device `i` of the placement.
    pub fn shard(&self, i: usize) -> Result<&Buffer> {
        let n = self.shards.len();
        self.shards.get(i).ok_or_else(|| Error::invalid("device array", format!("no shard {i}: it has {n}")))
    }

    /// Whether any shard was deleted (donated to an execution that consumed it).
    pub fn is_deleted(&self) -> bool {
        self.shards.iter().any(|b| b.is_deleted().unwrap_or(true))
    }

    /// The whole array on the host.
    pub fn to_tensor(&self) -> Result<Tensor> {
        let b = self.shard(0)?;
        let shape = b.dims().iter().map(|&d| usize::try_from(d).unwrap_or(0)).collect();
        let mut t = Tensor::zeros(b.dtype(), shape)?;
        b.copy_to_host_bytes(t.as_mut_bytes())?;
        Ok(t)
    }
}
