//! Compiling programs and running them: `PJRT_LoadedExecutable`.

use std::ptr::NonNull;
use std::sync::{Arc, OnceLock};

use super::buffer::{Buffer, OutputInfo};
use super::client::{Client, ClientInner, Device};
use super::compile_options::CompileOptions;
use super::{call, event, ffi};
use crate::{Error, ErrorCode, Result, TensorSpec};

/// A program to compile.
#[derive(Debug, Clone, Copy)]
pub enum Program<'a> {
    /// StableHLO/MHLO as MLIR text or bytecode (including a StableHLO portable artifact, as in
    /// `jax.export`'s `mlir_module_serialized`).
    Mlir(&'a [u8]),
    /// A serialized `HloModuleProto`.
    Hlo(&'a [u8]),
}

impl Program<'_> {
    fn parts(&self) -> (&[u8], &'static str) {
        match self {
            Program::Mlir(code) => (code, "mlir"),
            Program::Hlo(code) => (code, "hlo"),
        }
    }
}

/// A compiled program loaded on the client's devices, destroyed on drop.
pub struct LoadedExecutable {
    client: Arc<ClientInner>,
    raw: NonNull<ffi::PJRT_LoadedExecutable>,
    num_outputs: usize,
    inputs: Option<Vec<TensorSpec>>,
    /// The outputs' dtypes, dimensions and host readability, learned from the first
    /// single-device execution so that later ones wrap their outputs without asking.
    outputs: OnceLock<Vec<OutputInfo>>,
}

// SAFETY: a PJRT_LoadedExecutable wraps an xla::PjRtLoadedExecutable, whose Execute may be
// called concurrently from several threads (pjrt_client.h); it is immutable after loading.
unsafe impl Send for LoadedExecutable {}
// SAFETY: see `Send`.
unsafe impl Sync for LoadedExecutable {}

impl Drop for LoadedExecutable {
    fn drop(&mut self) {
        let mut a = ffi::PJRT_LoadedExecutable_Destroy_Args::new();
        a.executable = self.raw.as_ptr();
        // SAFETY: the executable is ours, alive until here and destroyed once; its client is
        // alive (`self.client`).
        let _ = unsafe { call!(self.client.plugin, PJRT_LoadedExecutable_Destroy, &mut a) };
    }
}

impl std::fmt::Debug for LoadedExecutable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LoadedExecutable(outputs: {})", self.num_outputs)
    }
}

/// The `PJRT_Executable` behind a loaded one, destroyed on drop.
struct Executable<'a> {
    client: &'a ClientInner,
    raw: NonNull<ffi::PJRT_Executable>,
}

impl Drop for Executable<'_> {
    fn drop(&mut self) {
        let mut a = ffi::PJRT_Executable_Destroy_Args::new();
        a.executable = self.raw.as_ptr();
        // SAFETY: GetExecutable handed us this handle to destroy; destroyed once, here.
        let _ = unsafe { call!(self.client.plugin, PJRT_Executable_Destroy, &mut a) };
    }
}

fn null_error(call: &'static str) -> Error {
    Error::Pjrt { call, code: ErrorCode::Internal, message: "returned a null handle".into() }
}

impl Client {
    /// Compiles a program for this client's devices.
    pub fn compile(&self, program: Program<'_>, options: &CompileOptions) -> Result<LoadedExecutable> {
        let (code, format) = program.parts();
        let mut p = ffi::PJRT_Program::new();
        // PJRT only reads `code` when compiling (the header marks it "in/out" because other
        // entry points write it).
        p.code = code.as_ptr() as *mut _;
        p.code_size = code.len();
        p.format = format.as_ptr().cast();
        p.format_size = format.len();
        let opts = options.to_proto_bytes();
        let mut a = ffi::PJRT_Client_Compile_Args::new();
        a.client = self.raw();
        a.program = &p;
        a.compile_options = opts.as_ptr().cast();
        a.compile_options_size = opts.len();
        // SAFETY: `p` (and the `code` and `format` bytes it points to) and `opts` outlive the
        // call; PJRT only reads them. The client is alive.
        unsafe { call!(self.inner.plugin, PJRT_Client_Compile, &mut a) }?;
        let raw = NonNull::new(a.executable).ok_or_else(|| null_error("PJRT_Client_Compile"))?;
        // SAFETY: a fresh executable of this client, owned by nobody else.
        unsafe { LoadedExecutable::new(&self.inner, raw) }
    }

