//! One bundle computation compiled for a device: maps the layer's variables, key and inputs
//! onto JAX's flat arguments, and the flat results back.

use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use crate::bundle::{Aval, BundleComputation, Exported, Role};
use crate::pjrt::{ArgSpec, Buffer, Client, CompileOptions, Device, LoadedExecutable, Program};
use crate::pytree::TreeDef;
use crate::{DType, Error, Result};

/// Where a flat argument comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// The layer's variable with this index (manifest order).
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
    Output(usize),
    Var(usize),
    Key,
    /// The optimizer-state leaf with this index.
    OptState(usize),
    /// The metric with this index in `metric_names`.
    Metric(usize),
}

/// A computation and how to call it. It is compiled on first use (or by
/// [`Computation::ensure_compiled`]), so a layer only compiles the batch sizes and modes it runs.
pub(crate) struct Computation {
    pub file: String,
    pub batch_size: Option<i64>,
    exe: OnceLock<LoadedExecutable>,
    /// Serializes the first compile; later calls only read `exe`.
    compiling: Mutex<()>,
    client: Client,
    options: CompileOptions,
    mlir: Vec<u8>,
    signature: Vec<ArgSpec>,
    /// The compile cache directory, if caching is on.
    cache: Option<PathBuf>,
    device: Option<Device>,
    /// JAX's platform-index argument, when the export has several platforms.
    platform_index: Option<Buffer>,
    /// Sources of the arguments the module keeps (`module_kept_var_idx`), in order, each
    /// with whether it may be donated (state and key; params and inputs never are).
    kept: Vec<(Source, bool)>,
    pub sinks: Vec<Sink>,
    /// The input leaves: names, avals.
    pub input_names: Vec<String>,
    pub input_avals: Vec<Aval>,
    pub inputs_tree: TreeDef,
    pub output_names: Vec<String>,
    pub output_avals: Vec<Aval>,
    pub outputs_tree: Option<TreeDef>,
    /// The names of the `metric` results, in order.
    pub metric_names: Vec<String>,
}

impl Computation {
    /// Prepares `comp` for `device`, resolving variable names against `variables`.
    pub fn new(
        client: &Client,
        device: &Device,
        portable: bool,
        comp: &BundleComputation,
        variables: &[String],
    ) -> Result<Computation> {
        Computation::new_with_opt_state(client, device, portable, comp, variables, &[])
    }

