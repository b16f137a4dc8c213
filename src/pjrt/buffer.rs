//! `PJRT_Buffer`: an array on a device. Host to device from typed slices; device to host
//! into a slice the caller provides.

use std::ptr::NonNull;
use std::sync::{Arc, Mutex, OnceLock};

use smallvec::SmallVec;

use super::client::{Client, ClientInner, Device};
use super::{call, event, ffi};
use crate::{DType, Element, Error, Result};

/// An owned device buffer, destroyed on drop. It keeps its client alive.
pub struct Buffer {
    client: Arc<ClientInner>,
    raw: NonNull<ffi::PJRT_Buffer>,
    dtype: DType,
    /// Inline up to rank 4: an output wrapped on every call allocates nothing for its shape.
    dims: Dims,
    /// Whether the buffer's memory can be read directly (on the CPU, dense row-major); found
    /// on the first copy to host. Neither property changes during the buffer's life.
    host_readable: OnceLock<bool>,
    /// How many threads are reading the memory directly. The first takes a PJRT external
    /// reference and the last releases it, under this lock: the C API keeps a buffer's
    /// external references in an unsynchronised vector, so they must not be taken or
    /// released from two threads at once.
    direct_readers: Mutex<usize>,
    /// The buffer's data is known to be defined (an output of an execution that completed),
    /// so a copy need not ask for its ready event.
    known_ready: bool,
}

// SAFETY: a PJRT_Buffer wraps an xla::PjRtBuffer, which is thread-safe: reads, copies to
// host and use as an execution argument may happen from several threads (pjrt_client.h).
unsafe impl Send for Buffer {}
// SAFETY: see `Send`.
unsafe impl Sync for Buffer {}

impl Drop for Buffer {
    fn drop(&mut self) {
        let mut a = ffi::PJRT_Buffer_Destroy_Args::new();
        a.buffer = self.raw.as_ptr();
        // SAFETY: the buffer is ours, alive until here and destroyed once; its client is
        // alive (`self.client`).
        let _ = unsafe { call!(self.client.plugin, PJRT_Buffer_Destroy, &mut a) };
    }
}

impl std::fmt::Debug for Buffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Buffer({}{:?})", self.dtype, self.dims)
    }
}

/// A buffer's dimensions, inline up to rank 4.
pub(crate) type Dims = SmallVec<[i64; 4]>;

pub(crate) fn to_pjrt_type(d: DType) -> ffi::PJRT_Buffer_Type {
    match d {
        DType::Bool => ffi::PJRT_Buffer_Type_PRED,
        DType::I8 => ffi::PJRT_Buffer_Type_S8,
        DType::I16 => ffi::PJRT_Buffer_Type_S16,
        DType::I32 => ffi::PJRT_Buffer_Type_S32,
        DType::I64 => ffi::PJRT_Buffer_Type_S64,
        DType::U8 => ffi::PJRT_Buffer_Type_U8,
        DType::U16 => ffi::PJRT_Buffer_Type_U16,
        DType::U32 => ffi::PJRT_Buffer_Type_U32,
        DType::U64 => ffi::PJRT_Buffer_Type_U64,
        DType::F16 => ffi::PJRT_Buffer_Type_F16,
        DType::BF16 => ffi::PJRT_Buffer_Type_BF16,
        DType::F32 => ffi::PJRT_Buffer_Type_F32,
        DType::F64 => ffi::PJRT_Buffer_Type_F64,
    }
}

pub(crate) fn from_pjrt_type(t: ffi::PJRT_Buffer_Type) -> Result<DType> {
    DType::ALL
        .into_iter()
        .find(|&d| to_pjrt_type(d) == t)
        .ok_or_else(|| Error::UnsupportedDType(format!("PJRT buffer type {t}")))
}