    /// Loads an executable that [`LoadedExecutable::serialize`] wrote, on this client.
    ///
    /// The library's own callers are its compile cache (whose directory is trusted as the
    /// binary is: see [`crate::layer::cache`]) and its untrusted-compile worker (see
    /// [`crate::layer::isolate`]); both go through a crate-private path.
    ///
    /// # Safety
    ///
    /// A serialized executable is native code: the plugin maps and runs what `bytes` hold
    /// (XLA:CPU's carry the machine code LLVM compiled) without being able to check it. The
    /// caller must know that `bytes` are what `serialize` wrote, on a plugin of the same build,
    /// in a place only trusted code could write; bytes from a file or a peer that anyone else
    /// could have written run their author's code in this process.
    pub unsafe fn deserialize_executable(&self, bytes: &[u8]) -> Result<LoadedExecutable> {
        self.deserialize_trusted(bytes)
    }

    /// [`Client::deserialize_executable`] for the crate's compile cache and compile worker,
    /// whose bytes come from places trusted as the executable is (their modules document it).
    pub(crate) fn deserialize_trusted(&self, bytes: &[u8]) -> Result<LoadedExecutable> {
        let mut a = ffi::PJRT_Executable_DeserializeAndLoad_Args::new();
        a.client = self.raw();
        a.serialized_executable = bytes.as_ptr().cast();
        a.serialized_executable_size = bytes.len();
        // SAFETY: `bytes` outlives the call and is only read; the client is alive.
        unsafe { call!(self.inner.plugin, PJRT_Executable_DeserializeAndLoad, &mut a) }?;
        let raw = NonNull::new(a.loaded_executable)
            .ok_or_else(|| null_error("PJRT_Executable_DeserializeAndLoad"))?;
        // SAFETY: a fresh executable of this client, owned by nobody else.
        unsafe { LoadedExecutable::new(&self.inner, raw) }
    }
}

impl LoadedExecutable {
    /// Wraps a loaded executable the plugin returned and reads its number of outputs.
    ///
    /// # Safety
    /// `raw` is a live loaded executable of `client` that nothing else owns: the
    /// `LoadedExecutable` destroys it.
    unsafe fn new(client: &Arc<ClientInner>, raw: NonNull<ffi::PJRT_LoadedExecutable>) -> Result<Self> {
        let mut exe = LoadedExecutable { client: client.clone(), raw, num_outputs: 0, inputs: None, outputs: OnceLock::new() };
        exe.num_outputs = exe.with_executable(|executable| {
            let mut a = ffi::PJRT_Executable_NumOutputs_Args::new();
            a.executable = executable;
            // SAFETY: `with_executable` keeps `executable` alive until this closure returns.
            unsafe { call!(client.plugin, PJRT_Executable_NumOutputs, &mut a) }?;
            Ok(a.num_outputs)
        })?;
        Ok(exe)
    }

    /// Runs `f` on the `PJRT_Executable` behind this loaded executable. The handle is
    /// destroyed when `f` returns, so the raw pointer must not escape `f`. (A method that
    /// returned the owned handle invited `loaded.executable()?.raw()`, which destroys the
    /// handle at the end of the statement, before C reads it.)
    fn with_executable<R>(&self, f: impl FnOnce(*mut ffi::PJRT_Executable) -> Result<R>) -> Result<R> {
        let mut a = ffi::PJRT_LoadedExecutable_GetExecutable_Args::new();
        a.loaded_executable = self.raw.as_ptr();
        // SAFETY: the loaded executable is alive (`self` owns it).
        unsafe { call!(self.client.plugin, PJRT_LoadedExecutable_GetExecutable, &mut a) }?;
        let raw = NonNull::new(a.executable).ok_or_else(|| null_error("PJRT_LoadedExecutable_GetExecutable"))?;
        let executable = Executable { client: &self.client, raw };
        let result = f(executable.raw.as_ptr());
        drop(executable);
        result
    }

