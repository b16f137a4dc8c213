//! The call-frame decoder on frames built here as XLA lays them out, with a stand-in API
//! whose `XLA_FFI_Error_Create` records the error: what a kernel sees, and every refusal.

use std::ffi::CStr;
use std::os::raw::c_void;

use super::*;
/// For the kernel tests above this module (`crate::custom_calls`).
pub(crate) use super::super::xla_ffi_api::{XLA_FFI_DataType_F64, XLA_FFI_Error_Code_INVALID_ARGUMENT};

/// The stand-in for XLA's `XLA_FFI_Error_Create`: the error is a boxed (code, message).
unsafe extern "C" fn record_error(args: *mut XLA_FFI_Error_Create_Args) -> *mut XLA_FFI_Error {
    // SAFETY: `create_error` passes valid args with a NUL-terminated message.
    let (code, message) = unsafe { ((*args).errc, CStr::from_ptr((*args).message).to_string_lossy().into_owned()) };
    Box::into_raw(Box::new((code, message))).cast()
}

pub(crate) fn api() -> XLA_FFI_Api {
    let mut api = <XLA_FFI_Api as super::super::ffi::Zero>::ZERO;
    api.struct_size = XLA_FFI_Api::STRUCT_SIZE;
    api.api_version = XLA_FFI_Api_Version::new();
    api.api_version.minor_version = 4;
    api.XLA_FFI_Error_Create = Some(record_error);
    api
}

/// What a handler returned: `None` for success, else the recorded (code, message).
pub(crate) fn outcome(ret: *mut c_void) -> Option<(u32, String)> {
    // SAFETY: a non-null return is a box made by `record_error`.
    (!ret.is_null()).then(|| *unsafe { Box::from_raw(ret.cast::<(u32, String)>()) })
}

/// One buffer: XLA element type, dims, and where its bytes are.
pub(crate) struct Buf {
    dtype: u32,
    dims: Vec<i64>,
    data: *mut u8,
}

impl Buf {
    pub(crate) fn of<T>(dtype: u32, dims: &[i64], data: &mut [T]) -> Buf {
        Buf { dtype, dims: dims.to_vec(), data: data.as_mut_ptr().cast() }
    }
}