impl Client {
    /// Copies `data` (little-endian, row-major) to a new buffer of `dtype` and `dims` on
    /// `device`, which must be a device of this client. The host memory is only read during
    /// the call.
    pub fn buffer_from_bytes(&self, dtype: DType, dims: &[i64], data: &[u8], device: &Device) -> Result<Buffer> {
        device.check_client(&self.inner, "buffer_from_bytes")?;
        let expected = dtype.array_bytes(&usize_dims(dims)?)?;
        if data.len() != expected {
            return Err(Error::SizeMismatch {
                what: format!("host buffer for {dtype}{dims:?}"),
                expected,
                got: data.len(),
                unit: "bytes",
            });
        }
        let mut a = ffi::PJRT_Client_BufferFromHostBuffer_Args::new();
        a.client = self.raw();
        a.data = data.as_ptr().cast();
        a.type_ = to_pjrt_type(dtype);
        a.dims = dims.as_ptr();
        a.num_dims = dims.len();
        a.host_buffer_semantics = ffi::PJRT_HostBufferSemantics_kImmutableOnlyDuringCall;
        a.device = device.raw.as_ptr();
        // SAFETY: `data` holds exactly the bytes of `dtype` x `dims` (checked above) and, with
        // `dims`, outlives the call; "immutable only during call" semantics let the plugin read
        // it only until it returns. The device belongs to this live client (checked above).
        unsafe { call!(self.inner.plugin, PJRT_Client_BufferFromHostBuffer, &mut a) }?;
        // The host data was copied during the call; the event only needs releasing.
        // SAFETY: the event, if any, is fresh from this plugin and owned by us.
        drop(unsafe { event::Event::from_raw(&self.inner.plugin, a.done_with_host_buffer) });
        let raw = NonNull::new(a.buffer).ok_or_else(|| Error::Pjrt {
            call: "PJRT_Client_BufferFromHostBuffer",
            code: crate::ErrorCode::Internal,
            message: "returned a null buffer".into(),
        })?;
        Ok(Buffer::new(self.inner.clone(), raw, dtype, Dims::from_slice(dims)))
    }

    /// Copies a typed slice to a new buffer on `device`.
    pub fn buffer_from_slice<T: Element>(&self, data: &[T], dims: &[i64], device: &Device) -> Result<Buffer> {
        self.buffer_from_bytes(T::DTYPE, dims, bytemuck::cast_slice(data), device)
    }
}

/// The dtype, dimensions and host readability of an executable's output, the same for every
/// execution.
#[derive(Debug, Clone)]
pub(crate) struct OutputInfo {
    dtype: DType,
    dims: Dims,
    host_readable: bool,
}

impl Buffer {
    fn new(client: Arc<ClientInner>, raw: NonNull<ffi::PJRT_Buffer>, dtype: DType, dims: Dims) -> Buffer {
        Buffer { client, raw, dtype, dims, host_readable: OnceLock::new(), direct_readers: Mutex::new(0), known_ready: false }
    }

    /// Wraps an output of a completed execution whose dtype, dimensions and host
    /// readability are known from an earlier output in the same position: no queries.
    ///
    /// # Safety
    /// As [`Buffer::from_raw`]; and `info` describes `raw` (same executable, same output).
    pub(crate) unsafe fn from_known(client: &Arc<ClientInner>, raw: NonNull<ffi::PJRT_Buffer>, info: &OutputInfo) -> Buffer {
        let mut b = Buffer::new(client.clone(), raw, info.dtype, info.dims.clone());
        let _ = b.host_readable.set(info.host_readable);
        b.known_ready = true;
        b
    }

    /// What [`Buffer::from_known`] needs to wrap later outputs in this one's position.
    pub(crate) fn output_info(&mut self) -> OutputInfo {
        self.known_ready = true;
        OutputInfo { dtype: self.dtype, dims: self.dims.clone(), host_readable: self.is_host_readable() }
    }

    /// Whether the memory can be read directly (found once per buffer).
    fn is_host_readable(&self) -> bool {
        *self.host_readable.get_or_init(|| self.is_on_cpu().unwrap_or(false) && self.is_dense_row_major().unwrap_or(false))
    }

