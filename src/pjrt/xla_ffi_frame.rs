//! The body of every XLA FFI handler: decodes the call frame XLA passes into the safe buffers
//! and attributes of [`super::xla_ffi_call`], runs a kernel on them, and answers XLA (the metadata
//! query, errors). Nothing unwinds into C: a panic becomes an `INTERNAL` error.
//!
//! What is checked before a kernel sees a byte: the frame's and each struct's `struct_size`,
//! the stage (execute only), that every argument and result is a buffer of a known element
//! type with non-negative dims whose byte size fits in memory and whose data pointer is not
//! null, that no two results overlap and that an operand overlaps a result only when it is
//! exactly that result's buffer (`output_operand_aliases`: the operand is then passed with
//! `data: None`), and that every attribute is a scalar of a known type or a UTF-8 string.
// Patterns match the C header's constants, which keep its names.
#![allow(non_upper_case_globals)]

use std::ffi::CString;
use std::os::raw::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::addr_of;

use super::xla_ffi_api::*;
use super::xla_ffi_call::{AttrValue, Attrs, HandlerError, Kernel, Operand, ResultBuf};
use crate::DType;

/// The XLA FFI handler of `target`: answers XLA's metadata query, or decodes the call and
/// runs `kernel`. Returns null on success, else an `XLA_FFI_Error` made by XLA's API.
///
/// # Safety
/// `call_frame` is null or an `XLA_FFI_CallFrame*` as XLA passes a typed handler
/// (`xla/ffi/api/c_api.h`): every pointer in it valid, its buffers and attributes alive and
/// not accessed by anything else during the call.
pub(crate) unsafe fn handle(target: &str, call_frame: *mut c_void, kernel: Kernel) -> *mut c_void {
    let frame = call_frame.cast::<XLA_FFI_CallFrame>();
    if frame.is_null() {
        return std::ptr::null_mut();
    }
    let api_end = std::mem::offset_of!(XLA_FFI_CallFrame, api) + std::mem::size_of::<*const XLA_FFI_Api>();
    // SAFETY: every call frame starts with `struct_size` (the caller's contract).
    let size = unsafe { addr_of!((*frame).struct_size).read() };
    if size < api_end {
        // Without the API there is no way to report an error; no XLA passes such a frame.
        return std::ptr::null_mut();
    }
    // SAFETY: the frame holds `api` (checked just above).
    let api = unsafe { addr_of!((*frame).api).read() };
    // SAFETY: the caller's contract, and `size` is the frame's size.
    let outcome = catch_unwind(AssertUnwindSafe(|| unsafe { run(target, frame, api, size, kernel) }));
    let error = match outcome {
        Ok(Ok(())) => return std::ptr::null_mut(),
        Ok(Err(e)) => e,
        Err(panic) => HandlerError::internal(format!("{target}: handler panicked: {}", panic_message(&*panic))),
    };
    // SAFETY: `api` is the frame's API table, valid during the call.
    unsafe { create_error(api, &error) }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// # Safety
/// As [`handle`]; `api` and `size` are the frame's `api` and `struct_size`.
unsafe fn run(
    target: &str,
    frame: *const XLA_FFI_CallFrame,
    api: *const XLA_FFI_Api,
    size: usize,
    kernel: Kernel,
) -> Result<(), HandlerError> {
    if size < CALL_FRAME_MIN_SIZE {
        return Err(HandlerError::invalid(format!(
            "{target}: XLA_FFI_CallFrame of {size} bytes, expected at least {CALL_FRAME_MIN_SIZE} (XLA FFI API {XLA_FFI_API_MAJOR}.{XLA_FFI_API_MINOR})"
        )));
    }
    // SAFETY: `api` is the frame's live API table, which starts with `struct_size`,
    // `extension_start` and `api_version` in every XLA FFI version.
    let major = unsafe { (!api.is_null()).then(|| addr_of!((*api).api_version.major_version).read()) };
    if major.is_some_and(|m| m != XLA_FFI_API_MAJOR) {
        return Err(HandlerError::invalid(format!(
            "{target}: XLA FFI API major version {}, but flaxlayer's handlers follow {XLA_FFI_API_MAJOR}.{XLA_FFI_API_MINOR}",
            major.unwrap_or_default()
        )));
    }
    // SAFETY: the frame holds every field up to `attrs` (checked above); each is read by
    // value through a raw pointer, with no reference to a struct that may be shorter.
    let (extension, stage, args, rets, attrs) = unsafe {
        (
            addr_of!((*frame).extension_start).read(),
            addr_of!((*frame).stage).read(),
            addr_of!((*frame).args).read(),
            addr_of!((*frame).rets).read(),
            addr_of!((*frame).attrs).read(),
        )
    };
    if !extension.is_null() {
        // SAFETY: a non-null `extension_start` heads a live extension (the caller's contract).
        let ty = unsafe { addr_of!((*extension).type_).read() };
        if ty == XLA_FFI_Extension_Metadata {
            // SAFETY: an extension of type Metadata is an `XLA_FFI_Metadata_Extension`.
            return unsafe { answer_metadata(target, extension) };
        }
    }
    if stage != XLA_FFI_ExecutionStage_EXECUTE {
        return Err(HandlerError::invalid(format!(
            "{target}: called at execution stage {stage}, but only the execute stage ({XLA_FFI_ExecutionStage_EXECUTE}) is handled"
        )));
    }
    // SAFETY: the frame's arguments, results and attributes are valid during the call.
    let operands = unsafe { buffers(target, "argument", args.size, args.types, args.args, XLA_FFI_ArgType_BUFFER) }?;
    // SAFETY: as above.
    let results = unsafe { buffers(target, "result", rets.size, rets.types, rets.rets, XLA_FFI_RetType_BUFFER) }?;
    // SAFETY: as above.
    let attrs = unsafe { attributes(target, &attrs) }?;
    // SAFETY: the buffers are XLA's, alive and ours alone during the call (the caller's
    // contract); `views` checks they do not overlap in a way that would alias a `&mut`.
    let (operands, mut results) = unsafe { views(target, &operands, &results) }?;
    kernel(target, &operands, &mut results, &attrs)
}

/// Reports the XLA FFI API version this handler follows and its traits (none), as XLA asks
/// when the handler is registered. A handler that does not answer is dropped by XLA.
///
/// # Safety
/// `extension` is a live `XLA_FFI_Metadata_Extension` whose `metadata` XLA lets us write.
unsafe fn answer_metadata(target: &str, extension: *mut XLA_FFI_Extension_Base) -> Result<(), HandlerError> {
    // SAFETY: every extension starts with its base (the caller's contract).
    let ext_size = unsafe { addr_of!((*extension).struct_size).read() };
    if ext_size < XLA_FFI_Metadata_Extension::STRUCT_SIZE {
        return Err(HandlerError::invalid(format!(
            "{target}: XLA_FFI_Metadata_Extension of {ext_size} bytes, expected at least {}",
            XLA_FFI_Metadata_Extension::STRUCT_SIZE
        )));
    }
    let ext = extension.cast::<XLA_FFI_Metadata_Extension>();
    // SAFETY: the extension holds `metadata` (its size checked above).
    let metadata = unsafe { addr_of!((*ext).metadata).read() };
    if metadata.is_null() {
        return Err(HandlerError::invalid(format!("{target}: the metadata extension has no XLA_FFI_Metadata")));
    }
    // SAFETY: `metadata` is XLA's live struct, which starts with `struct_size`.
    let size = unsafe { addr_of!((*metadata).struct_size).read() };
    if size < METADATA_MIN_SIZE {
        return Err(HandlerError::invalid(format!(
            "{target}: XLA_FFI_Metadata of {size} bytes, expected at least {METADATA_MIN_SIZE}"
        )));
    }
    let mut version = XLA_FFI_Api_Version::new();
    version.major_version = XLA_FFI_API_MAJOR;
    version.minor_version = XLA_FFI_API_MINOR;
    // SAFETY: the struct holds `api_version` and `traits` (size checked above), and XLA gave
    // it to us to fill in; written through raw pointers.
    unsafe {
        std::ptr::addr_of_mut!((*metadata).api_version).write(version);
        std::ptr::addr_of_mut!((*metadata).traits).write(0);
    }
    let state_end = std::mem::offset_of!(XLA_FFI_Metadata, state_type_id) + std::mem::size_of::<XLA_FFI_TypeId>();
    if size >= state_end {
        // SAFETY: XLA's struct has `state_type_id` (its size covers it): no state, as
        // `XLA_FFI_UNKNOWN_TYPE_ID`.
        unsafe { std::ptr::addr_of_mut!((*metadata).state_type_id).write(XLA_FFI_TypeId { type_id: 0 }) };
    }
    Ok(())
}

/// An `XLA_FFI_Error` with `error`'s code and message, made by XLA's API; null (success) if
/// the API cannot make one, which no XLA does.
///
/// # Safety
/// `api` is null or the live API table of the call frame.
unsafe fn create_error(api: *const XLA_FFI_Api, error: &HandlerError) -> *mut c_void {
    if api.is_null() {
        return std::ptr::null_mut();
    }
    // SAFETY: every API table starts with `struct_size`.
    let size = unsafe { addr_of!((*api).struct_size).read() };
    if size < API_ERROR_CREATE_END {
        return std::ptr::null_mut();
    }
    // SAFETY: the table holds `XLA_FFI_Error_Create` (checked above); read through a raw
    // pointer, no reference to a table that may be shorter than our mirror.
    let Some(create) = (unsafe { addr_of!((*api).XLA_FFI_Error_Create).read() }) else {
        return std::ptr::null_mut();
    };
    let message = CString::new(error.message.replace('\0', " ")).unwrap_or_default();
    let mut args = XLA_FFI_Error_Create_Args::new();
    args.message = message.as_ptr();
    args.errc = error.code;
    // SAFETY: `args` is built by `new()`; `message` is a NUL-terminated string alive during
    // the call (XLA copies it into the error it returns, whose ownership passes to XLA).
    unsafe { create(&mut args) }.cast()
}

/// One buffer of the frame, before views are made: where its bytes are and how many.
#[derive(Debug, Clone, Copy)]
struct RawBuffer<'f> {
    dtype: DType,
    dims: &'f [i64],
    data: *mut u8,
    len: usize,
}

