//! `manifest.json`: what a bundle adds to JAX's own serialization (see docs/bundle-format.md).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::generation::{GenerationSpec, GENERATION_VERSION};
use super::mesh_section::MeshSection;
use crate::spec::TensorSpec;
use crate::{DType, Error, Result};

/// The `format` string of a bundle manifest.
pub const FORMAT: &str = "flaxlayer.bundle";
/// The manifest versions this crate reads.
pub const VERSION: u32 = 1;

/// A bundle's manifest.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// Always `flaxlayer.bundle`.
    pub(crate) format: String,
    /// The format version (1).
    pub(crate) version: u32,
    /// The Flax module's class name.
    #[serde(default)]
    pub(crate) module: String,
    /// The seed of `init` and of the initial key.
    pub(crate) seed: u64,
    /// The RNG streams the key feeds (`dropout`, ...).
    #[serde(default)]
    pub(crate) rng_streams: Vec<String>,
    /// The platforms the computations were lowered for.
    pub(crate) platforms: Vec<String>,
    /// The method a layer calls when none is named.
    pub(crate) default_method: String,
    /// Where `variables.safetensors` came from: `init` (the module's init under the seed) or
    /// `given` (the exporter's `variables=`). Absent in older bundles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) variables_origin: Option<String>,
    /// Every variable leaf, by Flax path (`params/Dense_0/kernel`); its collection is the
    /// first component.
    pub(crate) variables: Vec<TensorSpec>,
    /// The `init` computation; absent when nothing can build the variables again (an NNX
    /// module exported as an instance: its variables are `variables.safetensors`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) init: Option<InitSpec>,
    /// The exported methods, by name.
    pub(crate) methods: BTreeMap<String, MethodSpec>,
    /// The partitioner the multi-device computations were lowered for: `shardy` (JAX's
    /// default, and the default when absent) or `gspmd`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) partitioner: Option<String>,
    /// The mesh of a bundle exported for several devices, and how its variables, inputs and
    /// outputs are split over it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) mesh: Option<MeshSection>,
    /// The training loop's computations (the exporter's `export_train_step`), when exported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) train: Option<TrainSpec>,
    /// A causal LM's generation methods (`export_causal_lm`), when exported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) generation: Option<GenerationSpec>,
}

impl Manifest {
    /// The format version (1).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The Flax module's class name.
    pub fn module(&self) -> &str {
        &self.module
    }

    /// The seed of `init` and of the initial key.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The RNG streams the key feeds (`dropout`, ...).
    pub fn rng_streams(&self) -> &[String] {
        &self.rng_streams
    }

    /// The platforms the computations were lowered for.
    pub fn platforms(&self) -> &[String] {
        &self.platforms
    }

    /// The method a layer calls when none is named.
    pub fn default_method(&self) -> &str {
        &self.default_method
    }

    /// Where `variables.safetensors` came from: `init` (the module's init under the seed) or
    /// `given` (the exporter's `variables=`). Absent in older bundles.
    pub fn variables_origin(&self) -> Option<&str> {
        self.variables_origin.as_deref()
    }

    /// Every variable leaf, by Flax path (`params/Dense_0/kernel`); its collection is the
    /// first component.
    pub fn variables(&self) -> &[TensorSpec] {
        &self.variables
    }

    /// The `init` computation; absent when nothing can build the variables again (an NNX
    /// module exported as an instance: its variables are `variables.safetensors`).
    pub fn init(&self) -> Option<&InitSpec> {
        self.init.as_ref()
    }

    /// The exported methods, by name.
    pub fn methods(&self) -> &BTreeMap<String, MethodSpec> {
        &self.methods
    }

    /// The partitioner the multi-device computations were lowered for: `shardy` (JAX's
    /// default, and the default when absent) or `gspmd`.
    pub fn partitioner(&self) -> Option<&str> {
        self.partitioner.as_deref()
    }

