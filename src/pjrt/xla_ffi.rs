//! The plugin's FFI extension: finding it in the `extension_start` chain, and registering
//! XLA FFI handlers (custom-call targets) through it.

use std::os::raw::c_void;
use std::ptr::NonNull;

use super::client::Client;
use super::ffi;
use super::ffi_extension::{self as ext, PJRT_FFI_Extension};
use super::plugin::Plugin;
use crate::{Error, Result};

/// An XLA FFI handler: `XLA_FFI_Error* handler(XLA_FFI_CallFrame* call_frame)` of
/// `xla/ffi/api/c_api.h`, with the call frame and the error left opaque here. XLA calls it
/// to read its metadata when it is registered, then for each custom call that names it.
pub type XlaFfiHandler = unsafe extern "C" fn(call_frame: *mut c_void) -> *mut c_void;

/// Extension chains longer than this are treated as corrupt.
const MAX_EXTENSIONS: usize = 64;

/// The first minor version whose `PJRT_Extension_Base` starts with `struct_size` (0.45).
const EXTENSION_BASE_SINCE_MINOR: i32 = 45;

impl Plugin {
    /// The types (`PJRT_Extension_Type` values) of the extensions the plugin chains from
    /// `PJRT_Api.extension_start`, in order; the FFI extension is 5.
    pub fn extension_types(&self) -> Vec<u32> {
        self.extensions().into_iter().map(|(ty, _)| ty).collect()
    }

    /// Whether the plugin has the FFI extension with `register_handler` (extension version 2),
    /// which [`Plugin::register_ffi_handler`] needs.
    pub fn has_ffi_extension(&self) -> bool {
        self.ffi_register_handler().is_ok()
    }

    /// Registers `handler` as the typed XLA FFI handler of custom-call target `target` on
    /// `platform` (XLA's platform name: `Host` for the CPU, `CUDA`, `ROCM`; newer XLA
    /// canonicalises `cpu` to `Host`), for programs that call it with
    /// `stablehlo.custom_call @target(...) {api_version = 4}`. Registration is process-wide
    /// and cannot be undone. XLA may call `handler` during registration to read its metadata
    /// (API version, traits), and newer XLA refuses a handler of another XLA FFI API version
    /// or a second registration of the same target and platform.
    ///
    /// `Ok` means the plugin accepted the call, not that XLA kept the handler: the CPU plugin
    /// we ship with does not report XLA's refusal, so a handler that does not answer XLA's
    /// metadata query (its call frame's `XLA_FFI_Metadata_Extension`) with a supported API
    /// version is dropped silently, and compiling a program that calls it then fails with
    /// "No FFI handler registered for ...".
    ///
    /// # Safety
    /// `handler` must be a typed XLA FFI handler for the XLA FFI API of this plugin: it is
    /// called by XLA with call frames as `xla/ffi/api/c_api.h` defines them, from any thread,
    /// for as long as the process runs, and must behave as that header requires.
    pub unsafe fn register_ffi_handler(&self, target: &str, platform: &str, handler: XlaFfiHandler) -> Result<()> {
        let register = self.ffi_register_handler()?;
        let mut a = ext::PJRT_FFI_Register_Handler_Args::new();
        a.target_name = target.as_ptr().cast();
        a.target_name_size = target.len();
        a.handler = handler as *mut c_void;
        a.platform_name = platform.as_ptr().cast();
        a.platform_name_size = platform.len();
        // SAFETY: `register` is the plugin's own `register_handler`, read from an extension
        // struct whose `struct_size` covers it. The names are (pointer, length) pairs borrowed
        // for the call (the plugin copies them); `handler` is valid (the caller's contract).
        let err = unsafe { register(&mut a) };
        // SAFETY: `err` is null or a fresh error of this plugin.
        unsafe { self.check(err, "PJRT_FFI_Register_Handler") }
    }

    /// The FFI extension's `register_handler`, or `Unsupported`.
    fn ffi_register_handler(
        &self,
    ) -> Result<unsafe extern "C" fn(*mut ext::PJRT_FFI_Register_Handler_Args) -> *mut ffi::PJRT_Error> {
        let unsupported = Error::Unsupported { function: "PJRT_FFI_Extension.register_handler" };
        let Some(base) = self.extension(ffi::PJRT_Extension_Type_FFI) else { return Err(unsupported) };
        let end = std::mem::offset_of!(PJRT_FFI_Extension, register_handler)
            + std::mem::size_of::<ffi::ApiFn<ext::PJRT_FFI_Register_Handler_Args>>();
        // SAFETY: `base` heads a live extension struct (see `extensions`), whose first field
        // `struct_size` is its size in the plugin.
        let size = unsafe { std::ptr::addr_of!((*base.as_ptr()).struct_size).read() };
        if size < end {
            return Err(unsupported);
        }
        let ffi_ext = base.as_ptr().cast::<PJRT_FFI_Extension>();
        // SAFETY: an extension of type FFI is a `PJRT_FFI_Extension` (it starts with its
        // base); `struct_size` covers `register_handler` (checked above). Read through a raw
        // pointer: no reference to a struct that may be shorter than our mirror.
        let register = unsafe { std::ptr::addr_of!((*ffi_ext).register_handler).read() };
        register.ok_or(unsupported)
    }

