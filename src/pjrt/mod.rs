//! A safe layer over XLA's PJRT C API. This module holds all of the crate's `unsafe`.
//!
//! [`Plugin`] loads a plugin `.so` → [`Client`] owns a PJRT client and its [`Device`]s →
//! [`Buffer`] is a device array → [`LoadedExecutable`] is a compiled program.

mod buffer;
mod client;
mod compile_options;
mod event;
mod executable;
mod ffi;
mod options;
mod plugin;

pub use buffer::Buffer;
pub use client::{Client, Device};
pub use compile_options::CompileOptions;
pub use executable::{ArgSpec, LoadedExecutable, Program};
pub use options::{ClientOptions, OptionValue};
pub use plugin::{Plugin, PluginSource, DEFAULT_PLUGIN, PLUGIN_PATH_ENV};

/// Builds a zeroed `*_Args` struct with its `struct_size` set: the one way args are made.
macro_rules! args {
    ($t:ident) => {{
        let mut a = <$crate::pjrt::ffi::$t as ::std::default::Default>::default();
        a.struct_size = ::std::mem::size_of::<$crate::pjrt::ffi::$t>();
        a
    }};
}

/// Calls the API table entry `$name` with `&mut $args`, turning a `PJRT_Error*` into
/// `Result<()>`. A table entry the plugin lacks is `Error::Unsupported`.
macro_rules! call {
    ($plugin:expr, $name:ident, $args:expr) => {{
        let plugin: &$crate::pjrt::plugin::Plugin = &$plugin;
        match plugin.entry(::std::mem::offset_of!($crate::pjrt::ffi::PJRT_Api, $name), stringify!($name)) {
            Err(e) => Err(e),
            Ok(api) => match api.$name {
                None => Err($crate::Error::Unsupported { function: stringify!($name) }),
                Some(f) => {
                    let args = $args;
                    // SAFETY: `f` is the plugin's implementation of `$name`, read from an API
                    // table whose `struct_size` covers it; `args` is a `*_Args` struct built by
                    // `args!` (so `struct_size` is set) and filled by the caller with pointers
                    // that stay valid for the duration of the call, as the header requires.
                    let err = unsafe { f(args) };
                    plugin.check(err, stringify!($name))
                }
            },
        }
    }};
}

pub(crate) use {args, call};

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
