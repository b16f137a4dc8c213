//! Where a layer's first variables come from: the bundle's `variables.safetensors`, given
//! ones, a file, or the bundle's `init` run on the device.

use super::computation::{CompileHow, Computation, Names, Sink, Source};
use super::options::VariablesSource;
use super::placement::{DeviceArray, Placement};
use super::state::{check_named, DeviceState};
use crate::bundle::Bundle;
use crate::spec::TensorSpec;
use crate::tensor::safetensors_views;
use crate::{Error, Result};

/// The variables a layer starts from, uploaded to the placement in manifest order.
pub(crate) fn initial_variables(
    bundle: &Bundle,
    placement: &Placement,
    source: &VariablesSource,
    seed: u64,
    how: &CompileHow,
) -> Result<Vec<DeviceArray>> {
    let specs = &bundle.manifest().variables;
    let from_file = |path: &std::path::Path| -> Result<Vec<DeviceArray>> {
        let bytes = crate::files::read(path, crate::files::MAX_WEIGHTS_BYTES)?;
        let views = safetensors_views(&bytes, &path.display().to_string())?;
        upload_all(placement, specs, &views)
    };
    match source {
        VariablesSource::Given(given) => upload_all(placement, specs, given),
        VariablesSource::File(path) => from_file(path),
        VariablesSource::Bundle if bundle.variables_path().is_file() => from_file(&bundle.variables_path()),
        VariablesSource::Bundle | VariablesSource::Init => run_init(bundle, placement, specs, seed, how),
    }
}

fn upload_all<V: crate::tensor::AsView>(placement: &Placement, specs: &[TensorSpec], given: &[(String, V)]) -> Result<Vec<DeviceArray>> {
    check_named("variable", specs, given, true)?
        .into_iter()
        .map(|v| v.ok_or_else(|| Error::invalid("variables", "missing")).and_then(|v| placement.upload(&v)))
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
    let state = DeviceState::new(placement.clone(), Vec::new(), Vec::new(), super::seed_key(seed))?;
    let reads_inputs = comp.kept_sources().any(|s| matches!(s, Source::Input(_)));
    let inputs = match (reads_inputs, bundle.init_inputs()?) {
        (false, _) => Vec::new(),
        (true, Some(values)) => check_named("init input", &comp.inputs, &values, true)?
            .into_iter()
            .map(|v| v.ok_or_else(|| Error::invalid("init inputs", "missing")).and_then(|v| placement.upload(&v)))
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