    /// [`Buffer::copy_to_host_bytes`] for a caller that holds the buffer exclusively (`&mut`):
    /// no other thread can read, donate or free it meanwhile, so the direct copy of a CPU
    /// buffer needs no PJRT external reference, and an output of a completed execution no
    /// ready event.
    pub fn copy_to_host_exclusive(&mut self, dst: &mut [u8]) -> Result<()> {
        if !(self.known_ready && self.is_host_readable()) || dst.len() != self.host_size_in_bytes() {
            return self.copy_to_host_bytes(dst);
        }
        let mut p = ffi::PJRT_Buffer_UnsafePointer_Args::new();
        p.buffer = self.raw();
        // SAFETY: the buffer handle is alive (`self` owns it).
        unsafe { call!(self.client.plugin, PJRT_Buffer_UnsafePointer, &mut p) }?;
        if p.buffer_pointer == 0 {
            return self.copy_to_host_bytes(dst);
        }
        // SAFETY: the buffer is on the CPU, defined (its execution completed), dense and
        // row-major, so its memory holds exactly `dst.len()` bytes (checked above) at
        // `buffer_pointer`. `&mut self` means nobody else holds the buffer: nothing can donate,
        // delete or write it while we read.
        let src = unsafe { std::slice::from_raw_parts(p.buffer_pointer as *const u8, dst.len()) };
        dst.copy_from_slice(src);
        Ok(())
    }

    /// Wraps a buffer the plugin returned, reading its dtype and dimensions.
    ///
    /// # Safety
    /// `raw` is a live buffer of `client`'s plugin that nothing else owns: the `Buffer`
    /// destroys it.
    pub(crate) unsafe fn from_raw(client: &Arc<ClientInner>, raw: NonNull<ffi::PJRT_Buffer>) -> Result<Buffer> {
        let mut t = ffi::PJRT_Buffer_ElementType_Args::new();
        t.buffer = raw.as_ptr();
        let mut d = ffi::PJRT_Buffer_Dimensions_Args::new();
        d.buffer = raw.as_ptr();
        // Own the handle first so that it is destroyed even if a query fails.
        let mut buffer = Buffer::new(client.clone(), raw, DType::U8, Dims::new());
        // SAFETY: `raw` is a live buffer of this plugin (the caller's contract).
        unsafe { call!(client.plugin, PJRT_Buffer_ElementType, &mut t) }?;
        buffer.dtype = from_pjrt_type(t.type_)?;
        // SAFETY: as above.
        unsafe { call!(client.plugin, PJRT_Buffer_Dimensions, &mut d) }?;
        if !d.dims.is_null() {
            // SAFETY: the buffer owns `num_dims` dimensions at `dims` while it lives.
            buffer.dims = Dims::from_slice(unsafe { std::slice::from_raw_parts(d.dims, d.num_dims) });
        }
        Ok(buffer)
    }

    pub(crate) fn raw(&self) -> *mut ffi::PJRT_Buffer {
        self.raw.as_ptr()
    }

