//! One exported function as `jax.export.Exported.serialize()` stores it: [`Exported`] and
//! its avals ([`TensorSpec`]s in the public API).
//!
//! The format is JAX's flatbuffer (schema `jax_export.fbs`, a copy of JAX's
//! `jax/_src/export/serialization.fbs`); `decode.rs` reads it, through `jax_schema.rs` (the
//! fields' offsets and verifier) and `flatbuf.rs` (a bounds-checked reader), and holds
//! [`Exported::from_bytes`] and [`Exported::read`].

use std::ops::RangeInclusive;

use super::sharding::NamedSharding;
use crate::pytree::TreeDef;
use crate::{DType, Error, Result, TensorSpec};

/// The values of the `serialization_version` field this reader accepts. JAX's own readers
/// accepted 2 and 3 before 11/2025; JAX 0.10.x writes 3 while its format is at version 11,
/// JAX 0.12 writes 12 (which only adds `jax_version`). Every version in the range is a
/// backwards-compatible extension of version 2 for the fields read here. A newer version is
/// an [`crate::Error::UnsupportedSerialization`] naming the JAX that wrote it.
pub const SUPPORTED_SERIALIZATION_VERSIONS: RangeInclusive<u16> = 2..=12;

/// The calling conventions of the serialized module that this crate can call: the ones
/// current JAX can call (`jax._src.export._export`, minimum and maximum supported).
pub const SUPPORTED_CALLING_CONVENTIONS: RangeInclusive<u32> = 9..=10;

/// The shape and dtype of one flat argument or result, as decoded (the public face of an aval
/// is a [`TensorSpec`]: [`Exported::in_avals`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Aval {
    /// The element type.
    pub dtype: DType,
    /// The dimensions (concrete: symbolic dimensions are refused when parsed).
    pub shape: Vec<usize>,
}

impl Aval {
    /// This aval named: the spec of a leaf.
    pub fn spec(&self, name: impl Into<String>) -> TensorSpec {
        TensorSpec::new(name, self.dtype, self.shape.clone())
    }
}

impl std::fmt::Display for Aval {
    /// `float32[2,3]`, as JAX prints a `ShapedArray`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let dims: Vec<String> = self.shape.iter().map(|d| d.to_string()).collect();
        write!(f, "{}[{}]", self.dtype, dims.join(","))
    }
}

/// One exported function, as `jax.export.deserialize` would see it.
///
/// Calling convention of [`Exported::mlir_module`]'s `main` (versions 9 and 10):
/// arguments are the platform index (an `int32` scalar, only when there is more than one
/// platform), then one `!stablehlo.token` per ordered effect, then the array arguments at
/// the indices [`Exported::module_kept_var_idx`] of `in_avals`; results are one token per
/// ordered effect, then `out_avals`.
#[derive(Debug, Clone, PartialEq)]
pub struct Exported {
    /// The `serialization_version` field as stored (JAX writes 3 for its format version 11).
    pub(crate) serialization_version: u16,
    /// The version of the JAX that serialized it (`jax_version`, serialization version 12
    /// and later; `None` before).
    pub(crate) jax_version: Option<String>,
    /// The exported function's name (`fun_name`).
    pub(crate) function_name: String,
    /// The structure of `(args, kwargs)`: a tuple of the args tuple and the kwargs dict.
    pub(crate) in_tree: TreeDef,
    /// The structure of the results.
    pub(crate) out_tree: TreeDef,
    /// One per leaf of `in_tree`, in flatten order.
    pub(crate) in_avals: Vec<Aval>,
    /// One per leaf of `out_tree`, in flatten order.
    pub(crate) out_avals: Vec<Aval>,
    /// How each of `in_avals` is split over the devices; `None`: unspecified (left to XLA).
    pub(crate) in_shardings: Vec<Option<NamedSharding>>,
    /// How each of `out_avals` is split over the devices; `None`: unspecified.
    pub(crate) out_shardings: Vec<Option<NamedSharding>>,
    /// The platforms the module was lowered for, in the order of the platform index.
    pub(crate) platforms: Vec<String>,
    /// The sorted indices of the `in_avals` that the module takes; the others are unused.
    pub(crate) module_kept_var_idx: Vec<usize>,
    /// The type names of the ordered effects (`str(effect.__class__)`).
    pub(crate) ordered_effects: Vec<String>,
    /// The type names of the unordered effects.
    pub(crate) unordered_effects: Vec<String>,
    /// The safety checks disabled at export: `platform`, `shape_assertions`,
    /// `custom_call:<target>`.
    pub(crate) disabled_checks: Vec<String>,
    /// The number of devices the module was lowered for (every sharding's mesh has as many).
    pub(crate) nr_devices: u32,
    /// The calling convention version of the module.
    pub(crate) calling_convention_version: u32,
    /// Whether the module uses global constants (the platform index, or dimension
    /// variables), which need StableHLO shape refinement before compilation.
    pub(crate) uses_global_constants: bool,
    /// Whether a vjp export is serialized along (it is not read).
    pub(crate) has_vjp: bool,
    /// The module: a StableHLO portable artifact (MLIR bytecode of the VHLO dialect).
    pub(crate) mlir_module: Vec<u8>,
}

