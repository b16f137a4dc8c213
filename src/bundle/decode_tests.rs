//! Tests of the decoder: bad bytes, and buffers built by hand with the `flatbuffers` builder.

use crate::bundle::jax_schema::{mesh, named, spec, spec_axis};
use crate::bundle::sharding::{AxisType, Mesh, NamedSharding};
use super::*;
use flatbuffers::{FlatBufferBuilder, ForwardsUOffset, WIPOffset};
use std::path::Path;

/// A fixture of tests/fixtures/make_exported_fixtures.py (JAX 0.10.2).
fn fixture(name: &str) -> Vec<u8> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/exported");
    std::fs::read(dir.join(format!("{name}.jaxexport"))).unwrap()
}

#[test]
fn bad_bytes_are_typed_errors() {
    for bad in [&b""[..], &b"\x00"[..], &[0u8; 4][..], &[0xffu8; 64][..], &b"hello, world, this is no flatbuffer"[..]] {
        let e = Exported::from_bytes(bad).unwrap_err();
        assert!(matches!(e, Error::InvalidFormat { .. }), "{e}");
    }
    // Pseudo-random bytes (a fixed xorshift stream).
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for len in [8usize, 64, 1000] {
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        assert!(Exported::from_bytes(&bytes).is_err());
    }
}

#[test]
fn every_truncation_and_byte_flip_is_an_error_or_a_parse() {
    for name in ["mixed", "ordered_effect", "legacy_in_avals"] {
        let good = fixture(name);
        let full = Exported::from_bytes(&good).unwrap();
        for n in 0..good.len() {
            // Only trailing padding may be cut and still parse, to the same value.
            if let Ok(e) = Exported::from_bytes(&good[..n]) {
                assert!(good.len() - n < 4 && e == full, "{name} cut at {n} parsed");
            }
        }
        let mut bytes = good.clone();
        for i in 0..bytes.len() {
            for mask in [0x01u8, 0x80, 0xff] {
                bytes[i] ^= mask;
                let _ = Exported::from_bytes(&bytes); // Must not panic.
                bytes[i] ^= mask;
            }
        }
    }
}

// Hand-built buffers, with the builder of the `flatbuffers` crate.

