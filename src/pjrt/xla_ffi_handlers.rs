//! Registering safe Rust kernels as XLA FFI handlers. XLA calls a handler with nothing but a
//! call frame, so each registered kernel needs an `extern "C"` function of its own: this
//! module has a fixed set of them (slots), each of which decodes the frame (`xla_ffi_frame`)
//! and runs the kernel its slot was given. [`Plugin::register_ffi_kernel`] claims a slot and
//! registers its function on the plugin, once per plugin, target and platform.
//!
//! What kernels exist is decided above this layer: the crate's `custom_calls` module
//! registers the LAPACK kernels of `linalg` on each CPU client it builds a layer on.

use std::os::raw::c_void;
use std::sync::OnceLock;

use super::plugin::Plugin;
use super::xla_ffi::XlaFfiHandler;
use super::xla_ffi_call::{HandlerError, Kernel};
use super::xla_ffi_frame::handle;
use crate::{Error, Result};

/// XLA's name of the CPU platform, for registration.
pub const CPU_PLATFORM: &str = "Host";

/// A claimed slot: the target its handler serves and the kernel it runs.
type Slot = OnceLock<(&'static str, Kernel)>;

/// Defines one `extern "C"` XLA FFI handler per slot index, and `HANDLERS`, their table.
macro_rules! slots {
    ($($i:literal => $name:ident),* $(,)?) => {
        $(
            unsafe extern "C" fn $name(call_frame: *mut c_void) -> *mut c_void {
                // SAFETY: XLA calls a registered handler with a live call frame (a call or the
                // metadata query), as `dispatch` requires.
                unsafe { dispatch($i, call_frame) }
            }
        )*
        const HANDLERS: &[XlaFfiHandler] = &[$($name as XlaFfiHandler),*];
    };
}

slots!(
    0 => slot_0, 1 => slot_1, 2 => slot_2, 3 => slot_3, 4 => slot_4, 5 => slot_5, 6 => slot_6, 7 => slot_7,
    8 => slot_8, 9 => slot_9, 10 => slot_10, 11 => slot_11, 12 => slot_12, 13 => slot_13, 14 => slot_14,
    15 => slot_15, 16 => slot_16, 17 => slot_17, 18 => slot_18, 19 => slot_19, 20 => slot_20, 21 => slot_21,
    22 => slot_22, 23 => slot_23, 24 => slot_24, 25 => slot_25, 26 => slot_26, 27 => slot_27, 28 => slot_28,
    29 => slot_29, 30 => slot_30, 31 => slot_31,
);

/// How many kernels a process can register (each target and kernel pair takes one slot,
/// shared by every plugin).
pub const MAX_FFI_KERNELS: usize = 32;

static SLOTS: [Slot; MAX_FFI_KERNELS] = [const { OnceLock::new() }; MAX_FFI_KERNELS];

/// The body of slot `i`'s handler.
///
/// # Safety
/// As [`handle`]: `call_frame` is null or a live call frame that XLA passed.
unsafe fn dispatch(i: usize, call_frame: *mut c_void) -> *mut c_void {
    match SLOTS.get(i).and_then(OnceLock::get) {
        // SAFETY: the caller's contract.
        Some(&(target, kernel)) => unsafe { handle(target, call_frame, kernel) },
        // No plugin knows an unclaimed slot's handler; refuse rather than guess.
        // SAFETY: the caller's contract.
        None => unsafe { handle("<unclaimed slot>", call_frame, unclaimed) },
    }
}

fn unclaimed(target: &str, _: &[super::Operand<'_>], _: &mut [super::ResultBuf<'_>], _: &super::Attrs<'_>) -> std::result::Result<(), HandlerError> {
    Err(HandlerError::internal(format!("{target}: no kernel behind this handler")))
}

/// The slot that runs `kernel` for `target`: the one already claimed for that pair, else a
/// free one.
fn slot_for(target: &'static str, kernel: Kernel) -> Result<usize> {
    let ours = |&(t, k): &(&'static str, Kernel)| t == target && k as usize == kernel as usize;
    for (i, slot) in SLOTS.iter().enumerate() {
        if ours(slot.get_or_init(|| (target, kernel))) {
            return Ok(i);
        }
    }
    Err(Error::invalid(
        "XLA FFI kernel",
        format!("cannot register {target}: all {MAX_FFI_KERNELS} handler slots of this process are taken"),
    ))
}

impl Plugin {
    /// Registers `kernel`, a safe Rust function over decoded buffers and attributes, as the
    /// XLA FFI handler of custom-call target `target` on `platform` (XLA's name: `Host` for the
    /// CPU). The handler answers XLA's metadata query, checks every call frame before the
    /// kernel sees it, turns a kernel's error or panic into an XLA error, and never unwinds
    /// into C.
    ///
    /// Once per plugin, target and platform: a second call returns the first outcome (XLA
    /// keeps a registration for the life of the process and refuses a second one). Another
    /// kernel for a target already registered on this plugin is an error. `Ok` means the
    /// plugin accepted the handler (see [`Plugin::register_ffi_handler`] for what that means).
    pub(crate) fn register_ffi_kernel(&self, target: &'static str, platform: &str, kernel: Kernel) -> Result<()> {
        let mut registered = self.ffi_kernels.lock().unwrap_or_else(|e| e.into_inner());
        let key = (target.to_string(), platform.to_string());
        if let Some((k, outcome)) = registered.get(&key) {
            if *k as usize != kernel as usize {
                return Err(Error::invalid(
                    "XLA FFI kernel",
                    format!("{target} on {platform} is registered on this plugin with another kernel already"),
                ));
            }
            return outcome.clone().map_err(|message| Error::Pjrt { call: "PJRT_FFI_Register_Handler", code: crate::ErrorCode::Internal, message });
        }
        let slot = slot_for(target, kernel)?;
        // SAFETY: every slot handler is built by `slots!` over `handle`, a typed XLA FFI
        // handler for API 0.3 that answers the metadata query, decodes and checks each call
        // frame, runs a safe kernel, never unwinds and keeps nothing past the call.
        let outcome = unsafe { self.register_ffi_handler(target, platform, HANDLERS[slot]) };
        registered.insert(key, (kernel, outcome.as_ref().map(|_| ()).map_err(|e| e.to_string())));
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn there_is_one_handler_per_slot() {
        assert_eq!(HANDLERS.len(), MAX_FFI_KERNELS);
    }
}
