//! `JaxLayer`: a bundle's computations on a device, with the variables and the RNG key kept
//! on the device between calls.

use std::path::PathBuf;
use std::sync::Arc;

use super::cache::CacheSetting;
use super::computation::{Computation, Sink};
use crate::bundle::{Bundle, BundleComputation, VariableSpec};
use crate::pjrt::{Buffer, Client, Device};
use crate::tensor::{AsView, TensorView};
use crate::{DType, Error, PyTree, Result, Tensor, TreeDef};

/// A variable's name, dtype and shape.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WeightInfo {
    /// The Flax path joined with `/`, e.g. `params/Dense_0/kernel`.
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<i64>,
}

impl WeightInfo {
    /// The number of scalars.
    pub fn num_elements(&self) -> u64 {
        self.shape.iter().map(|&d| d.max(0) as u64).product()
    }
}

/// How to build a [`JaxLayer`].
#[derive(Debug, Clone, Default)]
pub struct LayerOptions {
    /// The method to call; the bundle's default method when `None`.
    pub method: Option<String>,
    /// Initial variables by Flax path; the bundle's `init` runs on device when neither this
    /// nor `variables_file` is given.
    pub variables: Option<Vec<(String, Tensor)>>,
    /// Initial variables from a safetensors file (when `variables` is `None`).
    pub variables_file: Option<PathBuf>,
    /// The seed of the RNG key (and of `init`); the bundle's seed when `None`.
    pub seed: Option<u64>,
    /// The key to start from instead of the seed's (for resuming).
    pub key: Option<[u32; 2]>,
    /// The device index among the client's devices.
    pub device: usize,
    /// The PJRT plugin; see [`crate::pjrt::Plugin::load`].
    pub plugin: Option<PathBuf>,
    /// A client to share instead of creating one.
    pub client: Option<Client>,
    /// Where compiled executables are cached.
    pub cache: CacheSetting,
}

/// The raw `uint32[2]` data of `jax.random.key(seed)` (threefry): `[seed >> 32, seed & 0xffffffff]`.
pub fn seed_key(seed: u64) -> [u32; 2] {
    [(seed >> 32) as u32, seed as u32]
}

/// A layer over a bundle's plain `init` / `call` computations (Keras' `JaxLayer`).
///
/// Params and state live on the device between calls: only inputs go up and outputs come
/// down. Training calls thread the device-resident key.
pub struct JaxLayer {
    bundle: Arc<Bundle>,
    client: Client,
    device: Device,
    device_index: usize,
    method: String,
    seed: u64,
    specs: Vec<VariableSpec>,
    vars: Vec<Buffer>,
    key: Buffer,
    inference: Vec<Computation>,
    training: Vec<Computation>,
}

impl std::fmt::Debug for JaxLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JaxLayer")
            .field("bundle", &self.bundle.dir())
            .field("method", &self.method)
            .field("variables", &self.specs.len())
            .finish()
    }
}

impl JaxLayer {
    /// Compiles the method's computations and sets up the variables and the key.
    pub fn new(bundle: Arc<Bundle>, options: LayerOptions) -> Result<JaxLayer> {
        let client = match options.client {
            Some(c) => c,
            None => Client::new(options.plugin.as_deref())?,
        };
        let device = client.device(options.device)?;
        let portable = options.device != 0;
        let cache = options.cache.dir();
        let manifest = bundle.manifest();
        let method = options.method.unwrap_or_else(|| manifest.default_method.clone());
        let spec = bundle.method(&method)?;
        let specs = manifest.variables.clone();
        let names: Vec<String> = specs.iter().map(|v| v.name.clone()).collect();
        let prepare_all = |list: &[crate::bundle::ComputationSpec]| -> Result<Vec<Computation>> {
            list.iter()
                .map(|c| Ok(Computation::new(&client, &device, portable, bundle.computation(&c.file)?, &names)?.with_cache(cache.clone())))
                .collect()
        };
        let inference = prepare_all(&spec.inference)?;
        let training = prepare_all(&spec.training)?;
        // Each computation compiles on its first call (or loads from the compile cache), so a
        // layer pays only for the batch sizes and modes it runs.
        let seed = options.seed.unwrap_or(manifest.seed);
        let key_data = options.key.unwrap_or_else(|| seed_key(seed));
        let key = client.buffer_from_slice(&key_data, &[2], &device)?;
        let all = |uploaded: Vec<Option<Buffer>>| -> Result<Vec<Buffer>> {
            uploaded.into_iter().map(|b| b.ok_or_else(|| Error::invalid("variables", "missing"))).collect()
        };
        let vars = match (options.variables, options.variables_file) {
            (Some(given), _) => all(upload_variables(&client, &device, &specs, &given, true)?)?,
            (None, Some(path)) => {
                let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
                let views = crate::tensor::safetensors_views(&bytes, &path.display().to_string())?;
                all(upload_variables(&client, &device, &specs, &views, true)?)?
            }
            (None, None) => {
                let init = bundle.computation(&manifest.init.file)?;
                run_init(&client, &device, portable, init, &names, &key, cache.clone())?
            }
        };
        Ok(JaxLayer {
            bundle,
            client,
            device,
            device_index: options.device,
            method,
            seed,
            specs,
            vars,
            key,
            inference,
            training,
        })
    }