impl Exported {
    /// The `serialization_version` field as stored (JAX writes 3 for its format version 11).
    pub fn serialization_version(&self) -> u16 {
        self.serialization_version
    }

    /// The version of the JAX that serialized it (`jax_version`, serialization version 12
    /// and later; `None` before).
    pub fn jax_version(&self) -> Option<&str> {
        self.jax_version.as_deref()
    }

    /// The exported function's name (`fun_name`).
    pub fn function_name(&self) -> &str {
        &self.function_name
    }

    /// The structure of `(args, kwargs)`: a tuple of the args tuple and the kwargs dict.
    pub fn in_tree(&self) -> &TreeDef {
        &self.in_tree
    }

    /// The structure of the results.
    pub fn out_tree(&self) -> &TreeDef {
        &self.out_tree
    }

    /// One spec per leaf of `in_tree`, in flatten order, named `in_avals[i]`.
    pub fn in_avals(&self) -> Vec<TensorSpec> {
        self.in_avals.iter().enumerate().map(|(i, a)| a.spec(format!("in_avals[{i}]"))).collect()
    }

    /// One spec per leaf of `out_tree`, in flatten order, named `out_avals[i]`.
    pub fn out_avals(&self) -> Vec<TensorSpec> {
        self.out_avals.iter().enumerate().map(|(i, a)| a.spec(format!("out_avals[{i}]"))).collect()
    }

    /// How each of `in_avals` is split over the devices; `None`: unspecified (left to XLA).
    pub fn in_shardings(&self) -> &[Option<NamedSharding>] {
        &self.in_shardings
    }

    /// How each of `out_avals` is split over the devices; `None`: unspecified.
    pub fn out_shardings(&self) -> &[Option<NamedSharding>] {
        &self.out_shardings
    }

    /// The platforms the module was lowered for, in the order of the platform index.
    pub fn platforms(&self) -> &[String] {
        &self.platforms
    }

    /// The sorted indices of the `in_avals` that the module takes; the others are unused.
    pub fn module_kept_var_idx(&self) -> &[usize] {
        &self.module_kept_var_idx
    }

    /// The type names of the ordered effects (`str(effect.__class__)`).
    pub fn ordered_effects(&self) -> &[String] {
        &self.ordered_effects
    }

    /// The type names of the unordered effects.
    pub fn unordered_effects(&self) -> &[String] {
        &self.unordered_effects
    }

    /// The safety checks disabled at export: `platform`, `shape_assertions`,
    /// `custom_call:<target>`.
    pub fn disabled_checks(&self) -> &[String] {
        &self.disabled_checks
    }

    /// The number of devices the module was lowered for (every sharding's mesh has as many).
    pub fn nr_devices(&self) -> u32 {
        self.nr_devices
    }

    /// The calling convention version of the module.
    pub fn calling_convention_version(&self) -> u32 {
        self.calling_convention_version
    }

    /// Whether the module uses global constants (the platform index, or dimension
    /// variables), which need StableHLO shape refinement before compilation.
    pub fn uses_global_constants(&self) -> bool {
        self.uses_global_constants
    }

    /// Whether a vjp export is serialized along (it is not read).
    pub fn has_vjp(&self) -> bool {
        self.has_vjp
    }

    /// The module: a StableHLO portable artifact (MLIR bytecode of the VHLO dialect).
    pub fn mlir_module(&self) -> &[u8] {
        &self.mlir_module
    }
}

impl Exported {
    /// Whether the module's first argument is the platform index.
    pub fn has_platform_index_arg(&self) -> bool {
        self.platforms.len() > 1
    }

