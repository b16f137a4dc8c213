//! `xla.CompileOptionsProto`, the serialized compile options PJRT takes, encoded by hand
//! (only the few fields this crate sets; protobuf's wire format is stable).

/// Options for compiling a program.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CompileOptions {
    /// Replicas (data-parallel copies). 1 for single-device programs.
    pub num_replicas: i64,
    /// Partitions (model-parallel shards). 1 for single-device programs.
    pub num_partitions: i64,
    /// The device ordinal to compile for; -1 leaves it to the plugin.
    pub device_ordinal: i64,
    /// Compile a portable executable, which runs on whichever device
    /// [`LoadedExecutable::execute_on`](super::LoadedExecutable::execute_on) names.
    pub portable: bool,
    /// Partition the program over several devices with XLA's SPMD partitioner, as the
    /// program's sharding annotations say.
    pub spmd: Option<Spmd>,
}

/// SPMD compilation: one replica, `device_ids.len()` partitions, each run by a device.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Spmd {
    /// The PJRT device ids of the partitions, in partition order (the mesh's device order).
    pub device_ids: Vec<i64>,
    /// The program carries Shardy (`sdy`) annotations (JAX's default since 0.7); otherwise
    /// GSPMD's `mhlo.sharding`.
    pub shardy: bool,
}

impl Default for CompileOptions {
    fn default() -> Self {
        CompileOptions { num_replicas: 1, num_partitions: 1, device_ordinal: -1, portable: false, spmd: None }
    }
}

impl CompileOptions {
    /// Options for an SPMD program over `device_ids` (one replica; every count is set
    /// explicitly, since an unset proto field reads as 0).
    pub fn spmd(device_ids: Vec<i64>, shardy: bool) -> CompileOptions {
        CompileOptions {
            num_replicas: 1,
            num_partitions: device_ids.len() as i64,
            device_ordinal: -1,
            portable: false,
            spmd: Some(Spmd { device_ids, shardy }),
        }
    }
}

// Field numbers from xla/pjrt/proto/compile_options.proto.
const COMPILE_OPTIONS_EXECUTABLE_BUILD_OPTIONS: u32 = 3;
const COMPILE_OPTIONS_COMPILE_PORTABLE_EXECUTABLE: u32 = 4;
const BUILD_OPTIONS_DEVICE_ORDINAL: u32 = 1;
const BUILD_OPTIONS_NUM_REPLICAS: u32 = 4;
const BUILD_OPTIONS_NUM_PARTITIONS: u32 = 5;
const BUILD_OPTIONS_USE_SPMD_PARTITIONING: u32 = 6;
const BUILD_OPTIONS_DEVICE_ASSIGNMENT: u32 = 9;
const BUILD_OPTIONS_USE_SHARDY_PARTITIONER: u32 = 19;
// xla/xla_data.proto: DeviceAssignmentProto and its ComputationDevice.
const ASSIGNMENT_REPLICA_COUNT: u32 = 1;
const ASSIGNMENT_COMPUTATION_COUNT: u32 = 2;
const ASSIGNMENT_COMPUTATION_DEVICES: u32 = 3;
const COMPUTATION_DEVICE_REPLICA_DEVICE_IDS: u32 = 1;

impl CompileOptions {
    /// The serialized `CompileOptionsProto`.
    pub fn to_proto_bytes(&self) -> Vec<u8> {
        let mut build = Vec::new();
        put_int64(&mut build, BUILD_OPTIONS_DEVICE_ORDINAL, self.device_ordinal);
        put_int64(&mut build, BUILD_OPTIONS_NUM_REPLICAS, self.num_replicas);
        put_int64(&mut build, BUILD_OPTIONS_NUM_PARTITIONS, self.num_partitions);
        if let Some(spmd) = &self.spmd {
            put_int64(&mut build, BUILD_OPTIONS_USE_SPMD_PARTITIONING, 1);
            put_bytes(&mut build, BUILD_OPTIONS_DEVICE_ASSIGNMENT, &device_assignment(&spmd.device_ids));
            put_int64(&mut build, BUILD_OPTIONS_USE_SHARDY_PARTITIONER, i64::from(spmd.shardy));
        }
        let mut out = Vec::new();
        put_bytes(&mut out, COMPILE_OPTIONS_EXECUTABLE_BUILD_OPTIONS, &build);
        if self.portable {
            put_int64(&mut out, COMPILE_OPTIONS_COMPILE_PORTABLE_EXECUTABLE, 1);
        }
        out
    }
}

/// A `DeviceAssignmentProto` of one replica and one computation (partition) per device.
fn device_assignment(device_ids: &[i64]) -> Vec<u8> {
    let mut out = Vec::new();
    put_int64(&mut out, ASSIGNMENT_REPLICA_COUNT, 1);
    put_int64(&mut out, ASSIGNMENT_COMPUTATION_COUNT, device_ids.len() as i64);
    for &id in device_ids {
        let mut computation = Vec::new();
        // A packed repeated int64 of one element.
        let mut ids = Vec::new();
        put_varint(&mut ids, id as u64);
        put_bytes(&mut computation, COMPUTATION_DEVICE_REPLICA_DEVICE_IDS, &ids);
        put_bytes(&mut out, ASSIGNMENT_COMPUTATION_DEVICES, &computation);
    }
    out
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_int64(out: &mut Vec<u8>, field: u32, v: i64) {
    put_varint(out, u64::from(field) << 3); // wire type 0: varint
    put_varint(out, v as u64); // int64 encodes negatives as ten-byte two's complement
}

fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_varint(out, (u64::from(field) << 3) | 2); // wire type 2: length-delimited
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_matches_protobuf_encoding() {
        // What protobuf writes for {executable_build_options {device_ordinal: -1
        // num_replicas: 1 num_partitions: 1}} (checked against jaxlib's CompileOptions).
        let expected = [
            0x1a, 0x0f, 0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0x20, 0x01,
            0x28, 0x01,
        ];
        assert_eq!(CompileOptions::default().to_proto_bytes(), expected);
        let portable = CompileOptions { portable: true, ..Default::default() }.to_proto_bytes();
        assert_eq!(&portable[..expected.len()], expected);
        assert_eq!(&portable[expected.len()..], [0x20, 0x01]);
    }

    #[test]
    fn spmd_matches_protobuf_encoding() {
        // jaxlib's CompileOptions with num_replicas 1, num_partitions 4, use_spmd_partitioning,
        // use_shardy_partitioner and DeviceAssignment.create([[0, 1, 2, 3]]) serializes these
        // build-option fields (after its debug options, which we do not set).
        let build_fields = [
            0x20, 0x01, 0x28, 0x04, 0x30, 0x01, 0x4a, 0x18, 0x08, 0x01, 0x10, 0x04, 0x1a, 0x03, 0x0a, 0x01, 0x00, 0x1a,
            0x03, 0x0a, 0x01, 0x01, 0x1a, 0x03, 0x0a, 0x01, 0x02, 0x1a, 0x03, 0x0a, 0x01, 0x03, 0x98, 0x01, 0x01,
        ];
        let bytes = CompileOptions::spmd(vec![0, 1, 2, 3], true).to_proto_bytes();
        // Field 3 (length-delimited), then device_ordinal -1 (11 bytes), then the rest.
        assert_eq!(&bytes[2 + 11..], build_fields);
    }
}
