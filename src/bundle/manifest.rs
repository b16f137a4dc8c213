//! `manifest.json`: what a bundle adds to JAX's own serialization (see docs/bundle-format.md).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{DType, Error, Result};

/// The `format` string of a bundle manifest.
pub const FORMAT: &str = "flaxlayer.bundle";
/// The manifest versions this crate reads.
pub const VERSION: u32 = 1;

/// A bundle's manifest.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    /// The Flax module's class name.
    #[serde(default)]
    pub module: String,
    pub seed: u64,
    #[serde(default)]
    pub rng_streams: Vec<String>,
    pub platforms: Vec<String>,
    pub default_method: String,
    pub variables: Vec<VariableSpec>,
    pub init: ComputationSpec,
    pub methods: BTreeMap<String, MethodSpec>,
}

/// One variable leaf.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VariableSpec {
    /// The Flax path joined with `/`, e.g. `params/Dense_0/kernel`.
    pub name: String,
    /// The collection, the first component of `name`.
    pub collection: String,
    pub dtype: DType,
    pub shape: Vec<i64>,
}

impl VariableSpec {
    /// Whether this is a trainable parameter (collection `params`).
    pub fn is_param(&self) -> bool {
        self.collection == "params"
    }
}

/// One exported method: an inference and a training computation per batch size.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MethodSpec {
    #[serde(default)]
    pub takes_training: bool,
    #[serde(default)]
    pub inputs: Vec<InputSpec>,
    pub inference: Vec<ComputationSpec>,
    pub training: Vec<ComputationSpec>,
}

/// An input leaf as exported (with the sample batch).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InputSpec {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<i64>,
}

/// One serialized computation and the roles of its flat arguments and results.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ComputationSpec {
    #[serde(default)]
    pub batch_size: Option<i64>,
    pub file: String,
    pub args: Vec<Slot>,
    pub results: Vec<Slot>,
}

/// What a flat argument or result is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slot {
    pub role: Role,
    #[serde(default)]
    pub name: Option<String>,
}

/// The role of a flat argument or result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Param,
    State,
    Key,
    Input,
    Output,
}

impl Manifest {
    /// Parses and checks a manifest.
    pub fn from_json(bytes: &[u8]) -> Result<Manifest> {
        let m: Manifest = serde_json::from_slice(bytes)
            .map_err(|source| Error::Json { what: "manifest.json".into(), source })?;
        m.validate()?;
        Ok(m)
    }

    fn validate(&self) -> Result<()> {
        let bad = |reason: String| Err(Error::format("manifest.json", reason));
        if self.format != FORMAT {
            return bad(format!("format is {:?}, expected {FORMAT:?}", self.format));
        }
        if self.version != VERSION {
            return bad(format!("version {} is not supported (this crate reads version {VERSION})", self.version));
        }
        if !self.methods.contains_key(&self.default_method) {
            return bad(format!("default_method {:?} is not among the methods", self.default_method));
        }
        for v in &self.variables {
            if v.name.split('/').next() != Some(v.collection.as_str()) {
                return bad(format!("variable {:?} is not in its collection {:?}", v.name, v.collection));
            }
        }
        for (name, m) in &self.methods {
            if m.inference.is_empty() || m.training.is_empty() {
                return bad(format!("method {name:?} lacks an inference or a training computation"));
            }
        }
        for c in self.computations() {
            if c.file.contains('/') || c.file.contains('\\') || c.file.starts_with('.') {
                return bad(format!("computation file {:?} must be a plain file name in the bundle", c.file));
            }
            for s in c.args.iter().chain(&c.results) {
                let named = matches!(s.role, Role::Param | Role::State | Role::Input | Role::Output);
                if named && s.name.is_none() {
                    return bad(format!("{}: a {:?} slot has no name", c.file, s.role));
                }
                if matches!(s.role, Role::Param | Role::State) {
                    let name = s.name.as_deref().unwrap_or_default();
                    if !self.variables.iter().any(|v| v.name == name) {
                        return bad(format!("{}: slot names unknown variable {name:?}", c.file));
                    }
                }
            }
        }
        Ok(())
    }

    /// Every computation of the bundle.
    pub fn computations(&self) -> impl Iterator<Item = &ComputationSpec> {
        std::iter::once(&self.init).chain(self.methods.values().flat_map(|m| m.inference.iter().chain(&m.training)))
    }

    /// The variable named `name`.
    pub fn variable(&self, name: &str) -> Option<&VariableSpec> {
        self.variables.iter().find(|v| v.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> serde_json::Value {
        serde_json::json!({
            "format": "flaxlayer.bundle", "version": 1, "module": "M", "seed": 0,
            "rng_streams": ["dropout"], "platforms": ["cpu"], "default_method": "__call__",
            "variables": [{"name": "params/w", "collection": "params", "dtype": "float32", "shape": [2]}],
            "init": {"file": "init.jaxexport", "args": [{"role": "key"}], "results": [{"role": "param", "name": "params/w"}]},
            "methods": {"__call__": {
                "inference": [{"file": "a.jaxexport", "args": [{"role": "param", "name": "params/w"}, {"role": "input", "name": "inputs"}], "results": [{"role": "output", "name": "outputs"}]}],
                "training": [{"file": "b.jaxexport", "args": [], "results": []}]
            }}
        })
    }

    fn parse(v: &serde_json::Value) -> Result<Manifest> {
        Manifest::from_json(v.to_string().as_bytes())
    }

    #[test]
    fn minimal_manifest_parses() {
        let m = parse(&minimal()).unwrap();
        assert_eq!(m.variables[0].dtype, DType::F32);
        assert_eq!(m.computations().count(), 3);
    }

    #[test]
    fn bad_manifests_are_refused() {
        let cases: Vec<(&str, serde_json::Value)> = vec![
            ("/format", serde_json::json!("other")),
            ("/version", serde_json::json!(2)),
            ("/default_method", serde_json::json!("nope")),
            ("/variables/0/collection", serde_json::json!("batch_stats")),
            ("/init/file", serde_json::json!("../etc/passwd")),
            ("/init/results/0/name", serde_json::json!("params/unknown")),
        ];
        for (ptr, value) in cases {
            let mut m = minimal();
            *m.pointer_mut(ptr).unwrap() = value;
            assert!(matches!(parse(&m), Err(Error::InvalidFormat { .. })), "{ptr}");
        }
        let mut m = minimal();
        *m.pointer_mut("/variables/0/dtype").unwrap() = serde_json::json!("complex64");
        assert!(matches!(parse(&m), Err(Error::Json { .. })));
        assert!(matches!(Manifest::from_json(b"{"), Err(Error::Json { .. })));
    }
}