    /// The mesh of a bundle exported for several devices, and how its variables, inputs and
    /// outputs are split over it.
    pub fn mesh(&self) -> Option<&MeshSection> {
        self.mesh.as_ref()
    }

    /// The training loop's computations (the exporter's `export_train_step`), when exported.
    pub fn train(&self) -> Option<&TrainSpec> {
        self.train.as_ref()
    }

    /// A causal LM's generation methods (`export_causal_lm`), when exported.
    pub fn generation(&self) -> Option<&GenerationSpec> {
        self.generation.as_ref()
    }
}

/// The optional `train` section: an optimizer step and an evaluation step over batches
/// (docs/bundle-format.md, docs/training.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainSpec {
    /// The method the steps apply.
    #[serde(default)]
    pub(crate) method: Option<String>,
    /// `softmax_cross_entropy` or `mse`.
    pub(crate) loss: String,
    /// A human description of the optax optimizer, e.g. `adam(learning_rate=0.001)`.
    pub(crate) optimizer: String,
    /// The leading dimension of every batch input.
    pub(crate) batch_size: i64,
    /// The training batch's leaves (`x`, `y`).
    pub(crate) batch: Vec<TensorSpec>,
    /// What `train_step` reports: `loss`, `accuracy` (batch means).
    pub(crate) metrics: Vec<String>,
    /// What `eval_step` reports: `loss_sum`, `correct`, `count` (weighted sums).
    pub(crate) eval_metrics: Vec<String>,
    /// The optimizer state's leaves (`opt_state/0/mu/Dense_0/kernel`, ...), in the steps' order.
    pub(crate) opt_state: Vec<TensorSpec>,
    /// `init_opt_state(params) -> opt_state`.
    pub(crate) init_opt_state: ComputationSpec,
    /// `train_step(params, state, opt_state, key, batch) -> (params, state, opt_state, key, metrics)`.
    pub(crate) train_step: ComputationSpec,
    /// `eval_step(params, state, batch + w) -> metric sums`.
    pub(crate) eval_step: ComputationSpec,
}

impl TrainSpec {
    /// The method the steps apply.
    pub fn method(&self) -> Option<&str> {
        self.method.as_deref()
    }

    /// `softmax_cross_entropy` or `mse`.
    pub fn loss(&self) -> &str {
        &self.loss
    }

    /// A human description of the optax optimizer, e.g. `adam(learning_rate=0.001)`.
    pub fn optimizer(&self) -> &str {
        &self.optimizer
    }

    /// The leading dimension of every batch input.
    pub fn batch_size(&self) -> i64 {
        self.batch_size
    }

    /// The training batch's leaves (`x`, `y`).
    pub fn batch(&self) -> &[TensorSpec] {
        &self.batch
    }

    /// What `train_step` reports: `loss`, `accuracy` (batch means).
    pub fn metrics(&self) -> &[String] {
        &self.metrics
    }

    /// What `eval_step` reports: `loss_sum`, `correct`, `count` (weighted sums).
    pub fn eval_metrics(&self) -> &[String] {
        &self.eval_metrics
    }

    /// The optimizer state's leaves (`opt_state/0/mu/Dense_0/kernel`, ...), in the steps' order.
    pub fn opt_state(&self) -> &[TensorSpec] {
        &self.opt_state
    }

    /// `init_opt_state(params) -> opt_state`.
    pub fn init_opt_state(&self) -> &ComputationSpec {
        &self.init_opt_state
    }

    /// `train_step(params, state, opt_state, key, batch) -> (params, state, opt_state, key, metrics)`.
    pub fn train_step(&self) -> &ComputationSpec {
        &self.train_step
    }

    /// `eval_step(params, state, batch + w) -> metric sums`.
    pub fn eval_step(&self) -> &ComputationSpec {
        &self.eval_step
    }
}

