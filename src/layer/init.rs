//! Where a layer's first variables come from: the bundle's `variables.safetensors`, given
//! ones, a file, or the bundle's `init` run on the device.

use super::computation::{CompileHow, Computation, Names, Sink, Source};
use super::options::{Options, VariablesSource};
use super::placement::{DeviceArray, Layout, Placement};
use super::state::{check_named, DeviceState};
use crate::bundle::{Bundle, ComputationSpec, MethodSpec};
use crate::spec::TensorSpec;
use crate::tensor::safetensors_views;
use crate::{Error, Result};
use sha2::{Digest, Sha256};

/// The variables a layer starts from, uploaded to the placement in manifest order.
pub(crate) struct Initial {
    pub arrays: Vec<DeviceArray>,
    /// When asked for, and the variables came from the bundle's `variables.safetensors`: the
    /// SHA-256 (hex) of the very bytes they were uploaded from.
    pub bundle_sha256: Option<String>,
}

/// The variables a layer starts from, uploaded to the placement in manifest order; with
/// `digest`, also the SHA-256 of the bundle's variables file when they come from it.
pub(crate) fn initial_variables(
    bundle: &Bundle,
    placement: &Placement,
    layouts: &[(usize, Layout)],
    source: &VariablesSource,
    seed: u64,
    how: &CompileHow,
    digest: bool,
) -> Result<Initial> {
    let specs = &bundle.manifest().variables;
    // `bundled`: errors about the file's contents become Error::BundleVariables.
    let from_file = |path: &std::path::Path, digest: bool, bundled: bool| -> Result<Initial> {
        let contents = |e: Error| match e {
            e @ (Error::Pjrt { .. } | Error::StateLost { .. } | Error::TooFewDevices { .. }) => e,
            e if bundled => bundle.variables_error(format!("does not hold the variables the manifest lists: {e}")),
            e => e,
        };
        let bytes = crate::files::read(path, crate::files::MAX_WEIGHTS_BYTES).map_err(contents)?;
        let views = safetensors_views(&bytes, &path.display().to_string()).map_err(contents)?;
        let arrays = upload_all(placement, specs, layouts, &views).map_err(contents)?;
        Ok(Initial { arrays, bundle_sha256: digest.then(|| super::cache::hex(&Sha256::digest(&bytes))) })
    };
    let uploaded = |arrays| Ok(Initial { arrays, bundle_sha256: None });
    let bundle_file = match source {
        VariablesSource::Bundle => bundle.variables_file()?,
        _ => None,
    };
    match (source, bundle_file) {
        (VariablesSource::Given(given), _) => uploaded(upload_all(placement, specs, layouts, given)?),
        (VariablesSource::File(path), _) => from_file(path, false, false),
        (VariablesSource::Bundle, Some(path)) => from_file(&path, digest, true),
        // An init-only bundle (Bundle::ships_variables is false), or init asked for.
        (VariablesSource::Bundle | VariablesSource::Init, _) => {
            let vars = run_init(bundle, placement, specs, seed, how)?;
            uploaded(vars.into_iter().zip(layouts).map(|(a, (devices, layout))| relayout(placement, a, *devices, layout)).collect::<Result<_>>()?)
        }
    }
}

/// `array` in the layout `devices`/`layout`: itself when it is, else moved there (through
/// the host).
pub(crate) fn relayout(placement: &Placement, array: DeviceArray, devices: usize, layout: &Layout) -> Result<DeviceArray> {
    if array.is_laid_out(devices, layout) {
        return Ok(array);
    }
    placement.upload_to(&array.to_tensor()?.view(), devices, layout)
}

fn upload_all<V: crate::tensor::AsView>(placement: &Placement, specs: &[TensorSpec], layouts: &[(usize, Layout)], given: &[(String, V)]) -> Result<Vec<DeviceArray>> {
    check_named("variable", specs, given, true)?
        .into_iter()
        .zip(layouts)
        .map(|(v, (devices, layout))| v.ok_or_else(|| Error::invalid("variables", "missing")).and_then(|v| placement.upload_to(&v, *devices, layout)))
        .collect()
}

/// Runs the bundle's `init(key, inputs)` on the device under `seed`'s key. When init reads
/// its inputs' values (data-dependent initializers), it gets the values the exporter stored
/// (`init.inputs_file`), as `module.init(key, x)` did; a bundle that lacks them is refused.
pub(crate) fn run_init(bundle: &Bundle, placement: &Placement, specs: &[TensorSpec], seed: u64, how: &CompileHow) -> Result<Vec<DeviceArray>> {
    let manifest = bundle.manifest();
    let Some(init) = &manifest.init else {
        return Err(Error::invalid(
            format!("init of {}", bundle.dir().display()),
            "the bundle has no init computation (an NNX module exported as an instance): start from its \
             variables.safetensors or from given variables, or export a function make(rngs) building the module",
        ));
    };
    let init = bundle.computation(&init.computation.file)?;
    let comp = Computation::new(placement, init, &Names { variables: specs, opt_state: &[] }, how)?;
    let key_layout = comp.layout_of(Source::Key).unwrap_or((1, None));
    let state = DeviceState::new(placement.clone(), Vec::new(), Vec::new(), Vec::new(), seed_key(seed), key_layout)?;
    let reads_inputs = comp.kept_sources().any(|s| matches!(s, Source::Input(_)));
    let inputs = match (reads_inputs, bundle.init_inputs()?) {
        (false, _) => Vec::new(),
        (true, Some(values)) => check_named("init input", &comp.inputs, &values, true)?
            .into_iter()
            .enumerate()
            .map(|(i, v)| v.ok_or_else(|| Error::invalid("init inputs", "missing")).and_then(|v| comp.upload_input(i, &v)))
            .collect::<Result<Vec<_>>>()?,
        (true, None) => {
            return Err(Error::invalid(
                format!("init of {}", bundle.dir().display()),
                "init reads its inputs' values (a data-dependent initializer) but the bundle stores no init inputs \
                 (init.inputs_file); re-export it with the current exporter, or start from given variables",
            ))
        }
    };
    let results = state.run(&comp, &inputs)?;
    comp.results_by(results, |s| if let Sink::Var(i) = s { Some(i) } else { None }, specs, "variable")
}

/// The frozen inference computations (params compiled in) a layer may run, in the order of
/// the method's inference computations, before the variables file is checked: when every one
/// has a frozen variant, the layer runs on one device, starts from the bundle's own variables
/// and was not told to go without. `None` otherwise: the layer then always passes the params.
pub(crate) fn frozen_wanted(bundle: &Bundle, method: &MethodSpec, options: &Options) -> Option<Vec<ComputationSpec>> {
    let bundle_variables = matches!(options.variables, VariablesSource::Bundle) && bundle.ships_variables();
    if options.without_frozen || !bundle_variables || bundle.devices() != 1 {
        return None;
    }
    method.inference.iter().map(|c| c.frozen.as_deref().cloned()).collect()
}

/// `wanted`, if every frozen variant names `sha256`: the digest of the variables file the
/// layer's params were uploaded from.
pub(crate) fn frozen_matching(wanted: Option<Vec<ComputationSpec>>, sha256: Option<&str>) -> Option<Vec<ComputationSpec>> {
    wanted.filter(|list| sha256.is_some() && list.iter().all(|c| c.variables_sha256.as_deref() == sha256))
}

/// The raw `uint32[2]` data of `jax.random.key(seed)` (threefry): `[seed >> 32, seed & 0xffffffff]`.
pub fn seed_key(seed: u64) -> [u32; 2] {
    [(seed >> 32) as u32, seed as u32]
}