    /// Declares the arguments the program takes (for a `jax.export` module: its `in_avals`,
    /// as [`Exported::input_signature`](crate::bundle::Exported::input_signature) gives them),
    /// so that every execution checks each input's dtype and dimensions before running.
    /// Required: an executable without a signature refuses to run, because PJRT does not
    /// check arguments on every plugin (the CPU plugins reinterpret a buffer of the wrong type
    /// or size, which would read past it), and its C API cannot tell the parameters.
    pub fn with_input_signature(mut self, inputs: Vec<TensorSpec>) -> Self {
        self.inputs = Some(inputs);
        self
    }

    /// The declared arguments, if any.
    pub fn input_signature(&self) -> Option<&[TensorSpec]> {
        self.inputs.as_deref()
    }

    fn check_inputs(&self, inputs: &[&Buffer]) -> Result<()> {
        let Some(specs) = &self.inputs else {
            return Err(Error::invalid(
                "executable",
                "no input signature: declare the program's arguments with with_input_signature before running it",
            ));
        };
        if specs.len() != inputs.len() {
            return Err(Error::ArgumentCount { what: "executable".into(), expected: specs.len(), got: inputs.len() });
        }
        for (i, (spec, b)) in specs.iter().zip(inputs).enumerate() {
            let what = || if spec.name.is_empty() { format!("argument {i}") } else { format!("argument {i} {:?}", spec.name) };
            if spec.dtype != b.dtype() {
                return Err(Error::DTypeMismatch { what: what(), expected: spec.dtype, got: b.dtype() });
            }
            // PJRT's dimensions are i64; a negative one (which no buffer has) matches nothing.
            let same = spec.shape.len() == b.dims().len()
                && spec.shape.iter().zip(b.dims()).all(|(&want, &got)| usize::try_from(got).is_ok_and(|got| got == want));
            if !same {
                return Err(Error::ShapeMismatch {
                    what: what(),
                    expected: spec.shape.clone(),
                    got: b.dims().iter().map(|&d| usize::try_from(d).unwrap_or(usize::MAX)).collect(),
                });
            }
        }
        Ok(())
    }

    /// Refuses inputs or a device of another client: PJRT would read foreign handles.
    fn check_same_client(&self, inputs: &[&Buffer], device: Option<&Device>) -> Result<()> {
        if let Some(device) = device {
            device.check_client(&self.client, "execute_on")?;
        }
        match inputs.iter().position(|b| !b.is_of(&self.client)) {
            Some(i) => Err(Error::invalid(
                format!("argument {i}"),
                "the buffer belongs to another PJRT client than the executable; copy it to this client's device",
            )),
            None => Ok(()),
        }
    }

    /// The number of outputs of one execution.
    pub fn num_outputs(&self) -> usize {
        self.num_outputs
    }

    /// Serializes the compiled executable, for [`Client::deserialize_executable`].
    pub fn serialize(&self) -> Result<Vec<u8>> {
        // SAFETY: `with_executable` keeps the executable alive while the closure runs.
        self.with_executable(|executable| unsafe { self.serialize_executable(executable) })
    }

    /// # Safety
    /// `executable` is a live `PJRT_Executable` of this client's plugin.
    unsafe fn serialize_executable(&self, executable: *mut ffi::PJRT_Executable) -> Result<Vec<u8>> {
        let mut a = ffi::PJRT_Executable_Serialize_Args::new();
        a.executable = executable;
        // SAFETY: `executable` is alive (the caller's contract).
        unsafe { call!(self.client.plugin, PJRT_Executable_Serialize, &mut a) }?;
        let bytes = if a.serialized_bytes.is_null() {
            Vec::new()
        } else {
            // SAFETY: the plugin wrote `serialized_bytes_size` bytes, backed by
            // `serialized_executable` until its deleter runs below.
            unsafe { std::slice::from_raw_parts(a.serialized_bytes as *const u8, a.serialized_bytes_size) }.to_vec()
        };
        if let (Some(deleter), false) = (a.serialized_executable_deleter, a.serialized_executable.is_null()) {
            // SAFETY: releases the plugin's backing storage exactly once, after the copy.
            unsafe { deleter(a.serialized_executable) };
        }
        Ok(bytes)
    }

