//! [`FlaxLayer`]: a bundle's method on a device — its computations per mode and batch size,
//! over the device-resident variables and RNG key. Its config and saving are in
//! `flax_layer.rs`.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::batching::{self, Plan};
use super::computation::{Computation, Names, Sink, Source};
use super::inputs::AsInputs;
use super::mode::Mode;
use super::options::{Build, Options};
use super::placement::{DeviceArray, Layout, Placement};
use super::state::DeviceState;
use crate::bundle::{Batching, Bundle, MethodSpec};
use crate::pjrt::Client;
use crate::pytree::{PyTree, TreeDef};
use crate::spec::{TensorSpec, ValueSpec};
use crate::tensor::TensorView;
use crate::{Error, Result, Tensor};

/// A bundle's method on a PJRT device: the Rust counterpart of Keras'
/// `keras.layers.FlaxLayer` (and of `JaxLayer`, which Keras' `FlaxLayer` extends: see
/// [`FlaxLayer::jax_layer`]). Params and state live on the device between calls: only inputs
/// go up and outputs come down. Training calls thread the device-resident key.
///
/// Params are the `params` collection; every other collection (`batch_stats`, `cache`, ...)
/// is non-trainable state, as with Keras' `FlaxLayer` (`mutable=DenyList(["params"])`). A
/// layer starts from the bundle's own variables (what the exporter bundled), or runs the
/// bundle's `init` on the device when asked ([`Builder::init_variables`](super::Builder::init_variables)) or when the bundle
/// has none. It has a config ([`FlaxLayer::get_config`]) and saves and loads as a whole
/// ([`FlaxLayer::save`], [`FlaxLayer::load`]).
///
/// ```no_run
/// use flaxlayer::{FlaxLayer, Mode, Tensor};
/// # fn main() -> flaxlayer::Result<()> {
/// let mut layer = FlaxLayer::builder("hlo/mlp").seed(0).build()?;
/// let x = Tensor::zeros(flaxlayer::DType::F32, vec![8, 12])?;
/// let y = layer.call(&x, Mode::Inference)?;
/// # Ok(())
/// # }
/// ```
#[doc(alias = "JaxLayer")]
pub struct FlaxLayer {
    bundle: Arc<Bundle>,
    /// The method [`FlaxLayer::call`] runs; [`FlaxLayer::call_method`] runs any of `methods`.
    method: String,
    seed: u64,
    state: DeviceState,
    /// Every method of the bundle, over the one `state`.
    methods: BTreeMap<String, Method>,
}

/// One method's computations.
struct Method {
    batching: Batching,
    inference: Vec<Computation>,
    /// The inference computations with the bundle's params compiled in, when the bundle has
    /// them for every batch size and the layer's params were loaded from its variables file.
    frozen: Option<Vec<Computation>>,
    training: Vec<Computation>,
}

impl Method {
    fn computations(&self, mode: Mode) -> &[Computation] {
        match mode {
            Mode::Inference => &self.inference,
            Mode::Training => &self.training,
        }
    }
}

fn named<'a>(methods: &'a BTreeMap<String, Method>, name: &str) -> Result<&'a Method> {
    methods.get(name).ok_or_else(|| Error::NotFound {
        what: "method",
        name: name.into(),
        available: methods.keys().cloned().collect::<Vec<_>>().join(", "),
    })
}

impl std::fmt::Debug for FlaxLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlaxLayer")
            .field("bundle", &self.bundle.dir())
            .field("method", &self.method)
            .field("variables", &self.state.variable_specs().len())
            .finish()
    }
}

impl super::options::sealed::Sealed for FlaxLayer {}

impl Build for FlaxLayer {
    fn build(bundle: Arc<Bundle>, options: Options) -> Result<FlaxLayer> {
        FlaxLayer::new(bundle, options)
    }
}