/// The `init` computation: `init(key, inputs) -> variables`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InitSpec {
    /// The computation itself.
    #[serde(flatten)]
    pub(crate) computation: ComputationSpec,
    /// The inputs `init` was traced with (their shapes; their values are in `inputs_file`
    /// when init reads them).
    #[serde(default)]
    pub(crate) inputs: Vec<TensorSpec>,
    /// A safetensors file of the bundle holding the init inputs' values, by input name. The
    /// exporter writes it when init keeps an input argument (data-dependent init, such as
    /// ActNorm): then the runtime feeds these values, as `module.init(key, x)` saw them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) inputs_file: Option<String>,
}

impl InitSpec {
    /// The computation itself.
    pub fn computation(&self) -> &ComputationSpec {
        &self.computation
    }

    /// The inputs `init` was traced with (their shapes; their values are in `inputs_file`
    /// when init reads them).
    pub fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }

    /// A safetensors file of the bundle holding the init inputs' values, by input name. The
    /// exporter writes it when init keeps an input argument (data-dependent init, such as
    /// ActNorm): then the runtime feeds these values, as `module.init(key, x)` saw them.
    pub fn inputs_file(&self) -> Option<&str> {
        self.inputs_file.as_deref()
    }
}

/// One exported method: an inference and (unless it is inference-only, as a generation
/// bundle's methods) a training computation per batch size.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MethodSpec {
    /// Whether the method takes a `training` argument.
    #[serde(default)]
    pub(crate) takes_training: bool,
    /// The input leaves as exported with the sample batch.
    #[serde(default)]
    pub(crate) inputs: Vec<TensorSpec>,
    /// The output leaves at the sample batch.
    #[serde(default)]
    pub(crate) outputs: Vec<TensorSpec>,
    /// The inference computations, one per exported batch size.
    pub(crate) inference: Vec<ComputationSpec>,
    /// The training computations, one per exported batch size (none: inference only).
    #[serde(default)]
    pub(crate) training: Vec<ComputationSpec>,
    /// Whether inference may run a batch padded up to an exported size (absent: no).
    #[serde(default)]
    pub(crate) batching: Batching,
}

impl MethodSpec {
    /// The input leaves as exported with the sample batch.
    pub fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }

    /// Whether the method takes a `training` argument.
    pub fn takes_training(&self) -> bool {
        self.takes_training
    }

    /// The output leaves at the sample batch.
    pub fn outputs(&self) -> &[TensorSpec] {
        &self.outputs
    }

    /// The inference computations, one per exported batch size.
    pub fn inference(&self) -> &[ComputationSpec] {
        &self.inference
    }

    /// The training computations, one per exported batch size (none: inference only).
    pub fn training(&self) -> &[ComputationSpec] {
        &self.training
    }

    /// Whether inference may run a batch padded up to an exported size (absent: no).
    pub fn batching(&self) -> &Batching {
        &self.batching
    }
}

/// What the exporter verified about the method's batch axis (the leading axis of every
/// input leaf): whether inference treats rows independently, so that the runtime may pad a
/// batch up to an exported size, or split it into chunks, and slice the outputs back.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Batching {
    /// Inference rows are independent: padded and chunked calls give the rows' own outputs.
    #[serde(default)]
    pub(crate) paddable: bool,
    /// The value padding rows are filled with.
    #[serde(default)]
    pub(crate) pad_value: f64,
    /// Why the method is not paddable, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) reason: Option<String>,
    /// Inference writes back state (a decode cache): padding must then keep the state's size.
    #[serde(default)]
    pub(crate) stateful: bool,
}

impl Batching {
    /// Inference rows are independent: padded and chunked calls give the rows' own outputs.
    pub fn paddable(&self) -> bool {
        self.paddable
    }

    /// The value padding rows are filled with.
    pub fn pad_value(&self) -> f64 {
        self.pad_value
    }

    /// Why the method is not paddable, when it is not.
    pub fn reason(&self) -> Option<&str> {
        self.reason.as_deref()
    }

    /// Inference writes back state (a decode cache): padding must then keep the state's size.
    pub fn stateful(&self) -> bool {
        self.stateful
    }
}