    fn extension(&self, ty: ffi::PJRT_Extension_Type) -> Option<NonNull<ffi::PJRT_Extension_Base>> {
        self.extensions().into_iter().find(|&(t, _)| t == ty).map(|(_, base)| base)
    }

    /// The extension chain: (type, head of the extension struct).
    fn extensions(&self) -> Vec<(u32, NonNull<ffi::PJRT_Extension_Base>)> {
        let (_, minor) = self.api_version();
        if minor < EXTENSION_BASE_SINCE_MINOR {
            return Vec::new();
        }
        let api = self.api_ptr();
        // SAFETY: `extension_start` is the second field of every table, inside the table head
        // that loading checked.
        let mut next = unsafe { std::ptr::addr_of!((*api).extension_start).read() };
        let mut out = Vec::new();
        while let Some(node) = NonNull::new(next) {
            if out.len() == MAX_EXTENSIONS {
                break;
            }
            // SAFETY: the plugin chains static extension structs that live as long as the
            // library (which `self` keeps loaded); each starts with a `PJRT_Extension_Base`
            // (`struct_size`, `type`, `next`), as the header requires since 0.45 (checked).
            let base = unsafe { node.as_ptr().read() };
            out.push((base.type_, node));
            next = base.next;
        }
        out
    }
}

impl Client {
    /// [`Plugin::has_ffi_extension`] of this client's plugin.
    pub fn has_ffi_extension(&self) -> bool {
        self.plugin().has_ffi_extension()
    }

    /// [`Plugin::register_ffi_handler`] on this client's plugin.
    ///
    /// # Safety
    /// As [`Plugin::register_ffi_handler`].
    pub unsafe fn register_ffi_handler(&self, target: &str, platform: &str, handler: XlaFfiHandler) -> Result<()> {
        // SAFETY: the caller's contract is the same.
        unsafe { self.plugin().register_ffi_handler(target, platform, handler) }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::pjrt::{Buffer, CompileOptions, Program};

    static CALLS: AtomicUsize = AtomicUsize::new(0);

    /// Answers XLA's metadata query (API 0.3, no traits); otherwise counts the call and
    /// succeeds without touching the call frame (its output buffer keeps whatever it held).
    unsafe extern "C" fn counting_handler(call_frame: *mut c_void) -> *mut c_void {
        use crate::pjrt::xla_ffi_api::*;
        let frame = call_frame.cast::<XLA_FFI_CallFrame>();
        // SAFETY: XLA passes a live call frame, which starts with struct_size and
        // extension_start; a metadata extension points to a writable `XLA_FFI_Metadata`.
        unsafe {
            let ext = (*frame).extension_start;
            if !ext.is_null() && (*ext).type_ == XLA_FFI_Extension_Metadata {
                let metadata = (*ext.cast::<XLA_FFI_Metadata_Extension>()).metadata;
                (*metadata).api_version.major_version = 0;
                (*metadata).api_version.minor_version = 3;
                (*metadata).traits = 0;
                return std::ptr::null_mut();
            }
        }
        CALLS.fetch_add(1, Ordering::SeqCst);
        std::ptr::null_mut()
    }

    const PROGRAM: &str = r#"
module @m {
  func.func public @main(%x: tensor<4xf32>) -> tensor<4xf32> {
    %y = stablehlo.custom_call @flaxlayer_test_counting(%x) {api_version = 4 : i32} : (tensor<4xf32>) -> tensor<4xf32>
    return %y : tensor<4xf32>
  }
}"#;

    fn client() -> Client {
        Client::new(None).expect("a PJRT plugin: ./.venv (scripts/setup.sh) or PJRT_PLUGIN_PATH")
    }

    #[test]
    fn the_cpu_plugin_has_the_ffi_extension() {
        let c = client();
        println!("extensions: {:?}", c.plugin().extension_types());
        assert!(c.plugin().extension_types().contains(&ffi::PJRT_Extension_Type_FFI));
        assert!(c.has_ffi_extension());
    }

    #[test]
    fn a_registered_handler_runs_in_a_custom_call() {
        let c = client();
        // SAFETY: `counting_handler` answers the metadata query as c_api.h says, ignores
        // every other call frame and returns null (success).
        unsafe { c.register_ffi_handler("flaxlayer_test_counting", "Host", counting_handler) }.unwrap();
        let exe = c.compile(Program::Mlir(PROGRAM.as_bytes()), &CompileOptions::default()).unwrap();
        let x = c.buffer_from_slice(&[1f32, 2., 3., 4.], &[4], &c.device(0).unwrap()).unwrap();
        let before = CALLS.load(Ordering::SeqCst);
        let exe = exe.with_input_signature(vec![crate::TensorSpec::new("x", crate::DType::F32, vec![4])]);
        let out: Vec<Buffer> = exe.execute(&[&x], &[false]).unwrap();
        assert_eq!(out[0].dims(), &[4]);
        assert_eq!(CALLS.load(Ordering::SeqCst), before + 1, "the handler ran once for the execution");
    }
}
