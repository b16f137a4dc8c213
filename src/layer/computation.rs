//! One bundle computation prepared for a placement: maps the layer's variables, optimizer
//! state, key and inputs onto JAX's flat arguments, and the flat results back.

use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use super::cache::CompileSetting;
use super::isolate::Isolation;
use super::placement::{block_shape, slot_layout, DeviceArray, Layout, Placement};
use crate::bundle::{BundleComputation, Exported, Role, Slot};
use crate::pjrt::{Buffer, CompileOptions, LoadedExecutable, Program};
use crate::pytree::TreeDef;
use crate::spec::TensorSpec;
use crate::{DType, Error, Result};

/// Where a flat argument comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// The variable with this index (manifest order).
    Var(usize),
    Key,
    /// The input leaf with this index.
    Input(usize),
    /// The optimizer-state leaf with this index (`train.opt_state` order).
    OptState(usize),
}

/// Where a flat result goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sink {
    /// The output leaf with this index.
    Output(usize),
    Var(usize),
    Key,
    /// The optimizer-state leaf with this index.
    OptState(usize),
    /// The metric with this index in `metric_names`.
    Metric(usize),
}

/// How a layer's computations compile: the cache directory, the isolation, if any, and the
/// partitioner of multi-device programs.
#[derive(Debug, Clone, Default)]
pub(crate) struct CompileHow {
    pub cache: Option<PathBuf>,
    pub isolation: Option<Isolation>,
    /// Multi-device programs carry Shardy annotations (else GSPMD's).
    pub shardy: bool,
}

/// The names a computation's slots resolve against.
pub(crate) struct Names<'a> {
    pub variables: &'a [TensorSpec],
    pub opt_state: &'a [TensorSpec],
}

/// A computation and how to call it. It is compiled on first use (or by
/// [`Computation::ensure_compiled`]), so a layer compiles only the batch sizes and modes it
/// runs.
pub(crate) struct Computation {
    pub file: String,
    pub batch_size: Option<usize>,
    exe: OnceLock<LoadedExecutable>,
    /// Serializes the first compile; later calls only read `exe`.
    compiling: Mutex<()>,
    placement: Placement,
    options: CompileOptions,
    mlir: Vec<u8>,
    signature: Vec<TensorSpec>,
    /// The compile cache directory, if caching is on.
    cache: Option<PathBuf>,
    /// Compile in a child process (bundles from elsewhere).
    isolation: Option<Isolation>,
    /// JAX's platform-index argument, one per device, when the export has several platforms.
    platform_index: Option<DeviceArray>,
    /// Sources of the arguments the module keeps (`module_kept_var_idx`), in order, each
    /// with whether it may be donated.
    kept: Vec<(Source, bool)>,
    /// The donation flags of an execution that may donate (one per executable argument,
    /// the platform index first), and of one that donates nothing.
    donate_flags: Vec<bool>,
    keep_flags: Vec<bool>,
    /// How many devices one execution runs on (the export's `nr_devices`).
    pub devices: usize,
    /// The layout of each kept argument over those devices.
    kept_layouts: Vec<Layout>,
    /// The layout of each input leaf.
    input_layouts: Vec<Layout>,
    /// The layout, whole shape and per-device block shape of each result.
    result_layouts: Vec<(Layout, Vec<usize>, Vec<i64>)>,
    pub sinks: Vec<Sink>,
    /// The input leaves, named by PyTree path.
    pub inputs: Vec<TensorSpec>,
    pub inputs_tree: TreeDef,
    /// The output leaves, named by PyTree path.
    pub outputs: Vec<TensorSpec>,
    /// Per output leaf: whether its leading axis is the batch (`None`: the manifest does not
    /// say).
    pub output_batched: Vec<Option<bool>>,
    pub outputs_tree: Option<TreeDef>,
    /// The names of the `metric` results, in order.
    pub metric_names: Vec<String>,
}

