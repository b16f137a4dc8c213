//! JAX named shardings of exported arguments and results, and which slice each device holds.
//!
//! A [`NamedSharding`] is JAX's `NamedSharding` over an abstract mesh, as `jax.export`
//! records it: mesh axes with names and sizes, and per array dimension the mesh axes that
//! split it. Devices are numbered by their position in the mesh (row-major over
//! [`Mesh::axis_sizes`], JAX's `mesh.devices.flat`), which is also the logical device id of
//! the exported module's HLO shardings.

use std::ops::Range;

use crate::{Error, Result};

/// The most devices a mesh may have (more than any machine JAX runs on); it bounds what a
/// hostile file can make [`NamedSharding::tiling`] allocate.
pub const MAX_MESH_DEVICES: usize = 1 << 20;

/// How JAX treats a mesh axis when tracing. Both kinds place data the same way; `Manual`
/// axes (inside `shard_map`) are refused when read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AxisType {
    /// The compiler propagates shardings (JAX's default).
    Auto,
    /// Shardings are part of the array types.
    Explicit,
}

/// A logical mesh of devices: named axes with sizes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Mesh {
    /// The axes' names (`data`, `model`, ...), major to minor.
    pub(crate) axis_names: Vec<String>,
    /// The axes' sizes; their product is the number of devices.
    pub(crate) axis_sizes: Vec<usize>,
    /// One per axis.
    pub(crate) axis_types: Vec<AxisType>,
}

impl Mesh {
    /// The axes' names (`data`, `model`, ...), major to minor.
    pub fn axis_names(&self) -> &[String] {
        &self.axis_names
    }

    /// The axes' sizes; their product is the number of devices.
    pub fn axis_sizes(&self) -> &[usize] {
        &self.axis_sizes
    }

    /// One per axis.
    pub fn axis_types(&self) -> &[AxisType] {
        &self.axis_types
    }
}

impl Mesh {
    /// The number of devices: the product of the axis sizes (checked by [`Mesh::check`]).
    pub fn num_devices(&self) -> usize {
        self.axis_sizes.iter().try_fold(1usize, |n, &s| n.checked_mul(s)).unwrap_or(usize::MAX)
    }

    /// Checks that names, sizes and types agree in number, names are distinct and non-empty,
    /// sizes are at least 1 and the mesh has at most [`MAX_MESH_DEVICES`] devices.
    pub fn check(&self) -> Result<()> {
        let bad = |reason: String| Err(Error::invalid("mesh", reason));
        let n = self.axis_names.len();
        if self.axis_sizes.len() != n || self.axis_types.len() != n {
            return bad(format!("{n} axis names, {} sizes and {} types", self.axis_sizes.len(), self.axis_types.len()));
        }
        for (i, name) in self.axis_names.iter().enumerate() {
            if name.is_empty() || self.axis_names[..i].contains(name) {
                return bad(format!("axis name {name:?} is empty or repeated in {:?}", self.axis_names));
            }
        }
        if let Some(i) = self.axis_sizes.iter().position(|&s| s == 0) {
            return bad(format!("axis {:?} has size 0", self.axis_names[i]));
        }
        let total = self.axis_sizes.iter().try_fold(1usize, |n, &s| n.checked_mul(s));
        if total.is_none_or(|t| t > MAX_MESH_DEVICES) {
            return bad(format!("axis sizes {:?} make more than {MAX_MESH_DEVICES} devices", self.axis_sizes));
        }
        Ok(())
    }

    /// The position of the axis named `name`.
    pub fn axis_index(&self, name: &str) -> Option<usize> {
        self.axis_names.iter().position(|a| a == name)
    }
}

/// How an array is split over a mesh: JAX's `NamedSharding(mesh, PartitionSpec(...))`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NamedSharding {
    /// The mesh the array is laid out over.
    pub(crate) mesh: Mesh,
    /// Per array dimension, the mesh axes it is split over, outermost (major) first; empty
    /// means not split. Dimensions past the end are not split. Mesh axes named nowhere
    /// replicate the array.
    pub(crate) spec: Vec<Vec<String>>,
    /// JAX's memory kind (`device`, `pinned_host`, ...), if recorded.
    pub(crate) memory_kind: Option<String>,
}

impl NamedSharding {
    /// The mesh the array is laid out over.
    pub fn mesh(&self) -> &Mesh {
        &self.mesh
    }

    /// Per array dimension, the mesh axes it is split over, outermost (major) first; empty
    /// means not split. Dimensions past the end are not split. Mesh axes named nowhere
    /// replicate the array.
    pub fn spec(&self) -> &[Vec<String>] {
        &self.spec
    }

