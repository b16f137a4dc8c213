//! flaxlayer's XLA FFI handlers and their registration: one `extern "C"` handler per
//! `lapack_*_ffi` target of [`crate::linalg`], registered once per plugin (on the CPU
//! platform, `Host`) when the first client of the plugin is created, if the plugin has the
//! FFI extension.
//!
//! With the `fault-injection` feature, one more target exists for the tests:
//! `flaxlayer_test_fail_if(x: f32[]) -> f32[]` copies `x`, and fails (an `INTERNAL` error,
//! so the execution fails on the device) when `x > 0`.

use std::os::raw::c_void;

use super::plugin::Plugin;
use super::xla_ffi::XlaFfiHandler;
use super::xla_ffi_frame::{handle, HandlerError};
use crate::linalg::{Attrs, Operand, ResultBuf};

/// XLA's name of the CPU platform, for registration.
pub const CPU_PLATFORM: &str = "Host";

/// Defines one `extern "C"` XLA FFI handler per target, named after it, that decodes the
/// call frame and runs `$kernel`; and `$list`, the (target, handler) pairs.
macro_rules! ffi_handlers {
    ($list:ident, $kernel:expr; $($target:ident),* $(,)?) => {
        $(
            #[doc = concat!("The XLA FFI handler of `", stringify!($target), "`.")]
            unsafe extern "C" fn $target(call_frame: *mut c_void) -> *mut c_void {
                // SAFETY: XLA calls a registered handler with a live call frame (a call or
                // the metadata query), as `handle` requires.
                unsafe { handle(stringify!($target), call_frame, $kernel) }
            }
        )*
        /// Every (target, handler) pair of this group.
        const $list: &[(&str, XlaFfiHandler)] = &[$((stringify!($target), $target as XlaFfiHandler)),*];
    };
}

ffi_handlers!(LAPACK_HANDLERS, linalg_kernel;
    lapack_sgeqrf_ffi, lapack_dgeqrf_ffi,
    lapack_sorgqr_ffi, lapack_dorgqr_ffi,
    lapack_sormqr_ffi, lapack_dormqr_ffi,
    lapack_spotrf_ffi, lapack_dpotrf_ffi,
    lapack_sgetrf_ffi, lapack_dgetrf_ffi,
    lapack_strsm_ffi, lapack_dtrsm_ffi,
    lapack_ssyevd_ffi, lapack_dsyevd_ffi,
    lapack_sgesdd_ffi, lapack_dgesdd_ffi,
    lapack_sgesvd_ffi, lapack_dgesvd_ffi,
);

#[cfg(feature = "fault-injection")]
ffi_handlers!(TEST_HANDLERS, fail_if_kernel; flaxlayer_test_fail_if);
#[cfg(not(feature = "fault-injection"))]
const TEST_HANDLERS: &[(&str, XlaFfiHandler)] = &[];

fn linalg_kernel(target: &str, operands: &[Operand<'_>], results: &mut [ResultBuf<'_>], attrs: &Attrs<'_>) -> Result<(), HandlerError> {
    crate::linalg::call(target, operands, results, attrs).map_err(HandlerError::from)
}

/// `flaxlayer_test_fail_if`: `x: f32[]` in, a copy out; an error when `x > 0`.
#[cfg(feature = "fault-injection")]
fn fail_if_kernel(target: &str, operands: &[Operand<'_>], results: &mut [ResultBuf<'_>], _: &Attrs<'_>) -> Result<(), HandlerError> {
    use crate::DType;
    let scalar_f32 = |dtype: DType, dims: &[i64], len: usize| dtype == DType::F32 && dims.is_empty() && len == 4;
    let (Some(x), [y]) = (operands.first().filter(|_| operands.len() == 1), results) else {
        return Err(HandlerError::invalid(format!("{target}: expected 1 operand and 1 result")));
    };
    let Some(bytes) = x.data.filter(|b| scalar_f32(x.dtype, x.dims, b.len())) else {
        return Err(HandlerError::invalid(format!("{target}: the operand must be an f32 scalar")));
    };
    if !scalar_f32(y.dtype, y.dims, y.data.len()) {
        return Err(HandlerError::invalid(format!("{target}: the result must be an f32 scalar")));
    }
    let value = f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if value > 0.0 {
        return Err(HandlerError::internal(format!("{target}: input {value} > 0: a failure injected on purpose")));
    }
    y.data.copy_from_slice(bytes);
    Ok(())
}

/// The XLA FFI handlers flaxlayer registered on one plugin: every target it provides, with
/// whether the registration went through, or why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FfiHandlers {
    targets: Vec<(&'static str, Result<(), String>)>,
}

