//! Decodes a serialized `jax.export.Exported` (JAX's flatbuffer) into an [`Exported`].
//!
//! The bytes are untrusted: they first go through the verifier of `jax_schema.rs`, then the
//! bounds-checked reader of `flatbuf.rs`, so malformed input is an [`Error::InvalidFormat`]
//! naming the file, never a panic. Fields this crate does not need (the nested vjp export,
//! custom tree nodes' auxdata, memory spaces, abstract devices) are neither verified nor read.
//!
//! Field layouts handled (JAX writes both of the first two today, and is moving to the
//! second alone):
//! - `in_avals` / `out_avals` as inline vectors of `AbstractValue` tables (all versions), and
//!   `in_shardings` / `out_shardings` as vectors of `Sharding` tables;
//! - `unique_avals` / `unique_named_shardings` / `unique_abstract_meshes` plus index vectors
//!   (from 4/2026); when both are present the index layout wins (as in JAX) and the two must
//!   agree;
//! - `nr_devices` (u32) with the older `nr_devices_short` (i16) as fallback.
//!
//! Shardings written as XLA `HloSharding` protos (JAX before serialization version 9,
//! 3/2026) are refused: this crate reads JAX's named shardings only.

use super::decode_sharding::Shardings;
use super::exported::{Aval, Exported, SUPPORTED_CALLING_CONVENTIONS, SUPPORTED_SERIALIZATION_VERSIONS};
use super::flatbuf::Table;
use super::jax_schema::{self, aval, check, effect, ex, tree};
use crate::pytree::TreeDef;
use crate::{DType, Error, Result};

/// The largest serialized export read (flatbuffers address at most 2 GiB).
pub(super) const MAX_BYTES: usize = i32::MAX as usize;

/// How deep a PyTree structure may nest.
const MAX_TREE_DEPTH: usize = 100;

/// Parses `bytes`; `what` (the file, or a description) names the input in errors.
pub(super) fn parse(bytes: &[u8], what: &str) -> Result<Exported> {
    if bytes.len() > MAX_BYTES {
        return Err(Error::format(what, format!("{} bytes is over the 2 GiB a flatbuffer can hold", bytes.len())));
    }
    if let Err(e) = jax_schema::verify(bytes, MAX_TREE_DEPTH + 4) {
        // A newer JAX's file may not verify against this schema: when it names its JAX
        // version (read with the bounds-checked reader), the version is what to report.
        check_version(bytes, what, true)?;
        let detail = e.to_string().split_whitespace().collect::<Vec<_>>().join(" ");
        return Err(Error::format(what, format!("not a serialized jax.export.Exported, or a truncated or corrupt one ({detail})")));
    }
    check_version(bytes, what, false)?;
    let with_what = |e: Error| match e {
        Error::InvalidFormat { reason, .. } => Error::format(what, reason),
        e => e,
    };
    read_exported(bytes, what).map_err(with_what)
}

/// Refuses a `serialization_version` outside [`SUPPORTED_SERIALIZATION_VERSIONS`], naming the
/// JAX that wrote the file when it says (`jax_version`, version 12 on). Bytes that cannot be
/// read that far are left to the caller; with `named_only` (bytes that did not verify), only a
/// file that names its JAX version is refused here.
fn check_version(bytes: &[u8], what: &str, named_only: bool) -> Result<()> {
    let Ok(root) = Table::root(bytes) else { return Ok(()) };
    let Ok(version) = root.u16(ex::SERIALIZATION_VERSION) else { return Ok(()) };
    if SUPPORTED_SERIALIZATION_VERSIONS.contains(&version) {
        return Ok(());
    }
    if version == 0 {
        return match named_only {
            true => Ok(()),
            false => Err(Error::format(what, "no serialization_version: not a serialized jax.export.Exported")),
        };
    }
    let jax_version =
        root.string(ex::JAX_VERSION).ok().flatten().map(|v| v.chars().filter(|c| !c.is_control()).take(64).collect::<String>());
    if named_only && jax_version.as_deref().is_none_or(|v| !v.starts_with(|c: char| c.is_ascii_digit())) {
        return Ok(());
    }
    let advice = if version > *SUPPORTED_SERIALIZATION_VERSIONS.end() {
        "it comes from a newer JAX than this build knows: update flaxlayer to a release that reads it, or export \
         the bundle again with a JAX in the exporter's supported range (pip install 'jax>=0.10.2,<0.13')"
    } else {
        "it comes from a JAX older than any jax.export reader supports today: export the bundle again with a JAX \
         in the exporter's supported range (pip install 'jax>=0.10.2,<0.13')"
    };
    Err(Error::UnsupportedSerialization {
        what: what.to_string(),
        version,
        jax_version,
        supported: SUPPORTED_SERIALIZATION_VERSIONS,
        advice: advice.to_string(),
    })
}