    /// JAX's memory kind (`device`, `pinned_host`, ...), if recorded.
    pub fn memory_kind(&self) -> Option<&str> {
        self.memory_kind.as_deref()
    }
}

/// The block of an array that one device holds: per dimension, `start..end`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeviceSlice {
    /// Per array dimension, the rows the device holds.
    pub(crate) ranges: Vec<Range<usize>>,
}

impl DeviceSlice {
    /// Per array dimension, the rows the device holds.
    pub fn ranges(&self) -> &[Range<usize>] {
        &self.ranges
    }
}

impl DeviceSlice {
    /// The block's shape.
    pub fn shape(&self) -> Vec<usize> {
        self.ranges.iter().map(|r| r.end - r.start).collect()
    }
}

impl NamedSharding {
    /// Checks the mesh ([`Mesh::check`]) and that the spec names each mesh axis at most once,
    /// and only axes of the mesh.
    pub fn check(&self) -> Result<()> {
        self.mesh.check()?;
        let mut seen: Vec<&str> = Vec::new();
        for axis in self.spec.iter().flatten() {
            if self.mesh.axis_index(axis).is_none() {
                return Err(Error::invalid(
                    "partition spec",
                    format!("names axis {axis:?}, which is not in the mesh {:?}", self.mesh.axis_names),
                ));
            }
            if seen.contains(&axis.as_str()) {
                return Err(Error::invalid("partition spec", format!("names mesh axis {axis:?} twice")));
            }
            seen.push(axis);
        }
        Ok(())
    }

    /// Per dimension of an array of rank `rank`, the mesh axis positions that split it.
    fn split_axes(&self, rank: usize) -> Result<Vec<Vec<usize>>> {
        self.check()?;
        if self.spec.len() > rank {
            return Err(Error::invalid(
                "partition spec",
                format!("splits {} dimensions of an array of rank {rank}", self.spec.len()),
            ));
        }
        Ok((0..rank)
            .map(|d| {
                let axes = self.spec.get(d).map(Vec::as_slice).unwrap_or_default();
                axes.iter().filter_map(|a| self.mesh.axis_index(a)).collect()
            })
            .collect())
    }

    /// The shape of each device's block of an array of `shape`; a dimension that its mesh
    /// axes do not divide evenly is an error (as JAX's `shard_shape`).
    pub fn shard_shape(&self, shape: &[usize]) -> Result<Vec<usize>> {
        let split = self.split_axes(shape.len())?;
        shape.iter().zip(&split).enumerate().map(|(d, (&n, axes))| self.block_len(shape, d, n, axes)).collect()
    }

    /// `shape[d] / (product of the sizes of axes)`, if it divides evenly.
    fn block_len(&self, shape: &[usize], d: usize, n: usize, axes: &[usize]) -> Result<usize> {
        let parts: usize = axes.iter().map(|&a| self.mesh.axis_sizes[a]).product();
        if !n.is_multiple_of(parts) {
            let names: Vec<&str> = axes.iter().map(|&a| self.mesh.axis_names[a].as_str()).collect();
            return Err(Error::invalid(
                format!("sharding an array of shape {shape:?}"),
                format!(
                    "dimension {d} (size {n}) is split {parts} ways over mesh axes {names:?}, which does not divide it"
                ),
            ));
        }
        Ok(n / parts)
    }

