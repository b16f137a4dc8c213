//! A bundle: one directory with `manifest.json`, `jax.export` serializations and weights.

mod decode;
mod decode_sharding;
pub mod exported;
mod flatbuf;
mod generation;
mod jax_schema;
mod manifest;
mod mesh_section;
mod sharding;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub use exported::Exported;
pub use generation::{GenerationSpec, PrefillSpec, GENERATION_VERSION};
pub use manifest::{Batching, ComputationSpec, InitSpec, Manifest, MethodSpec, Role, Slot, TrainSpec};
pub use mesh_section::{spec_text, DimAxes, MeshSection, PartitionSpec};
pub use sharding::{AxisType, DeviceSlice, Mesh, NamedSharding, MAX_MESH_DEVICES};

use crate::tensor::read_safetensors;
use crate::{Error, Result, Tensor};

/// The largest file a bundle may hold (computations, manifest): 1 GiB.
const MAX_FILE_BYTES: u64 = 1 << 30;

/// The file of a bundle's initial variables.
pub const VARIABLES_FILE: &str = "variables.safetensors";

/// The manifest's `variables_origin` of a bundle that ships no variables: its layers start
/// from `init` under the seed.
pub const INIT_ONLY: &str = "init-only";

/// A computation of a bundle: its roles and JAX's serialized export.
#[derive(Debug, Clone)]
pub struct BundleComputation {
    /// The manifest's entry.
    pub(crate) spec: ComputationSpec,
    /// JAX's serialized export, parsed.
    pub(crate) exported: Exported,
}

impl BundleComputation {
    /// The manifest's entry.
    pub fn spec(&self) -> &ComputationSpec {
        &self.spec
    }

    /// JAX's serialized export, parsed.
    pub fn exported(&self) -> &Exported {
        &self.exported
    }
}

/// An opened bundle: the manifest and every computation, parsed and cross-checked.
#[derive(Debug, Clone)]
pub struct Bundle {
    dir: PathBuf,
    manifest: Manifest,
    computations: HashMap<String, BundleComputation>,
}

impl Bundle {
    /// Opens the bundle directory `dir`, reading and checking every computation.
    ///
    /// A file that is there but cannot be read as what it should be (truncated, corrupt) is
    /// an error naming it that says to re-export the bundle.
    pub fn open(dir: impl AsRef<Path>) -> Result<Bundle> {
        let dir = dir.as_ref().to_path_buf();
        let manifest_path = dir.join("manifest.json");
        let manifest = Manifest::from_json(&read_capped(&manifest_path)?).map_err(|e| match e {
            Error::Json { cause, .. } => Error::Json { what: manifest_path.display().to_string(), cause, fix: String::new() },
            Error::InvalidFormat { reason, .. } => Error::format(manifest_path.display().to_string(), reason),
            e => e,
        });
        let manifest = manifest.map_err(|e| e.with_fix(CORRUPT))?;
        let mut computations = HashMap::new();
        for spec in manifest.computations() {
            let exported = Exported::read(dir.join(&spec.file)).map_err(|e| e.with_fix(CORRUPT))?;
            check_computation(&manifest, spec, &exported).map_err(|e| e.with_fix(CORRUPT))?;
            computations.insert(spec.file.clone(), BundleComputation { spec: spec.clone(), exported });
        }
        Ok(Bundle { dir, manifest, computations })
    }

    /// The bundle's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The computation stored in `file`.
    pub fn computation(&self, file: &str) -> Result<&BundleComputation> {
        self.computations.get(file).ok_or_else(|| Error::NotFound {
            what: "computation",
            name: file.into(),
            available: self.computations.keys().cloned().collect::<Vec<_>>().join(", "),
        })
    }

    /// The most devices any computation of the bundle was exported for (1 for a
    /// single-device bundle).
    pub fn devices(&self) -> usize {
        self.computations.values().map(|c| usize::try_from(c.exported.nr_devices).unwrap_or(1)).max().unwrap_or(1).max(1)
    }

    /// The mesh the bundle's multi-device computations run on (the manifest's, else the one
    /// their recorded shardings name); `None` for a single-device bundle.
    pub fn mesh(&self) -> Option<Mesh> {
        if let Some(m) = &self.manifest.mesh {
            return Some(m.mesh());
        }
        let mut comps: Vec<&BundleComputation> = self.computations.values().filter(|c| c.exported.nr_devices > 1).collect();
        comps.sort_by(|a, b| a.spec.file.cmp(&b.spec.file));
        comps.iter().flat_map(|c| c.exported.in_shardings.iter().chain(&c.exported.out_shardings)).flatten().map(|s| s.mesh.clone()).next()
    }

    /// How the variable `name` is split when `method` runs: the sharding recorded for it by
    /// the first of the method's inference, then training computations that takes it (the
    /// layout a layer uploads it in); `None` when whole or replicated, or not taken.
    pub fn variable_sharding(&self, method: &str, name: &str) -> Option<&NamedSharding> {
        let m = self.manifest.methods.get(method)?;
        m.inference.iter().chain(&m.training).find_map(|spec| {
            let c = self.computations.get(&spec.file)?;
            let i = spec.args.iter().position(|s| matches!(s.role, Role::Param | Role::State) && s.name.as_deref() == Some(name))?;
            c.exported.in_shardings.get(i)?.as_ref().filter(|_| c.exported.nr_devices > 1)
        })
    }

    /// The method named `name`.
    pub fn method(&self, name: &str) -> Result<&MethodSpec> {
        self.manifest.methods.get(name).ok_or_else(|| Error::NotFound {
            what: "method",
            name: name.into(),
            available: self.manifest.methods.keys().cloned().collect::<Vec<_>>().join(", "),
        })
    }