pub(crate) enum Attr {
    U8(u8),
    Bool(u8),
    Str(&'static str),
    Array,
}

/// A call frame and everything it points to, kept alive together.
pub(crate) struct Frame {
    api: XLA_FFI_Api,
    pub(crate) ops: Vec<Buf>,
    rets: Vec<Buf>,
    attrs: Vec<(&'static str, Attr)>,
    stage: u32,
    size: usize,
}

impl Frame {
    pub(crate) fn new(ops: Vec<Buf>, rets: Vec<Buf>, attrs: Vec<(&'static str, Attr)>) -> Frame {
        Frame { api: api(), ops, rets, attrs, stage: XLA_FFI_ExecutionStage_EXECUTE, size: XLA_FFI_CallFrame::STRUCT_SIZE }
    }

    /// Lays the frame out and runs `handle(target, kernel)` on it.
    pub(crate) fn call(&mut self, target: &str, kernel: Kernel) -> Option<(u32, String)> {
        let ffi_bufs = |list: &mut Vec<Buf>| -> Vec<XLA_FFI_Buffer> {
            list.iter_mut()
                .map(|b| {
                    let mut x = XLA_FFI_Buffer::new();
                    x.dtype = b.dtype;
                    x.data = b.data.cast();
                    x.rank = b.dims.len() as i64;
                    x.dims = b.dims.as_mut_ptr();
                    x
                })
                .collect()
        };
        let (mut op_bufs, mut ret_bufs) = (ffi_bufs(&mut self.ops), ffi_bufs(&mut self.rets));
        let mut op_types = vec![XLA_FFI_ArgType_BUFFER; op_bufs.len()];
        let mut op_ptrs: Vec<*mut c_void> = op_bufs.iter_mut().map(|b| (b as *mut XLA_FFI_Buffer).cast()).collect();
        let mut ret_types = vec![XLA_FFI_RetType_BUFFER; ret_bufs.len()];
        let mut ret_ptrs: Vec<*mut c_void> = ret_bufs.iter_mut().map(|b| (b as *mut XLA_FFI_Buffer).cast()).collect();

        let mut names: Vec<XLA_FFI_ByteSpan> =
            self.attrs.iter().map(|(n, _)| XLA_FFI_ByteSpan { ptr: n.as_ptr().cast(), len: n.len() }).collect();
        let mut name_ptrs: Vec<*mut XLA_FFI_ByteSpan> = names.iter_mut().map(|n| n as *mut _).collect();
        let mut bytes: Vec<u8> = self.attrs.iter().map(|(_, a)| if let Attr::U8(v) | Attr::Bool(v) = a { *v } else { 0 }).collect();
        let mut scalars: Vec<XLA_FFI_Scalar> = Vec::new();
        let mut strings: Vec<XLA_FFI_ByteSpan> = Vec::new();
        let mut arrays: Vec<XLA_FFI_Array> = Vec::new();
        let mut attr_types = Vec::new();
        for (i, (_, a)) in self.attrs.iter().enumerate() {
            let value = (&mut bytes[i] as *mut u8).cast();
            match a {
                Attr::U8(_) => scalars.push(XLA_FFI_Scalar { dtype: XLA_FFI_DataType_U8, value }),
                Attr::Bool(_) => scalars.push(XLA_FFI_Scalar { dtype: XLA_FFI_DataType_PRED, value }),
                Attr::Str(s) => strings.push(XLA_FFI_ByteSpan { ptr: s.as_ptr().cast(), len: s.len() }),
                Attr::Array => arrays.push(XLA_FFI_Array { dtype: XLA_FFI_DataType_S64, size: 0, data: std::ptr::null_mut() }),
            }
        }
        let (mut si, mut ti, mut ai) = (0, 0, 0);
        let mut attr_ptrs: Vec<*mut c_void> = Vec::new();
        for (_, a) in &self.attrs {
            let (ty, ptr): (u32, *mut c_void) = match a {
                Attr::U8(_) | Attr::Bool(_) => {
                    si += 1;
                    (XLA_FFI_AttrType_SCALAR, (&mut scalars[si - 1] as *mut XLA_FFI_Scalar).cast())
                }
                Attr::Str(_) => {
                    ti += 1;
                    (XLA_FFI_AttrType_STRING, (&mut strings[ti - 1] as *mut XLA_FFI_ByteSpan).cast())
                }
                Attr::Array => {
                    ai += 1;
                    (XLA_FFI_AttrType_ARRAY, (&mut arrays[ai - 1] as *mut XLA_FFI_Array).cast())
                }
            };
            attr_types.push(ty);
            attr_ptrs.push(ptr);
        }

        let mut frame = XLA_FFI_CallFrame::new();
        frame.struct_size = self.size;
        frame.api = &self.api;
        frame.stage = self.stage;
        frame.args = XLA_FFI_Args::new();
        frame.args.size = op_ptrs.len() as i64;
        frame.args.types = op_types.as_mut_ptr();
        frame.args.args = op_ptrs.as_mut_ptr();
        frame.rets = XLA_FFI_Rets::new();
        frame.rets.size = ret_ptrs.len() as i64;
        frame.rets.types = ret_types.as_mut_ptr();
        frame.rets.rets = ret_ptrs.as_mut_ptr();
        frame.attrs = XLA_FFI_Attrs::new();
        frame.attrs.size = attr_ptrs.len() as i64;
        frame.attrs.types = attr_types.as_mut_ptr();
        frame.attrs.names = name_ptrs.as_mut_ptr();
        frame.attrs.attrs = attr_ptrs.as_mut_ptr();
        // SAFETY: the frame and everything it points to live until the end of this function;
        // each buffer's data is a live array of its dims and dtype, owned by the test.
        outcome(unsafe { handle(target, (&mut frame as *mut XLA_FFI_CallFrame).cast(), kernel) })
    }
}

/// The kernel of the tests whose frame is refused before any kernel runs (the LAPACK
/// kernels run on decoded frames in `crate::custom_calls`' tests).
fn unreached(target: &str, _: &[Operand<'_>], _: &mut [ResultBuf<'_>], _: &Attrs<'_>) -> Result<(), HandlerError> {
    Err(HandlerError::invalid(format!("{target}: the kernel ran")))
}

pub(crate) const F32: u32 = XLA_FFI_DataType_F32;
pub(crate) const S32: u32 = XLA_FFI_DataType_S32;

/// potrf's frame over a 2x2 column-major `a`, its result `l` (aliased when the same array)
/// and `info`.
pub(crate) fn potrf(a: *mut f32, l: *mut f32, info: &mut [i32; 1], attrs: Vec<(&'static str, Attr)>) -> Frame {
    Frame::new(
        vec![Buf { dtype: F32, dims: vec![2, 2], data: a.cast() }],
        vec![Buf { dtype: F32, dims: vec![2, 2], data: l.cast() }, Buf::of(S32, &[], info)],
        attrs,
    )
}

pub(crate) fn uplo() -> Vec<(&'static str, Attr)> {
    vec![("uplo", Attr::U8(b'L'))]
}

#[test]
fn the_metadata_query_gets_the_api_version_and_no_traits() {
    let mut metadata = <XLA_FFI_Metadata as super::super::ffi::Zero>::ZERO;
    metadata.struct_size = XLA_FFI_Metadata::STRUCT_SIZE;
    metadata.traits = 99;
    metadata.state_type_id = XLA_FFI_TypeId { type_id: 5 };
    let mut ext = XLA_FFI_Metadata_Extension {
        extension_base: XLA_FFI_Extension_Base::new(),
        metadata: &mut metadata,
    };
    ext.extension_base.struct_size = XLA_FFI_Metadata_Extension::STRUCT_SIZE;
    ext.extension_base.type_ = XLA_FFI_Extension_Metadata;
    let api = api();
    let mut frame = XLA_FFI_CallFrame::new();
    frame.api = &api;
    frame.extension_start = (&mut ext as *mut XLA_FFI_Metadata_Extension).cast();
    // SAFETY: a metadata query frame as XLA makes it, alive during the call.
    let ret = unsafe { handle("lapack_spotrf_ffi", (&mut frame as *mut XLA_FFI_CallFrame).cast(), unreached) };
    assert_eq!(outcome(ret), None);
    let v = metadata.api_version;
    assert_eq!((v.struct_size, v.major_version, v.minor_version), (XLA_FFI_Api_Version::STRUCT_SIZE, 0, 3));
    assert_eq!((metadata.traits, metadata.state_type_id.type_id), (0, 0));
}

#[test]
fn attributes_decode_by_kind() {
    fn show(_: &str, _: &[Operand<'_>], _: &mut [ResultBuf<'_>], attrs: &Attrs<'_>) -> Result<(), HandlerError> {
        let got: Vec<String> = attrs.iter().map(|(n, v)| format!("{n}={v}")).collect();
        Err(HandlerError::invalid(got.join(" ")))
    }
    let mut f = Frame::new(vec![], vec![], vec![("left", Attr::Bool(1)), ("mode", Attr::U8(b'V')), ("name", Attr::Str("x"))]);
    assert_eq!(f.call("t", show).unwrap().1, "left=bool true mode=u8 86 ('V') name=string \"x\"");
    let mut f = Frame::new(vec![], vec![], vec![("dims", Attr::Array)]);
    let err = f.call("t", show).unwrap();
    assert!(err.1.contains("attribute \"dims\" is of kind 1"), "{}", err.1);
}

#[test]
fn unknown_element_types_and_bad_buffers_are_refused() {
    let (mut a, mut l, mut info) = ([4f32, 2., 2., 5.], [0f32; 4], [0i32]);
    let mut f = potrf(a.as_mut_ptr(), l.as_mut_ptr(), &mut info, uplo());
    f.ops[0].dtype = 15; // C64
    assert!(f.call("lapack_spotrf_ffi", unreached).unwrap().1.contains("argument 0 has XLA element type 15"));
    let mut f = potrf(a.as_mut_ptr(), l.as_mut_ptr(), &mut info, uplo());
    f.ops[0].dims = vec![2, -2];
    assert!(f.call("lapack_spotrf_ffi", unreached).unwrap().1.contains("argument 0 has dims [2, -2]"));
    let mut f = potrf(std::ptr::null_mut(), l.as_mut_ptr(), &mut info, uplo());
    assert!(f.call("lapack_spotrf_ffi", unreached).unwrap().1.contains("null data pointer"));
}

#[test]
fn overlapping_buffers_are_refused() {
    let mut mem = [0f32; 6];
    let mut info = [0i32];
    let p = mem.as_mut_ptr();
    // The operand starts one element into the result: neither aliased nor disjoint.
    // SAFETY: `p + 1` stays inside `mem`, which has room for 4 elements from there.
    let mut f = potrf(unsafe { p.add(1) }, p, &mut info, uplo());
    assert!(f.call("lapack_spotrf_ffi", unreached).unwrap().1.contains("argument 0 overlaps result 0"));
    // Two results over the same bytes.
    let mut f = potrf(p, p, &mut info, uplo());
    f.rets[1] = Buf { dtype: S32, dims: vec![], data: p.cast() };
    assert!(f.call("lapack_spotrf_ffi", unreached).unwrap().1.contains("results 0 and 1 share memory"));
}

#[test]
fn another_stage_api_major_or_a_short_frame_is_refused() {
    let (mut a, mut info) = ([4f32, 2., 2., 5.], [0i32]);
    let p = a.as_mut_ptr();
    let mut f = potrf(p, p, &mut info, uplo());
    f.stage = 0;
    assert!(f.call("lapack_spotrf_ffi", unreached).unwrap().1.contains("execution stage 0"));
    let mut f = potrf(p, p, &mut info, uplo());
    f.api.api_version.major_version = 1;
    assert!(f.call("lapack_spotrf_ffi", unreached).unwrap().1.contains("XLA FFI API major version 1"));
    let mut f = potrf(p, p, &mut info, uplo());
    f.size = CALL_FRAME_MIN_SIZE - 8;
    assert!(f.call("lapack_spotrf_ffi", unreached).unwrap().1.contains("XLA_FFI_CallFrame of"));
    assert_eq!(a, [4., 2., 2., 5.]);
}

#[test]
fn a_panic_is_an_internal_error_not_an_unwind_into_c() {
    fn boom(_: &str, _: &[Operand<'_>], _: &mut [ResultBuf<'_>], _: &Attrs<'_>) -> Result<(), HandlerError> {
        panic!("kaboom")
    }
    let err = Frame::new(vec![], vec![], vec![]).call("t", boom).unwrap();
    assert_eq!(err, (XLA_FFI_Error_Code_INTERNAL, "t: handler panicked: kaboom".into()));
}
