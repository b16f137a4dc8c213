//! Decodes the shardings of a serialized `jax.export.Exported` into [`NamedSharding`]s.
//!
//! Since serialization version 10 (4/2026) JAX writes `unique_abstract_meshes` and
//! `unique_named_shardings` once, and per argument / result a 1-based index into the latter
//! (`in_shardings_idxs`, 0 = unspecified); it also still writes the older layout, a `Sharding`
//! table per argument holding a full `NamedSharding` (or nothing: unspecified). As in JAX the
//! index layout wins; when both are present they must agree. Exports from before version 9
//! (3/2026) hold XLA `HloSharding` protos instead, which are refused.

use super::exported::Aval;
use super::flatbuf::Table;
use super::jax_schema::{axis_type, ex, mesh, named, sharding, spec, spec_axis};
use super::sharding::{AxisType, Mesh, NamedSharding};
use crate::{Error, Result};
use std::cell::Cell;

/// About the most memory the decoded shardings may take (a real one takes a few hundred
/// bytes). Shardings and meshes are shared by index, so without a bound a small file could
/// expand into a huge value.
const MAX_DECODED_BYTES: usize = 1 << 28;

/// The shared tables of shardings, and what errors need.
pub(super) struct Shardings<'w> {
    /// `unique_abstract_meshes`, referred to by index from named shardings.
    meshes: Vec<Mesh>,
    /// `unique_named_shardings`, referred to by 1-based index from the sides.
    unique: Vec<NamedSharding>,
    nr_devices: u32,
    what: &'w str,
    /// The bytes decoded so far, against [`MAX_DECODED_BYTES`].
    decoded: Cell<usize>,
}