/// One serialized computation and the roles of its flat arguments and results.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ComputationSpec {
    /// The leading dimension of every input leaf, for a method computation.
    #[serde(default)]
    pub(crate) batch_size: Option<usize>,
    /// The `*.jaxexport` file in the bundle.
    pub(crate) file: String,
    /// The role of each flat argument (JAX's `in_avals` order).
    pub(crate) args: Vec<Slot>,
    /// The role of each flat result (JAX's `out_avals` order).
    pub(crate) results: Vec<Slot>,
    /// The custom-call targets the module calls (`lapack_sgeqrf_ffi`, ...), which the
    /// plugin must have handlers for. Absent in older bundles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) custom_call_targets: Option<Vec<String>>,
    /// For an inference computation: the same computation with the bundle's params compiled
    /// in as constants (`export_flax(..., frozen=True)`), whose arguments are this one's
    /// without the params. A layer runs it while its params are the bundle's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) frozen: Option<Box<ComputationSpec>>,
    /// For a frozen variant: the SHA-256 (hex) of the `variables.safetensors` its constants
    /// came from. The runtime runs it only with params loaded from that very file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) variables_sha256: Option<String>,
}

impl ComputationSpec {
    /// The leading dimension of every input leaf, for a method computation.
    pub fn batch_size(&self) -> Option<usize> {
        self.batch_size
    }

    /// The `*.jaxexport` file in the bundle.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// The role of each flat argument (JAX's `in_avals` order).
    pub fn args(&self) -> &[Slot] {
        &self.args
    }

    /// The role of each flat result (JAX's `out_avals` order).
    pub fn results(&self) -> &[Slot] {
        &self.results
    }

    /// The custom-call targets the module calls (`lapack_sgeqrf_ffi`, ...), which the
    /// plugin must have handlers for. Absent in older bundles.
    pub fn custom_call_targets(&self) -> Option<&Vec<String>> {
        self.custom_call_targets.as_ref()
    }

    /// For an inference computation: the same computation with the bundle's params compiled
    /// in as constants (`export_flax(..., frozen=True)`), whose arguments are this one's
    /// without the params. A layer runs it while its params are the bundle's.
    pub fn frozen(&self) -> Option<&ComputationSpec> {
        self.frozen.as_deref()
    }

    /// For a frozen variant: the SHA-256 (hex) of the `variables.safetensors` its constants
    /// came from. The runtime runs it only with params loaded from that very file.
    pub fn variables_sha256(&self) -> Option<&str> {
        self.variables_sha256.as_deref()
    }
}

/// What a flat argument or result is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slot {
    /// What the value is.
    pub(crate) role: Role,
    /// Its name: a variable's Flax path, an input's or output's PyTree path, a metric.
    #[serde(default)]
    pub(crate) name: Option<String>,
    /// For an output: whether its leading axis is the batch (it is the batch size in every
    /// exported batch size). Absent: unknown, and the runtime does not pad.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) batched: Option<bool>,
}

impl Slot {
    /// What the value is.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Its name: a variable's Flax path, an input's or output's PyTree path, a metric.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// For an output: whether its leading axis is the batch (it is the batch size in every
    /// exported batch size). Absent: unknown, and the runtime does not pad.
    pub fn batched(&self) -> Option<bool> {
        self.batched
    }
}

