//! Custom calls: the XLA FFI handlers flaxlayer provides, and the check made before a
//! computation is compiled. This module sits above both [`crate::pjrt`] (which can register a
//! safe kernel as a handler) and `crate::linalg` (the LAPACK kernels), and joins them.
//!
//! **Registration.** [`register`] registers the `lapack_*_ffi` kernels on a CPU client's
//! plugin (once per plugin: later calls return the first outcome). A layer calls it on its
//! client before it compiles anything, as does the isolated compile worker; a program you
//! compile yourself on a [`Client`] needs `register(&client)` first if
//! it calls a LAPACK target. Nothing registers behind your back when a client is created.
//!
//! **The check.** Every custom-call target a computation calls (the manifest's
//! `custom_call_targets`) must be one the PJRT plugin can run, or the layer is refused when
//! it is built ([`Error::UnsupportedCustomCall`]) rather than at its first call. On a CPU
//! client a target can run when it is one of [`BUILTIN_CUSTOM_CALL_TARGETS`], which XLA's CPU
//! compiler removes or rewrites itself, or one [`register`] registered a handler for (the
//! `lapack_*_ffi` targets). Other platforms
//! register their own targets (cuSOLVER, Triton, ...) that this crate cannot list, so there
//! XLA's compiler has the last word. A manifest without `custom_call_targets` (bundles from
//! before the field) is not checked.

use crate::linalg::KernelError;
use crate::pjrt::{Attrs, Client, HandlerError, Kernel, Operand, ResultBuf, CPU_PLATFORM};
use crate::{Error, Result};

/// Custom-call targets that XLA's CPU compiler handles itself, as JAX emits them. Each
/// compiles and runs on the default CPU plugin (`tests/it/custom_calls.rs` checks every one):
/// - `Sharding`, `SPMDFullToShardShape`, `SPMDShardToFullShape`: GSPMD sharding annotations
///   (`with_sharding_constraint`, `shard_map` without Shardy), removed by XLA's
///   `ShardingRemover` on one partition;
/// - `xla.sdy.FuncResultSharding`: Shardy's result sharding, as exported modules carry it;
/// - `annotate_device_placement`, `MoveToHost`, `MoveToDevice`: memory-space annotations
///   (outputs in `pinned_host`, host offloading), removed on the CPU;
/// - `LayoutConstraint`: a layout annotation;
/// - `ApproxTopK`: `jax.lax.approx_max_k` / `approx_min_k`, which XLA lowers to a sort on
///   the CPU.
///
/// Not among them (each fails to compile on the CPU plugin): other `xla.sdy.*` and
/// `mhlo.*` targets, JAX's host callbacks (`xla_python_cpu_callback`, which need Python),
/// and jaxlib's CPU targets that flaxlayer does not provide (`lapack_*geev_ffi`, `gees`,
/// `gehrd`, `sytrd`, `gtsv`, `geqp3` and the complex `c`/`z` ones).
pub const BUILTIN_CUSTOM_CALL_TARGETS: &[&str] = &[
    "Sharding",
    "SPMDFullToShardShape",
    "SPMDShardToFullShape",
    "xla.sdy.FuncResultSharding",
    "annotate_device_placement",
    "MoveToHost",
    "MoveToDevice",
    "LayoutConstraint",
    "ApproxTopK",
];

/// `Ok` if `client` can run every target of `targets`, which computation `file` calls; else
/// [`Error::UnsupportedCustomCall`] naming the targets that share the first reason.
pub(crate) fn check(file: &str, targets: Option<&[String]>, client: &Client) -> Result<()> {
    let Some(targets) = targets.filter(|t| !t.is_empty()) else { return Ok(()) };
    if client.platform_name()? != "cpu" {
        return Ok(());
    }
    let handlers = register(client)?;
    let refusals: Vec<(&String, String)> = targets.iter().filter_map(|t| why_not(t, &handlers).map(|r| (t, r))).collect();
    let Some((_, reason)) = refusals.first() else { return Ok(()) };
    let reason = reason.clone();
    let targets = refusals.iter().filter(|(_, r)| *r == reason).map(|(t, _)| (*t).clone()).collect();
    Err(Error::UnsupportedCustomCall { targets, computation: file.to_string(), reason })
}

/// Why the CPU plugin cannot run `target`, or `None` if it can.
fn why_not(target: &str, handlers: &FfiHandlers) -> Option<String> {
    if BUILTIN_CUSTOM_CALL_TARGETS.contains(&target) || handlers.is_registered(target) {
        return None;
    }
    if let Some(reason) = handlers.unavailable(target) {
        return Some(reason.to_string());
    }
    Some(
        "XLA's CPU compiler does not handle it and flaxlayer has no handler for it (flaxlayer handles \
         lapack_{s,d}{geqrf,orgqr,ormqr,potrf,getrf,trsm,syevd,gesdd,gesvd}_ffi; see docs/linalg.md)"
            .to_string(),
    )
}