    /// Runs the program on one device with `inputs`, returning its outputs.
    ///
    /// Inputs are borrowed. An input whose `donate` flag is set may be donated to an output
    /// that aliases it (as `jax.jit(donate_argnums=...)` asks): after a successful call that
    /// buffer is deleted and the caller should drop it. Inputs not marked are never donated.
    pub fn execute(&self, inputs: &[&Buffer], donate: &[bool]) -> Result<Vec<Buffer>> {
        self.execute_on(inputs, donate, None)
    }

    /// [`LoadedExecutable::execute`] on `device`, for an executable compiled with
    /// [`CompileOptions::portable`]; `None` runs on the executable's own device.
    pub fn execute_on(&self, inputs: &[&Buffer], donate: &[bool], device: Option<&Device>) -> Result<Vec<Buffer>> {
        if donate.len() != inputs.len() {
            return Err(Error::ArgumentCount {
                what: "donation flags".into(),
                expected: inputs.len(),
                got: donate.len(),
            });
        }
        self.check_inputs(inputs)?;
        self.check_same_client(inputs, device)?;
        let raws: Vec<*mut ffi::PJRT_Buffer> = inputs.iter().map(|b| b.raw()).collect();
        let keep = non_donated(donate);
        let mut outs: Vec<*mut ffi::PJRT_Buffer> = vec![std::ptr::null_mut(); self.num_outputs];
        let mut done: *mut ffi::PJRT_Event = std::ptr::null_mut();

        let mut opts = ffi::PJRT_ExecuteOptions::new();
        opts.non_donatable_input_indices = keep.as_ptr();
        opts.num_non_donatable_input_indices = keep.len();
        let arg_lists: [*const *mut ffi::PJRT_Buffer; 1] = [raws.as_ptr()];
        let out_lists: [*mut *mut ffi::PJRT_Buffer; 1] = [outs.as_mut_ptr()];
        let mut a = ffi::PJRT_LoadedExecutable_Execute_Args::new();
        a.executable = self.raw.as_ptr();
        a.options = &mut opts;
        a.argument_lists = arg_lists.as_ptr();
        a.num_devices = 1;
        a.num_args = raws.len();
        a.output_lists = out_lists.as_ptr();
        a.device_complete_events = &mut done;
        a.execute_device = device.map_or(std::ptr::null_mut(), |d| d.raw.as_ptr());
        // SAFETY: every pointer in `a` outlives the call: `opts` and `keep`; one argument list
        // (`raws`: live input buffers borrowed for the call, of this client, checked above)
        // and one output list (`outs`, `num_outputs` writable slots); `done`, a writable
        // event slot; the device, if any, of this client (checked above).
        let result = unsafe { call!(self.client.plugin, PJRT_LoadedExecutable_Execute, &mut a) };
        let known = self.outputs.get().filter(|info| info.len() == self.num_outputs);
        // Own every output handle before anything can fail, so none leaks.
        let outputs = outs
            .into_iter()
            .filter_map(NonNull::new)
            .enumerate()
            .map(|(i, raw)| match known {
                // SAFETY: each output is a fresh buffer of this client, owned by nobody else,
                // and in the same position as the earlier output `known[i]` describes.
                Some(info) => Ok(unsafe { Buffer::from_known(&self.client, raw, &info[i]) }),
                // SAFETY: each output is a fresh buffer of this client, owned by nobody else.
                None => unsafe { Buffer::from_raw(&self.client, raw) },
            })
            .collect::<Vec<_>>();
        // SAFETY: `done` is null or a fresh event of this plugin, owned by us.
        let completion = unsafe { event::wait_raw(&self.client.plugin, done) };
        result?;
        completion?;
        let mut outputs = outputs.into_iter().collect::<Result<Vec<_>>>()?;
        if outputs.len() != self.num_outputs {
            return Err(Error::Pjrt {
                call: "PJRT_LoadedExecutable_Execute",
                code: ErrorCode::Internal,
                message: format!("expected {} outputs, got {}", self.num_outputs, outputs.len()),
            });
        }
        if known.is_none() {
            // The execution completed: its outputs are defined.
            let _ = self.outputs.set(outputs.iter_mut().map(Buffer::output_info).collect());
        }
        Ok(outputs)
    }