/// The role of a flat argument or result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A trainable parameter.
    Param,
    /// A non-trainable variable (`batch_stats`, `cache`, ...).
    State,
    /// The RNG key data, `uint32[2]`.
    Key,
    /// An input leaf.
    Input,
    /// An output leaf.
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
            .map_err(|e| Error::json("manifest.json", e))?;
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
        let mut seen = std::collections::HashSet::new();
        for v in &self.variables {
            if v.name.is_empty() || v.name.split('/').any(str::is_empty) {
                return bad(format!("variable name {:?} has an empty path component", v.name));
            }
            if !seen.insert(v.name.as_str()) {
                return bad(format!("variable {:?} is listed twice", v.name));
            }
        }
        if let Some(mesh) = &self.mesh {
            mesh.validate()?;
            if let Some(name) = mesh.variables.keys().find(|n| self.variable(n).is_none()) {
                return bad(format!("mesh.variables names unknown variable {name:?}"));
            }
        }
        if let Some(p) = self.partitioner.as_deref().filter(|p| !matches!(*p, "shardy" | "gspmd")) {
            return bad(format!("partitioner {p:?} is neither \"shardy\" nor \"gspmd\""));
        }
        if let Some(f) = self.init.as_ref().and_then(|i| i.inputs_file.as_ref()) {
            check_file_name(f).map_err(|reason| Error::format("manifest.json", format!("init.inputs_file: {reason}")))?;
        }
        for (name, m) in &self.methods {
            if m.inference.is_empty() {
                return bad(format!("method {name:?} lacks an inference computation"));
            }
            for c in &m.inference {
                if let Some(f) = &c.frozen {
                    check_frozen(c, f)?;
                }
            }
            if let Some(c) = m.training.iter().find(|c| c.frozen.is_some()) {
                return bad(format!("{}: a training computation has a frozen variant (only inference may)", c.file));
            }
        }
        if let Some(t) = &self.train {
            if t.batch_size <= 0 {
                return bad(format!("train.batch_size {} is not positive", t.batch_size));
            }
        }
        if let Some(g) = &self.generation {
            validate_generation(g, self)?;
        }
        for c in self.computations() {
            check_file_name(&c.file).map_err(|reason| Error::format("manifest.json", format!("computation file: {reason}")))?;
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
        self.init.iter().map(|i| &i.computation)
            .chain(self.methods.values().flat_map(|m| m.inference.iter().chain(m.inference.iter().filter_map(|c| c.frozen.as_deref())).chain(&m.training)))
            .chain(train)
    }

    /// The optimizer-state leaf named `name` (`train.opt_state`).
    pub fn opt_state_leaf(&self, name: &str) -> Option<&TensorSpec> {
        self.train.as_ref()?.opt_state.iter().find(|v| v.name == name)
    }

    /// The variable named `name`.
    pub fn variable(&self, name: &str) -> Option<&TensorSpec> {
        self.variables.iter().find(|v| v.name == name)
    }
}

/// A frozen variant takes its computation's arguments without the params, and gives the same
/// results.
fn check_frozen(c: &ComputationSpec, frozen: &ComputationSpec) -> Result<()> {
    let unfrozen: Vec<&Slot> = c.args.iter().filter(|s| s.role != Role::Param).collect();
    let same_args = unfrozen.len() == frozen.args.len() && unfrozen.iter().zip(&frozen.args).all(|(a, b)| *a == b);
    if !same_args || frozen.results != c.results || frozen.batch_size != c.batch_size || frozen.frozen.is_some() || frozen.variables_sha256.is_none() {
        return Err(Error::format(
            "manifest.json",
            format!("{}: its frozen variant {} must take its arguments without the params, give its results and name the variables' SHA-256", c.file, frozen.file),
        ));
    }
    Ok(())
}