    /// The platform index to pass for `platform` (a name as JAX spells it: `cpu`, `cuda`,
    /// `rocm`, `tpu`; a PJRT client's `gpu` counts as `cuda`), if the module was lowered for it.
    pub fn platform_index(&self, platform: &str) -> Option<usize> {
        let same = |p: &str| {
            p.eq_ignore_ascii_case(platform)
                || (p.eq_ignore_ascii_case("cuda") && platform.eq_ignore_ascii_case("gpu"))
                || (p.eq_ignore_ascii_case("gpu") && platform.eq_ignore_ascii_case("cuda"))
        };
        self.platforms.iter().position(|p| same(p))
    }

    /// The avals of the arguments the module takes, in order.
    #[cfg(test)]
    pub(crate) fn kept_in_avals(&self) -> Vec<&Aval> {
        self.module_kept_var_idx.iter().filter_map(|&i| self.in_avals.get(i)).collect()
    }

    /// The arguments `main` takes on one device, as an executable's input signature
    /// ([`LoadedExecutable::with_input_signature`](crate::pjrt::LoadedExecutable::with_input_signature)):
    /// the platform index (`int32[]`) when the module has one, then the kept avals. A module
    /// with ordered effects (token arguments) has none that buffers can match: an error.
    pub fn input_signature(&self) -> Result<Vec<TensorSpec>> {
        if !self.ordered_effects.is_empty() {
            return Err(Error::invalid("exported module", "it takes effect tokens, which no buffer signature describes"));
        }
        let platform = self.has_platform_index_arg().then(|| TensorSpec::new("platform index", DType::I32, vec![]));
        let kept = self.module_kept_var_idx.iter().filter_map(|&i| self.in_avals.get(i).map(|a| a.spec(format!("in_avals[{i}]"))));
        Ok(platform.into_iter().chain(kept).collect())
    }

    /// How many arguments `main` takes: platform index, effect tokens, kept arrays.
    pub fn num_module_args(&self) -> usize {
        usize::from(self.has_platform_index_arg()) + self.ordered_effects.len() + self.module_kept_var_idx.len()
    }

