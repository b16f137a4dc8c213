//! LAPACK-compatible kernels for the `lapack_*_ffi` custom calls JAX emits on CPU, in safe Rust.
//!
//! On CPU, JAX lowers `jnp.linalg`, `jax.scipy.linalg` and Flax's orthogonal initializer to
//! custom calls such as `lapack_sgeqrf_ffi` that only jaxlib registers. This module computes
//! them: [`call`] takes a target name, the call's buffers and attributes (decoded by the XLA FFI
//! glue in [`crate::pjrt`]) and runs the kernel for every matrix of the batch.
//!
//! The contract follows jaxlib's handlers (`jaxlib/cpu/lapack_kernels.cc`, JAX 0.10.2): the
//! same operands, results, attributes and aliasing; batch dims lead and each matrix is
//! column-major; `info` is an int32 per matrix with LAPACK's meaning; pivots are 1-based. The
//! per-target table is in `docs/linalg.md`. Real types only (`s`, `d`); complex targets are
//! not provided.
//!
//! (An illustration: the module is internal to the crate, and its unit tests in
//! `src/linalg/tests/` cover every target.)
//! ```text
//! use flaxlayer::linalg::{call, AttrValue, Attrs, Operand, ResultBuf};
//! use flaxlayer::DType;
//!
//! // Cholesky of [[4, 2], [2, 5]] (column-major), as `jnp.linalg.cholesky` lowers it.
//! let a = [4.0f64, 2.0, 2.0, 5.0];
//! let (mut l, mut info) = ([0.0f64; 4], [0i32; 1]);
//! let operands = [Operand { dtype: DType::F64, dims: &[2, 2], data: Some(bytemuck::cast_slice(&a)) }];
//! let mut results = [
//!     ResultBuf { dtype: DType::F64, dims: &[2, 2], data: bytemuck::cast_slice_mut(&mut l) },
//!     ResultBuf { dtype: DType::I32, dims: &[], data: bytemuck::cast_slice_mut(&mut info) },
//! ];
//! let attrs = Attrs::new().with("uplo", AttrValue::U8(b'L'));
//! call("lapack_dpotrf_ffi", &operands, &mut results, &attrs)?;
//! assert_eq!(info, [0]);
//! assert_eq!(l, [2.0, 1.0, 2.0, 2.0]); // L = [[2, 0], [1, 2]]; the upper entry keeps its input
//! # Ok::<(), flaxlayer::linalg::KernelError>(())
//! ```
#![forbid(unsafe_code)]

mod attrs;
mod buffers;
mod cholesky;
mod eigh;
mod error;
mod householder;
mod lu;
mod qr;
mod scalar;
mod svd;
mod triangular;

#[cfg(test)]
mod tests;

use std::panic::{catch_unwind, AssertUnwindSafe};

#[allow(unused_imports)]
pub(crate) use attrs::{AttrValue, Attrs};
pub(crate) use buffers::{Operand, ResultBuf};
#[allow(unused_imports)]
pub use error::{BufferRef, KernelError};

/// A kernel: one op at one element type.
type Kernel = fn(&str, &[Operand<'_>], &mut [ResultBuf<'_>], &Attrs<'_>) -> Result<(), KernelError>;

/// Every target, with its kernel.
const KERNELS: &[(&str, Kernel)] = &[
    ("lapack_sgeqrf_ffi", qr::geqrf::<f32>),
    ("lapack_dgeqrf_ffi", qr::geqrf::<f64>),
    ("lapack_sorgqr_ffi", qr::orgqr::<f32>),
    ("lapack_dorgqr_ffi", qr::orgqr::<f64>),
    ("lapack_sormqr_ffi", qr::ormqr::<f32>),
    ("lapack_dormqr_ffi", qr::ormqr::<f64>),
    ("lapack_spotrf_ffi", cholesky::potrf::<f32>),
    ("lapack_dpotrf_ffi", cholesky::potrf::<f64>),
    ("lapack_sgetrf_ffi", lu::getrf::<f32>),
    ("lapack_dgetrf_ffi", lu::getrf::<f64>),
    ("lapack_strsm_ffi", triangular::trsm::<f32>),
    ("lapack_dtrsm_ffi", triangular::trsm::<f64>),
    ("lapack_ssyevd_ffi", eigh::syevd::<f32>),
    ("lapack_dsyevd_ffi", eigh::syevd::<f64>),
    ("lapack_sgesdd_ffi", svd::gesdd::<f32>),
    ("lapack_dgesdd_ffi", svd::gesdd::<f64>),
    ("lapack_sgesvd_ffi", svd::gesvd::<f32>),
    ("lapack_dgesvd_ffi", svd::gesvd::<f64>),
];

const TARGETS: [&str; KERNELS.len()] = {
    let mut names = [""; KERNELS.len()];
    let mut i = 0;
    while i < KERNELS.len() {
        names[i] = KERNELS[i].0;
        i += 1;
    }
    names
};

/// The custom-call targets [`call`] computes: `lapack_{s,d}{geqrf,orgqr,ormqr,potrf,getrf,
/// trsm,syevd,gesdd,gesvd}_ffi`.
pub fn supported_targets() -> &'static [&'static str] {
    &TARGETS
}

/// Runs custom call `target` on `operands`, writing `results`.
///
/// The glue passes the call frame's buffers in order (operands are XLA FFI arguments, results
/// its return values) and its attributes by name. An operand that shares its buffer with the
/// result it aliases (`output_operand_aliases`) is passed with `data: None`; otherwise the
/// kernel copies it into that result first, as jaxlib does.
///
/// Every dtype, shape, byte length, alignment and attribute is checked before any result byte
/// is written; a bad call returns a [`KernelError`] naming the target and what was wrong. A
/// panic inside a kernel (a bug) is caught and returned as [`KernelError::Panic`] rather than
/// unwinding into C.
pub fn call(
    target: &str,
    operands: &[Operand<'_>],
    results: &mut [ResultBuf<'_>],
    attrs: &Attrs<'_>,
) -> Result<(), KernelError> {
    let Some(&(_, kernel)) = KERNELS.iter().find(|(name, _)| *name == target) else {
        return Err(KernelError::UnknownTarget { target: target.to_owned() });
    };
    catch_unwind(AssertUnwindSafe(|| kernel(target, operands, results, attrs))).unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        Err(KernelError::Panic { target: target.to_owned(), message })
    })
}

/// Whether [`call`] computes `target`.
pub fn is_supported(target: &str) -> bool {
    TARGETS.contains(&target)
}