impl FlaxLayer {
    /// Sets up the computations of every method of the bundle (each compiles on its first
    /// call, or loads from the compile cache), the variables and the key. All methods share
    /// the device-resident variables and key; [`FlaxLayer::call`] runs the chosen method
    /// ([`Builder::method`](super::Builder::method), else the bundle's default), [`FlaxLayer::call_method`] any of them.
    pub fn new(bundle: Arc<Bundle>, options: Options) -> Result<FlaxLayer> {
        let client = options.client()?;
        // flaxlayer's custom-call handlers (LAPACK) on the client's plugin, before anything
        // compiles: once per plugin, a no-op after the first layer.
        crate::custom_calls::register(&client)?;
        let placement = Placement::new(client, options.device, bundle.devices(), &bundle.dir().display().to_string())?;
        let manifest = bundle.manifest();
        let method = options.method.clone().unwrap_or_else(|| manifest.default_method.clone());
        bundle.method(&method)?;
        let seed = options.seed.unwrap_or(manifest.seed);
        let how = options.compile_how(&bundle);
        let specs = manifest.variables.clone();
        let names = Names { variables: &specs, opt_state: &[] };
        let prepare = |list: &[crate::bundle::ComputationSpec]| -> Result<Vec<Computation>> {
            list.iter().map(|c| Computation::new(&placement, bundle.computation(&c.file)?, &names, &how)).collect()
        };
        let mut prepared = Vec::with_capacity(manifest.methods.len());
        for (name, spec) in &manifest.methods {
            prepared.push((name.clone(), spec, prepare(&spec.inference)?, prepare(&spec.training)?));
        }
        let all: Vec<&Computation> = prepared.iter().flat_map(|(_, _, i, t)| i.iter().chain(t)).collect();
        let layouts: Vec<(usize, Layout)> = (0..specs.len()).map(|i| layout_in(&all, Source::Var(i))).collect();
        let key_layout = layout_in(&all, Source::Key);
        let wanted: Vec<_> = prepared.iter().map(|(_, spec, _, _)| super::init::frozen_wanted(&bundle, spec, &options)).collect();
        let initial = super::init::initial_variables(&bundle, &placement, &layouts, &options.variables, seed, &how, wanted.iter().any(Option::is_some))?;
        let mut methods = BTreeMap::new();
        for ((name, spec, inference, training), wanted) in prepared.into_iter().zip(wanted) {
            let frozen = super::init::frozen_matching(wanted, initial.bundle_sha256.as_deref()).map(|list| prepare(&list)).transpose()?;
            methods.insert(name, Method { batching: spec.batching.clone(), inference, frozen, training });
        }
        let mut state = DeviceState::new(placement, specs, initial.arrays, layouts, options.key.unwrap_or_else(|| super::init::seed_key(seed)), key_layout)?;
        if methods.values().any(|m| m.frozen.is_some()) {
            state.mark_params_from_bundle();
        }
        Ok(FlaxLayer { bundle, method, seed, state, methods })
    }

    /// The shapes of each variable's buffers, one per device that holds it: a sharded
    /// variable's blocks, or the whole array on each device holding a replica.
    pub fn variable_shards(&self) -> Vec<(String, Vec<Vec<usize>>)> {
        self.state.variable_shards()
    }

    /// How many devices the layer runs on.
    pub fn num_devices(&self) -> usize {
        self.state.placement().len()
    }

    /// The bundle.
    pub fn bundle(&self) -> &Arc<Bundle> {
        &self.bundle
    }

    /// The PJRT client.
    pub fn client(&self) -> &Client {
        self.state.client()
    }

    /// The method this layer calls.
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The manifest entry of the method.
    pub fn method_spec(&self) -> Result<&MethodSpec> {
        self.bundle.method(&self.method)
    }

    /// The seed the layer was built with.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The index of the device the layer runs on.
    pub fn device_index(&self) -> usize {
        self.state.placement().device_index
    }

    pub(crate) fn state(&self) -> &DeviceState {
        &self.state
    }