/// The LAPACK targets flaxlayer provides (`crate::linalg`), each with its handler's kernel.
const LAPACK_TARGETS: [&str; 18] = [
    "lapack_sgeqrf_ffi",
    "lapack_dgeqrf_ffi",
    "lapack_sorgqr_ffi",
    "lapack_dorgqr_ffi",
    "lapack_sormqr_ffi",
    "lapack_dormqr_ffi",
    "lapack_spotrf_ffi",
    "lapack_dpotrf_ffi",
    "lapack_sgetrf_ffi",
    "lapack_dgetrf_ffi",
    "lapack_strsm_ffi",
    "lapack_dtrsm_ffi",
    "lapack_ssyevd_ffi",
    "lapack_dsyevd_ffi",
    "lapack_sgesdd_ffi",
    "lapack_dgesdd_ffi",
    "lapack_sgesvd_ffi",
    "lapack_dgesvd_ffi",
];

/// Every (target, kernel) flaxlayer provides: the LAPACK ones, and with the
/// `fault-injection` feature `flaxlayer_test_fail_if`.
fn provided_kernels() -> impl Iterator<Item = (&'static str, Kernel)> {
    let lapack = LAPACK_TARGETS.iter().map(|&t| (t, lapack_kernel as Kernel));
    #[cfg(feature = "fault-injection")]
    let lapack = lapack.chain(std::iter::once(("flaxlayer_test_fail_if", fail_if_kernel as Kernel)));
    lapack
}

fn lapack_kernel(target: &str, operands: &[Operand<'_>], results: &mut [ResultBuf<'_>], attrs: &Attrs<'_>) -> std::result::Result<(), HandlerError> {
    crate::linalg::call(target, operands, results, attrs).map_err(HandlerError::from)
}

impl From<KernelError> for HandlerError {
    /// A kernel's panic is a bug (`INTERNAL`); every other refusal is about the call.
    fn from(e: KernelError) -> Self {
        match e {
            KernelError::Panic { .. } => HandlerError::internal(e.to_string()),
            other => HandlerError::invalid(other.to_string()),
        }
    }
}

/// `flaxlayer_test_fail_if`: `x: f32[]` in, a copy out; an error (`INTERNAL`, so the
/// execution fails on the device) when `x > 0`.
#[cfg(feature = "fault-injection")]
fn fail_if_kernel(target: &str, operands: &[Operand<'_>], results: &mut [ResultBuf<'_>], _: &Attrs<'_>) -> std::result::Result<(), HandlerError> {
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
    targets: Vec<(&'static str, std::result::Result<(), String>)>,
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
        provided_kernels().map(|(t, _)| t)
    }
}

