//! Reads `jax.export.Exported.serialize()` bytes: JAX's flatbuffer of one exported function.
//!
//! The schema is JAX's `jax/_src/export/serialization.fbs` (its generated reader is
//! `serialization_generated.py`, the writer `serialization.py`). The bytes are untrusted:
//! they first go through the `flatbuffers` crate's verifier with the schema of every field
//! read here, then through a small bounds-checked reader, so malformed input is an
//! [`Error::InvalidFormat`], never a panic. Fields this crate does not need (shardings,
//! meshes, the nested vjp export) are neither verified nor read.
//!
//! Field layouts handled (JAX writes both of the first two today, and is moving to the
//! second alone):
//! - `in_avals` / `out_avals` as inline vectors of `AbstractValue` tables (all versions);
//! - `unique_avals` plus `in_avals_idxs` / `out_avals_idxs` index vectors (from 4/2026);
//!   when both are present the index layout wins (as in JAX) and the two must agree;
//! - `nr_devices` (u32) with the older `nr_devices_short` (i16) as fallback.

use std::ops::RangeInclusive;
use std::path::Path;

use flatbuffers::{ForwardsUOffset, InvalidFlatbuffer, Verifiable, Verifier, VerifierOptions};

use crate::pytree::TreeDef;
use crate::tensor::Tensor;
use crate::{DType, Error, Result};

/// The values of the `serialization_version` field this reader accepts. JAX's own readers
/// accepted 2 and 3 before 11/2025; since then JAX writes 3 while its format is at version
/// 11, and later ones may write the real version. Every version in the range is a
/// backwards-compatible extension of version 2 for the fields read here.
pub const SUPPORTED_SERIALIZATION_VERSIONS: RangeInclusive<u16> = 2..=11;

/// The calling conventions of the serialized module that this crate can call: the ones
/// current JAX can call (`jax._src.export._export`, minimum and maximum supported).
pub const SUPPORTED_CALLING_CONVENTIONS: RangeInclusive<u32> = 9..=10;

/// The largest serialized export read (flatbuffers address at most 2 GiB).
const MAX_BYTES: usize = i32::MAX as usize;

/// How deep a PyTree structure may nest.
const MAX_TREE_DEPTH: usize = 100;

/// What errors name when no file name is known.
const WHAT: &str = "serialized jax.export.Exported";

/// The shape and dtype of one flat argument or result.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Aval {
    pub dtype: DType,
    pub shape: Vec<i64>,
}

impl Aval {
    /// Checks that `t` has this dtype and shape; `what` names the value in errors.
    pub fn check(&self, what: &str, t: &Tensor) -> Result<()> {
        if t.dtype() != self.dtype {
            return Err(Error::DTypeMismatch {
                what: what.to_string(),
                expected: self.dtype,
                got: t.dtype(),
            });
        }
        if t.shape() != self.dims() {
            return Err(Error::ShapeMismatch { what: what.to_string(), expected: self.dims(), got: t.shape().to_vec() });
        }
        Ok(())
    }

    /// The shape as `usize` dimensions (they are checked non-negative when parsed).
    pub fn dims(&self) -> Vec<usize> {
        self.shape.iter().map(|&d| usize::try_from(d).unwrap_or(0)).collect()
    }