    /// The bundle.
    pub fn bundle(&self) -> &Arc<Bundle> {
        &self.bundle
    }

    /// The PJRT client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The method this layer calls.
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The seed the layer was built with.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The device index.
    pub fn device_index(&self) -> usize {
        self.device_index
    }

    /// Calls the layer: the training computation when `training`, else the inference one.
    /// Both write back the non-param collections they return; training also advances the key.
    ///
    /// Inputs are checked (tree, dtypes, shapes) before anything runs; a failed call leaves
    /// params, state and key as they were.
    pub fn call(&mut self, inputs: &PyTree, training: bool) -> Result<PyTree> {
        let comps = if training { &self.training } else { &self.inference };
        let (comp, bufs) = prepare(comps, inputs, &self.client, &self.device)?;
        let outs = comp.run(&self.vars, Some(&self.key), &bufs, true)?;
        let mut outputs = Vec::new();
        for (sink, buf) in comp.sinks.iter().zip(outs) {
            match *sink {
                Sink::Output(_) => outputs.push(buf),
                Sink::Var(i) => self.vars[i] = buf,
                Sink::Key => self.key = buf,
                // Only train computations (see `Trainer`) have these.
                Sink::OptState(_) | Sink::Metric(_) => {}
            }
        }
        download_outputs(comp, &outputs)
    }

    /// An inference call that takes `&self`: safe from several threads at once. It neither
    /// donates nor writes back state, so use [`JaxLayer::call`] for models whose inference
    /// advances state (decode caches).
    pub fn predict(&self, inputs: &PyTree) -> Result<PyTree> {
        let (comp, bufs) = prepare(&self.inference, inputs, &self.client, &self.device)?;
        let outs = comp.run(&self.vars, Some(&self.key), &bufs, false)?;
        let outputs: Vec<Buffer> =
            comp.sinks.iter().zip(outs).filter(|(s, _)| matches!(s, Sink::Output(_))).map(|(_, b)| b).collect();
        download_outputs(comp, &outputs)
    }

    /// Trainable weights (the `params` collection), as Keras lists them.
    pub fn trainable_weights(&self) -> Vec<WeightInfo> {
        self.weights(true)
    }

    /// Non-trainable weights (every other collection: `batch_stats`, `cache`, ...).
    pub fn non_trainable_weights(&self) -> Vec<WeightInfo> {
        self.weights(false)
    }

    fn weights(&self, trainable: bool) -> Vec<WeightInfo> {
        self.specs
            .iter()
            .filter(|v| v.is_param() == trainable)
            .map(|v| WeightInfo { name: v.name.clone(), dtype: v.dtype, shape: v.shape.clone() })
            .collect()
    }

    /// The number of scalars in all weights, as Keras' `count_params()`.
    pub fn count_params(&self) -> u64 {
        self.trainable_weights().iter().chain(&self.non_trainable_weights()).map(WeightInfo::num_elements).sum()
    }