impl RawBuffer<'_> {
    fn range(&self) -> std::ops::Range<usize> {
        let start = self.data as usize;
        start..start + self.len
    }

    fn overlaps(&self, other: &RawBuffer<'_>) -> bool {
        let (a, b) = (self.range(), other.range());
        !a.is_empty() && !b.is_empty() && a.start < b.end && b.start < a.end
    }

    fn same_bytes(&self, other: &RawBuffer<'_>) -> bool {
        self.data == other.data && self.len == other.len
    }
}

/// Reads `size` buffers (arguments or results) of the frame.
///
/// # Safety
/// `types` and `ptrs` are null or arrays of `size` entries; each entry of kind `BUFFER` points
/// to a live `XLA_FFI_Buffer` whose `dims` hold `rank` entries; all valid for `'f`.
unsafe fn buffers<'f>(
    target: &str,
    what: &str,
    size: i64,
    types: *const u32,
    ptrs: *const *mut c_void,
    buffer_kind: u32,
) -> Result<Vec<RawBuffer<'f>>, HandlerError> {
    let n = usize::try_from(size).map_err(|_| HandlerError::invalid(format!("{target}: {size} {what}s")))?;
    if n == 0 {
        return Ok(Vec::new());
    }
    if types.is_null() || ptrs.is_null() {
        return Err(HandlerError::invalid(format!("{target}: {n} {what}s but no {what} array")));
    }
    // SAFETY: both arrays hold `n` entries (the caller's contract).
    let (types, ptrs) = unsafe { (std::slice::from_raw_parts(types, n), std::slice::from_raw_parts(ptrs, n)) };
    let mut out = Vec::with_capacity(n);
    for (i, (&ty, &ptr)) in types.iter().zip(ptrs).enumerate() {
        if ty != buffer_kind {
            return Err(HandlerError::invalid(format!("{target}: {what} {i} is of kind {ty}, expected a buffer ({buffer_kind})")));
        }
        if ptr.is_null() {
            return Err(HandlerError::invalid(format!("{target}: {what} {i} is null")));
        }
        // SAFETY: a buffer entry points to a live `XLA_FFI_Buffer` (the caller's contract).
        out.push(unsafe { buffer(target, &format!("{what} {i}"), ptr.cast()) }?);
    }
    Ok(out)
}