    /// The number of elements, or `None` on overflow.
    pub fn num_elements(&self) -> Option<usize> {
        self.dims().iter().try_fold(1usize, |n, &d| n.checked_mul(d))
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
    pub serialization_version: u16,
    /// The exported function's name (`fun_name`).
    pub function_name: String,
    /// The structure of `(args, kwargs)`: a tuple of the args tuple and the kwargs dict.
    pub in_tree: TreeDef,
    /// The structure of the results.
    pub out_tree: TreeDef,
    /// One per leaf of `in_tree`, in flatten order.
    pub in_avals: Vec<Aval>,
    /// One per leaf of `out_tree`, in flatten order.
    pub out_avals: Vec<Aval>,
    /// The platforms the module was lowered for, in the order of the platform index.
    pub platforms: Vec<String>,
    /// The sorted indices of the `in_avals` that the module takes; the others are unused.
    pub module_kept_var_idx: Vec<usize>,
    /// The type names of the ordered effects (`str(effect.__class__)`).
    pub ordered_effects: Vec<String>,
    /// The type names of the unordered effects.
    pub unordered_effects: Vec<String>,
    /// The safety checks disabled at export: `platform`, `shape_assertions`,
    /// `custom_call:<target>`.
    pub disabled_checks: Vec<String>,
    /// The number of devices the module was lowered for.
    pub nr_devices: u32,
    /// The calling convention version of the module.
    pub calling_convention_version: u32,
    /// Whether the module uses global constants (the platform index, or dimension
    /// variables), which need StableHLO shape refinement before compilation.
    pub uses_global_constants: bool,
    /// Whether a vjp export is serialized along (it is not read).
    pub has_vjp: bool,
    /// The module: a StableHLO portable artifact (MLIR bytecode of the VHLO dialect).
    pub mlir_module: Vec<u8>,
}

impl Exported {
    /// Parses serialized bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Exported> {
        parse(bytes, WHAT)
    }