    /// Copies every variable to the host, by Flax path.
    pub fn variables(&self) -> Result<Vec<(String, Tensor)>> {
        self.specs.iter().zip(&self.vars).map(|(s, b)| Ok((s.name.clone(), to_tensor(b)?))).collect()
    }

    /// Replaces the named variables (all of them or a subset). Every name, dtype and shape is
    /// checked and every value uploaded before any is replaced.
    pub fn set_variables(&mut self, variables: &[(String, Tensor)]) -> Result<()> {
        let uploaded = upload_variables(&self.client, &self.device, &self.specs, variables, false)?;
        for (slot, new) in self.vars.iter_mut().zip(uploaded) {
            if let Some(new) = new {
                *slot = new;
            }
        }
        Ok(())
    }

    /// The current RNG key data.
    pub fn key(&self) -> Result<[u32; 2]> {
        key_data(&self.key)
    }

    /// Replaces the RNG key data.
    pub fn set_key(&mut self, key: [u32; 2]) -> Result<()> {
        self.key = self.client.buffer_from_slice(&key, &[2], &self.device)?;
        Ok(())
    }

    /// The input leaves of the method (names, dtypes, shapes), per exported batch size.
    pub fn input_signatures(&self) -> Vec<Vec<(String, DType, Vec<i64>)>> {
        self.inference.iter().map(|c| signature(&c.input_names, &c.input_avals)).collect()
    }

    /// The tree structure of the method's inputs (the same for every batch size).
    pub fn input_tree(&self) -> &TreeDef {
        &self.inference[0].inputs_tree
    }

    /// The output leaves of the method, for the first exported batch size.
    pub fn output_signature(&self) -> Vec<(String, DType, Vec<i64>)> {
        self.inference.first().map(|c| signature(&c.output_names, &c.output_avals)).unwrap_or_default()
    }
}

/// The raw `uint32[2]` data of a key buffer.
pub(super) fn key_data(key: &Buffer) -> Result<[u32; 2]> {
    let v = key.to_vec::<u32>()?;
    <[u32; 2]>::try_from(v.as_slice()).map_err(|_| Error::ShapeMismatch {
        what: "the RNG key".into(),
        expected: vec![2],
        got: key.dims().to_vec(),
    })
}

fn signature(names: &[String], avals: &[crate::bundle::Aval]) -> Vec<(String, DType, Vec<i64>)> {
    names.iter().zip(avals).map(|(n, a)| (n.clone(), a.dtype, a.shape.clone())).collect()
}

/// Picks the computation whose input shapes fit, after checking the tree and the dtypes,
/// and uploads the inputs.
fn prepare<'c>(comps: &'c [Computation], inputs: &PyTree, client: &Client, device: &Device) -> Result<(&'c Computation, Vec<Buffer>)> {
    let first = comps.first().ok_or_else(|| Error::invalid("method", "has no computations"))?;
    let leaves = first.inputs_tree.flatten(inputs)?;
    for ((leaf, name), aval) in leaves.iter().zip(&first.input_names).zip(&first.input_avals) {
        if leaf.dtype() != aval.dtype {
            return Err(Error::DTypeMismatch {
                what: format!("input {name:?}"),
                expected: aval.dtype.to_string(),
                got: leaf.dtype().to_string(),
            });
        }
    }
    let dims: Vec<Vec<i64>> = leaves.iter().map(|t| t.dims_i64()).collect();
    let comp = match comps.iter().find(|c| c.accepts(&dims)) {
        Some(c) => c,
        None => return Err(shape_error(comps, &dims)),
    };
    let bufs = leaves
        .iter()
        .map(|t| client.buffer_from_bytes(t.dtype(), &t.dims_i64(), t.as_bytes(), device))
        .collect::<Result<Vec<_>>>()?;
    Ok((comp, bufs))
}

/// The shape error for inputs that fit no computation: against the computation with the
/// same batch size as the first input, else the first one.
fn shape_error(comps: &[Computation], dims: &[Vec<i64>]) -> Error {
    let batch = dims.first().and_then(|d| d.first()).copied();
    let comp = comps.iter().find(|c| c.batch_size.is_some() && c.batch_size == batch).unwrap_or(&comps[0]);
    let batches: Vec<i64> = comps.iter().filter_map(|c| c.batch_size).collect();
    for ((name, aval), got) in comp.input_names.iter().zip(&comp.input_avals).zip(dims) {
        if &aval.shape != got {
            return Error::ShapeMismatch {
                what: format!("input {name:?} (exported batch sizes {batches:?})"),
                expected: aval.shape.clone(),
                got: got.clone(),
            };
        }
    }
    Error::invalid("inputs", "fit no exported computation")
}