    /// Which block of an array of `shape` each device holds, indexed by the device's position
    /// in the mesh (row-major over the axis sizes, JAX's `mesh.devices.flat`). The same as
    /// JAX's `sharding.devices_indices_map(shape)`; uneven splits are an error, as in JAX.
    pub fn tiling(&self, shape: &[usize]) -> Result<Vec<DeviceSlice>> {
        let split = self.split_axes(shape.len())?;
        let blocks = self.shard_shape(shape)?;
        let sizes = &self.mesh.axis_sizes;
        // Row-major strides of the mesh axes.
        let mut strides = vec![1usize; sizes.len()];
        for a in (0..sizes.len().saturating_sub(1)).rev() {
            strides[a] = strides[a + 1] * sizes[a + 1];
        }
        let coord = |device: usize, a: usize| (device / strides[a]) % sizes[a];
        let slice = |device: usize| DeviceSlice {
            ranges: shape
                .iter()
                .zip(&split)
                .zip(&blocks)
                .map(|((&n, axes), &block)| {
                    if axes.is_empty() {
                        return 0..n;
                    }
                    let shard = axes.iter().fold(0, |s, &a| s * sizes[a] + coord(device, a));
                    shard * block..(shard + 1) * block
                })
                .collect(),
        };
        Ok((0..self.mesh.num_devices()).map(slice).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mesh(names: &[&str], sizes: &[usize]) -> Mesh {
        Mesh {
            axis_names: names.iter().map(|s| s.to_string()).collect(),
            axis_sizes: sizes.to_vec(),
            axis_types: vec![AxisType::Auto; sizes.len()],
        }
    }

    fn sharding(m: Mesh, spec: &[&[&str]]) -> NamedSharding {
        NamedSharding {
            mesh: m,
            spec: spec.iter().map(|d| d.iter().map(|s| s.to_string()).collect()).collect(),
            memory_kind: None,
        }
    }

    fn ranges(t: &[DeviceSlice]) -> Vec<Vec<(usize, usize)>> {
        t.iter().map(|s| s.ranges.iter().map(|r| (r.start, r.end)).collect()).collect()
    }

    #[test]
    fn tiling_by_hand() {
        // P(('x', 'y')) on a 2x3 mesh: x is the major part of the split.
        let s = sharding(mesh(&["x", "y"], &[2, 3]), &[&["x", "y"]]);
        let t = s.tiling(&[12, 5]).unwrap();
        let firsts: Vec<(usize, usize)> = ranges(&t).iter().map(|r| r[0]).collect();
        assert_eq!(firsts, [(0, 2), (2, 4), (4, 6), (6, 8), (8, 10), (10, 12)]);
        assert!(t.iter().all(|d| d.ranges[1] == (0..5)));
        assert_eq!(s.shard_shape(&[12, 5]).unwrap(), [2, 5]);
        assert_eq!(t[3].shape(), [2, 5]);
        // P('y', 'x'): x splits dimension 1, y dimension 0.
        let s = sharding(mesh(&["x", "y"], &[2, 3]), &[&["y"], &["x"]]);
        assert_eq!(ranges(&s.tiling(&[3, 4]).unwrap())[4], [(1, 2), (2, 4)]);
        // Replicated, and a scalar.
        let s = sharding(mesh(&["x"], &[4]), &[]);
        assert_eq!(ranges(&s.tiling(&[6]).unwrap()), vec![vec![(0, 6)]; 4]);
        assert_eq!(s.tiling(&[]).unwrap(), vec![DeviceSlice { ranges: vec![] }; 4]);
        // Zero-size dimensions divide evenly.
        let s = sharding(mesh(&["x"], &[4]), &[&["x"]]);
        assert_eq!(ranges(&s.tiling(&[0]).unwrap()), vec![vec![(0, 0)]; 4]);
    }

    #[test]
    fn tiling_errors() {
        let s = sharding(mesh(&["x"], &[4]), &[&["x"]]);
        let e = s.tiling(&[6]).unwrap_err();
        assert!(matches!(&e, Error::InvalidArgument { reason, .. } if reason.contains("split 4 ways")), "{e}");
        assert!(s.shard_shape(&[6]).is_err());
        let e = s.tiling(&[]).unwrap_err();
        assert!(e.to_string().contains("splits 1 dimensions of an array of rank 0"), "{e}");
        let e = sharding(mesh(&["x"], &[4]), &[&["z"]]).tiling(&[8]).unwrap_err();
        assert!(e.to_string().contains("\"z\", which is not in the mesh"), "{e}");
        let e = sharding(mesh(&["x", "y"], &[2, 2]), &[&["x"], &["x"]]).tiling(&[8, 8]).unwrap_err();
        assert!(e.to_string().contains("twice"), "{e}");
        let e = sharding(mesh(&["x", "x"], &[2, 2]), &[]).tiling(&[8]).unwrap_err();
        assert!(e.to_string().contains("repeated"), "{e}");
        let e = sharding(mesh(&["x"], &[0]), &[]).tiling(&[8]).unwrap_err();
        assert!(e.to_string().contains("size 0"), "{e}");
        let e = sharding(mesh(&["x", "y"], &[1 << 16, 1 << 16]), &[]).tiling(&[8]).unwrap_err();
        assert!(e.to_string().contains("more than"), "{e}");
        let e = sharding(mesh(&["x", "y"], &[usize::MAX, 2]), &[]).shard_shape(&[8]).unwrap_err();
        assert!(e.to_string().contains("more than"), "{e}");
        let mut m = mesh(&["x"], &[2]);
        m.axis_types.clear();
        assert!(sharding(m, &[]).tiling(&[2]).is_err());
    }
}
