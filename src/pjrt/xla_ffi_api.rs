//! Our `#[repr(C)]` mirror of the parts of XLA's `xla/ffi/api/c_api.h` that a typed XLA FFI
//! handler uses: the call frame XLA passes it (arguments, results, attributes), the metadata
//! extension through which XLA asks for its API version, and the one API function it calls
//! (`XLA_FFI_Error_Create`).
//!
//! **Version.** XLA FFI API **0.3** (`XLA_FFI_API_MAJOR 0`, `XLA_FFI_API_MINOR 3`): the header
//! jaxlib 0.10.2 ships (`jaxlib/include/xla/ffi/api/c_api.h`; no 0.4 header, such as jaxlib
//! 0.11's, was at hand to check against), and the version our handlers report. The CPU plugin we ship with (`lammps-jax-pjrt-cpu`
//! 0.11.2) implements API **0.4**, measured from its call frames: `api_version` 0.4, an
//! `XLA_FFI_Api` of 200 bytes (0.3's 192 plus one function appended), a call frame of 168
//! bytes (0.3's `XLA_FFI_CallFrame_STRUCT_SIZE`). XLA only appends fields and functions
//! within a major version and accepts handlers of older minor versions, which is what it does
//! with ours (it drops handlers it does not accept, and the tests compile calls to every
//! one). Every read is checked against the struct's `struct_size` first, and a frame of
//! another major version is refused.
//!
//! **Two sizes differ from the end of the last field.** The header defines
//! `XLA_FFI_CallFrame_STRUCT_SIZE` up to `attrs` (not `future`) and
//! `XLA_FFI_Metadata_STRUCT_SIZE` up to `traits` (not `state_type_id`); [`CALL_FRAME_MIN_SIZE`]
//! and [`METADATA_MIN_SIZE`] are those, what a handler may require of XLA.
//!
//! **How it is checked.** `tests/abi_check` compares every struct here with bindgen's layout of
//! the header (`XLA_FFI_C_API_HEADER`, else jaxlib's copy in `.venv`).
#![allow(non_camel_case_types, non_snake_case, non_upper_case_globals, dead_code)]

use std::marker::{PhantomData, PhantomPinned};
use std::os::raw::{c_char, c_uint, c_void};

use super::ffi::{mirror, Unused};

/// The XLA FFI API version of this mirror, which the handlers report to XLA.
pub const XLA_FFI_API_MAJOR: i32 = 0;
/// See [`XLA_FFI_API_MAJOR`].
pub const XLA_FFI_API_MINOR: i32 = 3;

/// Declares opaque C types (only ever behind pointers).
macro_rules! opaque {
    ($($name:ident),* $(,)?) => {$(
        #[repr(C)]
        pub struct $name {
            _data: [u8; 0],
            _marker: PhantomData<(*mut u8, PhantomPinned)>,
        }
    )*};
}

opaque!(XLA_FFI_Error, XLA_FFI_ExecutionContext, XLA_FFI_Future, XLA_FFI_InternalApi);

// Enums: C `enum`s are `unsigned int` here (no negative values), as bindgen maps them.
pub type XLA_FFI_Extension_Type = c_uint;
pub const XLA_FFI_Extension_Metadata: XLA_FFI_Extension_Type = 1;

pub type XLA_FFI_Error_Code = c_uint;
pub const XLA_FFI_Error_Code_INVALID_ARGUMENT: XLA_FFI_Error_Code = 3;
pub const XLA_FFI_Error_Code_INTERNAL: XLA_FFI_Error_Code = 13;

/// `xla::PrimitiveType` numbers; only those with a [`crate::DType`] are named.
pub type XLA_FFI_DataType = c_uint;
pub const XLA_FFI_DataType_PRED: XLA_FFI_DataType = 1;
pub const XLA_FFI_DataType_S8: XLA_FFI_DataType = 2;
pub const XLA_FFI_DataType_S16: XLA_FFI_DataType = 3;
pub const XLA_FFI_DataType_S32: XLA_FFI_DataType = 4;
pub const XLA_FFI_DataType_S64: XLA_FFI_DataType = 5;
pub const XLA_FFI_DataType_U8: XLA_FFI_DataType = 6;
pub const XLA_FFI_DataType_U16: XLA_FFI_DataType = 7;
pub const XLA_FFI_DataType_U32: XLA_FFI_DataType = 8;
pub const XLA_FFI_DataType_U64: XLA_FFI_DataType = 9;
pub const XLA_FFI_DataType_F16: XLA_FFI_DataType = 10;
pub const XLA_FFI_DataType_F32: XLA_FFI_DataType = 11;
pub const XLA_FFI_DataType_F64: XLA_FFI_DataType = 12;
pub const XLA_FFI_DataType_BF16: XLA_FFI_DataType = 16;