    /// How many results `main` returns: effect tokens, then arrays.
    pub fn num_module_results(&self) -> usize {
        self.ordered_effects.len() + self.out_avals.len()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use std::path::PathBuf;

    // Fixtures from tests/fixtures/make_exported_fixtures.py (JAX 0.10.2).

    fn fixture_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/exported")
    }

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(fixture_dir().join(format!("{name}.jaxexport"))).unwrap()
    }

    fn expected() -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(fixture_dir().join("expected.json")).unwrap()).unwrap()
    }

    const PARSEABLE: [&str; 9] = [
        "mixed",
        "bare_with_vjp",
        "multi_platform",
        "ordered_effect",
        "legacy_in_avals",
        "idxs_only",
        "sharded_1d",
        "sharded_2x2",
        "sharded_permuted",
    ];

    fn strings(v: &serde_json::Value) -> Vec<String> {
        v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
    }

    fn avals(v: &serde_json::Value) -> Vec<Aval> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|a| Aval {
                dtype: a["dtype"].as_str().unwrap().parse().unwrap(),
                shape: a["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect(),
            })
            .collect()
    }

    #[test]
    fn fixtures_match_jax() {
        let all = expected();
        for name in PARSEABLE {
            let want = &all[name];
            let e = Exported::from_bytes(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(u64::from(e.serialization_version), want["serialization_version_field"].as_u64().unwrap(), "{name}");
            assert_eq!(e.function_name, want["function_name"].as_str().unwrap(), "{name}");
            assert_eq!(e.in_tree.to_string(), want["in_tree"].as_str().unwrap(), "{name}");
            assert_eq!(e.out_tree.to_string(), want["out_tree"].as_str().unwrap(), "{name}");
            assert_eq!(e.in_avals, avals(&want["in_avals"]), "{name}");
            assert_eq!(e.out_avals, avals(&want["out_avals"]), "{name}");
            assert_eq!(e.in_tree.leaf_paths("inputs"), strings(&want["in_leaf_paths"]), "{name}");
            assert_eq!(e.out_tree.leaf_paths("outputs"), strings(&want["out_leaf_paths"]), "{name}");
            let kept: Vec<usize> =
                want["module_kept_var_idx"].as_array().unwrap().iter().map(|i| i.as_u64().unwrap() as usize).collect();
            assert_eq!(e.module_kept_var_idx, kept, "{name}");
            assert_eq!(e.platforms, strings(&want["platforms"]), "{name}");
            assert_eq!(u64::from(e.nr_devices), want["nr_devices"].as_u64().unwrap(), "{name}");
            assert_eq!(u64::from(e.calling_convention_version), want["calling_convention_version"].as_u64().unwrap());
            assert_eq!(e.uses_global_constants, want["uses_global_constants"].as_bool().unwrap(), "{name}");
            assert_eq!(e.ordered_effects, strings(&want["ordered_effects"]), "{name}");
            assert_eq!(e.unordered_effects, strings(&want["unordered_effects"]), "{name}");
            assert_eq!(e.disabled_checks.len(), want["disabled_checks"].as_array().unwrap().len(), "{name}");
            assert_eq!(e.has_vjp, want["has_vjp"].as_bool().unwrap(), "{name}");
            assert_eq!(e.mlir_module.len() as u64, want["mlir_module_len"].as_u64().unwrap(), "{name}");
        }
    }

    #[test]
    fn mixed_fixture_details() {
        let e = Exported::from_bytes(&fixture("mixed")).unwrap();
        let (args, kwargs) = e.in_tree.args_kwargs().unwrap();
        assert_eq!(args.child_nodes().len(), 4);
        assert_eq!(kwargs.keys().unwrap(), &["scale".to_string()]);
        // The unused argument (index 5, f32[4]) is dropped from the module.
        assert_eq!(e.module_kept_var_idx, vec![0, 1, 2, 3, 4, 6]);
        assert_eq!(e.kept_in_avals().len(), 6);
        assert!(!e.has_platform_index_arg());
        assert_eq!(e.num_module_args(), 6);
        assert_eq!(e.num_module_results(), 3);
        assert_eq!(e.in_avals[0].to_string(), "bfloat16[3]");
        // The StableHLO portable artifact is MLIR bytecode.
        assert_eq!(&e.mlir_module[..4], b"ML\xefR");
        // The three layouts of the same export parse to the same thing.
        for other in ["legacy_in_avals", "idxs_only"] {
            let o = Exported::from_bytes(&fixture(other)).unwrap();
            assert_eq!(Exported { serialization_version: e.serialization_version, ..o }, e, "{other}");
        }
    }

    #[test]
    fn multi_platform_and_effects() {
        let e = Exported::from_bytes(&fixture("multi_platform")).unwrap();
        assert!(e.has_platform_index_arg());
        assert_eq!(e.platform_index("cuda"), Some(1));
        assert_eq!(e.platform_index("CPU"), Some(0));
        assert_eq!(e.platform_index("tpu"), None);
        assert_eq!(e.platform_index("gpu"), Some(1), "a PJRT GPU client's name");
        assert_eq!(e.num_module_args(), 2);
        let e = Exported::from_bytes(&fixture("ordered_effect")).unwrap();
        assert_eq!(e.ordered_effects.len(), 1);
        assert_eq!(e.num_module_args(), 2);
        assert_eq!(e.num_module_results(), 2);
    }

    #[test]
    fn refuses_symbolic_dims_and_key_dtypes() {
        let e = Exported::from_bytes(&fixture("symbolic")).unwrap_err();
        assert!(matches!(&e, Error::InvalidFormat { reason, .. } if reason.contains("symbolic dimension \"b\"")), "{e}");
        let e = Exported::from_bytes(&fixture("typed_key")).unwrap_err();
        assert!(matches!(&e, Error::UnsupportedDType(s) if s.contains("key<fry>") && s.contains("in_avals[0]")), "{e}");
    }

    #[test]
    fn read_names_the_path() {
        let e = Exported::read(fixture_dir().join("mixed.jaxexport")).unwrap();
        assert_eq!(e.function_name, "mixed_fn");
        let e = Exported::read(fixture_dir().join("symbolic.jaxexport")).unwrap_err();
        assert!(matches!(&e, Error::InvalidFormat { what, .. } if what.ends_with("symbolic.jaxexport")), "{e}");
        assert!(matches!(Exported::read(fixture_dir().join("nope.jaxexport")), Err(Error::Io { .. })));
    }

    fn usizes(v: &serde_json::Value) -> Vec<usize> {
        v.as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect()
    }

    /// Compares one sharding with JAX's description of it (`null`: unspecified), including
    /// JAX's tiling and shard shape of the aval's shape, and whether JAX refuses a shape one
    /// bigger in every dimension as unevenly split.
    fn check_sharding(got: &Option<NamedSharding>, want: &serde_json::Value, at: &str) {
        let Some(s) = got else {
            assert!(want.is_null(), "{at}: unspecified, JAX has {want}");
            return;
        };
        assert_eq!(s.mesh.axis_names, strings(&want["axis_names"]), "{at}");
        assert_eq!(s.mesh.axis_sizes, usizes(&want["axis_sizes"]), "{at}");
        let types: Vec<String> = s.mesh.axis_types.iter().map(|t| format!("{t:?}")).collect();
        assert_eq!(types, strings(&want["axis_types"]), "{at}");
        let spec: Vec<Vec<String>> = want["spec"].as_array().unwrap().iter().map(strings).collect();
        assert_eq!(s.spec, spec, "{at}");
        assert_eq!(s.memory_kind.as_deref(), want["memory_kind"].as_str(), "{at}");
        let shape = usizes(&want["shape"]);
        assert_eq!(s.shard_shape(&shape).unwrap(), usizes(&want["shard_shape"]), "{at}");
        let tiling: Vec<Vec<Vec<usize>>> = s
            .tiling(&shape)
            .unwrap()
            .iter()
            .map(|d| d.ranges.iter().map(|r| vec![r.start, r.end]).collect())
            .collect();
        let jax: Vec<Vec<Vec<usize>>> =
            want["tiling"].as_array().unwrap().iter().map(|d| d.as_array().unwrap().iter().map(usizes).collect()).collect();
        assert_eq!(tiling, jax, "{at}");
        let bigger = s.tiling(&usizes(&want["bigger_shape"]));
        assert_eq!(bigger.is_err(), want["bigger_shape_indivisible"].as_bool().unwrap(), "{at}: {bigger:?}");
        assert!(bigger.is_ok() || matches!(bigger, Err(Error::InvalidArgument { .. })), "{at}");
    }

    #[test]
    fn shardings_match_jax() {
        let all = expected();
        let mut sharded = 0;
        for name in PARSEABLE {
            let want = &all[name];
            let e = Exported::from_bytes(&fixture(name)).unwrap();
            assert_eq!(e.in_shardings.len(), e.in_avals.len(), "{name}");
            assert_eq!(e.out_shardings.len(), e.out_avals.len(), "{name}");
            for (side, got, key) in [("in", &e.in_shardings, "in_shardings"), ("out", &e.out_shardings, "out_shardings")] {
                match want.get(key) {
                    // Not sharded: every sharding is unspecified.
                    None => assert!(got.iter().all(Option::is_none), "{name} {side}: {got:?}"),
                    Some(w) => {
                        let w = w.as_array().unwrap();
                        assert_eq!(got.len(), w.len(), "{name} {side}");
                        for (i, (g, w)) in got.iter().zip(w).enumerate() {
                            check_sharding(g, w, &format!("{name} {side}_shardings[{i}]"));
                            sharded += usize::from(g.is_some());
                        }
                    }
                }
            }
        }
        assert_eq!(sharded, 16, "sharded arguments and results in the fixtures");
        // The permuted mesh: devices are numbered by position in the mesh, not by id.
        let e = Exported::from_bytes(&fixture("sharded_permuted")).unwrap();
        assert_eq!(e.nr_devices, 4);
        let s = e.in_shardings[0].as_ref().unwrap();
        assert_eq!((s.mesh.axis_sizes.as_slice(), s.spec.as_slice()), (&[2, 1, 2][..], &[vec!["a".to_string(), "c".to_string()]][..]));
    }

    #[test]
    fn refuses_shardings_it_cannot_honour() {
        let e = Exported::read(fixture_dir().join("hlo_sharding.jaxexport")).unwrap_err();
        assert!(
            matches!(&e, Error::InvalidFormat { what, reason } if what.ends_with("hlo_sharding.jaxexport")
                && reason.contains("in_shardings[0] is an XLA HloSharding proto")
                && reason.contains("older JAX") && reason.contains("re-export with jax 0.10.2")),
            "{e}"
        );
        let e = Exported::from_bytes(&fixture("manual_axis")).unwrap_err();
        assert!(matches!(&e, Error::InvalidFormat { reason, .. } if reason.contains("mesh axis \"data\" is Manual")), "{e}");
        let e = Exported::from_bytes(&fixture("unreduced")).unwrap_err();
        assert!(matches!(&e, Error::InvalidFormat { reason, .. } if reason.contains("unreduced over mesh axes [\"model\"]")), "{e}");
    }
}