    /// [`Computation::new`], also resolving optimizer-state names against `opt_state`.
    pub fn new_with_opt_state(
        client: &Client,
        device: &Device,
        portable: bool,
        comp: &BundleComputation,
        variables: &[String],
        opt_state: &[String],
    ) -> Result<Computation> {
        let exp = &comp.exported;
        let spec = &comp.spec;
        let var_index = |name: &Option<String>| -> Result<usize> {
            let name = name.as_deref().unwrap_or_default();
            variables.iter().position(|v| v == name).ok_or_else(|| Error::format(spec.file.clone(), format!("unknown variable {name:?}")))
        };
        let opt_index = |name: &Option<String>| -> Result<usize> {
            let name = name.as_deref().unwrap_or_default();
            opt_state.iter().position(|v| v == name).ok_or_else(|| Error::format(spec.file.clone(), format!("unknown optimizer state {name:?}")))
        };
        let mut sources: Vec<(Source, bool)> = Vec::with_capacity(spec.args.len());
        let (mut input_names, mut input_avals) = (Vec::new(), Vec::new());
        for (slot, aval) in spec.args.iter().zip(&exp.in_avals) {
            sources.push(match slot.role {
                Role::Param => (Source::Var(var_index(&slot.name)?), false),
                Role::State => (Source::Var(var_index(&slot.name)?), true),
                Role::Key => (Source::Key, true),
                Role::Input => {
                    input_names.push(slot.name.clone().unwrap_or_default());
                    input_avals.push(aval.clone());
                    (Source::Input(input_names.len() - 1), false)
                }
                Role::OptState => (Source::OptState(opt_index(&slot.name)?), true),
                Role::Output | Role::Metric => {
                    return Err(Error::format(spec.file.clone(), format!("an argument has role {:?}", slot.role)))
                }
            });
        }
        let mut sinks = Vec::with_capacity(spec.results.len());
        let (mut output_names, mut output_avals, mut metric_names) = (Vec::new(), Vec::new(), Vec::new());
        for (slot, aval) in spec.results.iter().zip(&exp.out_avals) {
            sinks.push(match slot.role {
                Role::Param | Role::State => Sink::Var(var_index(&slot.name)?),
                Role::Key => Sink::Key,
                Role::Output => {
                    output_names.push(slot.name.clone().unwrap_or_default());
                    output_avals.push(aval.clone());
                    Sink::Output(output_names.len() - 1)
                }
                Role::OptState => Sink::OptState(opt_index(&slot.name)?),
                Role::Metric => {
                    metric_names.push(slot.name.clone().unwrap_or_default());
                    Sink::Metric(metric_names.len() - 1)
                }
                Role::Input => return Err(Error::format(spec.file.clone(), "a result has role input")),
            });
        }
        let kept = exp
            .module_kept_var_idx
            .iter()
            .map(|&i| sources.get(i).copied().ok_or_else(|| Error::format(spec.file.clone(), format!("kept argument {i} out of range"))))
            .collect::<Result<Vec<_>>>()?;
        let platform_index = platform_index_arg(client, device, exp, &spec.file)?;
        let mut signature: Vec<ArgSpec> = Vec::new();
        if platform_index.is_some() {
            signature.push(ArgSpec { dtype: DType::I32, dims: vec![] });
        }
        signature.extend(exp.kept_in_avals().into_iter().map(|a| ArgSpec { dtype: a.dtype, dims: a.shape.clone() }));
        let inputs_tree = last_positional_arg(&exp.in_tree, &spec.file)?;
        let outputs_tree = match &exp.out_tree {
            TreeDef::Tuple(children) if !output_names.is_empty() => children.first().cloned(),
            _ => None,
        };
        // The manifest's input and output slots must be exactly the leaves of JAX's trees, or
        // flattening user inputs would feed the wrong arguments.
        let bad_count = |what: &str, slots: usize, leaves: usize| {
            Error::format(spec.file.clone(), format!("the manifest names {slots} {what} but JAX's tree has {leaves} leaves"))
        };
        if inputs_tree.num_leaves() != input_names.len() && !input_names.is_empty() {
            return Err(bad_count("inputs", input_names.len(), inputs_tree.num_leaves()));
        }
        if let Some(tree) = &outputs_tree {
            if tree.num_leaves() != output_names.len() {
                return Err(bad_count("outputs", output_names.len(), tree.num_leaves()));
            }
        }
        Ok(Computation {
            file: spec.file.clone(),
            batch_size: spec.batch_size,
            exe: OnceLock::new(),
            compiling: Mutex::new(()),
            client: client.clone(),
            options: CompileOptions { portable, ..CompileOptions::default() },
            mlir: exp.mlir_module.clone(),
            signature,
            cache: crate::layer::cache::cache_dir(),
            device: portable.then(|| device.clone()),
            platform_index,
            kept,
            sinks,
            input_names,
            input_avals,
            inputs_tree,
            output_names,
            output_avals,
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
        let exe = crate::layer::cache::compile(self.cache.as_deref(), &self.client, Program::Mlir(&self.mlir), &self.options)?
            .with_input_signature(self.signature.clone());
        Ok(self.exe.get_or_init(|| exe))
    }

    /// Uses the compile cache in `dir` (`None`: no cache) instead of the environment's.
    pub fn with_cache(mut self, dir: Option<PathBuf>) -> Computation {
        self.cache = dir;
        self
    }

    /// Compiles now rather than on the first call.
    pub fn ensure_compiled(&self) -> Result<()> {
        self.executable().map(|_| ())
    }

    /// Lets params be donated too (a train step updates them in place), like state and key.
    pub fn donating_params(mut self) -> Computation {
        for (source, donatable) in &mut self.kept {
            if matches!(source, Source::Var(_)) {
                *donatable = true;
            }
        }
        self
    }

    /// Whether every input fits this computation's avals.
    pub fn accepts(&self, dims: &[Vec<i64>]) -> bool {
        dims.len() == self.input_avals.len() && self.input_avals.iter().zip(dims).all(|(a, d)| &a.shape == d)
    }

    /// Runs on `vars`, `key` and `inputs`. With `donate`, state variables and the key may be
    /// donated (consumed); params and inputs never are.
    pub fn run(&self, vars: &[Buffer], key: Option<&Buffer>, inputs: &[Buffer], donate: bool) -> Result<Vec<Buffer>> {
        self.run_with_opt_state(vars, &[], key, inputs, donate)
    }

    /// [`Computation::run`] with optimizer-state leaves, donated like state under `donate`.
    pub fn run_with_opt_state(
        &self,
        vars: &[Buffer],
        opt_state: &[Buffer],
        key: Option<&Buffer>,
        inputs: &[Buffer],
        donate: bool,
    ) -> Result<Vec<Buffer>> {
        let mut args: Vec<&Buffer> = Vec::with_capacity(self.kept.len() + 1);
        let mut flags: Vec<bool> = Vec::with_capacity(self.kept.len() + 1);
        if let Some(p) = &self.platform_index {
            args.push(p);
            flags.push(false);
        }
        for &(source, donatable) in &self.kept {
            args.push(match source {
                Source::Var(i) => &vars[i],
                Source::Key => key.ok_or_else(|| Error::invalid(self.file.clone(), "needs a key"))?,
                Source::Input(i) => &inputs[i],
                Source::OptState(i) => {
                    opt_state.get(i).ok_or_else(|| Error::invalid(self.file.clone(), "needs the optimizer state"))?
                }
            });
            flags.push(donate && donatable);
        }
        self.executable()?.execute_on(&args, &flags, self.device.as_ref())
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
    .ok_or_else(|| Error::format(file.to_string(), "in_tree is not ((args...), {kwargs}) with at least one argument"))
}

/// The buffer of JAX's platform-index argument for this client, if the export has several
/// platforms; an error if the client's platform is not among them.
pub(crate) fn platform_index_arg(client: &Client, device: &Device, exp: &Exported, file: &str) -> Result<Option<Buffer>> {
    let name = client.platform_name()?;
    let Some(index) = exp.platform_index(&name) else {
        return Err(Error::invalid(
            file.to_string(),
            format!("exported for platforms {:?}, but the PJRT client's platform is {name:?}", exp.platforms),
        ));
    };
    if !exp.has_platform_index_arg() {
        return Ok(None);
    }
    Ok(Some(client.buffer_from_slice(&[index as i32], &[], device)?))
}