impl std::fmt::Debug for Computation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Computation").field("file", &self.file).field("batch_size", &self.batch_size).finish()
    }
}

fn index_of(specs: &[TensorSpec], name: &Option<String>, what: &str, file: &str) -> Result<usize> {
    let name = name.as_deref().unwrap_or_default();
    specs.iter().position(|v| v.name == name).ok_or_else(|| Error::format(file.to_string(), format!("unknown {what} {name:?}")))
}

impl Computation {
    /// Prepares `comp` for `placement`, resolving slot names against `names`. A computation
    /// that calls a custom call the plugin cannot run is refused here, before any compile.
    pub fn new(placement: &Placement, comp: &BundleComputation, names: &Names<'_>, how: &CompileHow) -> Result<Computation> {
        let (exp, spec) = (&comp.exported, &comp.spec);
        let file = spec.file.as_str();
        crate::custom_calls::check(file, spec.custom_call_targets.as_deref(), &placement.client)?;
        let mut sources = Vec::with_capacity(spec.args.len());
        let mut inputs = Vec::new();
        for (slot, aval) in spec.args.iter().zip(&exp.in_avals) {
            sources.push(match slot.role {
                Role::Param => (Source::Var(index_of(names.variables, &slot.name, "variable", file)?), false),
                Role::State => (Source::Var(index_of(names.variables, &slot.name, "variable", file)?), true),
                Role::Key => (Source::Key, true),
                Role::OptState => (Source::OptState(index_of(names.opt_state, &slot.name, "optimizer state", file)?), true),
                Role::Input => {
                    inputs.push(aval.spec(slot.name.as_deref().unwrap_or_default()));
                    (Source::Input(inputs.len() - 1), false)
                }
                Role::Output | Role::Metric => return Err(Error::format(file, format!("an argument has role {:?}", slot.role))),
            });
        }
        let mut sinks = Vec::with_capacity(spec.results.len());
        let (mut outputs, mut output_batched, mut metric_names) = (Vec::new(), Vec::new(), Vec::new());
        for (slot, aval) in spec.results.iter().zip(&exp.out_avals) {
            sinks.push(match slot.role {
                Role::Param | Role::State => Sink::Var(index_of(names.variables, &slot.name, "variable", file)?),
                Role::Key => Sink::Key,
                Role::OptState => Sink::OptState(index_of(names.opt_state, &slot.name, "optimizer state", file)?),
                Role::Output => {
                    outputs.push(aval.spec(slot.name.as_deref().unwrap_or_default()));
                    output_batched.push(slot.batched);
                    Sink::Output(outputs.len() - 1)
                }
                Role::Metric => {
                    metric_names.push(slot.name.clone().unwrap_or_default());
                    Sink::Metric(metric_names.len() - 1)
                }
                Role::Input => return Err(Error::format(file, "a result has role input")),
            });
        }
        let kept = exp
            .module_kept_var_idx
            .iter()
            .map(|&i| sources.get(i).copied().ok_or_else(|| Error::format(file, format!("kept argument {i} out of range"))))
            .collect::<Result<Vec<_>>>()?;
        let devices = usize::try_from(exp.nr_devices).unwrap_or(0).max(1);
        if devices > placement.len() {
            return Err(Error::TooFewDevices { what: file.to_string(), needed: devices, first: placement.device_index, available: placement.len() });
        }
        let arg_layouts = (0..exp.in_avals.len())
            .map(|i| slot_layout(exp.in_shardings.get(i).and_then(Option::as_ref), devices, &exp.in_avals[i].shape, &slot_what(file, "argument", spec.args.get(i))))
            .collect::<Result<Vec<Layout>>>()?;
        let kept_layouts: Vec<Layout> = exp.module_kept_var_idx.iter().map(|&i| arg_layouts.get(i).cloned().flatten()).collect();
        let input_layouts =
            spec.args.iter().zip(&arg_layouts).filter(|(slot, _)| slot.role == Role::Input).map(|(_, l)| l.clone()).collect();
        let result_layouts = exp
            .out_avals
            .iter()
            .enumerate()
            .map(|(j, aval)| {
                let what = slot_what(file, "result", spec.results.get(j));
                let layout = slot_layout(exp.out_shardings.get(j).and_then(Option::as_ref), devices, &aval.shape, &what)?;
                let block = block_shape(&layout, &aval.shape)?.iter().map(|&d| d as i64).collect();
                Ok((layout, aval.shape.clone(), block))
            })
            .collect::<Result<Vec<_>>>()?;
        let options = if devices > 1 {
            let ids = placement.device_ids()?.into_iter().take(devices).collect();
            CompileOptions::spmd(ids, how.shardy)
        } else {
            CompileOptions { portable: placement.portable, ..CompileOptions::default() }
        };
        let platform_index = platform_index_arg(placement, exp, file, devices)?;
        let mut signature = Vec::new();
        if platform_index.is_some() {
            signature.push(TensorSpec::new("platform index", DType::I32, vec![]));
        }
        // Each device gets its block of every argument.
        for (&i, layout) in exp.module_kept_var_idx.iter().zip(&kept_layouts) {
            let Some(aval) = exp.in_avals.get(i) else { continue };
            let name = spec.args.get(i).and_then(|s| s.name.clone()).unwrap_or_else(|| format!("in_avals[{i}]"));
            signature.push(TensorSpec::new(name, aval.dtype, block_shape(layout, &aval.shape)?));
        }
        let inputs_tree = last_positional_arg(&exp.in_tree, file)?;
        let outputs_tree = match &exp.out_tree {
            TreeDef::Tuple(children) if !outputs.is_empty() => children.first().cloned(),
            _ => None,
        };
        check_leaf_counts(file, &inputs_tree, inputs.len(), outputs_tree.as_ref(), outputs.len())?;
        Ok(Computation {
            file: file.to_string(),
            batch_size: spec.batch_size,
            exe: OnceLock::new(),
            compiling: Mutex::new(()),
            placement: placement.clone(),
            options,
            mlir: exp.mlir_module.clone(),
            signature,
            cache: how.cache.clone(),
            isolation: how.isolation.clone(),
            donate_flags: donation_flags(platform_index.is_some(), &kept),
            keep_flags: vec![false; kept.len() + usize::from(platform_index.is_some())],
            platform_index,
            kept,
            devices,
            kept_layouts,
            input_layouts,
            result_layouts,
            sinks,
            inputs,
            inputs_tree,
            outputs,
            output_batched,
            outputs_tree,
            metric_names,
        })
    }

