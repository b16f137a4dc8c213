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
}

impl Default for CompileOptions {
    fn default() -> Self {
        CompileOptions { num_replicas: 1, num_partitions: 1, device_ordinal: -1, portable: false }
    }
}

// Field numbers from xla/pjrt/proto/compile_options.proto.
const COMPILE_OPTIONS_EXECUTABLE_BUILD_OPTIONS: u32 = 3;
const COMPILE_OPTIONS_COMPILE_PORTABLE_EXECUTABLE: u32 = 4;
const BUILD_OPTIONS_DEVICE_ORDINAL: u32 = 1;
const BUILD_OPTIONS_NUM_REPLICAS: u32 = 4;
const BUILD_OPTIONS_NUM_PARTITIONS: u32 = 5;

impl CompileOptions {
    /// The serialized `CompileOptionsProto`.
    pub fn to_proto_bytes(&self) -> Vec<u8> {
        let mut build = Vec::new();
        put_int64(&mut build, BUILD_OPTIONS_DEVICE_ORDINAL, self.device_ordinal);
        put_int64(&mut build, BUILD_OPTIONS_NUM_REPLICAS, self.num_replicas);
        put_int64(&mut build, BUILD_OPTIONS_NUM_PARTITIONS, self.num_partitions);
        let mut out = Vec::new();
        put_bytes(&mut out, COMPILE_OPTIONS_EXECUTABLE_BUILD_OPTIONS, &build);
        if self.portable {
            put_int64(&mut out, COMPILE_OPTIONS_COMPILE_PORTABLE_EXECUTABLE, 1);
        }
        out
    }
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
}