/// # Safety
/// `b` points to a live `XLA_FFI_Buffer` whose `dims` hold `rank` entries, valid for `'f`.
unsafe fn buffer<'f>(target: &str, what: &str, b: *const XLA_FFI_Buffer) -> Result<RawBuffer<'f>, HandlerError> {
    // SAFETY: every buffer starts with `struct_size`.
    let size = unsafe { addr_of!((*b).struct_size).read() };
    if size < XLA_FFI_Buffer::STRUCT_SIZE {
        return Err(HandlerError::invalid(format!(
            "{target}: {what}: XLA_FFI_Buffer of {size} bytes, expected at least {}",
            XLA_FFI_Buffer::STRUCT_SIZE
        )));
    }
    // SAFETY: the buffer struct is whole (size checked above).
    let b = unsafe { b.read() };
    let dtype = dtype_of(b.dtype)
        .ok_or_else(|| HandlerError::invalid(format!("{target}: {what} has XLA element type {}, which flaxlayer does not handle", b.dtype)))?;
    let rank = usize::try_from(b.rank).map_err(|_| HandlerError::invalid(format!("{target}: {what} has rank {}", b.rank)))?;
    let dims: &'f [i64] = match rank {
        0 => &[],
        _ if b.dims.is_null() => return Err(HandlerError::invalid(format!("{target}: {what} has rank {rank} but no dims"))),
        // SAFETY: `dims` holds `rank` entries, valid for `'f` (the caller's contract).
        _ => unsafe { std::slice::from_raw_parts(b.dims, rank) },
    };
    let len = dims
        .iter()
        .try_fold(dtype.size_in_bytes(), |n, &d| n.checked_mul(usize::try_from(d).ok()?))
        .filter(|&n| n <= isize::MAX as usize)
        .ok_or_else(|| HandlerError::invalid(format!("{target}: {what} has dims {dims:?}, not a {dtype} array that fits in memory")))?;
    if len > 0 && b.data.is_null() {
        return Err(HandlerError::invalid(format!("{target}: {what} of {len} bytes has a null data pointer")));
    }
    if (b.data as usize).checked_add(len).is_none() {
        return Err(HandlerError::invalid(format!("{target}: {what}: {len} bytes at {:p} wrap the address space", b.data)));
    }
    Ok(RawBuffer { dtype, dims, data: b.data.cast(), len })
}