    pub(crate) fn state_mut(&mut self) -> &mut DeviceState {
        &mut self.state
    }

    fn computations(&self, mode: Mode) -> &[Computation] {
        self.default().computations(mode)
    }

    /// The layer's own method.
    fn default(&self) -> &Method {
        &self.methods[&self.method]
    }

    /// The method named `name`.
    fn named(&self, name: &str) -> Result<&Method> {
        named(&self.methods, name)
    }

    /// Compiles (or loads from the compile cache) every inference computation of every
    /// method now, instead of on its first call.
    pub fn compile_inference(&self) -> Result<()> {
        for m in self.methods.values() {
            let frozen = m.frozen.iter().flatten().filter(|_| self.state.params_from_bundle());
            for c in m.inference.iter().chain(frozen) {
                c.ensure_compiled()?;
            }
        }
        Ok(())
    }

    /// The names of the bundle's methods, each callable with [`FlaxLayer::call_method`].
    pub fn method_names(&self) -> impl Iterator<Item = &str> {
        self.methods.keys().map(String::as_str)
    }

    /// Calls the layer in `mode`. Both modes write back the non-param collections the
    /// computation returns (batch statistics, decode caches); training also advances the key.
    ///
    /// Inputs are checked (tree, dtypes, shapes) before anything runs, and a refused call
    /// leaves params, state and key as they were. Inference takes any batch size when the
    /// method is paddable (see the README's "Any batch size").
    pub fn call(&mut self, inputs: impl AsInputs, mode: Mode) -> Result<PyTree> {
        let FlaxLayer { method, methods, state, .. } = self;
        call_in(&methods[method.as_str()], state, inputs, mode)
    }

    /// Calls the bundle's method `name` in `mode` over the layer's variables and key, as
    /// Flax's `module.apply(variables, ..., method=name)` with the non-param collections
    /// mutable: each method has its own inputs and batch sizes, and all of them read and
    /// write the same device-resident state (a decoder's `prefill_16` and `decode` share its
    /// cache). Otherwise as [`FlaxLayer::call`].
    pub fn call_method(&mut self, name: &str, inputs: impl AsInputs, mode: Mode) -> Result<PyTree> {
        let FlaxLayer { methods, state, .. } = self;
        call_in(named(methods, name)?, state, inputs, mode)
    }

    /// [`FlaxLayer::predict`] with the bundle's method `name`.
    pub fn predict_method(&self, name: &str, inputs: impl AsInputs) -> Result<PyTree> {
        predict_in(self.named(name)?, &self.state, inputs)
    }

    /// An inference call that takes `&self`, safe from several threads at once: it neither
    /// donates nor writes back state. Use [`FlaxLayer::call`] for models whose inference
    /// advances state (decode caches).
    pub fn predict(&self, inputs: impl AsInputs) -> Result<PyTree> {
        predict_in(self.default(), &self.state, inputs)
    }

    /// Whether inference runs the bundle's frozen computations (params compiled in as
    /// constants, `export_flax(..., frozen=True)`): the bundle has them and the layer's params
    /// are still the ones loaded from its `variables.safetensors`. Once a param changes
    /// (`set_variables`, a train step), inference runs the computations that take the params
    /// as arguments.
    pub fn runs_frozen(&self) -> bool {
        self.default().frozen.is_some() && self.state.params_from_bundle()
    }

    /// Trainable weights (the `params` collection), as Keras lists them.
    pub fn trainable_weights(&self) -> Vec<TensorSpec> {
        self.state.variable_specs().iter().filter(|v| v.is_param()).cloned().collect()
    }

    /// Non-trainable weights (every other collection: `batch_stats`, `cache`, ...).
    pub fn non_trainable_weights(&self) -> Vec<TensorSpec> {
        self.state.variable_specs().iter().filter(|v| !v.is_param()).cloned().collect()
    }

