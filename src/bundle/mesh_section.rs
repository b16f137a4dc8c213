//! The manifest's `mesh` section: the mesh a multi-device bundle was exported on, and the
//! partition spec of each variable, input and output (docs/bundle-format.md, "Several
//! devices"). It is what the exporter was asked for, recorded for people and tools; the
//! runtime lays arrays out as each computation's own recorded shardings say, and
//! [`Bundle::open`](super::Bundle::open) checks that the two agree.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::sharding::{AxisType, Mesh, NamedSharding};
use crate::{Error, Result};

/// The `mesh` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshSection {
    /// The mesh axes' names, major to minor (`data`, `model`).
    pub(crate) axis_names: Vec<String>,
    /// The axes' sizes; their product is the number of devices.
    pub(crate) shape: Vec<usize>,
    /// Each variable's partition spec, by Flax path.
    #[serde(default)]
    pub(crate) variables: BTreeMap<String, PartitionSpec>,
    /// The default method's inputs' partition specs, by PyTree path.
    #[serde(default)]
    pub(crate) inputs: BTreeMap<String, PartitionSpec>,
    /// The default method's outputs' partition specs.
    #[serde(default)]
    pub(crate) outputs: BTreeMap<String, PartitionSpec>,
    /// Training bundles: the batch leaves' partition specs (`x`, `y`, `w`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) batch: BTreeMap<String, PartitionSpec>,
    /// Training bundles: the optimizer state's partition specs (`opt_state/...`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) opt_state: BTreeMap<String, PartitionSpec>,
}

impl MeshSection {
    /// The mesh axes' names, major to minor (`data`, `model`).
    pub fn axis_names(&self) -> &[String] {
        &self.axis_names
    }

    /// The axes' sizes; their product is the number of devices.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Each variable's partition spec, by Flax path.
    pub fn variables(&self) -> &BTreeMap<String, PartitionSpec> {
        &self.variables
    }

    /// The default method's inputs' partition specs, by PyTree path.
    pub fn inputs(&self) -> &BTreeMap<String, PartitionSpec> {
        &self.inputs
    }

    /// The default method's outputs' partition specs.
    pub fn outputs(&self) -> &BTreeMap<String, PartitionSpec> {
        &self.outputs
    }

    /// Training bundles: the batch leaves' partition specs (`x`, `y`, `w`).
    pub fn batch(&self) -> &BTreeMap<String, PartitionSpec> {
        &self.batch
    }

    /// Training bundles: the optimizer state's partition specs (`opt_state/...`).
    pub fn opt_state(&self) -> &BTreeMap<String, PartitionSpec> {
        &self.opt_state
    }
}

/// A partition spec as JSON: per dimension `null` (not split), a mesh axis name, or a list
/// of mesh axis names (major first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PartitionSpec(pub(crate) Vec<Option<DimAxes>>);

/// The mesh axes that split one dimension.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DimAxes {
    /// One axis.
    One(String),
    /// Several axes, major first.
    Many(Vec<String>),
}

impl PartitionSpec {
    /// Per dimension, the mesh axes that split it, as the JSON has them (`None`: not split).
    pub fn dims(&self) -> &[Option<DimAxes>] {
        &self.0
    }

    /// Per dimension, the mesh axes that split it (empty: not split), without trailing
    /// dimensions that are not split: the form [`NamedSharding::spec`] compares in.
    pub fn axes(&self) -> Vec<Vec<String>> {
        let mut out: Vec<Vec<String>> = self
            .0
            .iter()
            .map(|d| match d {
                None => Vec::new(),
                Some(DimAxes::One(a)) => vec![a.clone()],
                Some(DimAxes::Many(v)) => v.clone(),
            })
            .collect();
        trim(&mut out);
        out
    }
}

impl std::fmt::Display for PartitionSpec {
    /// JAX's notation: `P(None, 'model')`, `P(('data', 'model'),)`, `P()`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", spec_text(&self.axes()))
    }
}

/// A spec in JAX's notation: `P(None, 'model')`.
pub fn spec_text(axes: &[Vec<String>]) -> String {
    let dims: Vec<String> = axes
        .iter()
        .map(|d| match d.as_slice() {
            [] => "None".to_string(),
            [a] => format!("'{a}'"),
            many => format!("({})", many.iter().map(|a| format!("'{a}'")).collect::<Vec<_>>().join(", ")),
        })
        .collect();
    format!("P({})", dims.join(", "))
}

fn trim(axes: &mut Vec<Vec<String>>) {
    while axes.last().is_some_and(Vec::is_empty) {
        axes.pop();
    }
}