/// The crate's dtype of an XLA element type, if it has one.
pub(crate) fn dtype_of(ty: XLA_FFI_DataType) -> Option<DType> {
    Some(match ty {
        XLA_FFI_DataType_PRED => DType::Bool,
        XLA_FFI_DataType_S8 => DType::I8,
        XLA_FFI_DataType_S16 => DType::I16,
        XLA_FFI_DataType_S32 => DType::I32,
        XLA_FFI_DataType_S64 => DType::I64,
        XLA_FFI_DataType_U8 => DType::U8,
        XLA_FFI_DataType_U16 => DType::U16,
        XLA_FFI_DataType_U32 => DType::U32,
        XLA_FFI_DataType_U64 => DType::U64,
        XLA_FFI_DataType_F16 => DType::F16,
        XLA_FFI_DataType_BF16 => DType::BF16,
        XLA_FFI_DataType_F32 => DType::F32,
        XLA_FFI_DataType_F64 => DType::F64,
        _ => return None,
    })
}

/// The operand and result views: an operand that is exactly a result's buffer (aliased) gets
/// `data: None`; any other overlap between an operand and a result, or between two results,
/// is refused, so no `&[u8]` and `&mut [u8]` (or two `&mut`) cover the same byte.
///
/// # Safety
/// Every buffer's `data` points to `len` bytes that are valid, not otherwise accessed during
/// `'f`, and (for results) writable.
unsafe fn views<'f>(
    target: &str,
    operands: &[RawBuffer<'f>],
    results: &[RawBuffer<'f>],
) -> Result<(Vec<Operand<'f>>, Vec<ResultBuf<'f>>), HandlerError> {
    for (i, a) in results.iter().enumerate() {
        if let Some(j) = results[..i].iter().position(|b| a.overlaps(b)) {
            return Err(HandlerError::invalid(format!("{target}: results {j} and {i} share memory")));
        }
    }
    let mut ops = Vec::with_capacity(operands.len());
    for (i, o) in operands.iter().enumerate() {
        let aliased = results.iter().any(|r| r.len > 0 && o.same_bytes(r));
        if !aliased {
            if let Some(j) = results.iter().position(|r| o.overlaps(r)) {
                return Err(HandlerError::invalid(format!(
                    "{target}: argument {i} overlaps result {j} without being its buffer"
                )));
            }
        }
        // SAFETY: `o` is readable for `len` bytes during `'f` and no result view overlaps
        // it (an aliased operand gets no view); a zero-length view needs no memory.
        let data = (!aliased).then(|| unsafe { bytes(o.data, o.len) });
        ops.push(Operand { dtype: o.dtype, dims: o.dims, data });
    }
    let mut outs = Vec::with_capacity(results.len());
    for r in results {
        // SAFETY: `r` is writable for `len` bytes during `'f`, and no other view overlaps it
        // (checked above).
        let data = unsafe { bytes_mut(r.data, r.len) };
        outs.push(ResultBuf { dtype: r.dtype, dims: r.dims, data });
    }
    Ok((ops, outs))
}

/// # Safety
/// `len == 0`, or `data` points to `len` readable bytes valid for `'f`.
unsafe fn bytes<'f>(data: *const u8, len: usize) -> &'f [u8] {
    if len == 0 {
        return &[];
    }
    // SAFETY: the caller's contract.
    unsafe { std::slice::from_raw_parts(data, len) }
}

/// # Safety
/// `len == 0`, or `data` points to `len` writable bytes valid and unaliased for `'f`.
unsafe fn bytes_mut<'f>(data: *mut u8, len: usize) -> &'f mut [u8] {
    if len == 0 {
        return &mut [];
    }
    // SAFETY: the caller's contract.
    unsafe { std::slice::from_raw_parts_mut(data, len) }
}

/// Decodes the attributes: scalars of a known type and strings. Arrays, dictionaries and
/// scalars of other types are refused (no target here takes them).
///
/// # Safety
/// `attrs` describes `size` live attributes as `c_api.h` lays them out, valid for `'f`.
unsafe fn attributes<'f>(target: &str, attrs: &XLA_FFI_Attrs) -> Result<Attrs<'f>, HandlerError> {
    let n = usize::try_from(attrs.size).map_err(|_| HandlerError::invalid(format!("{target}: {} attributes", attrs.size)))?;
    let mut out = Attrs::new();
    if n == 0 {
        return Ok(out);
    }
    if attrs.types.is_null() || attrs.names.is_null() || attrs.attrs.is_null() {
        return Err(HandlerError::invalid(format!("{target}: {n} attributes but a null attribute array")));
    }
    // SAFETY: the three arrays hold `n` entries (the caller's contract).
    let (types, names, values) = unsafe {
        (
            std::slice::from_raw_parts(attrs.types, n),
            std::slice::from_raw_parts(attrs.names, n),
            std::slice::from_raw_parts(attrs.attrs, n),
        )
    };
    for i in 0..n {
        // SAFETY: each name is null or a live byte span (the caller's contract).
        let name = unsafe { span(names[i].cast_const()) }
            .ok_or_else(|| HandlerError::invalid(format!("{target}: attribute {i} has no UTF-8 name")))?;
        if values[i].is_null() {
            return Err(HandlerError::invalid(format!("{target}: attribute {name:?} is null")));
        }
        let value = match types[i] {
            // SAFETY: a scalar attribute points to a live `XLA_FFI_Scalar`.
            XLA_FFI_AttrType_SCALAR => unsafe { scalar(target, name, values[i].cast()) }?,
            // SAFETY: a string attribute points to a live byte span.
            XLA_FFI_AttrType_STRING => AttrValue::Str(
                unsafe { span(values[i].cast()) }
                    .ok_or_else(|| HandlerError::invalid(format!("{target}: attribute {name:?} is not a UTF-8 string")))?,
            ),
            other => {
                return Err(HandlerError::invalid(format!(
                    "{target}: attribute {name:?} is of kind {other} (an array or dictionary); only scalars and strings are handled"
                )))
            }
        };
        out.insert(name, value);
    }
    Ok(out)
}

/// # Safety
/// `s` is null or a live `XLA_FFI_ByteSpan` whose bytes are valid for `'f`.
unsafe fn span<'f>(s: *const XLA_FFI_ByteSpan) -> Option<&'f str> {
    if s.is_null() {
        return None;
    }
    // SAFETY: the caller's contract.
    let s = unsafe { s.read() };
    if s.len == 0 {
        return Some("");
    }
    if s.ptr.is_null() {
        return None;
    }
    // SAFETY: the span's `len` bytes at `ptr` are valid for `'f` (the caller's contract).
    std::str::from_utf8(unsafe { std::slice::from_raw_parts(s.ptr.cast::<u8>(), s.len) }).ok()
}

/// # Safety
/// `s` points to a live `XLA_FFI_Scalar` whose `value` points to a value of its type.
unsafe fn scalar<'f>(target: &str, name: &str, s: *const XLA_FFI_Scalar) -> Result<AttrValue<'f>, HandlerError> {
    // SAFETY: the caller's contract.
    let s = unsafe { s.read() };
    if s.value.is_null() {
        return Err(HandlerError::invalid(format!("{target}: attribute {name:?} has no value")));
    }
    let v = s.value.cast_const();
    // SAFETY: `value` points to a value of `dtype` (the caller's contract); read unaligned.
    let value = unsafe {
        match s.dtype {
            XLA_FFI_DataType_U8 => AttrValue::U8(v.cast::<u8>().read()),
            XLA_FFI_DataType_PRED => AttrValue::Bool(v.cast::<u8>().read() != 0),
            XLA_FFI_DataType_S32 => AttrValue::I32(v.cast::<i32>().read_unaligned()),
            XLA_FFI_DataType_S64 => AttrValue::I64(v.cast::<i64>().read_unaligned()),
            XLA_FFI_DataType_F32 => AttrValue::F32(v.cast::<f32>().read_unaligned()),
            XLA_FFI_DataType_F64 => AttrValue::F64(v.cast::<f64>().read_unaligned()),
            other => {
                return Err(HandlerError::invalid(format!(
                    "{target}: attribute {name:?} is a scalar of XLA element type {other}; handled are u8, pred, s32, s64, f32, f64"
                )))
            }
        }
    };
    Ok(value)
}

#[cfg(test)]
#[path = "xla_ffi_frame_tests.rs"]
pub(crate) mod tests;