    /// Reads and parses a `.jaxexport` file; errors name the path.
    pub fn read(path: impl AsRef<Path>) -> Result<Exported> {
        let path = path.as_ref();
        let len = std::fs::metadata(path).map_err(|e| Error::io(path, e))?.len();
        if len > MAX_BYTES as u64 {
            return Err(Error::format(path.display().to_string(), format!("{len} bytes is over the 2 GiB a flatbuffer can hold")));
        }
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        parse(&bytes, &path.display().to_string())
    }

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
    pub fn kept_in_avals(&self) -> Vec<&Aval> {
        self.module_kept_var_idx.iter().filter_map(|&i| self.in_avals.get(i)).collect()
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

// ---------------------------------------------------------------------------------------
// The schema: vtable offsets (4 + 2 * field id) of the fields read here.

mod ex {
    pub const SERIALIZATION_VERSION: u16 = 4;
    pub const FUNCTION_NAME: u16 = 6;
    pub const IN_TREE: u16 = 8;
    pub const IN_AVALS: u16 = 10;
    pub const OUT_TREE: u16 = 12;
    pub const OUT_AVALS: u16 = 14;
    pub const NR_DEVICES_SHORT: u16 = 16;
    // 18 in_shardings, 20 out_shardings: not read.
    pub const PLATFORMS: u16 = 22;
    pub const ORDERED_EFFECTS: u16 = 24;
    pub const UNORDERED_EFFECTS: u16 = 26;
    pub const DISABLED_CHECKS: u16 = 28;
    pub const MLIR_MODULE_SERIALIZED: u16 = 30;
    pub const CALLING_CONVENTION_VERSION: u16 = 32;
    pub const MODULE_KEPT_VAR_IDX: u16 = 34;
    pub const USES_GLOBAL_CONSTANTS: u16 = 36;
    pub const VJP: u16 = 38;
    pub const NR_DEVICES: u16 = 40;
    pub const UNIQUE_AVALS: u16 = 42;
    // 44 unique_abstract_meshes, 46 unique_named_shardings: not read.
    pub const IN_AVALS_IDXS: u16 = 48;
    pub const OUT_AVALS_IDXS: u16 = 50;
    // 52 in_shardings_idxs, 54 out_shardings_idxs: not read.
}

mod tree {
    pub const KIND: u16 = 4;
    pub const CHILDREN: u16 = 6;
    pub const CHILDREN_NAMES: u16 = 8;
    pub const CUSTOM_NAME: u16 = 10;
    // 12 custom_auxdata: not read.
}

mod aval {
    pub const KIND: u16 = 4;
    pub const SHAPE: u16 = 6;
    pub const DTYPE: u16 = 8;
    // 10 memory_space: not read.
}

mod effect {
    pub const TYPE_NAME: u16 = 4;
}

mod check {
    pub const KIND: u16 = 4;
    pub const CUSTOM_CALL_TARGET: u16 = 6;
}

// Verifier schema types: one per table read, each verifying exactly the fields read.

struct ExportedTable;
struct PyTreeDefTable;
struct AbstractValueTable;
struct EffectTable;
struct DisabledCheckTable;

type Off<T> = ForwardsUOffset<T>;
type VecOf<T> = flatbuffers::Vector<'static, T>;
type Str = &'static str;

impl Verifiable for ExportedTable {
    fn run_verifier(v: &mut Verifier, pos: usize) -> std::result::Result<(), InvalidFlatbuffer> {
        use ex::*;
        v.visit_table(pos)?
            .visit_field::<u16>("serialization_version", SERIALIZATION_VERSION, false)?
            .visit_field::<Off<Str>>("function_name", FUNCTION_NAME, false)?
            .visit_field::<Off<PyTreeDefTable>>("in_tree", IN_TREE, false)?
            .visit_field::<Off<VecOf<Off<AbstractValueTable>>>>("in_avals", IN_AVALS, false)?
            .visit_field::<Off<PyTreeDefTable>>("out_tree", OUT_TREE, false)?
            .visit_field::<Off<VecOf<Off<AbstractValueTable>>>>("out_avals", OUT_AVALS, false)?
            .visit_field::<i16>("nr_devices_short", NR_DEVICES_SHORT, false)?
            .visit_field::<Off<VecOf<Off<Str>>>>("platforms", PLATFORMS, false)?
            .visit_field::<Off<VecOf<Off<EffectTable>>>>("ordered_effects", ORDERED_EFFECTS, false)?
            .visit_field::<Off<VecOf<Off<EffectTable>>>>("unordered_effects", UNORDERED_EFFECTS, false)?
            .visit_field::<Off<VecOf<Off<DisabledCheckTable>>>>("disabled_checks", DISABLED_CHECKS, false)?
            .visit_field::<Off<VecOf<u8>>>("mlir_module_serialized", MLIR_MODULE_SERIALIZED, false)?
            .visit_field::<u16>("calling_convention_version", CALLING_CONVENTION_VERSION, false)?
            .visit_field::<Off<VecOf<u16>>>("module_kept_var_idx", MODULE_KEPT_VAR_IDX, false)?
            .visit_field::<bool>("uses_global_constants", USES_GLOBAL_CONSTANTS, false)?
            .visit_field::<u32>("nr_devices", NR_DEVICES, false)?
            .visit_field::<Off<VecOf<Off<AbstractValueTable>>>>("unique_avals", UNIQUE_AVALS, false)?
            .visit_field::<Off<VecOf<u32>>>("in_avals_idxs", IN_AVALS_IDXS, false)?
            .visit_field::<Off<VecOf<u32>>>("out_avals_idxs", OUT_AVALS_IDXS, false)?
            .finish();
        Ok(())
    }
}

impl Verifiable for PyTreeDefTable {
    fn run_verifier(v: &mut Verifier, pos: usize) -> std::result::Result<(), InvalidFlatbuffer> {
        use tree::*;
        v.visit_table(pos)?
            .visit_field::<i8>("kind", KIND, false)?
            .visit_field::<Off<VecOf<Off<PyTreeDefTable>>>>("children", CHILDREN, false)?
            .visit_field::<Off<VecOf<Off<Str>>>>("children_names", CHILDREN_NAMES, false)?
            .visit_field::<Off<Str>>("custom_name", CUSTOM_NAME, false)?
            .finish();
        Ok(())
    }
}

impl Verifiable for AbstractValueTable {
    fn run_verifier(v: &mut Verifier, pos: usize) -> std::result::Result<(), InvalidFlatbuffer> {
        use aval::*;
        v.visit_table(pos)?
            .visit_field::<i8>("kind", KIND, false)?
            .visit_field::<Off<VecOf<Off<Str>>>>("shape", SHAPE, false)?
            .visit_field::<i8>("dtype", DTYPE, false)?
            .finish();
        Ok(())
    }
}

impl Verifiable for EffectTable {
    fn run_verifier(v: &mut Verifier, pos: usize) -> std::result::Result<(), InvalidFlatbuffer> {
        v.visit_table(pos)?.visit_field::<Off<Str>>("type_name", effect::TYPE_NAME, false)?.finish();
        Ok(())
    }
}

impl Verifiable for DisabledCheckTable {
    fn run_verifier(v: &mut Verifier, pos: usize) -> std::result::Result<(), InvalidFlatbuffer> {
        v.visit_table(pos)?
            .visit_field::<i8>("kind", check::KIND, false)?
            .visit_field::<Off<Str>>("custom_call_target", check::CUSTOM_CALL_TARGET, false)?
            .finish();
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// A bounds-checked flatbuffer reader in safe Rust: every read is checked even though the
// verifier has already passed, so a gap between the two is an error, not a panic.

fn corrupt(reason: impl Into<String>) -> Error {
    Error::format(WHAT, reason)
}

fn read_array<const N: usize>(buf: &[u8], pos: usize) -> Result<[u8; N]> {
    pos.checked_add(N)
        .and_then(|end| buf.get(pos..end))
        .and_then(|s| <[u8; N]>::try_from(s).ok())
        .ok_or_else(|| corrupt(format!("a {N}-byte read at offset {pos} is out of bounds")))
}

fn read_u16(buf: &[u8], pos: usize) -> Result<u16> {
    Ok(u16::from_le_bytes(read_array(buf, pos)?))
}

fn read_u32(buf: &[u8], pos: usize) -> Result<u32> {
    Ok(u32::from_le_bytes(read_array(buf, pos)?))
}

/// `pos + u32 at pos`: where an offset field points.
fn follow_offset(buf: &[u8], pos: usize) -> Result<usize> {
    let off = read_u32(buf, pos)? as usize;
    pos.checked_add(off)
        .filter(|&p| p < buf.len())
        .ok_or_else(|| corrupt(format!("the offset at {pos} points out of bounds")))
}

#[derive(Clone, Copy)]
struct Table<'a> {
    buf: &'a [u8],
    pos: usize,
    vtable: usize,
    vtable_len: usize,
}

impl<'a> Table<'a> {
    fn at(buf: &'a [u8], pos: usize) -> Result<Table<'a>> {
        let soff = i32::from_le_bytes(read_array(buf, pos)?);
        let vtable = i64::try_from(pos)
            .ok()
            .and_then(|p| p.checked_sub(i64::from(soff)))
            .and_then(|v| usize::try_from(v).ok())
            .ok_or_else(|| corrupt(format!("the vtable of the table at {pos} is out of bounds")))?;
        let vtable_len = read_u16(buf, vtable)? as usize;
        Ok(Table { buf, pos, vtable, vtable_len })
    }

    fn root(buf: &'a [u8]) -> Result<Table<'a>> {
        Table::at(buf, follow_offset(buf, 0)?)
    }

    /// Where the field at vtable offset `voff` is, if present.
    fn field(&self, voff: u16) -> Result<Option<usize>> {
        let voff = usize::from(voff);
        if voff + 2 > self.vtable_len {
            return Ok(None);
        }
        let off = read_u16(self.buf, self.vtable + voff)?;
        if off == 0 {
            return Ok(None);
        }
        self.pos
            .checked_add(usize::from(off))
            .map(Some)
            .ok_or_else(|| corrupt("a field offset overflows"))
    }

    fn scalar<const N: usize>(&self, voff: u16) -> Result<Option<[u8; N]>> {
        match self.field(voff)? {
            Some(p) => Ok(Some(read_array::<N>(self.buf, p)?)),
            None => Ok(None),
        }
    }

    fn u8(&self, voff: u16) -> Result<u8> {
        Ok(self.scalar::<1>(voff)?.map_or(0, |b| b[0]))
    }

    fn i8(&self, voff: u16) -> Result<i8> {
        Ok(self.scalar::<1>(voff)?.map_or(0, i8::from_le_bytes))
    }

    fn u16(&self, voff: u16) -> Result<u16> {
        Ok(self.scalar::<2>(voff)?.map_or(0, u16::from_le_bytes))
    }

    fn i16(&self, voff: u16) -> Result<i16> {
        Ok(self.scalar::<2>(voff)?.map_or(0, i16::from_le_bytes))
    }

    fn u32(&self, voff: u16) -> Result<u32> {
        Ok(self.scalar::<4>(voff)?.map_or(0, u32::from_le_bytes))
    }

    fn indirect(&self, voff: u16) -> Result<Option<usize>> {
        match self.field(voff)? {
            Some(p) => Ok(Some(follow_offset(self.buf, p)?)),
            None => Ok(None),
        }
    }

    fn table(&self, voff: u16) -> Result<Option<Table<'a>>> {
        match self.indirect(voff)? {
            Some(p) => Ok(Some(Table::at(self.buf, p)?)),
            None => Ok(None),
        }
    }

    fn vector(&self, voff: u16) -> Result<Option<FbVector<'a>>> {
        match self.indirect(voff)? {
            Some(p) => Ok(Some(FbVector::at(self.buf, p)?)),
            None => Ok(None),
        }
    }

    /// A vector field, empty when absent.
    fn vector_or_empty(&self, voff: u16) -> Result<FbVector<'a>> {
        Ok(self.vector(voff)?.unwrap_or(FbVector { buf: self.buf, start: 0, len: 0 }))
    }

    fn string(&self, voff: u16) -> Result<Option<&'a str>> {
        match self.indirect(voff)? {
            Some(p) => Ok(Some(string_at(self.buf, p)?)),
            None => Ok(None),
        }
    }
}

fn string_at(buf: &[u8], pos: usize) -> Result<&str> {
    let v = FbVector::at(buf, pos)?;
    std::str::from_utf8(v.bytes(1)?).map_err(|e| corrupt(format!("a string at {pos} is not UTF-8: {e}")))
}

#[derive(Clone, Copy)]
struct FbVector<'a> {
    buf: &'a [u8],
    /// The first element (after the length).
    start: usize,
    len: usize,
}