    /// Runs an SPMD program (compiled with [`CompileOptions::spmd`]) on its devices:
    /// `inputs[d]` are device `d`'s shards of the arguments, in partition order, and the
    /// result's `[d]` are device `d`'s shards of the outputs. Donation flags apply to every
    /// device alike.
    pub fn execute_sharded(&self, inputs: &[Vec<&Buffer>], donate: &[bool]) -> Result<Vec<Vec<Buffer>>> {
        let Some(first) = inputs.first() else {
            return Err(Error::ArgumentCount { what: "devices of an SPMD execution".into(), expected: 1, got: 0 });
        };
        if let Some(d) = inputs.iter().position(|args| args.len() != first.len()) {
            return Err(Error::ArgumentCount { what: format!("arguments on device {d}"), expected: first.len(), got: inputs[d].len() });
        }
        if donate.len() != first.len() {
            return Err(Error::ArgumentCount { what: "donation flags".into(), expected: first.len(), got: donate.len() });
        }
        for args in inputs {
            self.check_inputs(args)?;
            self.check_same_client(args, None)?;
        }
        let raws: Vec<Vec<*mut ffi::PJRT_Buffer>> = inputs.iter().map(|args| args.iter().map(|b| b.raw()).collect()).collect();
        let keep = non_donated(donate);
        let mut outs: Vec<Vec<*mut ffi::PJRT_Buffer>> = inputs.iter().map(|_| vec![std::ptr::null_mut(); self.num_outputs]).collect();
        let mut done: Vec<*mut ffi::PJRT_Event> = vec![std::ptr::null_mut(); inputs.len()];
        let mut opts = ffi::PJRT_ExecuteOptions::new();
        opts.non_donatable_input_indices = keep.as_ptr();
        opts.num_non_donatable_input_indices = keep.len();
        let arg_lists: Vec<*const *mut ffi::PJRT_Buffer> = raws.iter().map(|r| r.as_ptr()).collect();
        let out_lists: Vec<*mut *mut ffi::PJRT_Buffer> = outs.iter_mut().map(|o| o.as_mut_ptr()).collect();
        let mut a = ffi::PJRT_LoadedExecutable_Execute_Args::new();
        a.executable = self.raw.as_ptr();
        a.options = &mut opts;
        a.argument_lists = arg_lists.as_ptr();
        a.num_devices = inputs.len();
        a.num_args = first.len();
        a.output_lists = out_lists.as_ptr();
        a.device_complete_events = done.as_mut_ptr();
        // SAFETY: every pointer in `a` outlives the call: `opts` and `keep`; `num_devices`
        // argument lists of `num_args` live input buffers of this client (checked above),
        // borrowed for the call; as many output lists of `num_outputs` writable slots; one
        // writable event slot per device. The executable runs on its own devices.
        let result = unsafe { call!(self.client.plugin, PJRT_LoadedExecutable_Execute, &mut a) };
        // Own every output handle before anything can fail, so none leaks.
        let outputs: Vec<Vec<Result<Buffer>>> = outs
            .into_iter()
            .map(|list| {
                list.into_iter()
                    .filter_map(NonNull::new)
                    // SAFETY: each output is a fresh buffer of this client, owned by nobody else.
                    .map(|raw| unsafe { Buffer::from_raw(&self.client, raw) })
                    .collect()
            })
            .collect();
        let mut completion = Ok(());
        for event in done {
            // SAFETY: each slot is null or a fresh event of this plugin, owned by us.
            let waited = unsafe { event::wait_raw(&self.client.plugin, event) };
            completion = completion.and(waited);
        }
        result?;
        completion?;
        let outputs = outputs.into_iter().map(|list| list.into_iter().collect::<Result<Vec<_>>>()).collect::<Result<Vec<_>>>()?;
        if let Some(list) = outputs.iter().find(|l| l.len() != self.num_outputs) {
            return Err(Error::Pjrt {
                call: "PJRT_LoadedExecutable_Execute",
                code: ErrorCode::Internal,
                message: format!("expected {} outputs per device, got {}", self.num_outputs, list.len()),
            });
        }
        Ok(outputs)
    }
}

/// The indices of the arguments not donated, sized once (a `filter` collect would grow the
/// vector several times per call).
fn non_donated(donate: &[bool]) -> Vec<i64> {
    let mut keep = Vec::with_capacity(donate.len());
    keep.extend(donate.iter().enumerate().filter(|(_, &d)| !d).map(|(i, _)| i as i64));
    keep
}