    /// The number of scalars in all weights, as Keras' `count_params()`.
    pub fn count_params(&self) -> u64 {
        self.state.variable_specs().iter().map(|v| v.num_elements().unwrap_or(0) as u64).sum()
    }

    /// Copies every variable to the host, by Flax path.
    pub fn variables(&self) -> Result<Vec<(String, Tensor)>> {
        self.state.variables()
    }

    /// Replaces the named variables (all of them or a subset). Every name, dtype and shape is
    /// checked and every value uploaded before any is replaced.
    pub fn set_variables(&mut self, variables: &[(String, Tensor)]) -> Result<()> {
        self.state.set_variables(variables)
    }

    /// The current RNG key data.
    pub fn key(&self) -> Result<[u32; 2]> {
        self.state.key()
    }

    /// Replaces the RNG key data.
    pub fn set_key(&mut self, key: [u32; 2]) -> Result<()> {
        self.state.set_key(key)
    }

    /// The exported batch sizes of `mode`, sorted.
    pub fn batch_sizes(&self, mode: Mode) -> Vec<usize> {
        batching::batch_sizes(self.computations(mode))
    }

    /// What the exporter verified about the batch axis: whether inference pads and splits
    /// batches of any size.
    pub fn batching(&self) -> &Batching {
        &self.default().batching
    }

    /// The input leaves (names, dtypes, shapes) of each exported batch size of `mode`.
    pub fn input_specs(&self, mode: Mode) -> Vec<Vec<TensorSpec>> {
        self.computations(mode).iter().map(|c| c.inputs.clone()).collect()
    }

    /// The output leaves of each exported batch size of `mode`.
    pub fn output_specs(&self, mode: Mode) -> Vec<Vec<TensorSpec>> {
        self.computations(mode).iter().map(|c| c.outputs.clone()).collect()
    }

    /// The method's input leaves at inference, as ort's `session.inputs`: name, dtype and
    /// shape, with `None` for a dimension that varies: the batch axis when the method takes any
    /// batch size (`batching().paddable`) or was exported at several.
    ///
    /// ```no_run
    /// # fn main() -> flaxlayer::Result<()> {
    /// let layer = flaxlayer::FlaxLayer::builder("hlo/image_meta").build()?;
    /// for input in layer.inputs() {
    ///     println!("{input}"); // image: float32[?, 8, 8, 1], then meta: float32[?, 3]
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn inputs(&self) -> Vec<ValueSpec> {
        let m = self.default();
        let per_size: Vec<&[TensorSpec]> = m.inference.iter().map(|c| c.inputs.as_slice()).collect();
        let n = per_size.first().map_or(0, |s| s.len());
        ValueSpec::merge(&per_size, &vec![m.batching.paddable; n])
    }

    /// The method's output leaves at inference, with `None` for a dimension that varies (the
    /// batch axis of the outputs that carry it, when the method takes any batch size).
    pub fn outputs(&self) -> Vec<ValueSpec> {
        let m = self.default();
        let per_size: Vec<&[TensorSpec]> = m.inference.iter().map(|c| c.outputs.as_slice()).collect();
        let batched: Vec<bool> = m.inference.first().map_or_else(Vec::new, |c| {
            c.output_batched.iter().map(|b| m.batching.paddable && b.unwrap_or(false)).collect()
        });
        ValueSpec::merge(&per_size, &batched)
    }

    /// The tree structure of the method's inputs (the same for every batch size).
    pub fn input_tree(&self) -> &TreeDef {
        &self.default().inference[0].inputs_tree
    }
}

/// A call of `method` over `state` (see [`FlaxLayer::call`]).
fn call_in(method: &Method, state: &mut DeviceState, inputs: impl AsInputs, mode: Mode) -> Result<PyTree> {
    let view = inputs.as_inputs();
    let comps = match mode {
        Mode::Inference => inference_of(&method.inference, &method.frozen, state),
        Mode::Training => &method.training,
    };
    run_plan(comps, &method.batching, mode, &view, |comp, inputs| {
        let rest = state.run_and_apply(comp, &inputs)?;
        Ok(rest.into_iter().filter(|(s, _)| matches!(s, Sink::Output(_))).map(|(_, a)| a).collect())
    })
}