    /// The executable, compiled (or loaded from the compile cache) on first use.
    fn executable(&self) -> Result<&LoadedExecutable> {
        if let Some(exe) = self.exe.get() {
            return Ok(exe);
        }
        let _guard = self.compiling.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(exe) = self.exe.get() {
            return Ok(exe);
        }
        let setting = CompileSetting { cache: self.cache.as_deref(), isolation: self.isolation.as_ref(), what: &self.file };
        let exe = super::cache::compile(setting, &self.placement.client, Program::Mlir(&self.mlir), &self.options)?
            .with_input_signature(self.signature.clone());
        Ok(self.exe.get_or_init(|| exe))
    }

    /// Compiles now rather than on the first call.
    pub fn ensure_compiled(&self) -> Result<()> {
        self.executable().map(|_| ())
    }

    /// Lets params be donated too (a train step replaces them), like state and key.
    pub fn donating_params(mut self) -> Computation {
        for (source, donatable) in &mut self.kept {
            if matches!(source, Source::Var(_)) {
                *donatable = true;
            }
        }
        self.donate_flags = donation_flags(self.platform_index.is_some(), &self.kept);
        self
    }

    /// The sources of the arguments the module keeps, in order.
    pub fn kept_sources(&self) -> impl Iterator<Item = Source> + '_ {
        self.kept.iter().map(|(s, _)| *s)
    }

    /// The state sources a donating run may consume.
    pub fn donated_sources(&self) -> impl Iterator<Item = Source> + '_ {
        self.kept.iter().filter(|(s, d)| *d && !matches!(s, Source::Input(_))).map(|(s, _)| *s)
    }

    /// The results that `pick` maps to a slot of `specs`, in `specs` order; every spec must
    /// get one (`what` names the kind in the error).
    pub fn results_by(&self, results: Vec<DeviceArray>, pick: impl Fn(Sink) -> Option<usize>, specs: &[TensorSpec], what: &str) -> Result<Vec<DeviceArray>> {
        let mut slots: Vec<Option<DeviceArray>> = specs.iter().map(|_| None).collect();
        for (sink, array) in self.sinks.iter().zip(results) {
            if let Some(slot) = pick(*sink).and_then(|i| slots.get_mut(i)) {
                *slot = Some(array);
            }
        }
        slots
            .into_iter()
            .zip(specs)
            .map(|(a, s)| a.ok_or_else(|| Error::format(self.file.clone(), format!("does not produce {what} {:?}", s.name))))
            .collect()
    }

    /// Whether every input leaf has exactly this computation's shape.
    pub fn accepts(&self, leaves: &[&crate::tensor::TensorView<'_>]) -> bool {
        leaves.len() == self.inputs.len() && self.inputs.iter().zip(leaves).all(|(s, l)| s.shape == l.shape())
    }

    /// Uploads input leaf `i` laid out for this computation.
    pub fn upload_input(&self, i: usize, t: &crate::tensor::TensorView<'_>) -> Result<DeviceArray> {
        let layout = self.input_layouts.get(i).cloned().flatten();
        self.placement.upload_to(t, self.devices, &layout).map_err(|e| match e {
            Error::InvalidArgument { reason, .. } => Error::invalid(format!("input {:?}", self.inputs.get(i).map_or("?", |s| s.name.as_str())), reason),
            other => other,
        })
    }

    /// The layouts of the input leaves, in order.
    pub fn input_layouts(&self) -> Vec<(usize, Layout)> {
        self.input_layouts.iter().map(|l| (self.devices, l.clone())).collect()
    }

    /// The layout the computation wants for the state source `source`, if it takes it.
    pub fn layout_of(&self, source: Source) -> Option<(usize, Layout)> {
        self.kept.iter().zip(&self.kept_layouts).find(|((s, _), _)| *s == source).map(|(_, l)| (self.devices, l.clone()))
    }

    /// Runs on the state's arrays and `inputs`. With `donate`, the state arguments marked
    /// donatable may be consumed; params (outside a train step) and inputs never are. An
    /// argument held in another layout than the computation's is moved into its layout first
    /// (through the host).
    pub fn run(&self, state: &dyn StateArrays, inputs: &[DeviceArray], donate: bool) -> Result<Vec<DeviceArray>> {
        let flags = if donate { &self.donate_flags } else { &self.keep_flags };
        if self.devices == 1 {
            // Usually every argument is already laid out: one pass, no copies.
            let moved;
            let buffers = match self.device_buffers(state, inputs, &[], 0)? {
                Some(buffers) => buffers,
                None => {
                    moved = self.moved_arguments(state, inputs)?;
                    self.laid_out_buffers(state, inputs, &moved, 0)?
                }
            };
            let outs = self.executable()?.execute_on(&buffers, flags, self.placement.execute_device())?;
            return Ok(outs.into_iter().map(DeviceArray::single).collect());
        }
        let moved = self.moved_arguments(state, inputs)?;
        let per_device = (0..self.devices).map(|d| self.laid_out_buffers(state, inputs, &moved, d)).collect::<Result<Vec<_>>>()?;
        let outs = self.executable()?.execute_sharded(&per_device, flags)?;
        let mut results: Vec<Vec<Buffer>> = (0..self.result_layouts.len()).map(|_| Vec::with_capacity(self.devices)).collect();
        for device_outs in outs {
            for (j, b) in device_outs.into_iter().enumerate() {
                results[j].push(b);
            }
        }
        results
            .into_iter()
            .zip(&self.result_layouts)
            .enumerate()
            .map(|(j, (shards, (layout, shape, block)))| {
                // XLA keeps each result in the layout the export recorded; anything else would
                // be put together wrongly on the host.
                if let Some(b) = shards.iter().find(|b| b.dims() != block.as_slice()) {
                    return Err(Error::ShapeMismatch { what: format!("{}: block of result {j} on a device", self.file), expected: block.iter().map(|&d| d as usize).collect(), got: b.dims().iter().map(|&d| d.max(0) as usize).collect() });
                }
                Ok(DeviceArray::sharded(shards, layout.clone(), shape.clone()))
            })
            .collect()
    }

    /// Kept argument `k`'s array: an input, or the state's.
    #[inline]
    fn argument<'a>(&self, state: &'a dyn StateArrays, inputs: &'a [DeviceArray], k: usize) -> Result<&'a DeviceArray> {
        let array = match self.kept.get(k) {
            Some((Source::Input(i), _)) => inputs.get(*i),
            Some((source, _)) => state.get(*source),
            None => None,
        };
        array.ok_or_else(|| self.missing_argument(state, inputs, k))
    }

    #[cold]
    fn missing_argument(&self, state: &dyn StateArrays, inputs: &[DeviceArray], k: usize) -> Error {
        match self.kept.get(k) {
            Some((Source::Input(_), _)) => Error::ArgumentCount { what: format!("inputs of {}", self.file), expected: self.inputs.len(), got: inputs.len() },
            Some((source, _)) => state.source(*source).err().unwrap_or_else(|| Error::invalid(self.file.clone(), format!("argument {k}"))),
            None => Error::invalid(self.file.clone(), format!("no kept argument {k}")),
        }
    }

    /// Copies of the kept arguments held in another layout than the computation's, moved into
    /// its layout through the host, with their positions.
    fn moved_arguments(&self, state: &dyn StateArrays, inputs: &[DeviceArray]) -> Result<Vec<(usize, DeviceArray)>> {
        let mut moved = Vec::new();
        for (k, layout) in self.kept_layouts.iter().enumerate() {
            let array = self.argument(state, inputs, k)?;
            if !array.is_laid_out(self.devices, layout) {
                moved.push((k, self.placement.upload_to(&array.to_tensor()?.view(), self.devices, layout)?));
            }
        }
        Ok(moved)
    }

    /// Device `d`'s buffers of every argument, in the executable's order, taking the arguments
    /// in `moved` from there; `None` if another argument is not laid out as the computation
    /// wants.
    fn device_buffers<'a>(&'a self, state: &'a dyn StateArrays, inputs: &'a [DeviceArray], moved: &'a [(usize, DeviceArray)], d: usize) -> Result<Option<Vec<&'a Buffer>>> {
        let mut buffers = Vec::with_capacity(self.kept.len() + 1);
        if let Some(p) = &self.platform_index {
            buffers.push(p.shard(d)?);
        }
        for (k, layout) in self.kept_layouts.iter().enumerate() {
            let array = match moved.iter().find(|(j, _)| *j == k) {
                Some((_, a)) => a,
                None => self.argument(state, inputs, k)?,
            };
            if !array.is_laid_out(self.devices, layout) {
                return Ok(None);
            }
            buffers.push(array.shard(d)?);
        }
        Ok(Some(buffers))
    }

    /// [`Computation::device_buffers`] once the arguments not laid out are in `moved`.
    fn laid_out_buffers<'a>(&'a self, state: &'a dyn StateArrays, inputs: &'a [DeviceArray], moved: &'a [(usize, DeviceArray)], d: usize) -> Result<Vec<&'a Buffer>> {
        self.device_buffers(state, inputs, moved, d)?
            .ok_or_else(|| Error::invalid(self.file.clone(), "an argument is still not laid out after moving it"))
    }
}