    /// The bundle's initial variables (`variables.safetensors`); `None` for an init-only
    /// bundle ([`Bundle::ships_variables`]). A bundle that ships its variables but whose file
    /// is missing or not a regular file is an [`Error::BundleVariables`].
    pub fn variables(&self) -> Result<Option<Vec<(String, Tensor)>>> {
        match self.variables_file()? {
            Some(path) => read_safetensors(&path).map(Some).map_err(|e| self.variables_error(e.to_string())),
            None => Ok(None),
        }
    }

    /// Whether the bundle ships its variables in `variables.safetensors`: every bundle except
    /// one whose manifest says `"variables_origin": "init-only"` (exported with
    /// `bundle_variables=False`; its layers run `init` under the seed). A manifest without
    /// `variables_origin` (older exporters) counts as shipping them.
    pub fn ships_variables(&self) -> bool {
        self.manifest.variables_origin.as_deref() != Some(INIT_ONLY)
    }

    /// The path of the variables file the bundle ships, checked to be there and a regular
    /// file (not a directory, device or FIFO, also through symlinks); `None` for an init-only
    /// bundle. The layer never falls back to `init` for a bundle that ships its variables:
    /// weights that are not there are an [`Error::BundleVariables`], not random ones.
    pub fn variables_file(&self) -> Result<Option<PathBuf>> {
        let path = self.variables_path();
        if !self.ships_variables() {
            return Ok(None);
        }
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => Ok(Some(path)),
            Ok(m) => {
                let kind = if m.is_dir() { "a directory" } else { "not a regular file (a device, FIFO or socket)" };
                Err(self.variables_error(format!("is {kind}")))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(self.variables_error("is missing".to_string())),
            Err(e) => Err(self.variables_error(format!("cannot be read: {e}"))),
        }
    }

    /// An [`Error::BundleVariables`] about this bundle's variables file.
    pub(crate) fn variables_error(&self, reason: String) -> Error {
        Error::BundleVariables {
            path: self.variables_path(),
            origin: self.manifest.variables_origin.clone().unwrap_or_default(),
            reason,
        }
    }

    /// The path of `variables.safetensors` (which may not exist).
    pub fn variables_path(&self) -> PathBuf {
        self.dir.join(VARIABLES_FILE)
    }

    /// The values `init` was traced with, when the bundle stores them (`init.inputs_file`:
    /// init reads its inputs' values, as data-dependent initializers do).
    pub fn init_inputs(&self) -> Result<Option<Vec<(String, Tensor)>>> {
        match self.manifest.init.as_ref().and_then(|i| i.inputs_file.as_ref()) {
            Some(file) => read_safetensors(self.dir.join(file)).map(Some),
            None => Ok(None),
        }
    }
}

/// What to do about a bundle file that is corrupt or truncated.
pub(crate) const CORRUPT: &str = "the bundle is corrupt or truncated: re-export it (flaxlayer_export.export_flax)";

fn read_capped(path: &Path) -> Result<Vec<u8>> {
    crate::files::read(path, MAX_FILE_BYTES)
}

/// Checks that the manifest's roles fit JAX's avals: counts, and variables' dtypes and shapes.
fn check_computation(manifest: &Manifest, spec: &ComputationSpec, exp: &Exported) -> Result<()> {
    let bad = |reason: String| Err(Error::format(spec.file.clone(), reason));
    if spec.args.len() != exp.in_avals.len() {
        return bad(format!("manifest lists {} arguments, the export has {}", spec.args.len(), exp.in_avals.len()));
    }
    if spec.results.len() != exp.out_avals.len() {
        return bad(format!("manifest lists {} results, the export has {}", spec.results.len(), exp.out_avals.len()));
    }
    if !exp.ordered_effects.is_empty() {
        return bad(format!("ordered effects {:?} are not supported", exp.ordered_effects));
    }
    if exp.nr_devices == 0 {
        return bad("exported for 0 devices".to_string());
    }
    if let (Some(mesh), true) = (&manifest.mesh, exp.nr_devices > 1) {
        let devices = mesh.mesh().num_devices();
        if usize::try_from(exp.nr_devices).ok() != Some(devices) {
            return bad(format!("exported for {} devices, but the manifest's mesh {:?} {:?} has {devices}", exp.nr_devices, mesh.axis_names, mesh.shape));
        }
        for (slot, sharding) in spec.args.iter().zip(&exp.in_shardings).chain(spec.results.iter().zip(&exp.out_shardings)) {
            if let (Role::Param | Role::State, Some(name), Some(sharding)) = (slot.role, &slot.name, sharding) {
                mesh.check_variable(&spec.file, name, sharding)?;
            }
        }
    }
    for (slot, aval) in spec.args.iter().chain(&spec.results).zip(exp.in_avals.iter().chain(&exp.out_avals)) {
        let var = match slot.role {
            Role::Param | Role::State => {
                slot.name.as_deref().and_then(|n| manifest.variable(n)).map(|v| (&v.name, v.dtype, &v.shape))
            }
            Role::OptState => {
                slot.name.as_deref().and_then(|n| manifest.opt_state_leaf(n)).map(|v| (&v.name, v.dtype, &v.shape))
            }
            Role::Key => {
                if aval.dtype != crate::DType::U32 || aval.shape != [2] {
                    return bad(format!("the key is {}{:?}, expected uint32[2]", aval.dtype, aval.shape));
                }
                continue;
            }
            _ => continue,
        };
        let Some((name, dtype, shape)) = var else { return bad(format!("slot {slot:?} names no variable")) };
        if dtype != aval.dtype || *shape != aval.shape {
            return bad(format!(
                "variable {name} is {dtype}{shape:?} in the manifest but {}{:?} in the export",
                aval.dtype, aval.shape
            ));
        }
    }
    Ok(())
}