/// An inference of `method` that neither donates nor writes back `state` (see [`FlaxLayer::predict`]).
fn predict_in(method: &Method, state: &DeviceState, inputs: impl AsInputs) -> Result<PyTree> {
    let view = inputs.as_inputs();
    run_plan(inference_of(&method.inference, &method.frozen, state), &method.batching, Mode::Inference, &view, |comp, inputs| {
        let results = state.run(comp, &inputs)?;
        Ok(comp.sinks.iter().zip(results).filter(|(s, _)| matches!(s, Sink::Output(_))).map(|(_, a)| a).collect())
    })
}

/// The inference computations to run: the frozen ones while the params are the bundle's.
fn inference_of<'a>(inference: &'a [Computation], frozen: &'a Option<Vec<Computation>>, state: &DeviceState) -> &'a [Computation] {
    match frozen {
        Some(frozen) if state.params_from_bundle() => frozen,
        _ => inference,
    }
}

/// The layout the first of `comps` that takes `source` wants for it (whole on one device
/// when none does).
pub(crate) fn layout_in(comps: &[&Computation], source: Source) -> (usize, Layout) {
    comps.iter().find_map(|c| c.layout_of(source)).unwrap_or((1, None))
}

/// Runs a call: plans the batch, runs each chunk's computation through `run` (which returns
/// the chunk's outputs), and puts the outputs back together as a tree.
fn run_plan(
    comps: &[Computation],
    batching: &Batching,
    mode: Mode,
    view: &crate::pytree::TreeView<'_>,
    mut run: impl FnMut(&Computation, Vec<DeviceArray>) -> Result<Vec<DeviceArray>>,
) -> Result<PyTree> {
    let first = comps.first().ok_or_else(|| Error::invalid("method", "has no computations"))?;
    let leaves = first.inputs_tree.flatten(view)?;
    let plan = batching::plan(comps, batching, mode, &leaves)?;
    let tensors = if plan.is_exact(comps) {
        // The common case, without padding or chunk bookkeeping.
        let comp = &comps[plan.chunks[0].comp];
        let inputs = leaves.iter().enumerate().map(|(i, l)| comp.upload_input(i, l)).collect::<Result<Vec<_>>>()?;
        run(comp, inputs)?.into_iter().map(DeviceArray::into_tensor).collect::<Result<Vec<_>>>()?
    } else {
        let mut per_chunk = Vec::with_capacity(plan.chunks.len());
        for chunk in &plan.chunks {
            let comp = &comps[chunk.comp];
            let inputs = upload_chunk(comp, &plan, chunk, batching.pad_value, &leaves)?;
            let outputs = run(comp, inputs)?;
            per_chunk.push(outputs.into_iter().map(DeviceArray::into_tensor).collect::<Result<Vec<_>>>()?);
        }
        batching::assemble(&plan, &first.output_batched, per_chunk)?
    };
    match &first.outputs_tree {
        Some(tree) => tree.unflatten(tensors),
        None => Ok(PyTree::None),
    }
}

/// Uploads one chunk's inputs: the leaves' rows of the chunk, padded to the computation's
/// batch size.
fn upload_chunk(comp: &Computation, plan: &Plan, chunk: &batching::Chunk, pad: f64, leaves: &[&TensorView<'_>]) -> Result<Vec<DeviceArray>> {
    let to = comp.batch_size.unwrap_or(chunk.len);
    debug_assert!(chunk.start + chunk.len <= plan.rows);
    leaves.iter().enumerate().map(|(i, l)| comp.upload_input(i, &batching::rows(l, chunk.start, chunk.len, to, pad)?.view())).collect()
}

static_assertions::assert_impl_all!(FlaxLayer: Send, Sync);