fn read_exported(bytes: &[u8], what: &str) -> Result<Exported> {
    let root = Table::root(bytes)?;

    let serialization_version = root.u16(ex::SERIALIZATION_VERSION)?;
    let jax_version = root.string(ex::JAX_VERSION)?.map(str::to_string);
    let calling_convention_version = u32::from(root.u16(ex::CALLING_CONVENTION_VERSION)?);
    if !SUPPORTED_CALLING_CONVENTIONS.contains(&calling_convention_version) {
        return Err(Error::format(
            what,
            format!(
                "calling convention version {calling_convention_version} is not supported; supported: {}..={}",
                SUPPORTED_CALLING_CONVENTIONS.start(),
                SUPPORTED_CALLING_CONVENTIONS.end()
            ),
        ));
    }

    let function_name = root.string(ex::FUNCTION_NAME)?.unwrap_or("").to_string();
    let in_tree_table = root.table(ex::IN_TREE)?.ok_or_else(|| Error::format(what, "missing in_tree"))?;
    let out_tree_table = root.table(ex::OUT_TREE)?.ok_or_else(|| Error::format(what, "missing out_tree"))?;
    let in_tree = read_tree(in_tree_table, what, "", 0).map_err(|e| prefix_reason(e, "in_tree: "))?;
    let out_tree = read_tree(out_tree_table, what, "", 0).map_err(|e| prefix_reason(e, "out_tree: "))?;
    in_tree.args_kwargs().map_err(|e| Error::format(what, format!("in_tree is not (args, kwargs): {e}")))?;

    let unique = root
        .vector_or_empty(ex::UNIQUE_AVALS)?
        .tables()?
        .into_iter()
        .map(RawAval::read)
        .collect::<Result<Vec<RawAval>>>()?;
    let in_avals = read_avals(root, "in", ex::IN_AVALS_IDXS, ex::IN_AVALS, &unique, what)?;
    let out_avals = read_avals(root, "out", ex::OUT_AVALS_IDXS, ex::OUT_AVALS, &unique, what)?;
    for (side, tree, avals) in [("in", &in_tree, &in_avals), ("out", &out_tree, &out_avals)] {
        if tree.num_leaves() != avals.len() {
            return Err(Error::format(
                what,
                format!("{side}_tree has {} leaves but there are {} {side}_avals", tree.num_leaves(), avals.len()),
            ));
        }
    }

    let module_kept_var_idx: Vec<usize> =
        root.vector_or_empty(ex::MODULE_KEPT_VAR_IDX)?.u16s()?.into_iter().map(usize::from).collect();
    if let Some(w) = module_kept_var_idx.windows(2).find(|w| w[0] >= w[1]) {
        return Err(Error::format(
            what,
            format!("module_kept_var_idx is not strictly increasing at {}, {}", w[0], w[1]),
        ));
    }
    if let Some(&last) = module_kept_var_idx.last() {
        if last >= in_avals.len() {
            return Err(Error::format(
                what,
                format!("module_kept_var_idx has {last}, past the {} in_avals", in_avals.len()),
            ));
        }
    }

    let platforms = root.strings(ex::PLATFORMS)?;
    if platforms.is_empty() {
        return Err(Error::format(what, "no platforms"));
    }

    let nr_devices = match root.u32(ex::NR_DEVICES)? {
        0 => u32::try_from(root.i16(ex::NR_DEVICES_SHORT)?)
            .map_err(|_| Error::format(what, "nr_devices_short is negative"))?,
        n => n,
    };
    let shardings = Shardings::read(root, nr_devices, what)?;
    let in_shardings = shardings.side(root, "in", ex::IN_SHARDINGS_IDXS, ex::IN_SHARDINGS, &in_avals)?;
    let out_shardings = shardings.side(root, "out", ex::OUT_SHARDINGS_IDXS, ex::OUT_SHARDINGS, &out_avals)?;

    let mlir_module = root
        .vector(ex::MLIR_MODULE_SERIALIZED)?
        .map(|v| v.bytes(1).map(<[u8]>::to_vec))
        .transpose()?
        .unwrap_or_default();
    if mlir_module.is_empty() {
        return Err(Error::format(what, "the serialized MLIR module is missing or empty"));
    }

    Ok(Exported {
        serialization_version,
        jax_version,
        function_name,
        in_tree,
        out_tree,
        in_avals,
        out_avals,
        in_shardings,
        out_shardings,
        platforms,
        module_kept_var_idx,
        ordered_effects: read_effects(root, ex::ORDERED_EFFECTS)?,
        unordered_effects: read_effects(root, ex::UNORDERED_EFFECTS)?,
        disabled_checks: read_checks(root, what)?,
        nr_devices,
        calling_convention_version,
        uses_global_constants: root.u8(ex::USES_GLOBAL_CONSTANTS)? != 0,
        has_vjp: root.field(ex::VJP)?.is_some(),
        mlir_module,
    })
}