/// Registers flaxlayer's handlers (the `lapack_*_ffi` kernels) on `client`'s plugin for the
/// CPU platform, once per plugin and process (later calls return the first outcome), and
/// says which targets have one. On another platform, or on a plugin without the FFI
/// extension, none is registered and the reason is kept for the errors of computations that
/// need them. An error only when the client cannot name its platform.
pub fn register(client: &Client) -> Result<FfiHandlers> {
    let platform = client.platform_name()?;
    let plugin = client.plugin();
    let refuse_all = |reason: String| FfiHandlers { targets: provided_kernels().map(|(t, _)| (t, Err(reason.clone()))).collect() };
    if platform != "cpu" {
        return Ok(refuse_all(format!("flaxlayer provides this handler for the CPU only, and the client runs on {platform}")));
    }
    if !plugin.has_ffi_extension() {
        return Ok(refuse_all(format!(
            "the PJRT plugin {} has no FFI extension with register_handler (its extensions: {:?}), \
             so flaxlayer cannot register its handler for this custom call",
            plugin.path().display(),
            plugin.extension_types()
        )));
    }
    let targets = provided_kernels()
        .map(|(target, kernel)| {
            let registered = plugin.register_ffi_kernel(target, CPU_PLATFORM, kernel);
            (target, registered.map_err(|e| format!("the PJRT plugin refused the handler: {e}")))
        })
        .collect();
    Ok(FfiHandlers { targets })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pjrt::frame_testing::*;
    use crate::pjrt::{CompileOptions, Program};

    // The call-frame decoder (`crate::pjrt`) and the LAPACK kernels together, on frames laid
    // out as XLA passes them.
    #[test]
    fn an_aliased_operand_is_factored_in_place() {
        let mut a = [4f32, 2., 2., 5.];
        let mut info = [7i32];
        let p = a.as_mut_ptr();
        assert_eq!(potrf(p, p, &mut info, uplo()).call("lapack_spotrf_ffi", lapack_kernel), None);
        assert_eq!((a, info), ([2., 1., 2., 2.], [0]));
    }

    #[test]
    fn a_separate_operand_is_copied_in_first() {
        let (mut a, mut l, mut info) = ([4f32, 2., 2., 5.], [0f32; 4], [7i32]);
        assert_eq!(potrf(a.as_mut_ptr(), l.as_mut_ptr(), &mut info, uplo()).call("lapack_spotrf_ffi", lapack_kernel), None);
        assert_eq!((a, l, info), ([4., 2., 2., 5.], [2., 1., 2., 2.], [0]));
    }

    #[test]
    fn a_kernel_error_is_an_invalid_argument_with_its_message() {
        let (mut a, mut l, mut info) = ([4f32, 2., 2., 5.], [0f32; 4], [0i32]);
        let err = potrf(a.as_mut_ptr(), l.as_mut_ptr(), &mut info, vec![]).call("lapack_spotrf_ffi", lapack_kernel).unwrap();
        assert_eq!(err, (XLA_FFI_Error_Code_INVALID_ARGUMENT, "lapack_spotrf_ffi: missing attribute \"uplo\" (u8 'L' or 'U')".into()));
        let err = potrf(a.as_mut_ptr(), l.as_mut_ptr(), &mut info, vec![("uplo", Attr::U8(b'X'))]).call("lapack_spotrf_ffi", lapack_kernel).unwrap();
        assert!(err.1.contains("attribute \"uplo\" is u8 88 ('X')"), "{}", err.1);
        // Too many operands.
        let mut extra = [0f32; 4];
        let mut f = potrf(a.as_mut_ptr(), l.as_mut_ptr(), &mut info, uplo());
        f.ops.push(Buf::of(F32, &[2, 2], &mut extra));
        assert!(f.call("lapack_spotrf_ffi", lapack_kernel).unwrap().1.contains("expected 1 operands (a), got 2"));
        assert_eq!(l, [0.; 4], "nothing written on a refused call");
    }

    #[test]
    fn a_kernel_sees_the_dtype_the_frame_declares() {
        let (mut a, mut l, mut info) = ([4f32, 2., 2., 5.], [0f32; 4], [0i32]);
        let mut a64 = [4f64, 2., 2., 5.];
        let mut f = potrf(a.as_mut_ptr(), l.as_mut_ptr(), &mut info, uplo());
        f.ops[0] = Buf::of(XLA_FFI_DataType_F64, &[2, 2], &mut a64);
        let err = f.call("lapack_spotrf_ffi", lapack_kernel).unwrap();
        assert!(err.1.contains("operand 0 (a) has dtype float64, expected float32"), "{}", err.1);
    }

    #[test]
    fn there_is_one_handler_per_linalg_target() {
        assert_eq!(LAPACK_TARGETS.as_slice(), crate::linalg::supported_targets());
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
        let c = Client::new(None).expect("a PJRT plugin: $VIRTUAL_ENV (scripts/setup.sh's .venv) or PJRT_PLUGIN_PATH");
        let handlers = register(&c).unwrap();
        assert_eq!(handlers.registered().len(), provided_kernels().count(), "{handlers:?}");
        assert_eq!(register(&c).unwrap(), handlers, "a second registration returns the first outcome");
        let exe = c.compile(Program::Mlir(POTRF.as_bytes()), &CompileOptions::default()).unwrap();
        // [[4, 2], [2, 5]] and [[1, 2], [2, 1]] (buffers are row-major; XLA lays them out
        // column-major for the call, as `operand_layouts` asks).
        let a = [4f32, 2., 2., 5., 1., 2., 2., 1.];
        let x = c.buffer_from_slice(&a, &[2, 2, 2], &c.device(0).unwrap()).unwrap();
        let signature = vec![crate::TensorSpec::new("x", crate::DType::F32, vec![2, 2, 2])];
        let out = exe.with_input_signature(signature).execute(&[&x], &[false]).unwrap();
        // L = [[2, 0], [1, 2]]; the upper entry keeps its input (2).
        assert_eq!(out[0].to_vec::<f32>().unwrap()[..4], [2., 2., 1., 2.]);
        assert_eq!(out[1].to_vec::<i32>().unwrap(), [0, 2], "info: 0, then the 2nd minor is not positive");
    }
}
