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
    /// The training loop's computations (`scripts/export_train.py`), when exported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train: Option<TrainSpec>,
}

/// The optional `train` section: an optimizer step and an evaluation step over batches
/// (docs/bundle-format.md, docs/training.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainSpec {
    /// The method the steps apply.
    #[serde(default)]
    pub method: Option<String>,
    /// `softmax_cross_entropy` or `mse`.
    pub loss: String,
    /// A human description of the optax optimizer, e.g. `adam(learning_rate=0.001)`.
    pub optimizer: String,
    /// The leading dimension of every batch input.
    pub batch_size: i64,
    /// The training batch's leaves (`x`, `y`).
    pub batch: Vec<InputSpec>,
    /// What `train_step` reports: `loss`, `accuracy` (batch means).
    pub metrics: Vec<String>,
    /// What `eval_step` reports: `loss_sum`, `correct`, `count` (weighted sums).
    pub eval_metrics: Vec<String>,
    /// The optimizer state's leaves (`opt_state/0/mu/Dense_0/kernel`, ...), in the steps' order.
    pub opt_state: Vec<InputSpec>,
    /// `init_opt_state(params) -> opt_state`.
    pub init_opt_state: ComputationSpec,
    /// `train_step(params, state, opt_state, key, batch) -> (params, state, opt_state, key, metrics)`.
    pub train_step: ComputationSpec,
    /// `eval_step(params, state, batch + w) -> metric sums`.
    pub eval_step: ComputationSpec,
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

/// An input leaf as exported (with the sample batch); also a batch or optimizer-state leaf.
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
    /// An optimizer-state leaf, named as in `train.opt_state`.
    #[serde(rename = "opt_state")]
    OptState,
    /// A scalar metric (`loss`, `accuracy`, `loss_sum`, ...), named.
    Metric,
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
        if let Some(t) = &self.train {
            if t.batch_size <= 0 {
                return bad(format!("train.batch_size {} is not positive", t.batch_size));
            }
        }
        for c in self.computations() {
            if c.file.contains('/') || c.file.contains('\\') || c.file.starts_with('.') {
                return bad(format!("computation file {:?} must be a plain file name in the bundle", c.file));
            }
            for s in c.args.iter().chain(&c.results) {
                let named = matches!(s.role, Role::Param | Role::State | Role::Input | Role::Output | Role::OptState | Role::Metric);
                if named && s.name.is_none() {
                    return bad(format!("{}: a {:?} slot has no name", c.file, s.role));
                }
                if matches!(s.role, Role::Param | Role::State) {
                    let name = s.name.as_deref().unwrap_or_default();
                    if !self.variables.iter().any(|v| v.name == name) {
                        return bad(format!("{}: slot names unknown variable {name:?}", c.file));
                    }
                }
                if s.role == Role::OptState {
                    let name = s.name.as_deref().unwrap_or_default();
                    if self.opt_state_leaf(name).is_none() {
                        return bad(format!("{}: slot names unknown optimizer state {name:?}", c.file));
                    }
                }
            }
        }
        Ok(())
    }

    /// Every computation of the bundle (the train section's last).
    pub fn computations(&self) -> impl Iterator<Item = &ComputationSpec> {
        let train = self.train.iter().flat_map(|t| [&t.init_opt_state, &t.train_step, &t.eval_step]);
        std::iter::once(&self.init)
            .chain(self.methods.values().flat_map(|m| m.inference.iter().chain(&m.training)))
            .chain(train)
    }

    /// The optimizer-state leaf named `name` (`train.opt_state`).
    pub fn opt_state_leaf(&self, name: &str) -> Option<&InputSpec> {
        self.train.as_ref()?.opt_state.iter().find(|v| v.name == name)
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

    fn with_train() -> serde_json::Value {
        let mut m = minimal();
        m["train"] = serde_json::json!({
            "method": "__call__", "loss": "mse", "optimizer": "sgd", "batch_size": 2,
            "batch": [{"name": "x", "dtype": "float32", "shape": [2, 2]}, {"name": "y", "dtype": "float32", "shape": [2, 2]}],
            "metrics": ["loss"], "eval_metrics": ["count", "loss_sum"],
            "opt_state": [{"name": "opt_state/0/mu/w", "dtype": "float32", "shape": [2]}],
            "init_opt_state": {"file": "o.jaxexport", "args": [{"role": "param", "name": "params/w"}], "results": [{"role": "opt_state", "name": "opt_state/0/mu/w"}]},
            "train_step": {"batch_size": 2, "file": "t.jaxexport", "args": [{"role": "opt_state", "name": "opt_state/0/mu/w"}, {"role": "input", "name": "x"}], "results": [{"role": "metric", "name": "loss"}]},
            "eval_step": {"batch_size": 2, "file": "e.jaxexport", "args": [], "results": [{"role": "metric", "name": "count"}]}
        });
        m
    }

    #[test]
    fn train_section_is_optional_and_parsed() {
        assert!(parse(&minimal()).unwrap().train.is_none());
        let m = parse(&with_train()).unwrap();
        let t = m.train.as_ref().unwrap();
        assert_eq!((t.batch_size, t.opt_state.len()), (2, 1));
        assert_eq!(m.computations().count(), 6);
        assert_eq!(t.train_step.args[0].role, Role::OptState);
        assert_eq!(t.train_step.results[0].role, Role::Metric);
        assert!(m.opt_state_leaf("opt_state/0/mu/w").is_some());
        let cases: Vec<(&str, serde_json::Value)> = vec![
            ("/train/batch_size", serde_json::json!(0)),
            ("/train/train_step/args/0/name", serde_json::json!("opt_state/nope")),
            ("/train/eval_step/file", serde_json::json!("../e.jaxexport")),
        ];
        for (ptr, value) in cases {
            let mut m = with_train();
            *m.pointer_mut(ptr).unwrap() = value;
            assert!(matches!(parse(&m), Err(Error::InvalidFormat { .. })), "{ptr}");
        }
        let mut m = with_train();
        m["train"]["train_step"]["results"][0] = serde_json::json!({"role": "metric"});
        assert!(matches!(parse(&m), Err(Error::InvalidFormat { .. })), "unnamed metric");
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
