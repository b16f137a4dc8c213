//! `DeviceState`: the device-resident variables, optimizer state and RNG key of a layer or
//! trainer, with the one path that checks host values and uploads them, and the one path
//! that writes a computation's results back.

use super::computation::{Computation, Sink, Source, StateArrays, WithResiduals};
use super::placement::{DeviceArray, Layout, Placement};
use crate::pjrt::Client;
use crate::spec::{self, TensorSpec};
use crate::tensor::{AsView, TensorView};
use crate::{Error, Result, Tensor};

/// Named arrays of one kind (the variables, or the optimizer state), in manifest order,
/// each with the layout it is held in (how many devices, and how it is split).
#[derive(Debug, Default)]
struct Group {
    specs: Vec<TensorSpec>,
    arrays: Vec<DeviceArray>,
    layouts: Vec<(usize, Layout)>,
}

/// What a failed execution took with it.
#[derive(Debug, Clone)]
struct Lost {
    computation: String,
    cause: std::sync::Arc<Error>,
}

/// The state a layer's computations read and write on the device: variables (params and
/// non-trainable collections), the optimizer state of a trainer, and the RNG key.
///
/// Calls check every host value before anything is uploaded, and upload everything before
/// anything is replaced, so a refused call changes nothing. If an execution fails on the
/// device after state was donated to it, the state is gone: the layer says so
/// ([`Error::StateLost`]) on that call and on every later one.
#[derive(Debug)]
pub(crate) struct DeviceState {
    placement: Placement,
    vars: Group,
    opt: Group,
    key: DeviceArray,
    key_layout: (usize, Layout),
    lost: Option<Lost>,
    /// The params are the bundle's `variables.safetensors` values, unchanged since they were
    /// loaded: the bundle's frozen computations (params compiled in) may run.
    params_from_bundle: bool,
    /// Counts the writes to params: residuals computed at another count are stale.
    params_version: u64,
}

impl DeviceState {
    /// State with these variables (already uploaded in `layouts`) and key (uploaded here, in
    /// `key_layout`).
    pub fn new(
        placement: Placement,
        specs: Vec<TensorSpec>,
        vars: Vec<DeviceArray>,
        layouts: Vec<(usize, Layout)>,
        key: [u32; 2],
        key_layout: (usize, Layout),
    ) -> Result<DeviceState> {
        if specs.len() != vars.len() || specs.len() != layouts.len() {
            return Err(Error::ArgumentCount { what: "variables".into(), expected: specs.len(), got: vars.len() });
        }
        let key = upload_key(&placement, key, &key_layout)?;
        Ok(DeviceState { placement, vars: Group { specs, arrays: vars, layouts }, opt: Group::default(), key, key_layout, lost: None, params_from_bundle: false, params_version: 0 })
    }

    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    pub fn client(&self) -> &Client {
        &self.placement.client
    }

    /// Records that the params are the bundle's own, as loaded (cleared by any write to a
    /// param).
    pub fn mark_params_from_bundle(&mut self) {
        self.params_from_bundle = true;
    }

    /// Whether the params are still the bundle's own, as loaded.
    pub fn params_from_bundle(&self) -> bool {
        self.params_from_bundle
    }

    /// How many times params were written (set_variables, a train step, a restore): what a
    /// hoisted prologue's residuals were computed at, to know when they are stale.
    pub fn params_version(&self) -> u64 {
        self.params_version
    }

    /// The variables' specs, in manifest order.
    pub fn variable_specs(&self) -> &[TensorSpec] {
        &self.vars.specs
    }

    /// `Err(StateLost)` once an execution consumed the state.
    pub fn check_alive(&self) -> Result<()> {
        match &self.lost {
            None => Ok(()),
            Some(l) => Err(Error::StateLost { computation: l.computation.clone(), cause: l.cause.clone() }),
        }
    }

