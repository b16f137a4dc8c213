//! The schema of `jax.export` serializations: vtable offsets and verifier of the fields read.
//!
//! The schema is JAX's `jax/_src/export/serialization.fbs`; our copy is `jax_export.fbs`
//! beside this file. A field's vtable offset is 4 + 2 × its index in its table there; the
//! offsets below are written by hand, and `offsets_agree_with_the_schema` checks each one
//! against the `.fbs`, so the two cannot drift apart.
//!
//! Why not generate the reader: `flatc --rust` and planus (1.2, 1.3) both emit `unsafe`
//! code (`unsafe impl Primitive`, unchecked vector reads, builders), and all of this crate's
//! `unsafe` stays in `src/pjrt/` (`#![deny(unsafe_code)]` elsewhere). The few fields read
//! here go through the `flatbuffers` crate's verifier ([`verify`], with a schema type per
//! table that visits exactly the fields read) and then the safe reader of `flatbuf.rs`.

use flatbuffers::{ForwardsUOffset, InvalidFlatbuffer, Verifiable, Verifier, VerifierOptions};

/// Declares, per table, a module of the vtable offsets of the fields read, and (for the
/// schema test) the table's name in the `.fbs` and the list of its fields.
macro_rules! schema {
    ($($(#[$doc:meta])* $module:ident = $table:literal { $($field:ident = $voff:literal,)* })*) => {
        $(
            $(#[$doc])*
            pub(super) mod $module {
                $(pub(crate) const $field: u16 = $voff;)*
            }
        )*
        /// Each table: its name in the `.fbs`, and its fields read with their vtable offsets.
        #[cfg(test)]
        const TABLES: &[(&str, &[(&str, u16)])] = &[$(($table, &[$((stringify!($field), $voff),)*]),)*];
    };
}

schema! {
    /// `Exported`, the root.
    ex = "Exported" {
        SERIALIZATION_VERSION = 4,
        FUNCTION_NAME = 6,
        IN_TREE = 8,
        IN_AVALS = 10,
        OUT_TREE = 12,
        OUT_AVALS = 14,
        NR_DEVICES_SHORT = 16,
        IN_SHARDINGS = 18,
        OUT_SHARDINGS = 20,
        PLATFORMS = 22,
        ORDERED_EFFECTS = 24,
        UNORDERED_EFFECTS = 26,
        DISABLED_CHECKS = 28,
        MLIR_MODULE_SERIALIZED = 30,
        CALLING_CONVENTION_VERSION = 32,
        MODULE_KEPT_VAR_IDX = 34,
        USES_GLOBAL_CONSTANTS = 36,
        VJP = 38,
        NR_DEVICES = 40,
        UNIQUE_AVALS = 42,
        UNIQUE_ABSTRACT_MESHES = 44,
        UNIQUE_NAMED_SHARDINGS = 46,
        IN_AVALS_IDXS = 48,
        OUT_AVALS_IDXS = 50,
        IN_SHARDINGS_IDXS = 52,
        OUT_SHARDINGS_IDXS = 54,
        JAX_VERSION = 56,
    }
    /// `PyTreeDef` (`custom_auxdata` is not read).
    tree = "PyTreeDef" {
        KIND = 4,
        CHILDREN = 6,
        CHILDREN_NAMES = 8,
        CUSTOM_NAME = 10,
    }
    /// `AbstractValue` (`memory_space` is not read).
    aval = "AbstractValue" {
        KIND = 4,
        SHAPE = 6,
        DTYPE = 8,
    }
    /// `Effect`.
    effect = "Effect" {
        TYPE_NAME = 4,
    }
    /// `DisabledSafetyCheck`.
    check = "DisabledSafetyCheck" {
        KIND = 4,
        CUSTOM_CALL_TARGET = 6,
    }
    /// `Sharding`, the per-argument table of writers before 4/2026 (`kind` is not read).
    sharding = "Sharding" {
        HLO_SHARDING_PROTO = 6,
        NAMED_SHARDING = 8,
    }
    /// `NamedSharding`.
    named = "NamedSharding" {
        MESH = 4,
        SPEC = 6,
        MEMORY_KIND = 8,
        ABSTRACT_MESH_IDX = 10,
    }
    /// `AbstractMesh` (`abstract_device` is not read).
    mesh = "AbstractMesh" {
        AXIS_SIZES = 4,
        AXIS_NAMES = 6,
        AXIS_TYPES = 8,
    }
    /// `PartitionSpec` (`reduced` is not read: reduced axes hold replicated data).
    spec = "PartitionSpec" {
        PARTITIONS = 4,
        UNREDUCED = 8,
    }
    /// `PartitionSpecOneAxis`.
    spec_axis = "PartitionSpecOneAxis" {
        AXES = 4,
    }
}

/// The values of `AxisType` in the schema.
pub(super) mod axis_type {
    pub(crate) const AUTO: u8 = 1;
    pub(crate) const EXPLICIT: u8 = 2;
    pub(crate) const MANUAL: u8 = 3;
}

/// Runs the `flatbuffers` verifier over `bytes` with the schema of every field read;
/// `max_depth` bounds the nesting of tables.
pub(super) fn verify(bytes: &[u8], max_depth: usize) -> Result<(), InvalidFlatbuffer> {
    let opts = VerifierOptions { max_depth, ..VerifierOptions::default() };
    let mut verifier = Verifier::new(&opts, bytes);
    <ForwardsUOffset<ExportedTable> as Verifiable>::run_verifier(&mut verifier, 0)
}

// Verifier schema types: one per table read, each visiting exactly the fields read.

struct ExportedTable;
struct PyTreeDefTable;
struct AbstractValueTable;
struct EffectTable;
struct DisabledCheckTable;
struct ShardingTable;
struct NamedShardingTable;
struct AbstractMeshTable;
struct PartitionSpecTable;
struct PartitionSpecAxisTable;

type Off<T> = ForwardsUOffset<T>;
type VecOf<T> = flatbuffers::Vector<'static, T>;
type Str = &'static str;
type Tables<T> = Off<VecOf<Off<T>>>;

impl Verifiable for ExportedTable {
    fn run_verifier(v: &mut Verifier, pos: usize) -> Result<(), InvalidFlatbuffer> {
        use ex::*;
        v.visit_table(pos)?
            .visit_field::<u16>("serialization_version", SERIALIZATION_VERSION, false)?
            .visit_field::<Off<Str>>("function_name", FUNCTION_NAME, false)?
            .visit_field::<Off<PyTreeDefTable>>("in_tree", IN_TREE, false)?
            .visit_field::<Tables<AbstractValueTable>>("in_avals", IN_AVALS, false)?
            .visit_field::<Off<PyTreeDefTable>>("out_tree", OUT_TREE, false)?
            .visit_field::<Tables<AbstractValueTable>>("out_avals", OUT_AVALS, false)?
            .visit_field::<i16>("nr_devices_short", NR_DEVICES_SHORT, false)?
            .visit_field::<Tables<ShardingTable>>("in_shardings", IN_SHARDINGS, false)?
            .visit_field::<Tables<ShardingTable>>("out_shardings", OUT_SHARDINGS, false)?
            .visit_field::<Tables<Str>>("platforms", PLATFORMS, false)?
            .visit_field::<Tables<EffectTable>>("ordered_effects", ORDERED_EFFECTS, false)?
            .visit_field::<Tables<EffectTable>>("unordered_effects", UNORDERED_EFFECTS, false)?
            .visit_field::<Tables<DisabledCheckTable>>("disabled_checks", DISABLED_CHECKS, false)?
            .visit_field::<Off<VecOf<u8>>>("mlir_module_serialized", MLIR_MODULE_SERIALIZED, false)?
            .visit_field::<u16>("calling_convention_version", CALLING_CONVENTION_VERSION, false)?
            .visit_field::<Off<VecOf<u16>>>("module_kept_var_idx", MODULE_KEPT_VAR_IDX, false)?
            .visit_field::<bool>("uses_global_constants", USES_GLOBAL_CONSTANTS, false)?
            .visit_field::<u32>("nr_devices", NR_DEVICES, false)?
            .visit_field::<Tables<AbstractValueTable>>("unique_avals", UNIQUE_AVALS, false)?
            .visit_field::<Tables<AbstractMeshTable>>("unique_abstract_meshes", UNIQUE_ABSTRACT_MESHES, false)?
            .visit_field::<Tables<NamedShardingTable>>("unique_named_shardings", UNIQUE_NAMED_SHARDINGS, false)?
            .visit_field::<Off<VecOf<u32>>>("in_avals_idxs", IN_AVALS_IDXS, false)?
            .visit_field::<Off<VecOf<u32>>>("out_avals_idxs", OUT_AVALS_IDXS, false)?
            .visit_field::<Off<VecOf<u32>>>("in_shardings_idxs", IN_SHARDINGS_IDXS, false)?
            .visit_field::<Off<VecOf<u32>>>("out_shardings_idxs", OUT_SHARDINGS_IDXS, false)?
            .visit_field::<Off<Str>>("jax_version", JAX_VERSION, false)?
            .finish();
        Ok(())
    }
}

impl Verifiable for PyTreeDefTable {
    fn run_verifier(v: &mut Verifier, pos: usize) -> Result<(), InvalidFlatbuffer> {
        use tree::*;
        v.visit_table(pos)?
            .visit_field::<i8>("kind", KIND, false)?
            .visit_field::<Tables<PyTreeDefTable>>("children", CHILDREN, false)?
            .visit_field::<Tables<Str>>("children_names", CHILDREN_NAMES, false)?
            .visit_field::<Off<Str>>("custom_name", CUSTOM_NAME, false)?
            .finish();
        Ok(())
    }
}

impl Verifiable for AbstractValueTable {
    fn run_verifier(v: &mut Verifier, pos: usize) -> Result<(), InvalidFlatbuffer> {
        use aval::*;
        v.visit_table(pos)?
            .visit_field::<i8>("kind", KIND, false)?
            .visit_field::<Tables<Str>>("shape", SHAPE, false)?
            .visit_field::<i8>("dtype", DTYPE, false)?
            .finish();
        Ok(())
    }
}

impl Verifiable for EffectTable {
    fn run_verifier(v: &mut Verifier, pos: usize) -> Result<(), InvalidFlatbuffer> {
        v.visit_table(pos)?.visit_field::<Off<Str>>("type_name", effect::TYPE_NAME, false)?.finish();
        Ok(())
    }
}

impl Verifiable for DisabledCheckTable {
    fn run_verifier(v: &mut Verifier, pos: usize) -> Result<(), InvalidFlatbuffer> {
        v.visit_table(pos)?
            .visit_field::<i8>("kind", check::KIND, false)?
            .visit_field::<Off<Str>>("custom_call_target", check::CUSTOM_CALL_TARGET, false)?
            .finish();
        Ok(())
    }
}

impl Verifiable for ShardingTable {
    fn run_verifier(v: &mut Verifier, pos: usize) -> Result<(), InvalidFlatbuffer> {
        use sharding::*;
        v.visit_table(pos)?
            .visit_field::<Off<VecOf<u8>>>("hlo_sharding_proto", HLO_SHARDING_PROTO, false)?
            .visit_field::<Off<NamedShardingTable>>("named_sharding", NAMED_SHARDING, false)?
            .finish();
        Ok(())
    }
}

impl Verifiable for NamedShardingTable {
    fn run_verifier(v: &mut Verifier, pos: usize) -> Result<(), InvalidFlatbuffer> {
        use named::*;
        v.visit_table(pos)?
            .visit_field::<Off<AbstractMeshTable>>("mesh", MESH, false)?
            .visit_field::<Off<PartitionSpecTable>>("spec", SPEC, false)?
            .visit_field::<Off<Str>>("memory_kind", MEMORY_KIND, false)?
            .visit_field::<u32>("abstract_mesh_idx", ABSTRACT_MESH_IDX, false)?
            .finish();
        Ok(())
    }
}

impl Verifiable for AbstractMeshTable {
    fn run_verifier(v: &mut Verifier, pos: usize) -> Result<(), InvalidFlatbuffer> {
        use mesh::*;
        v.visit_table(pos)?
            .visit_field::<Off<VecOf<u32>>>("axis_sizes", AXIS_SIZES, false)?
            .visit_field::<Tables<Str>>("axis_names", AXIS_NAMES, false)?
            .visit_field::<Off<VecOf<u8>>>("axis_types", AXIS_TYPES, false)?
            .finish();
        Ok(())
    }
}

impl Verifiable for PartitionSpecTable {
    fn run_verifier(v: &mut Verifier, pos: usize) -> Result<(), InvalidFlatbuffer> {
        v.visit_table(pos)?
            .visit_field::<Tables<PartitionSpecAxisTable>>("partitions", spec::PARTITIONS, false)?
            .visit_field::<Tables<Str>>("unreduced", spec::UNREDUCED, false)?
            .finish();
        Ok(())
    }
}

impl Verifiable for PartitionSpecAxisTable {
    fn run_verifier(v: &mut Verifier, pos: usize) -> Result<(), InvalidFlatbuffer> {
        v.visit_table(pos)?.visit_field::<Tables<Str>>("axes", spec_axis::AXES, false)?.finish();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Each table of a `.fbs` text with its field names in order. Comments are dropped; every
    /// `name: type ...;` in a table's braces is one field, deprecated ones included (they keep
    /// their slot). Explicit `(id: n)` attributes would break "index = order", so they fail.
    fn fbs_tables(text: &str) -> BTreeMap<String, Vec<String>> {
        let code: Vec<&str> = text.lines().map(|l| l.split("//").next().unwrap_or("")).collect();
        let code = code.join("\n");
        let mut tables = BTreeMap::new();
        let mut words = code.split_whitespace().peekable();
        while let Some(w) = words.next() {
            if w != "table" {
                continue;
            }
            let name = words.next().expect("a table name").trim_end_matches('{').to_string();
            let mut body = String::new();
            for w in words.by_ref() {
                body.push_str(w);
                body.push(' ');
                if w.ends_with('}') {
                    break;
                }
            }
            let body = body.trim().trim_start_matches('{').trim_end_matches('}');
            let fields = body
                .split(';')
                .map(str::trim)
                .filter(|f| !f.is_empty())
                .map(|f| {
                    assert!(!f.contains("id:"), "explicit field ids are not handled: {f}");
                    f.split(':').next().unwrap_or("").trim().to_string()
                })
                .collect();
            tables.insert(name, fields);
        }
        tables
    }

    #[test]
    fn the_fbs_parser_counts_deprecated_fields() {
        let t = fbs_tables("// table Nope { x: int; }\ntable T {\n  a: int;  // one\n  b: [string] (deprecated);\n  c: U = 0;\n}\ntable U{ d: bool; }\n");
        assert_eq!(t.len(), 2);
        assert_eq!(t["T"], ["a", "b", "c"]);
        assert_eq!(t["U"], ["d"]);
    }

    #[test]
    fn offsets_agree_with_the_schema() {
        let tables = fbs_tables(include_str!("jax_export.fbs"));
        // JAX 0.12.0.1's serialization_generated.py: ExportedStart is StartObject(27).
        assert_eq!(tables["Exported"].len(), 27);
        assert_eq!(TABLES.len(), 10);
        for (table, fields) in TABLES {
            let order = tables.get(*table).unwrap_or_else(|| panic!("no table {table} in jax_export.fbs"));
            for (field, voff) in *fields {
                let i = order
                    .iter()
                    .position(|f| f.eq_ignore_ascii_case(field))
                    .unwrap_or_else(|| panic!("{table} has no field {field} in jax_export.fbs"));
                assert_eq!(usize::from(*voff), 4 + 2 * i, "{table}.{field} is field {i}");
            }
        }
    }
}