/// The donation flags of a donating execution: the platform index never, each kept argument
/// if it is donatable and not an input.
fn donation_flags(platform_index: bool, kept: &[(Source, bool)]) -> Vec<bool> {
    let platform = platform_index.then_some(false);
    platform.into_iter().chain(kept.iter().map(|&(s, d)| d && !matches!(s, Source::Input(_)))).collect()
}

/// The manifest's input and output slots must be exactly the leaves of JAX's trees, or
/// flattening user inputs would feed the wrong arguments.
fn check_leaf_counts(file: &str, inputs: &TreeDef, n_inputs: usize, outputs: Option<&TreeDef>, n_outputs: usize) -> Result<()> {
    let bad = |what: &str, slots: usize, leaves: usize| {
        Err(Error::format(file, format!("the manifest names {slots} {what} but JAX's tree has {leaves} leaves")))
    };
    if n_inputs != 0 && inputs.num_leaves() != n_inputs {
        return bad("inputs", n_inputs, inputs.num_leaves());
    }
    match outputs {
        Some(tree) if tree.num_leaves() != n_outputs => bad("outputs", n_outputs, tree.num_leaves()),
        _ => Ok(()),
    }
}

/// The subtree of the last positional argument in JAX's `((args...), {kwargs})` in_tree.
fn last_positional_arg(in_tree: &TreeDef, file: &str) -> Result<TreeDef> {
    match in_tree {
        TreeDef::Tuple(top) => match top.first() {
            Some(TreeDef::Tuple(args)) => args.last().cloned(),
            _ => None,
        },
        _ => None,
    }
    .ok_or_else(|| Error::format(file, "in_tree is not ((args...), {kwargs}) with at least one argument"))
}