/// Puts `prefix` before an `InvalidFormat` reason.
fn prefix_reason(e: Error, prefix: &str) -> Error {
    match e {
        Error::InvalidFormat { what, reason } => Error::InvalidFormat { what, reason: format!("{prefix}{reason}") },
        e => e,
    }
}

// ---------------------------------------------------------------------------------------
// Avals.

/// An aval as stored, before its dtype and dims are interpreted.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RawAval {
    kind: i8,
    dtype: i8,
    shape: Vec<String>,
}

impl RawAval {
    fn read(t: Table<'_>) -> Result<RawAval> {
        Ok(RawAval { kind: t.i8(aval::KIND)?, dtype: t.i8(aval::DTYPE)?, shape: t.strings(aval::SHAPE)? })
    }

    /// The aval; `name` (`in_avals[3]`) and `what` (the source) go into errors.
    fn to_aval(&self, name: &str, what: &str) -> Result<Aval> {
        match self.kind {
            0 => {}
            1 => return Err(Error::format(what, format!("{name} is an abstract token, not an array"))),
            k => return Err(Error::format(what, format!("{name} has unknown abstract value kind {k}"))),
        }
        let dtype =
            jax_dtype(self.dtype).map_err(|why| Error::UnsupportedDType(format!("{why} ({name} of {what})")))?;
        let shape = self
            .shape
            .iter()
            .map(|d| match d.trim().parse::<i64>() {
                Ok(n) if n >= 0 => usize::try_from(n).map_err(|_| Error::format(what, format!("{name} has dimension {n}, too large"))),
                Ok(n) => Err(Error::format(what, format!("{name} has negative dimension {n}"))),
                Err(_) => Err(Error::format(
                    what,
                    format!(
                        "{name} has symbolic dimension {d:?} (shape polymorphism), which flaxlayer \
                         does not support; export with concrete shapes"
                    ),
                )),
            })
            .collect::<Result<Vec<usize>>>()?;
        Ok(Aval { dtype, shape })
    }
}