/// What a test buffer holds; `None` leaves a field out.
struct Spec {
    version: u16,
    calling_convention: u16,
    in_tree: Option<TestTree>,
    out_tree: TestTree,
    in_avals: Option<Vec<(i8, Vec<&'static str>)>>,
    unique_avals: Option<Vec<(i8, Vec<&'static str>)>>,
    in_idxs: Option<Vec<u32>>,
    out_avals: Vec<(i8, Vec<&'static str>)>,
    kept: Vec<u16>,
    platforms: Vec<&'static str>,
    module: Vec<u8>,
    nr_devices_short: Option<i16>,
    /// Written when `nr_devices_short` is not.
    nr_devices: u32,
    unique_meshes: Option<Vec<TestMesh>>,
    unique_shardings: Vec<TestSharding>,
    in_sharding_idxs: Option<Vec<u32>>,
    /// `jax_version` (serialization version 12 on).
    jax_version: Option<&'static str>,
}

#[derive(Clone)]
struct TestMesh {
    sizes: Vec<u32>,
    names: Vec<&'static str>,
    types: Vec<u8>,
}

#[derive(Clone)]
struct TestSharding {
    mesh_idx: u32,
    inline_mesh: Option<TestMesh>,
    /// `None` leaves the partition spec out.
    partitions: Option<Vec<Vec<&'static str>>>,
    unreduced: Vec<&'static str>,
    memory_kind: Option<&'static str>,
}

#[derive(Clone)]
enum TestTree {
    Node(i8, Vec<TestTree>, Option<Vec<&'static str>>),
}

fn leaf() -> TestTree {
    TestTree::Node(0, vec![], None)
}

fn tuple(c: Vec<TestTree>) -> TestTree {
    TestTree::Node(2, c, None)
}

fn dict(keys: Vec<&'static str>, c: Vec<TestTree>) -> TestTree {
    TestTree::Node(4, c, Some(keys))
}

/// `((x,), {})` with x: f32[2].
fn spec() -> Spec {
    Spec {
        version: 3,
        calling_convention: 10,
        in_tree: Some(tuple(vec![tuple(vec![leaf()]), dict(vec![], vec![])])),
        out_tree: leaf(),
        in_avals: Some(vec![(10, vec!["2"])]),
        unique_avals: None,
        in_idxs: None,
        out_avals: vec![(10, vec!["2"])],
        kept: vec![0],
        platforms: vec!["cpu"],
        module: b"ML\xefR...".to_vec(),
        nr_devices_short: None,
        nr_devices: 1,
        unique_meshes: None,
        unique_shardings: vec![],
        in_sharding_idxs: None,
        jax_version: None,
    }
}

/// A mesh of 4 devices along one Auto axis `x`.
fn mesh4() -> TestMesh {
    TestMesh { sizes: vec![4], names: vec!["x"], types: vec![1] }
}

/// `NamedSharding(mesh4, P('x'), memory_kind='device')`, as JAX writes it: index 0 into the
/// unique meshes, and the mesh inline too.
fn split_x() -> TestSharding {
    TestSharding {
        mesh_idx: 0,
        inline_mesh: Some(mesh4()),
        partitions: Some(vec![vec!["x"]]),
        unreduced: vec![],
        memory_kind: Some("device"),
    }
}

/// `spec()` on 4 devices, its argument (now f32[8]) split by `split_x()`.
fn sharded() -> Spec {
    Spec {
        in_avals: Some(vec![(10, vec!["8"])]),
        nr_devices: 4,
        unique_meshes: Some(vec![mesh4()]),
        unique_shardings: vec![split_x()],
        in_sharding_idxs: Some(vec![1]),
        ..spec()
    }
}

fn build_tree<'b>(b: &mut FlatBufferBuilder<'b>, t: &TestTree) -> WIPOffset<flatbuffers::TableFinishedWIPOffset> {
    let TestTree::Node(kind, children, names) = t;
    let cs: Vec<_> = children.iter().map(|c| build_tree(b, c)).collect();
    let cv = b.create_vector(&cs);
    let nv = names.as_ref().map(|n| {
        let ss: Vec<_> = n.iter().map(|s| b.create_string(s)).collect();
        b.create_vector(&ss)
    });
    let start = b.start_table();
    b.push_slot::<i8>(tree::KIND, *kind, 0);
    b.push_slot_always(tree::CHILDREN, cv);
    if let Some(nv) = nv {
        b.push_slot_always(tree::CHILDREN_NAMES, nv);
    }
    b.end_table(start)
}

fn build_avals<'b>(
    b: &mut FlatBufferBuilder<'b>,
    avals: &[(i8, Vec<&'static str>)],
) -> WIPOffset<flatbuffers::Vector<'b, ForwardsUOffset<flatbuffers::TableFinishedWIPOffset>>> {
    let ts: Vec<_> = avals
        .iter()
        .map(|(dtype, shape)| {
            let ss: Vec<_> = shape.iter().map(|s| b.create_string(s)).collect();
            let sv = b.create_vector(&ss);
            let start = b.start_table();
            b.push_slot::<i8>(aval::KIND, 0, 0);
            b.push_slot_always(aval::SHAPE, sv);
            b.push_slot::<i8>(aval::DTYPE, *dtype, -1);
            b.end_table(start)
        })
        .collect();
    b.create_vector(&ts)
}

type TableOffset = WIPOffset<flatbuffers::TableFinishedWIPOffset>;

fn build_strings<'b>(
    b: &mut FlatBufferBuilder<'b>,
    strings: &[&str],
) -> WIPOffset<flatbuffers::Vector<'b, ForwardsUOffset<&'b str>>> {
    let ss: Vec<_> = strings.iter().map(|s| b.create_string(s)).collect();
    b.create_vector(&ss)
}

fn build_mesh(b: &mut FlatBufferBuilder<'_>, m: &TestMesh) -> TableOffset {
    let sizes = b.create_vector(&m.sizes);
    let names = build_strings(b, &m.names);
    let types = (!m.types.is_empty()).then(|| b.create_vector(&m.types));
    let start = b.start_table();
    b.push_slot_always(mesh::AXIS_SIZES, sizes);
    b.push_slot_always(mesh::AXIS_NAMES, names);
    if let Some(t) = types {
        b.push_slot_always(mesh::AXIS_TYPES, t);
    }
    b.end_table(start)
}

fn build_sharding(b: &mut FlatBufferBuilder<'_>, s: &TestSharding) -> TableOffset {
    let inline_mesh = s.inline_mesh.as_ref().map(|m| build_mesh(b, m));
    let spec_table = s.partitions.as_ref().map(|parts| {
        let ps: Vec<_> = parts
            .iter()
            .map(|axes| {
                let av = build_strings(b, axes);
                let start = b.start_table();
                b.push_slot_always(spec_axis::AXES, av);
                b.end_table(start)
            })
            .collect();
        let pv = b.create_vector(&ps);
        let uv = build_strings(b, &s.unreduced);
        let start = b.start_table();
        b.push_slot_always(spec::PARTITIONS, pv);
        b.push_slot_always(spec::UNREDUCED, uv);
        b.end_table(start)
    });
    let memory_kind = s.memory_kind.map(|k| b.create_string(k));
    let start = b.start_table();
    if let Some(m) = inline_mesh {
        b.push_slot_always(named::MESH, m);
    }
    if let Some(t) = spec_table {
        b.push_slot_always(named::SPEC, t);
    }
    if let Some(k) = memory_kind {
        b.push_slot_always(named::MEMORY_KIND, k);
    }
    b.push_slot::<u32>(named::ABSTRACT_MESH_IDX, s.mesh_idx, 0);
    b.end_table(start)
}

fn build(s: &Spec) -> Vec<u8> {
    let mut b = FlatBufferBuilder::new();
    let name = b.create_string("f");
    let in_tree = s.in_tree.as_ref().map(|t| build_tree(&mut b, t));
    let out_tree = build_tree(&mut b, &s.out_tree);
    let in_avals = s.in_avals.as_ref().map(|a| build_avals(&mut b, a));
    let out_avals = build_avals(&mut b, &s.out_avals);
    let unique = s.unique_avals.as_ref().map(|a| build_avals(&mut b, a));
    let in_idxs = s.in_idxs.as_ref().map(|i| b.create_vector(i));
    let ps: Vec<_> = s.platforms.iter().map(|p| b.create_string(p)).collect();
    let platforms = b.create_vector(&ps);
    let module = b.create_vector(&s.module);
    let kept = b.create_vector(&s.kept);
    let meshes = s.unique_meshes.as_ref().map(|ms| {
        let ts: Vec<_> = ms.iter().map(|m| build_mesh(&mut b, m)).collect();
        b.create_vector(&ts)
    });
    let shardings: Vec<_> = s.unique_shardings.iter().map(|sh| build_sharding(&mut b, sh)).collect();
    let shardings = b.create_vector(&shardings);
    let sharding_idxs = s.in_sharding_idxs.as_ref().map(|i| b.create_vector(i));
    let jax_version = s.jax_version.map(|v| b.create_string(v));
    let start = b.start_table();
    b.push_slot::<u16>(ex::SERIALIZATION_VERSION, s.version, 0);
    b.push_slot_always(ex::FUNCTION_NAME, name);
    if let Some(t) = in_tree {
        b.push_slot_always(ex::IN_TREE, t);
    }
    b.push_slot_always(ex::OUT_TREE, out_tree);
    if let Some(a) = in_avals {
        b.push_slot_always(ex::IN_AVALS, a);
    }
    b.push_slot_always(ex::OUT_AVALS, out_avals);
    if let Some(u) = unique {
        b.push_slot_always(ex::UNIQUE_AVALS, u);
    }
    if let Some(i) = in_idxs {
        b.push_slot_always(ex::IN_AVALS_IDXS, i);
    }
    b.push_slot_always(ex::PLATFORMS, platforms);
    b.push_slot_always(ex::MLIR_MODULE_SERIALIZED, module);
    b.push_slot::<u16>(ex::CALLING_CONVENTION_VERSION, s.calling_convention, 0);
    b.push_slot_always(ex::MODULE_KEPT_VAR_IDX, kept);
    match s.nr_devices_short {
        Some(n) => b.push_slot::<i16>(ex::NR_DEVICES_SHORT, n, 0),
        None => b.push_slot::<u32>(ex::NR_DEVICES, s.nr_devices, 0),
    }
    if let Some(m) = meshes {
        b.push_slot_always(ex::UNIQUE_ABSTRACT_MESHES, m);
    }
    b.push_slot_always(ex::UNIQUE_NAMED_SHARDINGS, shardings);
    if let Some(i) = sharding_idxs {
        b.push_slot_always(ex::IN_SHARDINGS_IDXS, i);
    }
    if let Some(v) = jax_version {
        b.push_slot_always(ex::JAX_VERSION, v);
    }
    let root = b.end_table(start);
    b.finish_minimal(root);
    b.finished_data().to_vec()
}

fn reason(s: &Spec) -> String {
    match Exported::from_bytes(&build(s)) {
        Err(Error::InvalidFormat { reason, .. }) => reason,
        other => panic!("expected InvalidFormat, got {other:?}"),
    }
}

#[test]
fn hand_built_layouts() {
    // Inline avals.
    let e = Exported::from_bytes(&build(&spec())).unwrap();
    assert_eq!(e.in_avals, vec![Aval { dtype: DType::F32, shape: vec![2] }]);
    assert_eq!(e.nr_devices, 1);
    // Unique avals and indices only.
    let s = Spec {
        in_avals: None,
        unique_avals: Some(vec![(14, vec!["2"]), (10, vec!["2"])]),
        in_idxs: Some(vec![1]),
        ..spec()
    };
    assert_eq!(Exported::from_bytes(&build(&s)).unwrap().in_avals, e.in_avals);
    // Both, agreeing.
    let s = Spec { unique_avals: Some(vec![(10, vec!["2"])]), in_idxs: Some(vec![0]), ..spec() };
    assert_eq!(Exported::from_bytes(&build(&s)).unwrap().in_avals, e.in_avals);
    // The 16-bit device count of older writers.
    let s = Spec { nr_devices_short: Some(4), ..spec() };
    assert_eq!(Exported::from_bytes(&build(&s)).unwrap().nr_devices, 4);
    // Every supported version.
    for v in SUPPORTED_SERIALIZATION_VERSIONS {
        assert!(Exported::from_bytes(&build(&Spec { version: v, ..spec() })).is_ok());
    }
}

#[test]
fn version_12_carries_the_jax_version() {
    let e = Exported::from_bytes(&build(&Spec { version: 12, jax_version: Some("0.12.0.1"), ..spec() })).unwrap();
    assert_eq!((e.serialization_version, e.jax_version.as_deref()), (12, Some("0.12.0.1")));
    assert_eq!(e.in_avals, vec![Aval { dtype: DType::F32, shape: vec![2] }]);
    // Older writers have none.
    assert_eq!(Exported::from_bytes(&build(&spec())).unwrap().jax_version, None);
}

#[test]
fn a_real_jax_0_12_export() {
    // tests/fixtures/make_jax012_fixture.py: jit(f) of (f32[2,3], i32[4]) -> {"total", "y"}.
    let e = Exported::from_bytes(&fixture("jax012")).unwrap();
    assert_eq!((e.serialization_version, e.jax_version.as_deref()), (12, Some("0.12.0.1")));
    assert_eq!(e.in_avals, vec![Aval { dtype: DType::F32, shape: vec![2, 3] }, Aval { dtype: DType::I32, shape: vec![4] }]);
    assert_eq!(e.out_avals, vec![Aval { dtype: DType::I32, shape: vec![] }, Aval { dtype: DType::F32, shape: vec![2, 3] }]);
    assert_eq!(e.out_tree.leaf_paths("outputs"), vec!["total".to_string(), "y".to_string()]);
    assert_eq!(e.calling_convention_version, 10);
}

#[test]
fn a_newer_jax_is_named_with_what_to_do() {
    let e = Exported::from_bytes(&build(&Spec { version: 13, jax_version: Some("0.13.1"), ..spec() })).unwrap_err();
    let Error::UnsupportedSerialization { version, jax_version, supported, .. } = &e else { panic!("{e:?}") };
    assert_eq!((*version, jax_version.as_deref(), supported.clone()), (13, Some("0.13.1"), 2..=12));
    let text = e.to_string();
    for want in ["serialization version 13", "written by jax 0.13.1", "2..=12", "update flaxlayer", "export the bundle again"] {
        assert!(text.contains(want), "{want:?} not in {text}");
    }
    // Control characters in the version string are not echoed.
    let e = Exported::from_bytes(&build(&Spec { version: 99, jax_version: Some("9\u{1b}[2J.0"), ..spec() })).unwrap_err();
    assert!(e.to_string().contains("written by jax 9[2J.0"), "{e}");
}

#[test]
fn hand_built_errors() {
    let r = Exported::from_bytes(&build(&Spec { version: 1, ..spec() })).unwrap_err().to_string();
    assert!(r.contains("serialization version 1 ") && r.contains("2..=12") && r.contains("older"), "{r}");
    let r = reason(&Spec { calling_convention: 8, ..spec() });
    assert!(r.contains("calling convention version 8"), "{r}");
    let r = reason(&Spec { in_tree: None, ..spec() });
    assert!(r.contains("missing in_tree"), "{r}");
    let r = reason(&Spec { unique_avals: Some(vec![(11, vec!["2"])]), in_idxs: Some(vec![0]), ..spec() });
    assert!(r.contains("disagree"), "{r}");
    let r =
        reason(&Spec { in_avals: None, unique_avals: Some(vec![(10, vec!["2"])]), in_idxs: Some(vec![1]), ..spec() });
    assert!(r.contains("in_avals_idxs[0] is 1"), "{r}");
    let r = reason(&Spec { in_avals: Some(vec![]), ..spec() });
    assert!(r.contains("in_tree has 1 leaves but there are 0 in_avals"), "{r}");
    let r = reason(&Spec { kept: vec![1], ..spec() });
    assert!(r.contains("module_kept_var_idx has 1"), "{r}");
    let two = Spec {
        in_tree: Some(tuple(vec![tuple(vec![leaf(), leaf()]), dict(vec![], vec![])])),
        in_avals: Some(vec![(10, vec!["2"]), (10, vec!["2"])]),
        kept: vec![1, 0],
        ..spec()
    };
    assert!(reason(&two).contains("strictly increasing"));
    let r = reason(&Spec { platforms: vec![], ..spec() });
    assert!(r.contains("no platforms"), "{r}");
    let r = reason(&Spec { module: vec![], ..spec() });
    assert!(r.contains("MLIR module"), "{r}");
    let r = reason(&Spec { nr_devices_short: Some(-1), ..spec() });
    assert!(r.contains("negative"), "{r}");
    let r = reason(&Spec { in_avals: Some(vec![(10, vec!["-3"])]), ..spec() });
    assert!(r.contains("negative dimension -3"), "{r}");
    let r = reason(&Spec { in_avals: Some(vec![(10, vec!["2*b"])]), ..spec() });
    assert!(r.contains("symbolic"), "{r}");
    // Trees: unsorted keys, key/child count, leaf with children, custom and unknown nodes,
    // and an in_tree that is not (args, kwargs).
    let in_tree = |t: TestTree| Some(tuple(vec![tuple(vec![t]), dict(vec![], vec![])]));
    let r = reason(&Spec {
        in_tree: in_tree(dict(vec!["b", "a"], vec![leaf(), TestTree::Node(1, vec![], None)])),
        ..spec()
    });
    assert!(r.contains("out of order") && r.contains("0/0"), "{r}");
    let r = reason(&Spec {
        in_tree: in_tree(dict(vec!["a", "a"], vec![leaf(), TestTree::Node(1, vec![], None)])),
        ..spec()
    });
    assert!(r.contains("repeated"), "{r}");
    let r = reason(&Spec { in_tree: in_tree(dict(vec!["a", "b"], vec![leaf()])), ..spec() });
    assert!(r.contains("2 keys for 1 children"), "{r}");
    let r = reason(&Spec { in_tree: in_tree(TestTree::Node(0, vec![leaf()], None)), ..spec() });
    assert!(r.contains("leaf at 0/0 has 1 children"), "{r}");
    let r = reason(&Spec { in_tree: in_tree(TestTree::Node(5, vec![leaf()], None)), ..spec() });
    assert!(r.contains("custom node"), "{r}");
    let r = reason(&Spec { in_tree: in_tree(TestTree::Node(9, vec![leaf()], None)), ..spec() });
    assert!(r.contains("unknown kind 9"), "{r}");
    let r = reason(&Spec { in_tree: Some(tuple(vec![leaf()])), ..spec() });
    assert!(r.contains("not (args, kwargs)"), "{r}");
    // Deep nesting.
    let mut deep = leaf();
    for _ in 0..200 {
        deep = tuple(vec![deep]);
    }
    assert!(Exported::from_bytes(&build(&Spec { in_tree: in_tree(deep), ..spec() })).is_err());
    // Unsupported dtypes.
    for (code, name) in [(12i8, "complex64"), (18, "float8_e4m3fn"), (22, "float0"), (29, "safe_rbg>"), (99, "99")] {
        match Exported::from_bytes(&build(&Spec { in_avals: Some(vec![(code, vec!["2"])]), ..spec() })) {
            Err(Error::UnsupportedDType(s)) => assert!(s.contains(name), "{s}"),
            other => panic!("{code}: {other:?}"),
        }
    }
}

#[test]
fn hand_built_shardings() {
    let e = Exported::from_bytes(&build(&sharded())).unwrap();
    let want = NamedSharding {
        mesh: Mesh { axis_names: vec!["x".into()], axis_sizes: vec![4], axis_types: vec![AxisType::Auto] },
        spec: vec![vec!["x".into()]],
        memory_kind: Some("device".into()),
    };
    assert_eq!(e.in_shardings, vec![Some(want.clone())]);
    assert_eq!(e.out_shardings, vec![None], "none recorded: unspecified");
    // Index 0: unspecified.
    let e = Exported::from_bytes(&build(&Spec { in_sharding_idxs: Some(vec![0]), ..sharded() })).unwrap();
    assert_eq!(e.in_shardings, vec![None]);
    // The inline mesh alone (no unique meshes), without axis types: Auto.
    let inline_only = TestSharding { inline_mesh: Some(TestMesh { types: vec![], ..mesh4() }), ..split_x() };
    let s = Spec { unique_meshes: None, unique_shardings: vec![inline_only], ..sharded() };
    assert_eq!(Exported::from_bytes(&build(&s)).unwrap().in_shardings, vec![Some(want.clone())]);
    // The unique mesh alone; an Explicit axis; no memory kind; a dimension not split.
    let s = Spec {
        in_avals: Some(vec![(10, vec!["8", "3"])]),
        unique_meshes: Some(vec![TestMesh { types: vec![2], ..mesh4() }]),
        unique_shardings: vec![TestSharding {
            inline_mesh: None,
            partitions: Some(vec![vec!["x"], vec![]]),
            memory_kind: None,
            ..split_x()
        }],
        ..sharded()
    };
    let got = Exported::from_bytes(&build(&s)).unwrap().in_shardings.remove(0).unwrap();
    assert_eq!(got.mesh.axis_types, [AxisType::Explicit]);
    assert_eq!((got.spec, got.memory_kind), (vec![vec!["x".to_string()], vec![]], None));
}

#[test]
fn hand_built_sharding_errors() {
    let with = |sh: TestSharding| Spec { unique_shardings: vec![sh], ..sharded() };
    let cases: Vec<(Spec, &str)> = vec![
        (
            Spec { in_sharding_idxs: Some(vec![2]), ..sharded() },
            "in_shardings_idxs[0] is 2, past the 1 unique named shardings",
        ),
        (Spec { in_sharding_idxs: Some(vec![1, 1]), ..sharded() }, "there are 2 in_shardings for 1 in_avals"),
        (Spec { nr_devices: 2, ..sharded() }, "in_shardings[0] is over a mesh of 4 devices, but the module is for 2"),
        (
            Spec { in_avals: Some(vec![(10, vec![])]), ..sharded() },
            "in_shardings[0] splits 1 dimensions of in_avals[0], a float32[]",
        ),
        (with(TestSharding { partitions: Some(vec![vec!["y"]]), ..split_x() }), "\"y\", which is not in the mesh"),
        (
            with(TestSharding { partitions: Some(vec![vec!["x"], vec!["x"]]), ..split_x() }),
            "names mesh axis \"x\" twice",
        ),
        (with(TestSharding { partitions: None, ..split_x() }), "unique_named_shardings[0] has no partition spec"),
        (with(TestSharding { unreduced: vec!["x"], ..split_x() }), "unreduced over mesh axes [\"x\"]"),
        (with(TestSharding { mesh_idx: 3, ..split_x() }), "mesh index 3, past the 1 unique abstract meshes"),
        (with(TestSharding { inline_mesh: Some(TestMesh { sizes: vec![2], ..mesh4() }), ..split_x() }), "disagree"),
        (
            Spec {
                unique_meshes: None,
                unique_shardings: vec![TestSharding { inline_mesh: None, ..split_x() }],
                ..sharded()
            },
            "has no mesh",
        ),
        (
            Spec { unique_meshes: Some(vec![TestMesh { types: vec![3], ..mesh4() }]), ..sharded() },
            "unique_abstract_meshes[0]: mesh axis \"x\" is Manual",
        ),
        (
            Spec { unique_meshes: Some(vec![TestMesh { types: vec![0], ..mesh4() }]), ..sharded() },
            "unknown axis type 0",
        ),
        (
            Spec { unique_meshes: Some(vec![TestMesh { names: vec!["x", "y"], ..mesh4() }]), ..sharded() },
            "2 axis names, 1 sizes and 1 types",
        ),
        (
            Spec { unique_meshes: Some(vec![TestMesh { sizes: vec![0], ..mesh4() }]), ..sharded() },
            "axis \"x\" has size 0",
        ),
        (
            Spec {
                unique_meshes: Some(vec![TestMesh {
                    sizes: vec![1 << 16, 1 << 16],
                    names: vec!["x", "y"],
                    types: vec![1, 1],
                }]),
                ..sharded()
            },
            "make more than 1048576 devices",
        ),
    ];
    for (spec, want) in cases {
        let r = reason(&spec);
        assert!(r.contains(want), "{want:?} not in {r:?}");
    }
}

#[test]
fn sharded_fixture_truncations_and_byte_flips() {
    let good = fixture("sharded_1d");
    let full = Exported::from_bytes(&good).unwrap();
    assert!(full.in_shardings[0].is_some());
    for n in 0..good.len() {
        if let Ok(e) = Exported::from_bytes(&good[..n]) {
            assert!(good.len() - n < 4 && e == full, "cut at {n} parsed");
        }
    }
    let mut bytes = good.clone();
    for i in 0..bytes.len() {
        for mask in [0x01u8, 0x80, 0xff] {
            bytes[i] ^= mask;
            if let Ok(e) = Exported::from_bytes(&bytes) {
                // Whatever parses has shardings that tile their avals or say why not.
                for (s, a) in e.in_shardings.iter().zip(&e.in_avals).chain(e.out_shardings.iter().zip(&e.out_avals)) {
                    if let Some(s) = s {
                        let _ = s.tiling(&a.shape);
                    }
                }
            }
            bytes[i] ^= mask;
        }
    }
}

#[test]
fn shardings_shared_by_index_have_a_memory_bound() {
    // One sharding with a 1 MiB axis name, referred to by 150 arguments: over 256 MiB decoded.
    let name: &'static str = Box::leak("x".repeat(1 << 20).into_boxed_str());
    let mesh = TestMesh { names: vec![name], ..mesh4() };
    let big = TestSharding { inline_mesh: Some(mesh.clone()), partitions: Some(vec![vec![name]]), ..split_x() };
    let n = 150;
    let s = Spec {
        in_tree: Some(tuple(vec![tuple(vec![leaf(); n]), dict(vec![], vec![])])),
        in_avals: Some(vec![(10, vec!["8"]); n]),
        kept: vec![],
        unique_meshes: Some(vec![mesh]),
        unique_shardings: vec![big],
        in_sharding_idxs: Some(vec![1; n]),
        ..sharded()
    };
    let r = reason(&s);
    assert!(r.contains("expand to more than 268435456 bytes"), "{r}");
}