/// How errors name argument or result slot `slot` of `file`: `f.jaxexport: input "x"`.
fn slot_what(file: &str, kind: &str, slot: Option<&Slot>) -> String {
    match slot {
        Some(Slot { role, name: Some(name), .. }) => format!("{file}: {} {name:?}", role_word(*role)),
        Some(Slot { role, .. }) => format!("{file}: {}", role_word(*role)),
        None => format!("{file}: {kind}"),
    }
}

fn role_word(role: Role) -> &'static str {
    match role {
        Role::Param | Role::State => "variable",
        Role::Key => "the RNG key",
        Role::Input => "input",
        Role::Output => "output",
        Role::OptState => "optimizer state",
        Role::Metric => "metric",
    }
}

/// JAX's platform-index argument for the placement's client (replicated on `devices`
/// devices), if the export has several platforms; an error if the client's platform is not
/// among them.
pub(crate) fn platform_index_arg(placement: &Placement, exp: &Exported, file: &str, devices: usize) -> Result<Option<DeviceArray>> {
    let name = placement.client.platform_name()?;
    let Some(index) = exp.platform_index(&name) else {
        return Err(Error::invalid(
            file,
            format!("exported for platforms {:?}, but the PJRT client's platform is {name:?}", exp.platforms),
        ));
    };
    if !exp.has_platform_index_arg() {
        return Ok(None);
    }
    let t = crate::Tensor::scalar(index as i32);
    Ok(Some(placement.upload_to(&t.view(), devices, &None)?))
}

/// Where a computation reads the arrays of its state arguments (variables, optimizer state,
/// key): the layer's `DeviceState`.
pub(crate) trait StateArrays {
    /// The array behind `source`, if it is state and in range.
    fn get(&self, source: Source) -> Option<&DeviceArray>;
    /// The array behind `source`, or an error saying why there is none.
    fn source(&self, source: Source) -> Result<&DeviceArray>;
}