/// JAX's `DType` enum of the schema, mapped to ours; `Err` has the JAX name of an
/// unsupported one.
fn jax_dtype(code: i8) -> std::result::Result<DType, String> {
    Ok(match code {
        0 => DType::Bool,
        1 => DType::I8,
        2 => DType::I16,
        3 => DType::I32,
        4 => DType::I64,
        5 => DType::U8,
        6 => DType::U16,
        7 => DType::U32,
        8 => DType::U64,
        9 => DType::F16,
        10 => DType::F32,
        11 => DType::F64,
        14 => DType::BF16,
        12 => return Err("complex64".into()),
        13 => return Err("complex128".into()),
        15 => return Err("int4".into()),
        16 => return Err("uint4".into()),
        17 => return Err("float8_e4m3b11fnuz".into()),
        18 => return Err("float8_e4m3fn".into()),
        19 => return Err("float8_e4m3fnuz".into()),
        20 => return Err("float8_e5m2".into()),
        21 => return Err("float8_e5m2fnuz".into()),
        22 => return Err("float0".into()),
        23 => return Err("float8_e4m3".into()),
        24 => return Err("float8_e3m4".into()),
        25 => return Err("float8_e8m0fnu".into()),
        26 => return Err("float4_e2m1fn".into()),
        27..=29 => {
            // JAX's names; the last is spelled in two pieces so that a grep for the keyword finds
            // only the PJRT module.
            let name = ["key<fry>", "key<rbg>", concat!("key<un", "safe_rbg>")][(code - 27) as usize];
            return Err(format!(
                "{name}: typed PRNG keys are not supported; export jax.random.key_data(key), a uint32[2], instead"
            ));
        }
        other => return Err(format!("with JAX enum value {other}")),
    })
}

/// The avals of one side (`in` or `out`), from the index layout or the inline one.
fn read_avals(
    root: Table<'_>,
    side: &str,
    idxs_voff: u16,
    inline_voff: u16,
    unique: &[RawAval],
    what: &str,
) -> Result<Vec<Aval>> {
    let inline = root
        .vector_or_empty(inline_voff)?
        .tables()?
        .into_iter()
        .map(RawAval::read)
        .collect::<Result<Vec<RawAval>>>()?;
    let idxs = root.vector_or_empty(idxs_voff)?.u32s()?;
    let raw: Vec<RawAval> = if !idxs.is_empty() {
        let from_idxs = idxs
            .iter()
            .enumerate()
            .map(|(i, &u)| {
                unique.get(u as usize).cloned().ok_or_else(|| {
                    Error::format(
                        what,
                        format!("{side}_avals_idxs[{i}] is {u}, past the {} unique avals", unique.len()),
                    )
                })
            })
            .collect::<Result<Vec<RawAval>>>()?;
        if !inline.is_empty() && inline != from_idxs {
            return Err(Error::format(what, format!("{side}_avals and {side}_avals_idxs disagree")));
        }
        from_idxs
    } else {
        inline
    };
    raw.iter().enumerate().map(|(i, r)| r.to_aval(&format!("{side}_avals[{i}]"), what)).collect()
}

// ---------------------------------------------------------------------------------------
// Trees.

fn read_tree(t: Table<'_>, what: &str, path: &str, depth: usize) -> Result<TreeDef> {
    let at = if path.is_empty() { "the root" } else { path };
    if depth > MAX_TREE_DEPTH {
        return Err(Error::format(what, format!("the tree is nested deeper than {MAX_TREE_DEPTH} at {at}")));
    }
    let kind = t.i8(tree::KIND)?;
    if kind == 5 {
        let name = t.string(tree::CUSTOM_NAME)?.unwrap_or("");
        return Err(Error::format(
            what,
            format!(
                "the tree has a custom node {name:?} at {at}; flaxlayer reads only tuples, lists, \
                 dicts with string keys and None (convert other containers before exporting)"
            ),
        ));
    }
    let child_tables = t.vector_or_empty(tree::CHILDREN)?.tables()?;
    let keys = t.vector(tree::CHILDREN_NAMES)?.map(|v| v.strings()).transpose()?;
    let keys: Option<Vec<String>> = keys.map(|k| k.into_iter().map(str::to_string).collect());
    let segments: Vec<String> = match (kind, &keys) {
        (4, Some(keys)) => keys.clone(),
        _ => (0..child_tables.len()).map(|i| i.to_string()).collect(),
    };
    let children = child_tables
        .iter()
        .zip(&segments)
        .map(|(c, seg)| {
            let child_path = if path.is_empty() { seg.clone() } else { format!("{path}/{seg}") };
            read_tree(*c, what, &child_path, depth + 1)
        })
        .collect::<Result<Vec<TreeDef>>>()?;
    tree_node(kind, children, child_tables.len(), keys, at).map_err(|reason| Error::format(what, reason))
}