pub type XLA_FFI_ArgType = c_uint;
pub const XLA_FFI_ArgType_BUFFER: XLA_FFI_ArgType = 1;

pub type XLA_FFI_RetType = c_uint;
pub const XLA_FFI_RetType_BUFFER: XLA_FFI_RetType = 1;

pub type XLA_FFI_AttrType = c_uint;
pub const XLA_FFI_AttrType_ARRAY: XLA_FFI_AttrType = 1;
pub const XLA_FFI_AttrType_DICTIONARY: XLA_FFI_AttrType = 2;
pub const XLA_FFI_AttrType_SCALAR: XLA_FFI_AttrType = 3;
pub const XLA_FFI_AttrType_STRING: XLA_FFI_AttrType = 4;

pub type XLA_FFI_ExecutionStage = c_uint;
pub const XLA_FFI_ExecutionStage_EXECUTE: XLA_FFI_ExecutionStage = 3;

pub type XLA_FFI_Handler_Traits = u32;

/// `XLA_FFI_Error* XLA_FFI_Error_Create(XLA_FFI_Error_Create_Args*)`.
pub type XLA_FFI_Error_Create = Option<unsafe extern "C" fn(args: *mut XLA_FFI_Error_Create_Args) -> *mut XLA_FFI_Error>;

mirror! {
    layout_fn: xla_ffi_layouts;
    plain: {
        /// A string that need not end in NUL.
        XLA_FFI_ByteSpan {
            ptr: *const c_char,
            len: usize,
        }

        /// A scalar attribute: its type and a pointer to its value.
        XLA_FFI_Scalar {
            dtype: XLA_FFI_DataType,
            value: *mut c_void,
        }

        /// A dense array attribute.
        XLA_FFI_Array {
            dtype: XLA_FFI_DataType,
            size: usize,
            data: *mut c_void,
        }

        XLA_FFI_TypeId {
            type_id: i64,
        }

        /// An extension's metadata request: XLA's `XLA_FFI_Metadata` to fill in.
        XLA_FFI_Metadata_Extension {
            extension_base: XLA_FFI_Extension_Base,
            metadata: *mut XLA_FFI_Metadata,
        }
    }
    versioned: {
        /// The head of every extension in an `extension_start` chain.
        XLA_FFI_Extension_Base {
            struct_size: usize,
            type_: XLA_FFI_Extension_Type,
            next: *mut XLA_FFI_Extension_Base,
        }

        XLA_FFI_Api_Version {
            struct_size: usize,
            extension_start: *mut XLA_FFI_Extension_Base,
            major_version: i32,
            minor_version: i32,
        }

        XLA_FFI_Error_Create_Args {
            struct_size: usize,
            extension_start: *mut XLA_FFI_Extension_Base,
            message: *const c_char,
            errc: XLA_FFI_Error_Code,
        }

        /// A buffer argument or result: element type, data, and logical dims.
        XLA_FFI_Buffer {
            struct_size: usize,
            extension_start: *mut XLA_FFI_Extension_Base,
            dtype: XLA_FFI_DataType,
            data: *mut c_void,
            rank: i64,
            dims: *mut i64,
        }

        XLA_FFI_Args {
            struct_size: usize,
            extension_start: *mut XLA_FFI_Extension_Base,
            size: i64,
            types: *mut XLA_FFI_ArgType,
            args: *mut *mut c_void,
        }

        XLA_FFI_Rets {
            struct_size: usize,
            extension_start: *mut XLA_FFI_Extension_Base,
            size: i64,
            types: *mut XLA_FFI_RetType,
            rets: *mut *mut c_void,
        }

        /// Attributes, sorted by name: `attrs[i]` points to an `XLA_FFI_Scalar`,
        /// `XLA_FFI_ByteSpan` (string), `XLA_FFI_Array` or `XLA_FFI_Attrs` (dictionary)
        /// according to `types[i]`.
        XLA_FFI_Attrs {
            struct_size: usize,
            extension_start: *mut XLA_FFI_Extension_Base,
            size: i64,
            types: *mut XLA_FFI_AttrType,
            names: *mut *mut XLA_FFI_ByteSpan,
            attrs: *mut *mut c_void,
        }

        /// What XLA passes a handler: the API, the stage, arguments, results, attributes.
        XLA_FFI_CallFrame {
            struct_size: usize,
            extension_start: *mut XLA_FFI_Extension_Base,
            api: *const XLA_FFI_Api,
            ctx: *mut XLA_FFI_ExecutionContext,
            stage: XLA_FFI_ExecutionStage,
            args: XLA_FFI_Args,
            rets: XLA_FFI_Rets,
            attrs: XLA_FFI_Attrs,
            future: *mut XLA_FFI_Future,
        }

        /// What a handler reports when XLA asks (the metadata extension).
        XLA_FFI_Metadata {
            struct_size: usize,
            api_version: XLA_FFI_Api_Version,
            traits: XLA_FFI_Handler_Traits,
            state_type_id: XLA_FFI_TypeId,
        }

        /// The API table XLA hands every call frame; only `XLA_FFI_Error_Create` is called.
        XLA_FFI_Api {
            struct_size: usize,
            extension_start: *mut XLA_FFI_Extension_Base,
            api_version: XLA_FFI_Api_Version,
            internal_api: *const XLA_FFI_InternalApi,
            XLA_FFI_Error_Create: XLA_FFI_Error_Create,
            XLA_FFI_Error_GetMessage: Unused,
            XLA_FFI_Error_Destroy: Unused,
            XLA_FFI_Handler_Register: Unused,
            XLA_FFI_Stream_Get: Unused,
            XLA_FFI_Type_Register: Unused,
            XLA_FFI_ExecutionContext_Get: Unused,
            XLA_FFI_State_Set: Unused,
            XLA_FFI_State_Get: Unused,
            XLA_FFI_DeviceMemory_Allocate: Unused,
            XLA_FFI_DeviceMemory_Free: Unused,
            XLA_FFI_ThreadPool_Schedule: Unused,
            XLA_FFI_ThreadPool_NumThreads: Unused,
            XLA_FFI_Future_Create: Unused,
            XLA_FFI_Future_SetAvailable: Unused,
            XLA_FFI_Future_SetError: Unused,
            XLA_FFI_RunId_Get: Unused,
            XLA_FFI_DeviceOrdinal_Get: Unused,
        }
    }
}