impl FfiHandlers {
    /// The targets with a registered handler, in registration order.
    pub fn registered(&self) -> Vec<&'static str> {
        self.targets.iter().filter(|(_, r)| r.is_ok()).map(|(t, _)| *t).collect()
    }

    /// Whether `target` has a handler registered by flaxlayer on this plugin.
    pub fn is_registered(&self, target: &str) -> bool {
        self.targets.iter().any(|(t, r)| *t == target && r.is_ok())
    }

    /// Why `target`, one of the targets flaxlayer provides, has no handler on this plugin;
    /// `None` if it has one or is not one of flaxlayer's.
    pub fn unavailable(&self, target: &str) -> Option<&str> {
        self.targets.iter().find(|(t, _)| *t == target).and_then(|(_, r)| r.as_ref().err()).map(String::as_str)
    }

    /// Every target flaxlayer provides: the `lapack_*_ffi` ones (and, with the
    /// `fault-injection` feature, `flaxlayer_test_fail_if`).
    pub fn provided() -> impl Iterator<Item = &'static str> {
        all_handlers().map(|(t, _)| *t)
    }
}

fn all_handlers() -> impl Iterator<Item = &'static (&'static str, XlaFfiHandler)> {
    LAPACK_HANDLERS.iter().chain(TEST_HANDLERS)
}

impl Plugin {
    /// Registers flaxlayer's XLA FFI handlers on this plugin for the CPU platform, once per
    /// plugin and process (later calls return the first outcome), and says which targets
    /// have one. A plugin without the FFI extension gets none, and the reason is kept for the
    /// errors of computations that need them. Creating a client on a CPU plugin does this.
    pub fn ffi_handlers(&self) -> &FfiHandlers {
        self.ffi_handlers.get_or_init(|| self.register_handlers())
    }

    fn register_handlers(&self) -> FfiHandlers {
        if !self.has_ffi_extension() {
            let reason = format!(
                "the PJRT plugin {} has no FFI extension with register_handler (its extensions: {:?}), \
                 so flaxlayer cannot register its handler for this custom call",
                self.path().display(),
                self.extension_types()
            );
            return FfiHandlers { targets: all_handlers().map(|(t, _)| (*t, Err(reason.clone()))).collect() };
        }
        let targets = all_handlers()
            .map(|&(target, handler)| {
                // SAFETY: every handler here is built by `ffi_handlers!` over `handle`, a typed
                // XLA FFI handler for API 0.3 that answers the metadata query, decodes and
                // checks each call frame, never unwinds and keeps nothing past the call.
                let registered = unsafe { self.register_ffi_handler(target, CPU_PLATFORM, handler) };
                (target, registered.map_err(|e| format!("the PJRT plugin refused the handler: {e}")))
            })
            .collect();
        FfiHandlers { targets }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pjrt::{Client, CompileOptions, Program};

    #[test]
    fn there_is_one_handler_per_linalg_target() {
        let ours: Vec<&str> = LAPACK_HANDLERS.iter().map(|(t, _)| *t).collect();
        assert_eq!(ours, crate::linalg::supported_targets());
    }

    // Cholesky of two 2x2 matrices as `jnp.linalg.cholesky` lowers it (jax 0.10.2: no
    // `api_version`, the attributes in `mhlo.backend_config`), the second not positive
    // definite.
    const POTRF: &str = r#"
module @m {
  func.func public @main(%a: tensor<2x2x2xf32>) -> (tensor<2x2x2xf32>, tensor<2xi32>) {
    %0:2 = stablehlo.custom_call @lapack_spotrf_ffi(%a) {mhlo.backend_config = {uplo = 76 : ui8}, operand_layouts = [dense<[1, 2, 0]> : tensor<3xindex>], output_operand_aliases = [#stablehlo.output_operand_alias<output_tuple_indices = [0], operand_index = 0, operand_tuple_indices = []>], result_layouts = [dense<[1, 2, 0]> : tensor<3xindex>, dense<0> : tensor<1xindex>]} : (tensor<2x2x2xf32>) -> (tensor<2x2x2xf32>, tensor<2xi32>)
    return %0#0, %0#1 : tensor<2x2x2xf32>, tensor<2xi32>
  }
}"#;

    #[test]
    fn registration_took_effect_a_lapack_custom_call_compiles_and_runs() {
        let c = Client::new(None).expect("a PJRT plugin: ./.venv (scripts/setup.sh) or PJRT_PLUGIN_PATH");
        let handlers = c.plugin().ffi_handlers();
        assert_eq!(handlers.registered().len(), LAPACK_HANDLERS.len() + TEST_HANDLERS.len(), "{handlers:?}");
        let exe = c.compile(Program::Mlir(POTRF.as_bytes()), &CompileOptions::default()).unwrap();
        // [[4, 2], [2, 5]] and [[1, 2], [2, 1]] (buffers are row-major; XLA lays them out
        // column-major for the call, as `operand_layouts` asks).
        let a = [4f32, 2., 2., 5., 1., 2., 2., 1.];
        let x = c.buffer_from_slice(&a, &[2, 2, 2], &c.device(0).unwrap()).unwrap();
        let out = exe.execute(&[&x], &[false]).unwrap();
        // L = [[2, 0], [1, 2]]; the upper entry keeps its input (2).
        assert_eq!(out[0].to_vec::<f32>().unwrap()[..4], [2., 2., 1., 2.]);
        assert_eq!(out[1].to_vec::<i32>().unwrap(), [0, 2], "info: 0, then the 2nd minor is not positive");
    }
}