impl<'a> FbVector<'a> {
    fn at(buf: &'a [u8], pos: usize) -> Result<FbVector<'a>> {
        let len = read_u32(buf, pos)? as usize;
        Ok(FbVector { buf, start: pos + 4, len })
    }

    fn bytes(&self, elem_size: usize) -> Result<&'a [u8]> {
        self.len
            .checked_mul(elem_size)
            .and_then(|n| self.start.checked_add(n))
            .and_then(|end| self.buf.get(self.start..end))
            .ok_or_else(|| corrupt(format!("a vector of {} elements at {} is out of bounds", self.len, self.start)))
    }

    fn u16s(&self) -> Result<Vec<u16>> {
        Ok(self.bytes(2)?.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect())
    }

    fn u32s(&self) -> Result<Vec<u32>> {
        Ok(self.bytes(4)?.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    }

    fn offset_target(&self, i: usize) -> Result<usize> {
        if i >= self.len {
            return Err(corrupt(format!("index {i} is past a vector of {}", self.len)));
        }
        let pos = i
            .checked_mul(4)
            .and_then(|o| self.start.checked_add(o))
            .ok_or_else(|| corrupt("a vector index overflows"))?;
        follow_offset(self.buf, pos)
    }

    fn tables(&self) -> Result<Vec<Table<'a>>> {
        self.bytes(4)?;
        (0..self.len).map(|i| Table::at(self.buf, self.offset_target(i)?)).collect()
    }