impl MeshSection {
    /// The mesh (axis types are not recorded: `Auto`).
    pub fn mesh(&self) -> Mesh {
        Mesh { axis_names: self.axis_names.clone(), axis_sizes: self.shape.clone(), axis_types: vec![AxisType::Auto; self.shape.len()] }
    }

    /// Checks the mesh and that every spec names only its axes, each at most once.
    pub fn validate(&self) -> Result<()> {
        let mesh = self.mesh();
        mesh.check().map_err(|e| Error::format("manifest.json", format!("mesh: {e}")))?;
        let groups = [("variables", &self.variables), ("inputs", &self.inputs), ("outputs", &self.outputs), ("batch", &self.batch), ("opt_state", &self.opt_state)];
        for (group, specs) in groups {
            for (name, spec) in specs {
                let sharding = NamedSharding { mesh: mesh.clone(), spec: spec.axes(), memory_kind: None };
                sharding.check().map_err(|e| Error::format("manifest.json", format!("mesh.{group}.{name}: {e}")))?;
            }
        }
        Ok(())
    }

    /// Checks a computation's recorded sharding of the variable `name` against this section:
    /// the same mesh, and the same spec when the section has one.
    pub fn check_variable(&self, file: &str, name: &str, sharding: &NamedSharding) -> Result<()> {
        let (m, mine) = (&sharding.mesh, self.mesh());
        if m.axis_names != mine.axis_names || m.axis_sizes != mine.axis_sizes {
            return Err(Error::format(
                file.to_string(),
                format!("variable {name:?} is laid out over mesh {:?} {:?}, but the manifest's mesh is {:?} {:?}", m.axis_names, m.axis_sizes, mine.axis_names, mine.axis_sizes),
            ));
        }
        let Some(spec) = self.variables.get(name) else { return Ok(()) };
        let mut recorded = sharding.spec.clone();
        trim(&mut recorded);
        if recorded != spec.axes() {
            return Err(Error::format(
                file.to_string(),
                format!("variable {name:?} is split as {} there, but the manifest says {spec}", spec_text(&recorded)),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_read_like_jax() {
        let s: PartitionSpec = serde_json::from_str(r#"[null, "model", ["data", "model"], null]"#).unwrap();
        assert_eq!(s.axes(), vec![vec![], vec!["model".to_string()], vec!["data".to_string(), "model".to_string()]]);
        assert_eq!(s.to_string(), "P(None, 'model', ('data', 'model'))");
        let empty: PartitionSpec = serde_json::from_str("[null, null]").unwrap();
        assert_eq!(empty.to_string(), "P()");
    }

    #[test]
    fn bad_sections_are_refused() {
        let section = |json: &str| serde_json::from_str::<MeshSection>(json).unwrap().validate();
        assert!(section(r#"{"axis_names": ["data"], "shape": [2], "variables": {"params/w": [null, "data"]}}"#).is_ok());
        let e = section(r#"{"axis_names": ["data"], "shape": [2], "variables": {"params/w": ["model"]}}"#).unwrap_err();
        assert!(e.to_string().contains("mesh.variables.params/w") && e.to_string().contains("\"model\""), "{e}");
        let e = section(r#"{"axis_names": ["data", "data"], "shape": [2, 2]}"#).unwrap_err();
        assert!(e.to_string().contains("repeated"), "{e}");
        let e = section(r#"{"axis_names": ["data"], "shape": [2, 2]}"#).unwrap_err();
        assert!(e.to_string().contains("1 axis names, 2 sizes"), "{e}");
        assert!(serde_json::from_str::<MeshSection>(r#"{"axis_names": ["data"], "shape": [2], "inputs": {"x": [3]}}"#).is_err());
    }

    #[test]
    fn recorded_shardings_must_agree() {
        let section: MeshSection =
            serde_json::from_str(r#"{"axis_names": ["data", "model"], "shape": [2, 2], "variables": {"params/w": [null, "model"]}}"#).unwrap();
        let mut s = NamedSharding { mesh: section.mesh(), spec: vec![vec![], vec!["model".into()], vec![]], memory_kind: None };
        section.check_variable("f", "params/w", &s).unwrap();
        section.check_variable("f", "params/b", &s).unwrap();
        s.spec = vec![vec!["model".into()]];
        let e = section.check_variable("f", "params/w", &s).unwrap_err();
        assert!(e.to_string().contains("P('model')") && e.to_string().contains("P(None, 'model')"), "{e}");
        s.mesh.axis_sizes = vec![1, 4];
        assert!(section.check_variable("f", "params/w", &s).unwrap_err().to_string().contains("mesh"));
    }
}
