//! The check made before a computation is compiled: every custom-call target it calls
//! (the manifest's `custom_call_targets`) must be one the PJRT plugin can run, or the layer is
//! refused when it is built ([`Error::UnsupportedCustomCall`]) rather than at its first call.
//!
//! On a CPU client a target can run when it is one of [`BUILTIN_CUSTOM_CALL_TARGETS`], which
//! XLA's CPU compiler removes or rewrites itself, or one flaxlayer registered a handler for on
//! the plugin ([`crate::pjrt::FfiHandlers`]: the `lapack_*_ffi` targets). Other platforms
//! register their own targets (cuSOLVER, Triton, ...) that this crate cannot list, so there
//! XLA's compiler has the last word. A manifest without `custom_call_targets` (bundles from
//! before the field) is not checked.

use crate::pjrt::{Client, FfiHandlers};
use crate::{Error, Result};

/// Custom-call targets that XLA's CPU compiler handles itself, as JAX emits them. Each
/// compiles and runs on the default CPU plugin (`tests/custom_calls.rs` checks every one):
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
    let handlers = client.plugin().ffi_handlers();
    let refusals: Vec<(&String, String)> = targets.iter().filter_map(|t| why_not(t, handlers).map(|r| (t, r))).collect();
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