    /// Checks named host values against `specs` and uploads them, in `specs` order: every
    /// name must be known, given once, and of the spec's dtype and shape. With `complete`,
    /// every spec must be given; otherwise absent ones are `None`. Nothing is uploaded
    /// unless everything fits. `kind` names the values in errors (`variable`, ...).
    pub fn upload_named<V: AsView>(
        &self,
        kind: &'static str,
        specs: &[TensorSpec],
        layouts: &[(usize, Layout)],
        given: &[(String, V)],
        complete: bool,
    ) -> Result<Vec<Option<DeviceArray>>> {
        let views = check_named(kind, specs, given, complete)?;
        let whole = (1, None);
        views
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                let (devices, layout) = layouts.get(i).unwrap_or(&whole);
                v.map(|v| self.placement.upload_to(&v, *devices, layout)).transpose()
            })
            .collect()
    }

    /// Copies every variable to the host, by Flax path.
    pub fn variables(&self) -> Result<Vec<(String, Tensor)>> {
        self.check_alive()?;
        download(&self.vars)
    }

    /// Replaces the named variables (all or some): checked and uploaded before any is
    /// replaced.
    pub fn set_variables<V: AsView>(&mut self, given: &[(String, V)]) -> Result<()> {
        self.check_alive()?;
        let uploaded = self.upload_named("variable", &self.vars.specs, &self.vars.layouts, given, false)?;
        if self.vars.specs.iter().zip(&uploaded).any(|(s, u)| u.is_some() && s.is_param()) {
            self.params_from_bundle = false;
            self.params_version += 1;
        }
        replace(&mut self.vars, uploaded);
        Ok(())
    }

    /// Copies the optimizer state to the host, by `opt_state/...` name.
    pub fn opt_state(&self) -> Result<Vec<(String, Tensor)>> {
        self.check_alive()?;
        download(&self.opt)
    }

    /// Sets the optimizer state's specs, values (all of them) and layouts.
    pub fn init_opt_state(&mut self, specs: Vec<TensorSpec>, arrays: Vec<DeviceArray>, layouts: Vec<(usize, Layout)>) -> Result<()> {
        if specs.len() != arrays.len() || specs.len() != layouts.len() {
            return Err(Error::ArgumentCount { what: "optimizer state".into(), expected: specs.len(), got: arrays.len() });
        }
        self.opt = Group { specs, arrays, layouts };
        Ok(())
    }

    /// The shapes of each variable's buffers, one per device holding it.
    pub fn variable_shards(&self) -> Vec<(String, Vec<Vec<usize>>)> {
        self.vars.specs.iter().zip(&self.vars.arrays).map(|(s, a)| (s.name.clone(), a.shard_shapes())).collect()
    }

    /// The raw `uint32[2]` data of the key.
    pub fn key(&self) -> Result<[u32; 2]> {
        self.check_alive()?;
        let t = self.key.to_tensor()?;
        let v = t.to_vec::<u32>()?;
        <[u32; 2]>::try_from(v.as_slice())
            .map_err(|_| Error::ShapeMismatch { what: "the RNG key".into(), expected: vec![2], got: t.shape().to_vec() })
    }

    /// Replaces the key data.
    pub fn set_key(&mut self, key: [u32; 2]) -> Result<()> {
        self.check_alive()?;
        self.key = upload_key(&self.placement, key, &self.key_layout)?;
        Ok(())
    }

    /// The array a computation argument comes from.
    pub fn source(&self, source: Source) -> Result<&DeviceArray> {
        self.get(source).ok_or_else(|| match source {
            Source::Var(i) => Error::invalid("variable", format!("index {i} out of range ({})", self.vars.arrays.len())),
            Source::OptState(i) => Error::invalid("optimizer state", format!("index {i} out of range ({})", self.opt.arrays.len())),
            Source::Key | Source::Input(_) => Error::invalid("device state", "an input is not state"),
            Source::Residual(k) => Error::invalid("device state", format!("residual {k} of a hoisted computation is not state (its prologue did not run)")),
        })
    }

    /// The array of `source`, if the state holds it.
    #[inline]
    pub fn get(&self, source: Source) -> Option<&DeviceArray> {
        match source {
            Source::Var(i) => self.vars.arrays.get(i),
            Source::OptState(i) => self.opt.arrays.get(i),
            Source::Key => Some(&self.key),
            Source::Input(_) | Source::Residual(_) => None,
        }
    }

    /// Runs `comp` on this state and `inputs` without donating anything: the state is only
    /// read. Returns every result, in order.
    pub fn run(&self, comp: &Computation, inputs: &[DeviceArray]) -> Result<Vec<DeviceArray>> {
        self.run_with(comp, inputs, &[])
    }

    /// [`DeviceState::run`] of a hoisted body, with its prologue's `residuals`.
    pub fn run_with(&self, comp: &Computation, inputs: &[DeviceArray], residuals: &[DeviceArray]) -> Result<Vec<DeviceArray>> {
        self.check_alive()?;
        comp.run(&WithResiduals { state: self, residuals }, inputs, false)
    }

    /// Runs `comp`, donating the state it replaces, and writes its state results back
    /// ([`DeviceState::apply`]). Returns the outputs and metrics, in their sink order.
    ///
    /// When the execution fails after a donated buffer was consumed, the state is lost: this
    /// and every later call return [`Error::StateLost`].
    pub fn run_and_apply(&mut self, comp: &Computation, inputs: &[DeviceArray]) -> Result<Vec<(Sink, DeviceArray)>> {
        self.run_and_apply_with(comp, inputs, &[])
    }

    /// [`DeviceState::run_and_apply`] of a hoisted body, with its prologue's `residuals`
    /// (never donated).
    pub fn run_and_apply_with(&mut self, comp: &Computation, inputs: &[DeviceArray], residuals: &[DeviceArray]) -> Result<Vec<(Sink, DeviceArray)>> {
        self.check_alive()?;
        let run = comp.run(&WithResiduals { state: &*self, residuals }, inputs, true);
        match run {
            Ok(results) => self.apply(comp, results),
            Err(e) => {
                let consumed = comp.donated_sources().any(|s| self.source(s).map_or(true, DeviceArray::is_deleted));
                if consumed {
                    let cause = std::sync::Arc::new(e);
                    self.lost = Some(Lost { computation: comp.file.clone(), cause: cause.clone() });
                    return Err(Error::StateLost { computation: comp.file.clone(), cause });
                }
                Err(e)
            }
        }
    }

    /// Writes a computation's results back: variables, optimizer state and key replace the
    /// state's; outputs and metrics are returned with their sinks.
    fn apply(&mut self, comp: &Computation, results: Vec<DeviceArray>) -> Result<Vec<(Sink, DeviceArray)>> {
        if results.len() != comp.sinks.len() {
            return Err(Error::ArgumentCount { what: format!("results of {}", comp.file), expected: comp.sinks.len(), got: results.len() });
        }
        let mut rest = Vec::with_capacity(comp.sinks.len());
        let mut params_written = false;
        for (&sink, array) in comp.sinks.iter().zip(results) {
            match sink {
                Sink::Var(i) => {
                    params_written |= self.vars.specs[i].is_param();
                    self.vars.arrays[i] = array;
                }
                Sink::OptState(i) => self.opt.arrays[i] = array,
                Sink::Key => self.key = array,
                Sink::Output(_) | Sink::Metric(_) | Sink::Residual(_) => rest.push((sink, array)),
            }
        }
        if params_written {
            self.params_from_bundle = false;
            self.params_version += 1;
        }
        Ok(rest)
    }
}