pub(super) fn to_tensor(b: &Buffer) -> Result<Tensor> {
    let shape = b.dims().iter().map(|&d| d as usize).collect();
    let mut t = Tensor::zeros(b.dtype(), shape)?;
    b.copy_to_host_bytes(t.as_mut_bytes())?;
    Ok(t)
}

fn download_outputs(comp: &Computation, outputs: &[Buffer]) -> Result<PyTree> {
    let tensors = outputs.iter().map(to_tensor).collect::<Result<Vec<_>>>()?;
    match &comp.outputs_tree {
        Some(tree) => tree.unflatten(tensors),
        None => Ok(PyTree::None),
    }
}

/// Checks and uploads variables by name, in manifest order. With `complete`, every variable
/// must be given; otherwise absent ones are `None`.
pub(super) fn upload_variables(
    client: &Client,
    device: &Device,
    specs: &[VariableSpec],
    given: &[(String, impl AsView)],
    complete: bool,
) -> Result<Vec<Option<Buffer>>> {
    let given: Vec<(&str, TensorView)> = given.iter().map(|(n, t)| (n.as_str(), t.as_view())).collect();
    let available = || specs.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ");
    for (name, _) in &given {
        if !specs.iter().any(|s| s.name == *name) {
            return Err(Error::NotFound { what: "variable", name: name.to_string(), available: available() });
        }
    }
    let mut found: Vec<Option<&TensorView>> = Vec::with_capacity(specs.len());
    for spec in specs {
        let t = given.iter().find(|(n, _)| *n == spec.name).map(|(_, t)| t);
        match t {
            Some(t) if t.dtype() != spec.dtype => {
                return Err(Error::DTypeMismatch {
                    what: format!("variable {:?}", spec.name),
                    expected: spec.dtype.to_string(),
                    got: t.dtype().to_string(),
                })
            }
            Some(t) if t.dims_i64() != spec.shape => {
                return Err(Error::ShapeMismatch {
                    what: format!("variable {:?}", spec.name),
                    expected: spec.shape.clone(),
                    got: t.dims_i64(),
                })
            }
            None if complete => {
                return Err(Error::NotFound { what: "variable", name: spec.name.clone(), available: "(not given)".into() })
            }
            _ => found.push(t),
        }
    }
    found
        .into_iter()
        .map(|t| t.map(|t| client.buffer_from_bytes(t.dtype(), &t.dims_i64(), t.as_bytes(), device)).transpose())
        .collect()
}

/// Runs the bundle's `init(key, init_inputs)` on device. Init inputs only give shapes (Flax
/// initializers do not read input values), so they are zeros.
pub(super) fn run_init(
    client: &Client,
    device: &Device,
    portable: bool,
    init: &BundleComputation,
    names: &[String],
    key: &Buffer,
    cache: Option<PathBuf>,
) -> Result<Vec<Buffer>> {
    let comp = Computation::new(client, device, portable, init, names)?.with_cache(cache);
    let zeros = comp
        .input_avals
        .iter()
        .map(|a| {
            let bytes = vec![0u8; a.dtype.array_bytes(&a.shape)?];
            client.buffer_from_bytes(a.dtype, &a.shape, &bytes, device)
        })
        .collect::<Result<Vec<_>>>()?;
    let outs = comp.run(&[], Some(key), &zeros, false)?;
    let mut vars: Vec<Option<Buffer>> = (0..names.len()).map(|_| None).collect();
    for (sink, buf) in comp.sinks.iter().zip(outs) {
        if let Sink::Var(i) = *sink {
            vars[i] = Some(buf);
        }
    }
    vars.into_iter()
        .zip(names)
        .map(|(b, n)| b.ok_or_else(|| Error::format(init.spec.file.clone(), format!("init does not produce variable {n:?}"))))
        .collect()
}