    fn strings(&self) -> Result<Vec<&'a str>> {
        self.bytes(4)?;
        (0..self.len).map(|i| string_at(self.buf, self.offset_target(i)?)).collect()
    }
}

// ---------------------------------------------------------------------------------------
// From tables to values.

/// An aval as stored, before its dtype and dims are interpreted.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RawAval {
    kind: i8,
    dtype: i8,
    shape: Vec<String>,
}

impl RawAval {
    fn read(t: Table<'_>) -> Result<RawAval> {
        Ok(RawAval {
            kind: t.i8(aval::KIND)?,
            dtype: t.i8(aval::DTYPE)?,
            shape: t.vector_or_empty(aval::SHAPE)?.strings()?.into_iter().map(str::to_string).collect(),
        })
    }

    /// The aval; `name` (`in_avals[3]`) and `what` (the source) go into errors.
    fn to_aval(&self, name: &str, what: &str) -> Result<Aval> {
        match self.kind {
            0 => {}
            1 => return Err(Error::format(what, format!("{name} is an abstract token, not an array"))),
            k => return Err(Error::format(what, format!("{name} has unknown abstract value kind {k}"))),
        }
        let dtype = jax_dtype(self.dtype).map_err(|why| Error::UnsupportedDType(format!("{why} ({name} of {what})")))?;
        let shape = self
            .shape
            .iter()
            .map(|d| match d.trim().parse::<i64>() {
                Ok(n) if n >= 0 => Ok(n),
                Ok(n) => Err(Error::format(what, format!("{name} has negative dimension {n}"))),
                Err(_) => Err(Error::format(
                    what,
                    format!(
                        "{name} has symbolic dimension {d:?} (shape polymorphism), which flaxlayer \
                         does not support; export with concrete shapes"
                    ),
                )),
            })
            .collect::<Result<Vec<i64>>>()?;
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

fn read_tree(t: Table<'_>, what: &str, path: &str, depth: usize) -> Result<TreeDef> {
    let at = if path.is_empty() { "the root" } else { path };
    if depth > MAX_TREE_DEPTH {
        return Err(Error::format(what, format!("the tree is nested deeper than {MAX_TREE_DEPTH} at {at}")));
    }
    let kind = t.i8(tree::KIND)?;
    let child_tables = t.vector_or_empty(tree::CHILDREN)?.tables()?;
    let names = t.vector(tree::CHILDREN_NAMES)?.map(|v| v.strings()).transpose()?;
    let child_path = |seg: &str| if path.is_empty() { seg.to_string() } else { format!("{path}/{seg}") };
    let children = |names: &[String]| -> Result<Vec<TreeDef>> {
        child_tables
            .iter()
            .zip(names)
            .map(|(c, n)| read_tree(*c, what, &child_path(n), depth + 1))
            .collect()
    };
    let index_names: Vec<String> = (0..child_tables.len()).map(|i| i.to_string()).collect();
    let no_children = |kind_name: &str| -> Result<()> {
        if child_tables.is_empty() {
            Ok(())
        } else {
            Err(Error::format(what, format!("the tree's {kind_name} at {at} has {} children", child_tables.len())))
        }
    };
    Ok(match kind {
        0 => {
            no_children("leaf")?;
            TreeDef::Leaf(())
        }
        1 => {
            no_children("None")?;
            TreeDef::None
        }
        2 => TreeDef::Tuple(children(&index_names)?),
        3 => TreeDef::List(children(&index_names)?),
        4 => {
            let keys: Vec<String> = names.unwrap_or_default().into_iter().map(str::to_string).collect();
            if keys.len() != child_tables.len() {
                return Err(Error::format(
                    what,
                    format!("the tree's dict at {at} has {} keys for {} children", keys.len(), child_tables.len()),
                ));
            }
            // JAX sorts dict keys; unsorted or repeated keys would change the leaf order.
            if let Some(w) = keys.windows(2).find(|w| w[0] >= w[1]) {
                return Err(Error::format(
                    what,
                    format!("the tree's dict at {at} has keys out of order or repeated: {:?}, {:?}", w[0], w[1]),
                ));
            }
            TreeDef::Dict(keys.iter().cloned().zip(children(&keys)?).collect())
        }
        5 => {
            let name = t.string(tree::CUSTOM_NAME)?.unwrap_or("");
            return Err(Error::format(
                what,
                format!(
                    "the tree has a custom node {name:?} at {at}; flaxlayer reads only tuples, lists, \
                     dicts with string keys and None (convert other containers before exporting)"
                ),
            ));
        }
        k => return Err(Error::format(what, format!("the tree has a node of unknown kind {k} at {at}"))),
    })
}

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

fn parse(bytes: &[u8], what: &str) -> Result<Exported> {
    if bytes.len() > MAX_BYTES {
        return Err(Error::format(what, format!("{} bytes is over the 2 GiB a flatbuffer can hold", bytes.len())));
    }
    let opts = VerifierOptions { max_depth: MAX_TREE_DEPTH + 4, ..VerifierOptions::default() };
    let mut verifier = Verifier::new(&opts, bytes);
    <ForwardsUOffset<ExportedTable> as Verifiable>::run_verifier(&mut verifier, 0)
        .map_err(|e| Error::format(what, format!("not a serialized jax.export.Exported: {e}")))?;
    let with_what = |e: Error| match e {
        Error::InvalidFormat { reason, .. } => Error::format(what, reason),
        e => e,
    };
    read_exported(bytes, what).map_err(with_what)
}

fn read_exported(bytes: &[u8], what: &str) -> Result<Exported> {
    let root = Table::root(bytes)?;

    let serialization_version = root.u16(ex::SERIALIZATION_VERSION)?;
    if !SUPPORTED_SERIALIZATION_VERSIONS.contains(&serialization_version) {
        return Err(Error::format(
            what,
            format!(
                "serialization version {serialization_version} is not supported; this reader supports {}..={}",
                SUPPORTED_SERIALIZATION_VERSIONS.start(),
                SUPPORTED_SERIALIZATION_VERSIONS.end()
            ),
        ));
    }
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
        return Err(Error::format(what, format!("module_kept_var_idx is not strictly increasing at {}, {}", w[0], w[1])));
    }
    if let Some(&last) = module_kept_var_idx.last() {
        if last >= in_avals.len() {
            return Err(Error::format(
                what,
                format!("module_kept_var_idx has {last}, past the {} in_avals", in_avals.len()),
            ));
        }
    }

    let platforms: Vec<String> =
        root.vector_or_empty(ex::PLATFORMS)?.strings()?.into_iter().map(str::to_string).collect();
    if platforms.is_empty() {
        return Err(Error::format(what, "no platforms"));
    }

    let nr_devices = match root.u32(ex::NR_DEVICES)? {
        0 => u32::try_from(root.i16(ex::NR_DEVICES_SHORT)?)
            .map_err(|_| Error::format(what, "nr_devices_short is negative"))?,
        n => n,
    };

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
        function_name,
        in_tree,
        out_tree,
        in_avals,
        out_avals,
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

#[cfg(test)]
mod tests {
    use super::*;
    use flatbuffers::{FlatBufferBuilder, WIPOffset};
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

    const PARSEABLE: [&str; 6] = ["mixed", "bare_with_vjp", "multi_platform", "ordered_effect", "legacy_in_avals", "idxs_only"];

    fn strings(v: &serde_json::Value) -> Vec<String> {
        v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
    }

    fn avals(v: &serde_json::Value) -> Vec<Aval> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|a| Aval {
                dtype: a["dtype"].as_str().unwrap().parse().unwrap(),
                shape: a["shape"].as_array().unwrap().iter().map(|d| d.as_i64().unwrap()).collect(),
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
            None => b.push_slot::<u32>(ex::NR_DEVICES, 1, 0),
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
        let s = Spec { in_avals: None, unique_avals: Some(vec![(14, vec!["2"]), (10, vec!["2"])]), in_idxs: Some(vec![1]), ..spec() };
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
    fn hand_built_errors() {
        let r = reason(&Spec { version: 12, ..spec() });
        assert!(r.contains("serialization version 12") && r.contains("2..=11"), "{r}");
        let r = reason(&Spec { version: 1, ..spec() });
        assert!(r.contains("serialization version 1 "), "{r}");
        let r = reason(&Spec { calling_convention: 8, ..spec() });
        assert!(r.contains("calling convention version 8"), "{r}");
        let r = reason(&Spec { in_tree: None, ..spec() });
        assert!(r.contains("missing in_tree"), "{r}");
        let r = reason(&Spec { unique_avals: Some(vec![(11, vec!["2"])]), in_idxs: Some(vec![0]), ..spec() });
        assert!(r.contains("disagree"), "{r}");
        let r = reason(&Spec { in_avals: None, unique_avals: Some(vec![(10, vec!["2"])]), in_idxs: Some(vec![1]), ..spec() });
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
        let r = reason(&Spec { in_tree: in_tree(dict(vec!["b", "a"], vec![leaf(), TestTree::Node(1, vec![], None)])), ..spec() });
        assert!(r.contains("out of order") && r.contains("0/0"), "{r}");
        let r = reason(&Spec { in_tree: in_tree(dict(vec!["a", "a"], vec![leaf(), TestTree::Node(1, vec![], None)])), ..spec() });
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
}