/// A file a manifest names must be a plain file name inside the bundle directory.
fn check_file_name(file: &str) -> std::result::Result<(), String> {
    if file.is_empty() || file.contains('/') || file.contains('\\') || file.starts_with('.') {
        return Err(format!("{file:?} must be a plain file name in the bundle"));
    }
    Ok(())
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
        assert_eq!(m.variables[0].dtype, crate::DType::F32);
        assert_eq!(m.methods["__call__"].batching, Batching::default());
        assert_eq!(m.computations().count(), 3);
    }

    #[test]
    fn a_frozen_variant_takes_the_args_without_params_and_gives_the_same_results() {
        let frozen = serde_json::json!({"file": "a.frozen.jaxexport", "args": [{"role": "input", "name": "inputs"}], "results": [{"role": "output", "name": "outputs"}], "variables_sha256": "00"});
        let mut v = minimal();
        v["methods"]["__call__"]["inference"][0]["frozen"] = frozen.clone();
        let m = parse(&v).unwrap();
        assert_eq!(m.computations().count(), 4, "the frozen file is a computation of the bundle");
        let bad = |edit: &dyn Fn(&mut serde_json::Value)| {
            let mut v = minimal();
            let mut f = frozen.clone();
            edit(&mut f);
            v["methods"]["__call__"]["inference"][0]["frozen"] = f;
            let e = parse(&v).unwrap_err().to_string();
            assert!(e.contains("frozen variant a.frozen.jaxexport"), "{e}");
        };
        bad(&|f| f["args"] = serde_json::json!([{"role": "param", "name": "params/w"}, {"role": "input", "name": "inputs"}]));
        bad(&|f| f["results"] = serde_json::json!([]));
        bad(&|f| f["batch_size"] = serde_json::json!(4));
        bad(&|f| f.as_object_mut().unwrap().remove("variables_sha256").map(drop).unwrap_or(()));
        let mut v = minimal();
        v["methods"]["__call__"]["training"][0]["frozen"] = frozen;
        assert!(parse(&v).unwrap_err().to_string().contains("training computation has a frozen variant"));
    }

    #[test]
    fn init_is_optional() {
        let mut v = minimal();
        v.as_object_mut().unwrap().remove("init");
        let m = parse(&v).unwrap();
        assert!(m.init.is_none());
        assert_eq!(m.computations().count(), 2);
        v["init"] = serde_json::Value::Null;
        assert!(parse(&v).unwrap().init.is_none());
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
            ("/variables/0/name", serde_json::json!("params//w")),
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

/// Checks the section against the manifest's methods: every named method exists and
/// takes and gives the leaves the section promises.
fn validate_generation(g: &GenerationSpec, m: &Manifest) -> Result<()> {
    let bad = |reason: String| Err(Error::format("manifest.json", format!("generation: {reason}")));
    if g.version != GENERATION_VERSION {
        return bad(format!("version {} is not supported (this crate reads {GENERATION_VERSION})", g.version));
    }
    if g.max_len < 2 || g.vocab_size == 0 {
        return bad(format!("max_len {} must be at least 2 and vocab_size {} positive", g.max_len, g.vocab_size));
    }
    if g.eos_token_id.iter().any(|&t| t < 0 || t as u64 >= g.vocab_size as u64) {
        return bad(format!("eos_token_id {:?} outside the vocabulary 0..{}", g.eos_token_id, g.vocab_size));
    }
    if !g.batch_sizes.contains(&1) {
        return bad(format!("batch_sizes {:?} lack 1, which the generator runs", g.batch_sizes));
    }
    if g.prefill.is_empty() || g.prefill.windows(2).any(|w| w[0].length >= w[1].length) {
        return bad("prefill must list prompt lengths in ascending order".into());
    }
    if let Some(p) = g.prefill.iter().find(|p| p.length < 2 || p.length > g.max_len) {
        return bad(format!("prefill length {} is not in 2..={}", p.length, g.max_len));
    }
    if let Some(c) = g.counters.iter().find(|c| m.variable(c).is_none_or(|v| v.is_param())) {
        return bad(format!("counters names {c:?}, which is not a state variable"));
    }
    let method = |name: &str| m.methods.get(name).ok_or_else(|| Error::format("manifest.json", format!("generation names method {name:?}, which the bundle lacks")));
    check_inputs(method(&g.decode)?, "decode", &g.decode, &[("input_ids", DType::I32, &[1])])?;
    for p in &g.prefill {
        check_inputs(method(&p.method)?, "prefill", &p.method, &[("input_ids", DType::I32, &[p.length]), ("length", DType::I32, &[])])?;
    }
    let logits = method(&g.decode)?.outputs.iter().find(|o| o.name == "logits").map(|o| o.dtype).unwrap_or(DType::F32);
    let v = g.vocab_size;
    let sample = method(&g.sample)?;
    check_inputs(sample, "sample", &g.sample, &[("key", DType::U32, &[2]), ("logits", logits, &[v]), ("temperature", logits, &[]), ("top_k", DType::I32, &[]), ("top_p", logits, &[])])?;
    if sample.inference.iter().all(|c| c.batch_size != Some(1)) {
        return bad(format!("the sample method {:?} is not exported at batch 1", g.sample));
    }
    for name in std::iter::once(&g.decode).chain(g.prefill.iter().map(|p| &p.method)) {
        let out = &method(name)?.outputs;
        if !out.iter().any(|o| o.name == "logits" && o.shape.len() == 2 && o.shape[1] == v) {
            return bad(format!("method {name:?} gives no logits [B, {v}]"));
        }
    }
    Ok(())
}

/// `method`'s inputs are exactly `want` (name, dtype, shape after the batch axis), sorted by
/// name as the exporter lists them.
fn check_inputs(method: &MethodSpec, role: &str, name: &str, want: &[(&str, DType, &[usize])]) -> Result<()> {
    let got: Vec<(&str, DType, &[usize])> = method.inputs.iter().map(|s| (s.name.as_str(), s.dtype, s.shape.get(1..).unwrap_or(&[]))).collect();
    if got != want {
        return Err(Error::format("manifest.json", format!("generation.{role} names method {name:?}, which takes {got:?}, expected {want:?} (name, dtype, shape after the batch axis)")));
    }
    Ok(())
}

#[cfg(test)]
mod generation_tests {
    use super::*;

    fn manifest() -> serde_json::Value {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("hlo/lm_gpt2/manifest.json");
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    }

    fn parse(v: &serde_json::Value) -> Result<Manifest> {
        Manifest::from_json(v.to_string().as_bytes())
    }

    #[test]
    fn the_committed_section_parses() {
        let m = parse(&manifest()).unwrap();
        let g = m.generation.unwrap();
        assert_eq!((g.max_len, g.vocab_size, g.eos_token_id.as_slice()), (48, 211, &[210][..]));
        assert_eq!(g.prefill.iter().map(|p| p.length).collect::<Vec<_>>(), [8, 16]);
        assert_eq!(g.counters.len(), 2);
    }

    #[test]
    fn bad_sections_are_refused() {
        let cases: Vec<(&str, serde_json::Value, &str)> = vec![
            ("/generation/version", serde_json::json!(2), "version 2"),
            ("/generation/decode", serde_json::json!("nope"), "lacks"),
            ("/generation/sample", serde_json::json!("prefill_8"), "sample"),
            ("/generation/decode", serde_json::json!("prefill_8"), "decode"),
            ("/generation/eos_token_id", serde_json::json!([211]), "outside the vocabulary"),
            ("/generation/eos_token_id", serde_json::json!([-1]), "outside the vocabulary"),
            ("/generation/batch_sizes", serde_json::json!([2]), "lack 1"),
            ("/generation/max_len", serde_json::json!(1), "max_len"),
            ("/generation/vocab_size", serde_json::json!(212), "logits"),
            ("/generation/prefill/1/length", serde_json::json!(8), "ascending"),
            ("/generation/prefill/1/length", serde_json::json!(49), "2..=48"),
            ("/generation/prefill/1/method", serde_json::json!("prefill_8"), "prefill_8"),
            ("/generation/counters/0", serde_json::json!("params/transformer/wte/embedding"), "not a state variable"),
            ("/generation/counters/0", serde_json::json!("cache/nope"), "not a state variable"),
        ];
        for (ptr, value, says) in cases {
            let mut m = manifest();
            *m.pointer_mut(ptr).unwrap() = value;
            let e = parse(&m).unwrap_err();
            assert!(matches!(e, Error::InvalidFormat { .. }) && e.to_string().contains(says), "{ptr}: {e}");
        }
    }
}
