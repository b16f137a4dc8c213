//! A safe layer over XLA's PJRT C API. This module holds all of the crate's `unsafe`, and
//! depends on nothing above it: where a plugin comes from is [`crate::plugins`]' business,
//! which custom-call kernels exist is `crate::custom_calls`'.
//!
//! [`Plugin`] loads a plugin `.so` → [`Client`] owns a PJRT client and its [`Device`]s →
//! [`Buffer`] is a device array → [`LoadedExecutable`] is a compiled program.
//!
//! The C types come from `ffi` (our `#[repr(C)]` mirror of `pjrt_c_api.h`, no bindgen in the
//! build). Every call into the plugin is written `unsafe { call!(plugin, PJRT_Name, &mut args) }`
//! with a `// SAFETY:` comment: the macro reads the entry (refusing one the plugin's table
//! lacks) and converts the returned `PJRT_Error*`, but leaves the call itself to the
//! caller's `unsafe` block, so the compiler requires it at every call site.
#![warn(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod buffer;
mod client;
mod compile_options;
mod event;
mod executable;
mod ffi;
mod ffi_extension;
mod options;
mod plugin;
mod xla_ffi;
mod xla_ffi_call;
mod xla_ffi_api;
mod xla_ffi_frame;
mod xla_ffi_handlers;

pub use buffer::Buffer;
pub(crate) use buffer::Dims;
pub use client::{Client, Device};
pub use compile_options::{CompileOptions, Spmd};
pub use executable::{LoadedExecutable, Program};
pub use options::{ClientOptions, OptionValue};
pub use plugin::{Plugin, PluginSource};
pub use xla_ffi::XlaFfiHandler;
pub(crate) use xla_ffi_call::{AttrValue, Attrs, HandlerError, Kernel, Operand, ResultBuf};
pub use xla_ffi_handlers::{CPU_PLATFORM, MAX_FFI_KERNELS};
/// Call frames built as XLA lays them out, for the kernel tests of `crate::custom_calls`.
#[cfg(test)]
pub(crate) use xla_ffi_frame::tests as frame_testing;

/// The plugin's API table entry `$name` (a function pointer), or `Error::Unsupported` when
/// the plugin's table ends before that slot or the slot is null.
macro_rules! entry {
    ($plugin:expr, $name:ident) => {{
        let plugin: &$crate::pjrt::plugin::Plugin = &$plugin;
        let offset = ::std::mem::offset_of!($crate::pjrt::ffi::PJRT_Api, $name);
        if plugin.table_covers(offset + ::std::mem::size_of::<usize>()) {
            let api = plugin.api_ptr();
            #[allow(unused_unsafe)] // also expanded inside the `unsafe` of `call!` sites
            // SAFETY: the plugin's table holds the slot (its `struct_size` covers it, checked
            // above) and lives as long as `plugin`. The slot is read through a raw pointer:
            // no reference to the table, which may be shorter than our `PJRT_Api`, is formed.
            let f = unsafe { ::std::ptr::addr_of!((*api).$name).read() };
            f.ok_or_else(|| $crate::Error::Unsupported { function: stringify!($name) })
        } else {
            Err($crate::Error::Unsupported { function: stringify!($name) })
        }
    }};
}

/// Calls the plugin's `$name` with `$args` (a `&mut` of its `*_Args`), turning the returned
/// `PJRT_Error*` into `Result<()>`; an entry the plugin lacks is `Error::Unsupported`. The
/// call itself is unsafe and needs the caller's `unsafe { }` block, whose `// SAFETY:`
/// comment says why the args are valid: built by `new()`, every pointer in them valid for
/// the duration of the call (out-pointers writable), handles alive and of this plugin.
macro_rules! call {
    ($plugin:expr, $name:ident, $args:expr) => {{
        let plugin: &$crate::pjrt::plugin::Plugin = &$plugin;
        match $crate::pjrt::entry!(plugin, $name) {
            Err(e) => Err(e),
            Ok(f) => {
                let err = f($args);
                plugin.check(err, stringify!($name))
            }
        }
    }};
}

pub(crate) use {call, entry};

/// Compile-time proof that the handle types can cross threads.
#[allow(dead_code)]
fn ensure_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<Plugin>();
    is::<Client>();
    is::<Device>();
    is::<Buffer>();
    is::<LoadedExecutable>();
}