impl<'w> Shardings<'w> {
    pub(super) fn read(root: Table<'_>, nr_devices: u32, what: &'w str) -> Result<Shardings<'w>> {
        let meshes = root
            .vector_or_empty(ex::UNIQUE_ABSTRACT_MESHES)?
            .tables()?
            .iter()
            .enumerate()
            .map(|(i, t)| read_mesh(*t, &format!("unique_abstract_meshes[{i}]"), what))
            .collect::<Result<Vec<Mesh>>>()?;
        let mut s = Shardings { meshes, unique: Vec::new(), nr_devices, what, decoded: Cell::new(0) };
        s.unique = root
            .vector_or_empty(ex::UNIQUE_NAMED_SHARDINGS)?
            .tables()?
            .iter()
            .enumerate()
            .map(|(i, t)| s.named(*t, &format!("unique_named_shardings[{i}]")))
            .collect::<Result<Vec<NamedSharding>>>()?;
        Ok(s)
    }

    /// The shardings of one side (`in` or `out`), one per aval, from the index layout or the
    /// inline one; none recorded means all unspecified.
    pub(super) fn side(
        &self,
        root: Table<'_>,
        side: &str,
        idxs_voff: u16,
        inline_voff: u16,
        avals: &[Aval],
    ) -> Result<Vec<Option<NamedSharding>>> {
        let what = self.what;
        let inline = root
            .vector_or_empty(inline_voff)?
            .tables()?
            .iter()
            .enumerate()
            .map(|(i, t)| self.sharding(*t, &format!("{side}_shardings[{i}]")))
            .collect::<Result<Vec<Option<NamedSharding>>>>()?;
        let idxs = root.vector_or_empty(idxs_voff)?.u32s()?;
        if !idxs.is_empty() && idxs.len() != avals.len() {
            return Err(Error::format(
                what,
                format!("there are {} {side}_shardings for {} {side}_avals", idxs.len(), avals.len()),
            ));
        }
        let shardings = if !idxs.is_empty() {
            let from_idxs = idxs
                .iter()
                .enumerate()
                .map(|(i, &k)| self.by_index(&format!("{side}_shardings_idxs[{i}]"), k))
                .collect::<Result<Vec<Option<NamedSharding>>>>()?;
            if !inline.is_empty() && inline != from_idxs {
                return Err(Error::format(what, format!("{side}_shardings and {side}_shardings_idxs disagree")));
            }
            from_idxs
        } else if !inline.is_empty() {
            inline
        } else {
            vec![None; avals.len()]
        };
        if shardings.len() != avals.len() {
            return Err(Error::format(
                what,
                format!("there are {} {side}_shardings for {} {side}_avals", shardings.len(), avals.len()),
            ));
        }
        for (i, (s, aval)) in shardings.iter().zip(avals).enumerate() {
            let Some(s) = s else { continue };
            if s.mesh.num_devices() != self.nr_devices as usize {
                return Err(Error::format(
                    what,
                    format!(
                        "{side}_shardings[{i}] is over a mesh of {} devices, but the module is for {}",
                        s.mesh.num_devices(),
                        self.nr_devices
                    ),
                ));
            }
            if s.spec.len() > aval.shape.len() {
                return Err(Error::format(
                    what,
                    format!("{side}_shardings[{i}] splits {} dimensions of {side}_avals[{i}], a {aval}", s.spec.len()),
                ));
            }
        }
        Ok(shardings)
    }

    /// The unique named sharding at 1-based index `k` (`name` says where `k` is); 0 is none.
    fn by_index(&self, name: &str, k: u32) -> Result<Option<NamedSharding>> {
        if k == 0 {
            return Ok(None);
        }
        let s = self.unique.get(k as usize - 1).ok_or_else(|| {
            Error::format(self.what, format!("{name} is {k}, past the {} unique named shardings", self.unique.len()))
        })?;
        self.charge(s)?;
        Ok(Some(s.clone()))
    }

    /// Counts `s` against [`MAX_DECODED_BYTES`].
    fn charge(&self, s: &NamedSharding) -> Result<()> {
        let strings = |v: &[String]| v.iter().map(|s| s.len() + 24).sum::<usize>();
        let size = 128
            + strings(&s.mesh.axis_names)
            + 16 * s.mesh.axis_sizes.len()
            + s.spec.iter().map(|d| 24 + strings(d)).sum::<usize>()
            + s.memory_kind.as_ref().map_or(0, String::len);
        let total = self.decoded.get().saturating_add(size);
        if total > MAX_DECODED_BYTES {
            return Err(Error::format(
                self.what,
                format!("the shardings, shared by index, expand to more than {MAX_DECODED_BYTES} bytes"),
            ));
        }
        self.decoded.set(total);
        Ok(())
    }

    /// A `Sharding` table (the inline layout): a named sharding, or unspecified.
    fn sharding(&self, t: Table<'_>, name: &str) -> Result<Option<NamedSharding>> {
        if let Some(n) = t.table(sharding::NAMED_SHARDING)? {
            return self.named(n, name).map(Some);
        }
        if t.field(sharding::HLO_SHARDING_PROTO)?.is_some() {
            return Err(Error::format(
                self.what,
                format!(
                    "{name} is an XLA HloSharding proto: exported by an older JAX (serialization \
                     version < 9, before 3/2026), whose shardings flaxlayer does not read; re-export \
                     with jax 0.10.2"
                ),
            ));
        }
        Ok(None)
    }

    /// A `NamedSharding` table; its mesh is the indexed unique mesh when there are unique
    /// meshes (as in JAX), else the inline one.
    fn named(&self, t: Table<'_>, name: &str) -> Result<NamedSharding> {
        let what = self.what;
        let inline = t.table(named::MESH)?.map(|m| read_mesh(m, name, what)).transpose()?;
        let mesh = if self.meshes.is_empty() {
            inline.ok_or_else(|| Error::format(what, format!("{name} has no mesh")))?
        } else {
            let k = t.u32(named::ABSTRACT_MESH_IDX)?;
            let m = self.meshes.get(k as usize).cloned().ok_or_else(|| {
                Error::format(
                    what,
                    format!("{name} has mesh index {k}, past the {} unique abstract meshes", self.meshes.len()),
                )
            })?;
            if inline.is_some_and(|i| i != m) {
                return Err(Error::format(what, format!("{name}'s mesh and unique_abstract_meshes[{k}] disagree")));
            }
            m
        };
        let spec_table =
            t.table(named::SPEC)?.ok_or_else(|| Error::format(what, format!("{name} has no partition spec")))?;
        let unreduced = spec_table.strings(spec::UNREDUCED)?;
        if !unreduced.is_empty() {
            return Err(Error::format(
                what,
                format!(
                    "{name} is unreduced over mesh axes {unreduced:?} (each device holds a partial sum), \
                     which flaxlayer does not support"
                ),
            ));
        }
        let spec = spec_table
            .vector_or_empty(spec::PARTITIONS)?
            .tables()?
            .iter()
            .map(|p| p.strings(spec_axis::AXES))
            .collect::<Result<Vec<Vec<String>>>>()?;
        let s = NamedSharding { mesh, spec, memory_kind: t.string(named::MEMORY_KIND)?.map(str::to_string) };
        s.check().map_err(|e| Error::format(what, format!("{name}: {e}")))?;
        self.charge(&s)?;
        Ok(s)
    }
}

/// An `AbstractMesh` table; `name` says where it is in errors. A missing `axis_types` vector
/// means all `Auto` (the schema's default before 1/2026); `Manual` axes are refused.
fn read_mesh(t: Table<'_>, name: &str, what: &str) -> Result<Mesh> {
    let axis_names = t.strings(mesh::AXIS_NAMES)?;
    let axis_sizes = t.vector_or_empty(mesh::AXIS_SIZES)?.u32s()?.into_iter().map(|s| s as usize).collect();
    let types = t.vector_or_empty(mesh::AXIS_TYPES)?.bytes(1)?;
    let axis_types = if types.is_empty() {
        vec![AxisType::Auto; axis_names.len()]
    } else {
        types
            .iter()
            .enumerate()
            .map(|(i, &ty)| {
                let axis = axis_names.get(i).map_or("?", String::as_str);
                match ty {
                    axis_type::AUTO => Ok(AxisType::Auto),
                    axis_type::EXPLICIT => Ok(AxisType::Explicit),
                    axis_type::MANUAL => Err(Error::format(
                        what,
                        format!(
                            "{name}: mesh axis {axis:?} is Manual (as inside shard_map); flaxlayer \
                             places arrays over Auto and Explicit axes only"
                        ),
                    )),
                    k => Err(Error::format(what, format!("{name}: mesh axis {axis:?} has unknown axis type {k}"))),
                }
            })
            .collect::<Result<Vec<AxisType>>>()?
    };
    let m = Mesh { axis_names, axis_sizes, axis_types };
    m.check().map_err(|e| Error::format(what, format!("{name}: {e}")))?;
    Ok(m)
}