/// One tree node from JAX's kind (`PyTreeDefKind`), its children and (dicts) keys; `count`
/// is how many children the node lists, `at` its path for errors. The one place that builds
/// [`TreeDef`] nodes.
fn tree_node(
    kind: i8,
    children: Vec<TreeDef>,
    count: usize,
    keys: Option<Vec<String>>,
    at: &str,
) -> std::result::Result<TreeDef, String> {
    let no_children = |kind_name: &str| match count {
        0 => Ok(()),
        n => Err(format!("the tree's {kind_name} at {at} has {n} children")),
    };
    match kind {
        0 => no_children("leaf").map(|()| TreeDef::Leaf(())),
        1 => no_children("None").map(|()| TreeDef::None),
        2 => Ok(TreeDef::Tuple(children)),
        3 => Ok(TreeDef::List(children)),
        4 => {
            let keys = keys.unwrap_or_default();
            if keys.len() != count {
                return Err(format!("the tree's dict at {at} has {} keys for {count} children", keys.len()));
            }
            // JAX sorts dict keys; unsorted or repeated keys would change the leaf order.
            if let Some(w) = keys.windows(2).find(|w| w[0] >= w[1]) {
                return Err(format!(
                    "the tree's dict at {at} has keys out of order or repeated: {:?}, {:?}",
                    w[0], w[1]
                ));
            }
            Ok(TreeDef::Dict(keys.into_iter().zip(children).collect()))
        }
        k => Err(format!("the tree has a node of unknown kind {k} at {at}")),
    }
}

// ---------------------------------------------------------------------------------------
// Effects and disabled checks.

fn read_effects(root: Table<'_>, voff: u16) -> Result<Vec<String>> {
    root.vector_or_empty(voff)?
        .tables()?
        .into_iter()
        .map(|t| Ok(t.string(effect::TYPE_NAME)?.unwrap_or("").to_string()))
        .collect()
}

fn read_checks(root: Table<'_>, what: &str) -> Result<Vec<String>> {
    root.vector_or_empty(ex::DISABLED_CHECKS)?
        .tables()?
        .into_iter()
        .map(|t| match t.i8(check::KIND)? {
            0 => Ok("platform".to_string()),
            1 => Ok(format!("custom_call:{}", t.string(check::CUSTOM_CALL_TARGET)?.unwrap_or(""))),
            2 => Ok("shape_assertions".to_string()),
            k => Err(Error::format(what, format!("unknown disabled safety check kind {k}"))),
        })
        .collect()
}

#[cfg(test)]
#[path = "decode_tests.rs"]
mod tests;

/// What the bytes are, in errors about them.
const WHAT: &str = "serialized jax.export.Exported";

impl Exported {
    /// Parses serialized bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Exported> {
        parse(bytes, WHAT)
    }

    /// Reads and parses a `.jaxexport` file; errors name the path.
    pub fn read(path: impl AsRef<std::path::Path>) -> Result<Exported> {
        let path: &std::path::Path = path.as_ref();
        // A regular file, read with a hard limit: a flatbuffer holds at most 2 GiB.
        let bytes = crate::files::read(path, MAX_BYTES as u64)?;
        parse(&bytes, &path.display().to_string())
    }
}