/// The check half of [`DeviceState::upload_named`]: the views of the given values in `specs`
/// order, after checking names (known, not repeated), dtypes and shapes.
pub(crate) fn check_named<'a, V: AsView>(
    kind: &'static str,
    specs: &[TensorSpec],
    given: &'a [(String, V)],
    complete: bool,
) -> Result<Vec<Option<TensorView<'a>>>> {
    let mut seen = std::collections::HashSet::new();
    for (name, _) in given {
        if spec::find(specs, name).is_none() {
            return Err(Error::NotFound { what: kind, name: name.clone(), available: spec::names(specs) });
        }
        if !seen.insert(name.as_str()) {
            return Err(Error::invalid(format!("{kind} {name:?}"), "given twice"));
        }
    }
    let mut out = Vec::with_capacity(specs.len());
    for spec in specs {
        match given.iter().find(|(n, _)| *n == spec.name) {
            Some((_, v)) => {
                let v = v.as_view();
                spec.check(kind, v.dtype(), v.shape())?;
                out.push(Some(v));
            }
            None if complete => {
                let available = given.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ");
                return Err(Error::NotFound { what: kind, name: spec.name.clone(), available: format!("(given: {available})") });
            }
            None => out.push(None),
        }
    }
    Ok(out)
}

fn upload_key(placement: &Placement, key: [u32; 2], (devices, layout): &(usize, Layout)) -> Result<DeviceArray> {
    let t = Tensor::from_vec(vec![2], key.to_vec())?;
    placement.upload_to(&t.view(), *devices, layout)
}

fn download(group: &Group) -> Result<Vec<(String, Tensor)>> {
    group.specs.iter().zip(&group.arrays).map(|(s, a)| Ok((s.name.clone(), a.to_tensor()?))).collect()
}

fn replace(group: &mut Group, uploaded: Vec<Option<DeviceArray>>) {
    for (slot, new) in group.arrays.iter_mut().zip(uploaded) {
        if let Some(new) = new {
            *slot = new;
        }
    }
}

impl StateArrays for DeviceState {
    fn get(&self, source: Source) -> Option<&DeviceArray> {
        DeviceState::get(self, source)
    }

    fn source(&self, source: Source) -> Result<&DeviceArray> {
        DeviceState::source(self, source)
    }
}