    /// Whether the buffer belongs to `client`.
    pub(crate) fn is_of(&self, client: &Arc<ClientInner>) -> bool {
        Arc::ptr_eq(&self.client, client)
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The dimensions.
    pub fn dims(&self) -> &[i64] {
        &self.dims
    }

    /// The size of the array's data on the host, in bytes.
    pub fn host_size_in_bytes(&self) -> usize {
        // Cannot overflow: the plugin allocated this many bytes.
        usize_dims(&self.dims).and_then(|d| self.dtype.array_bytes(&d)).unwrap_or(0)
    }

    /// Whether the buffer was deleted (for example donated to an execution).
    pub fn is_deleted(&self) -> Result<bool> {
        let mut a = ffi::PJRT_Buffer_IsDeleted_Args::new();
        a.buffer = self.raw();
        // SAFETY: the buffer handle is alive (`self` owns it).
        unsafe { call!(self.client.plugin, PJRT_Buffer_IsDeleted, &mut a) }?;
        Ok(a.is_deleted)
    }

    /// Copies the buffer into `dst`, which must hold exactly its bytes; waits until done.
    pub fn copy_to_host_bytes(&self, dst: &mut [u8]) -> Result<()> {
        let expected = self.host_size_in_bytes();
        if dst.len() != expected {
            return Err(Error::SizeMismatch {
                what: format!("host destination for {}{:?}", self.dtype, self.dims),
                expected,
                got: dst.len(),
                unit: "bytes",
            });
        }
        if self.copy_from_host_memory(dst)? {
            return Ok(());
        }
        let mut a = ffi::PJRT_Buffer_ToHostBuffer_Args::new();
        a.src = self.raw();
        a.dst = dst.as_mut_ptr().cast();
        a.dst_size = dst.len();
        // SAFETY: the buffer is alive; `dst` is writable for `dst_size` bytes, exactly the
        // buffer's (checked above), and stays borrowed until the copy's event fires below.
        unsafe { call!(self.client.plugin, PJRT_Buffer_ToHostBuffer, &mut a) }?;
        // `dst` is borrowed mutably until the copy is done: wait before returning.
        // SAFETY: the event, if any, is fresh from this plugin and owned by us.
        unsafe { event::wait_raw(&self.client.plugin, a.event) }
    }

    /// The fast path of a device-to-host copy for a buffer that lives in host memory (a CPU
    /// plugin's): once the buffer is ready, a `memcpy` from its memory on this thread, instead
    /// of `PJRT_Buffer_ToHostBuffer`, which hands the copy to a worker thread and wakes us when
    /// done. Returns `false` (nothing copied) when the buffer is not on the CPU, its layout is
    /// not dense row-major, or the plugin lacks an entry point.
    fn copy_from_host_memory(&self, dst: &mut [u8]) -> Result<bool> {
        if !self.is_host_readable() || !self.start_direct_read() {
            return Ok(false);
        }
        let ready = if self.known_ready { Ok(()) } else { self.wait_ready() };
        let copied = ready.and_then(|()| {
            let mut p = ffi::PJRT_Buffer_UnsafePointer_Args::new();
            p.buffer = self.raw();
            // SAFETY: the buffer handle is alive (`self` owns it).
            unsafe { call!(self.client.plugin, PJRT_Buffer_UnsafePointer, &mut p) }?;
            if p.buffer_pointer == 0 {
                return Ok(false);
            }
            // SAFETY: the buffer is on the CPU, ready (its definition event has fired), dense
            // and row-major, so its memory holds exactly `dst.len()` bytes (checked by the
            // caller against dtype and dims) at `buffer_pointer`. The external reference that
            // `start_direct_read` holds keeps PJRT from donating, deleting or reusing that
            // memory until `end_direct_read`; no execution writes to a ready buffer.
            let src = unsafe { std::slice::from_raw_parts(p.buffer_pointer as *const u8, dst.len()) };
            dst.copy_from_slice(src);
            Ok(true)
        });
        self.end_direct_read()?;
        copied
    }

    /// Registers a direct reader; the first one takes a PJRT external reference, which keeps
    /// PJRT from donating or freeing the memory while anyone reads it. `false` if the plugin
    /// refused the reference (then nothing is registered).
    fn start_direct_read(&self) -> bool {
        let mut readers = self.direct_readers.lock().unwrap_or_else(|e| e.into_inner());
        if *readers == 0 {
            let mut inc = ffi::PJRT_Buffer_IncreaseExternalReferenceCount_Args::new();
            inc.buffer = self.raw();
            // SAFETY: the buffer handle is alive; `direct_readers` is locked, so no other
            // thread touches the plugin's external-reference list of this buffer meanwhile.
            if unsafe { call!(self.client.plugin, PJRT_Buffer_IncreaseExternalReferenceCount, &mut inc) }.is_err() {
                return false;
            }
        }
        *readers += 1;
        true
    }

    /// Unregisters a direct reader; the last one releases the external reference.
    fn end_direct_read(&self) -> Result<()> {
        let mut readers = self.direct_readers.lock().unwrap_or_else(|e| e.into_inner());
        *readers -= 1;
        if *readers > 0 {
            return Ok(());
        }
        let mut dec = ffi::PJRT_Buffer_DecreaseExternalReferenceCount_Args::new();
        dec.buffer = self.raw();
        // SAFETY: as in `start_direct_read`: a live handle, and the lock serialises the
        // plugin's reference list.
        unsafe { call!(self.client.plugin, PJRT_Buffer_DecreaseExternalReferenceCount, &mut dec) }
    }

    fn is_on_cpu(&self) -> Result<bool> {
        let mut a = ffi::PJRT_Buffer_IsOnCpu_Args::new();
        a.buffer = self.raw();
        // SAFETY: the buffer handle is alive (`self` owns it).
        unsafe { call!(self.client.plugin, PJRT_Buffer_IsOnCpu, &mut a) }?;
        Ok(a.is_on_cpu)
    }

    /// Whether the buffer's memory layout is dense row-major (untiled, minor-to-major
    /// descending), i.e. the host layout.
    fn is_dense_row_major(&self) -> Result<bool> {
        let mut a = ffi::PJRT_Buffer_GetMemoryLayout_Args::new();
        a.buffer = self.raw();
        // SAFETY: the buffer handle is alive (`self` owns it).
        unsafe { call!(self.client.plugin, PJRT_Buffer_GetMemoryLayout, &mut a) }?;
        if a.layout.type_ != ffi::PJRT_Buffer_MemoryLayout_Type_Tiled {
            return Ok(false);
        }
        // SAFETY: `type_` says the union holds the tiled layout, whose arrays the buffer owns
        // for its lifetime.
        let tiled = unsafe { &a.layout.value.tiled };
        if tiled.num_tiles != 0 {
            return Ok(false);
        }
        let m2m = if tiled.minor_to_major.is_null() {
            &[][..]
        } else {
            // SAFETY: as above; `minor_to_major_size` entries at `minor_to_major`.
            unsafe { std::slice::from_raw_parts(tiled.minor_to_major, tiled.minor_to_major_size) }
        };
        let rank = self.dims.len() as i64;
        Ok(m2m.len() == self.dims.len() && m2m.iter().enumerate().all(|(i, &d)| d == rank - 1 - i as i64))
    }

    /// Blocks until the buffer's data is defined (returns at once when it is).
    fn wait_ready(&self) -> Result<()> {
        let mut a = ffi::PJRT_Buffer_ReadyEvent_Args::new();
        a.buffer = self.raw();
        // SAFETY: the buffer handle is alive (`self` owns it).
        unsafe { call!(self.client.plugin, PJRT_Buffer_ReadyEvent, &mut a) }?;
        // SAFETY: the event, if any, is fresh from this plugin and owned by us.
        let Some(event) = (unsafe { event::Event::from_raw(&self.client.plugin, a.event) }) else { return Ok(()) };
        if event.is_ready()? {
            return event.into_error();
        }
        event.wait()
    }

    /// Copies the buffer into a typed slice of exactly its length.
    pub fn copy_to_host<T: Element>(&self, dst: &mut [T]) -> Result<()> {
        if T::DTYPE != self.dtype {
            return Err(Error::DTypeMismatch {
                what: "host destination".into(),
                expected: self.dtype,
                got: T::DTYPE,
            });
        }
        self.copy_to_host_bytes(bytemuck::cast_slice_mut(dst))
    }

    /// Copies the buffer into a new `Vec`.
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>> {
        let n = self.host_size_in_bytes() / self.dtype.size_in_bytes();
        let mut v = vec![T::zeroed(); n];
        self.copy_to_host(&mut v)?;
        Ok(v)
    }

    /// The client that owns the buffer.
    pub fn client(&self) -> Client {
        Client { inner: self.client.clone() }
    }
}

/// PJRT's `int64` dimensions as the crate's `usize` ones; a negative one is an error.
pub(crate) fn usize_dims(dims: &[i64]) -> Result<Vec<usize>> {
    dims.iter()
        .map(|&d| usize::try_from(d).map_err(|_| Error::invalid(format!("dimensions {dims:?}"), format!("negative dimension {d}"))))
        .collect()
}