/// The header's `XLA_FFI_CallFrame_STRUCT_SIZE` (up to `attrs`): the smallest call frame a
/// handler accepts.
pub const CALL_FRAME_MIN_SIZE: usize =
    std::mem::offset_of!(XLA_FFI_CallFrame, attrs) + std::mem::size_of::<XLA_FFI_Attrs>();

/// The header's `XLA_FFI_Metadata_STRUCT_SIZE` (up to `traits`).
pub const METADATA_MIN_SIZE: usize =
    std::mem::offset_of!(XLA_FFI_Metadata, traits) + std::mem::size_of::<XLA_FFI_Handler_Traits>();

/// The end of `XLA_FFI_Api.XLA_FFI_Error_Create`: an API table this short has it.
pub const API_ERROR_CREATE_END: usize =
    std::mem::offset_of!(XLA_FFI_Api, XLA_FFI_Error_Create) + std::mem::size_of::<XLA_FFI_Error_Create>();

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_the_0_3_header() {
        // Computed by hand from c_api.h on x86-64 / aarch64 (LP64).
        assert_eq!(XLA_FFI_Buffer::STRUCT_SIZE, 48);
        assert_eq!(XLA_FFI_Args::STRUCT_SIZE, 40);
        assert_eq!(XLA_FFI_Attrs::STRUCT_SIZE, 48);
        assert_eq!(CALL_FRAME_MIN_SIZE, 40 + 40 + 40 + 48);
        assert_eq!(std::mem::offset_of!(XLA_FFI_CallFrame, future), CALL_FRAME_MIN_SIZE);
        assert_eq!(METADATA_MIN_SIZE, 8 + 24 + 4);
        assert_eq!(XLA_FFI_Metadata::STRUCT_SIZE, 48);
        assert_eq!(XLA_FFI_Error_Create_Args::STRUCT_SIZE, 28);
        assert_eq!(API_ERROR_CREATE_END, 8 + 8 + 24 + 8 + 8);
        assert_eq!(std::mem::size_of::<XLA_FFI_Api>(), 48 + 18 * 8);
    }
}
