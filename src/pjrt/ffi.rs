//! Our `#[repr(C)]` mirror of the parts of XLA's `pjrt_c_api.h` this crate uses.
//!
//! **Version.** It follows `pjrt_c_api.h` at PJRT C API **0.81** (`PJRT_API_MAJOR 0`,
//! `PJRT_API_MINOR 81`), the header that the `xla-cpu-pjrt` wheel ships. Newer plugins accept
//! these layouts: PJRT only appends fields to a struct, and every struct carries its
//! `struct_size`, from which a plugin tells which fields the caller knows. A plugin of another
//! *major* version is refused at load (`Error::PluginVersion`), and a `PJRT_Api` entry that
//! lies past the plugin's `struct_size` is never read (`Error::Unsupported`).
//!
//! **What is mirrored.** The whole `PJRT_Api` table (every slot up to
//! `PJRT_LoadedExecutable_GetDeviceAssignment`, the last of 0.81; entries this crate does not
//! call are typed [`Unused`]), the handle types as opaque structs, and every `*_Args` struct
//! and enum that the calls we make take, field for field in the header's order, with the
//! header's names (`type` is spelled `type_`, anonymous unions get a name).
//!
//! **How it is checked.** `tests/abi_check` (a separate crate, run by `scripts/test.sh` when
//! libclang and the header are present) generates bindgen's layout of the header and compares
//! every struct size and every field offset and size of [`layout`] with it.
//!
//! **How to extend it.**
//! - To call another API function: give its `PJRT_Api` slot its real type
//!   (`ApiFn<PJRT_Foo_Args>`) and mirror `PJRT_Foo_Args` below with the `versioned!` macro,
//!   every field in the header's order, then run `tests/abi_check`.
//! - To use a field that a newer header appended to a struct: append it at the end of the
//!   struct (never in the middle), bump [`PJRT_API_MINOR`] to that header's minor version and
//!   update the version named above. `struct_size` then grows by itself (it is computed from
//!   the last field, as the header's `PJRT_STRUCT_SIZE` is), so older plugins that check
//!   `struct_size` still see which fields we know. Code that reads such a field must check
//!   that the plugin's `pjrt_api_version` has it.
//! - A new major version needs a new mirror: the layouts may have changed anywhere.
#![allow(non_camel_case_types, non_snake_case, non_upper_case_globals, dead_code)]

use std::marker::{PhantomData, PhantomPinned};
use std::os::raw::{c_char, c_int, c_uint, c_void};

/// The major version of the C API this mirror follows.
pub const PJRT_API_MAJOR: i32 = 0;
/// The minor version of the C API this mirror follows.
pub const PJRT_API_MINOR: i32 = 81;

/// Types whose all-zero value is their "unset" value: null pointers, `None` function
/// pointers, zero numbers, `false`. Every mirrored struct starts from it, as C callers start
/// from `{0}`.
pub trait Zero {
    const ZERO: Self;
}

macro_rules! zero_is {
    ($($t:ty => $v:expr),* $(,)?) => {$(impl Zero for $t { const ZERO: Self = $v; })*};
}
zero_is!(usize => 0, i32 => 0, u32 => 0, i64 => 0, u64 => 0, f32 => 0.0, bool => false);

impl<T> Zero for *mut T {
    const ZERO: Self = std::ptr::null_mut();
}
impl<T> Zero for *const T {
    const ZERO: Self = std::ptr::null();
}
impl<T> Zero for Option<T> {
    const ZERO: Self = None;
}

/// One field of a mirrored struct as Rust lays it out: what `tests/abi_check` compares with
/// the header. A row with an empty `field` gives the struct's own size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldLayout {
    pub strukt: &'static str,
    pub field: &'static str,
    pub offset: usize,
    pub size: usize,
}

/// Defines `#[repr(C)]` structs with a [`Zero`] value, a `STRUCT_SIZE` (the header's
/// `PJRT_STRUCT_SIZE`: the end of the last field, without trailing padding) and a `layout`
/// listing. `versioned` structs (first field `struct_size`) also get `new()`, which sets it.
macro_rules! mirror {
    (@one $(#[doc = $doc:literal])* $name:ident { $($field:ident : $ty:ty),* $(,)? }) => {
        $(#[doc = $doc])*
        #[repr(C)]
        #[derive(Clone, Copy)]
        pub struct $name {
            $(pub $field: $ty,)*
        }

        impl $crate::pjrt::ffi::Zero for $name {
            const ZERO: Self = $name { $($field: <$ty as $crate::pjrt::ffi::Zero>::ZERO,)* };
        }

        impl $name {
            /// The end of the last field: the header's `PJRT_STRUCT_SIZE` for this struct.
            pub const STRUCT_SIZE: usize = {
                let mut end = 0;
                $(
                    let e = ::std::mem::offset_of!($name, $field) + ::std::mem::size_of::<$ty>();
                    if e > end {
                        end = e;
                    }
                )*
                end
            };

            pub fn layout(out: &mut Vec<$crate::pjrt::ffi::FieldLayout>) {
                out.push($crate::pjrt::ffi::FieldLayout {
                    strukt: stringify!($name),
                    field: "",
                    offset: 0,
                    size: ::std::mem::size_of::<$name>(),
                });
                $(out.push($crate::pjrt::ffi::FieldLayout {
                    strukt: stringify!($name),
                    field: stringify!($field),
                    offset: ::std::mem::offset_of!($name, $field),
                    size: ::std::mem::size_of::<$ty>(),
                });)*
            }
        }
    };
    // Structs, then (after `versioned:`) structs whose first field is `struct_size`.
    (
        layout_fn: $layout_fn:ident;
        plain: { $($(#[doc = $pdoc:literal])* $pname:ident { $($pbody:tt)* })* }
        versioned: { $($(#[doc = $vdoc:literal])* $vname:ident { $($vbody:tt)* })* }
    ) => {
        $(mirror!(@one $(#[doc = $pdoc])* $pname { $($pbody)* });)*
        $(
            mirror!(@one $(#[doc = $vdoc])* $vname { $($vbody)* });
            impl $vname {
                /// All fields unset, `struct_size` set: the one way args are made.
                pub const fn new() -> Self {
                    let mut s = <Self as $crate::pjrt::ffi::Zero>::ZERO;
                    s.struct_size = Self::STRUCT_SIZE;
                    s
                }
            }
        )*

        /// Every mirrored struct of this file, for `tests/abi_check`.
        pub fn $layout_fn(out: &mut Vec<$crate::pjrt::ffi::FieldLayout>) {
            $($pname::layout(out);)*
            $($vname::layout(out);)*
        }
    };
}
pub(crate) use mirror;

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

opaque!(
    PJRT_Error,
    PJRT_Client,
    PJRT_Device,
    PJRT_DeviceDescription,
    PJRT_Memory,
    PJRT_Executable,
    PJRT_LoadedExecutable,
    PJRT_Buffer,
    PJRT_Event,
    PJRT_SerializedExecutable,
    PJRT_ExecuteContext,
    PJRT_SendCallbackInfo,
    PJRT_RecvCallbackInfo,
);

/// The type of almost every API function: `PJRT_Error* f(Args* args)`; a null error is success.
pub type ApiFn<A> = Option<unsafe extern "C" fn(args: *mut A) -> *mut PJRT_Error>;
/// The type of the two API functions that cannot fail: `void f(Args* args)`.
pub type VoidFn<A> = Option<unsafe extern "C" fn(args: *mut A)>;
/// A function pointer this crate never sets or calls; only its slot matters.
pub type Unused = Option<unsafe extern "C" fn()>;

// Enums: C `enum`s are `unsigned int` here (no negative values), as bindgen maps them.
pub type PJRT_Extension_Type = c_uint;
pub const PJRT_Extension_Type_Gpu_Custom_Call: PJRT_Extension_Type = 0;
pub const PJRT_Extension_Type_Profiler: PJRT_Extension_Type = 1;
pub const PJRT_Extension_Type_Custom_Partitioner: PJRT_Extension_Type = 2;
pub const PJRT_Extension_Type_Stream: PJRT_Extension_Type = 3;
pub const PJRT_Extension_Type_Layouts: PJRT_Extension_Type = 4;
pub const PJRT_Extension_Type_FFI: PJRT_Extension_Type = 5;
pub const PJRT_Extension_Type_MemoryDescriptions: PJRT_Extension_Type = 6;
pub const PJRT_Extension_Type_Triton: PJRT_Extension_Type = 7;
pub const PJRT_Extension_Type_RawBuffer: PJRT_Extension_Type = 8;
pub const PJRT_Extension_Type_PhaseCompile: PJRT_Extension_Type = 9;
pub const PJRT_Extension_Type_Example: PJRT_Extension_Type = 10;
pub const PJRT_Extension_Type_Unknown: PJRT_Extension_Type = 11;
pub const PJRT_Extension_Type_CrossHostTransfers: PJRT_Extension_Type = 12;
pub const PJRT_Extension_Type_ExecutableMetadata: PJRT_Extension_Type = 13;
pub const PJRT_Extension_Type_Callback: PJRT_Extension_Type = 14;
pub const PJRT_Extension_Type_HostAllocator: PJRT_Extension_Type = 15;

pub type PJRT_Error_Code = c_uint;

pub type PJRT_NamedValue_Type = c_uint;
pub const PJRT_NamedValue_kString: PJRT_NamedValue_Type = 0;
pub const PJRT_NamedValue_kInt64: PJRT_NamedValue_Type = 1;
pub const PJRT_NamedValue_kInt64List: PJRT_NamedValue_Type = 2;
pub const PJRT_NamedValue_kFloat: PJRT_NamedValue_Type = 3;
pub const PJRT_NamedValue_kBool: PJRT_NamedValue_Type = 4;

pub type PJRT_Buffer_Type = c_uint;
pub const PJRT_Buffer_Type_INVALID: PJRT_Buffer_Type = 0;
pub const PJRT_Buffer_Type_PRED: PJRT_Buffer_Type = 1;
pub const PJRT_Buffer_Type_S8: PJRT_Buffer_Type = 2;
pub const PJRT_Buffer_Type_S16: PJRT_Buffer_Type = 3;
pub const PJRT_Buffer_Type_S32: PJRT_Buffer_Type = 4;
pub const PJRT_Buffer_Type_S64: PJRT_Buffer_Type = 5;
pub const PJRT_Buffer_Type_U8: PJRT_Buffer_Type = 6;
pub const PJRT_Buffer_Type_U16: PJRT_Buffer_Type = 7;
pub const PJRT_Buffer_Type_U32: PJRT_Buffer_Type = 8;
pub const PJRT_Buffer_Type_U64: PJRT_Buffer_Type = 9;
pub const PJRT_Buffer_Type_F16: PJRT_Buffer_Type = 10;
pub const PJRT_Buffer_Type_F32: PJRT_Buffer_Type = 11;
pub const PJRT_Buffer_Type_F64: PJRT_Buffer_Type = 12;
pub const PJRT_Buffer_Type_BF16: PJRT_Buffer_Type = 13;

pub type PJRT_HostBufferSemantics = c_uint;
pub const PJRT_HostBufferSemantics_kImmutableOnlyDuringCall: PJRT_HostBufferSemantics = 0;
pub const PJRT_HostBufferSemantics_kImmutableUntilTransferCompletes: PJRT_HostBufferSemantics = 1;
pub const PJRT_HostBufferSemantics_kImmutableZeroCopy: PJRT_HostBufferSemantics = 2;

pub type PJRT_Buffer_MemoryLayout_Type = c_uint;
pub const PJRT_Buffer_MemoryLayout_Type_Tiled: PJRT_Buffer_MemoryLayout_Type = 0;
pub const PJRT_Buffer_MemoryLayout_Type_Strides: PJRT_Buffer_MemoryLayout_Type = 1;

/// The value of a `PJRT_NamedValue` (an anonymous union in the header).
#[repr(C)]
#[derive(Clone, Copy)]
pub union PJRT_NamedValue_Value {
    pub string_value: *const c_char,
    pub int64_value: i64,
    pub int64_array_value: *const i64,
    pub float_value: f32,
    pub bool_value: bool,
}

impl Zero for PJRT_NamedValue_Value {
    // The widest member, so that every byte is zero.
    const ZERO: Self = PJRT_NamedValue_Value { int64_value: 0 };
}

/// The layout of a `PJRT_Buffer_MemoryLayout` (an anonymous union in the header).
#[repr(C)]
#[derive(Clone, Copy)]
pub union PJRT_Buffer_MemoryLayout_Value {
    pub tiled: PJRT_Buffer_MemoryLayout_Tiled,
    pub strides: PJRT_Buffer_MemoryLayout_Strides,
}

impl Zero for PJRT_Buffer_MemoryLayout_Value {
    // The widest member, so that every byte is zero.
    const ZERO: Self = PJRT_Buffer_MemoryLayout_Value { tiled: PJRT_Buffer_MemoryLayout_Tiled::ZERO };
}

fn union_layouts(out: &mut Vec<FieldLayout>) {
    macro_rules! union_layout {
        ($name:ident { $($field:ident : $ty:ty),* }) => {
            out.push(FieldLayout { strukt: stringify!($name), field: "", offset: 0, size: std::mem::size_of::<$name>() });
            $(out.push(FieldLayout {
                strukt: stringify!($name),
                field: stringify!($field),
                offset: std::mem::offset_of!($name, $field),
                size: std::mem::size_of::<$ty>(),
            });)*
        };
    }
    union_layout!(PJRT_NamedValue_Value {
        string_value: *const c_char,
        int64_value: i64,
        int64_array_value: *const i64,
        float_value: f32,
        bool_value: bool
    });
    union_layout!(PJRT_Buffer_MemoryLayout_Value {
        tiled: PJRT_Buffer_MemoryLayout_Tiled,
        strides: PJRT_Buffer_MemoryLayout_Strides
    });
}

mirror! {
    layout_fn: core_layouts;
    plain: {
        /// The plugin's function table, as `GetPjrtApi` returns it. Never referenced as a
        /// whole: a plugin's table may be shorter than this struct (see `Plugin`).
        PJRT_Api {
            struct_size: usize,
            extension_start: *mut PJRT_Extension_Base,
            pjrt_api_version: PJRT_Api_Version,
            PJRT_Error_Destroy: VoidFn<PJRT_Error_Destroy_Args>,
            PJRT_Error_Message: VoidFn<PJRT_Error_Message_Args>,
            PJRT_Error_GetCode: ApiFn<PJRT_Error_GetCode_Args>,
            PJRT_Plugin_Initialize: ApiFn<PJRT_Plugin_Initialize_Args>,
            PJRT_Plugin_Attributes: Unused,
            PJRT_Event_Destroy: ApiFn<PJRT_Event_Destroy_Args>,
            PJRT_Event_IsReady: ApiFn<PJRT_Event_IsReady_Args>,
            PJRT_Event_Error: ApiFn<PJRT_Event_Error_Args>,
            PJRT_Event_Await: ApiFn<PJRT_Event_Await_Args>,
            PJRT_Event_OnReady: Unused,
            PJRT_Client_Create: ApiFn<PJRT_Client_Create_Args>,
            PJRT_Client_Destroy: ApiFn<PJRT_Client_Destroy_Args>,
            PJRT_Client_PlatformName: ApiFn<PJRT_Client_PlatformName_Args>,
            PJRT_Client_ProcessIndex: Unused,
            PJRT_Client_PlatformVersion: ApiFn<PJRT_Client_PlatformVersion_Args>,
            PJRT_Client_Devices: Unused,
            PJRT_Client_AddressableDevices: ApiFn<PJRT_Client_AddressableDevices_Args>,
            PJRT_Client_LookupDevice: Unused,
            PJRT_Client_LookupAddressableDevice: Unused,
            PJRT_Client_AddressableMemories: Unused,
            PJRT_Client_Compile: ApiFn<PJRT_Client_Compile_Args>,
            PJRT_Client_DefaultDeviceAssignment: Unused,
            PJRT_Client_BufferFromHostBuffer: ApiFn<PJRT_Client_BufferFromHostBuffer_Args>,
            PJRT_DeviceDescription_Id: ApiFn<PJRT_DeviceDescription_Id_Args>,
            PJRT_DeviceDescription_ProcessIndex: Unused,
            PJRT_DeviceDescription_Attributes: Unused,
            PJRT_DeviceDescription_Kind: ApiFn<PJRT_DeviceDescription_Kind_Args>,
            PJRT_DeviceDescription_DebugString: Unused,
            PJRT_DeviceDescription_ToString: ApiFn<PJRT_DeviceDescription_ToString_Args>,
            PJRT_Device_GetDescription: ApiFn<PJRT_Device_GetDescription_Args>,
            PJRT_Device_IsAddressable: Unused,
            PJRT_Device_LocalHardwareId: Unused,
            PJRT_Device_AddressableMemories: Unused,
            PJRT_Device_DefaultMemory: Unused,
            PJRT_Device_MemoryStats: Unused,
            PJRT_Memory_Id: Unused,
            PJRT_Memory_Kind: Unused,
            PJRT_Memory_DebugString: Unused,
            PJRT_Memory_ToString: Unused,
            PJRT_Memory_AddressableByDevices: Unused,
            PJRT_Executable_Destroy: ApiFn<PJRT_Executable_Destroy_Args>,
            PJRT_Executable_Name: Unused,
            PJRT_Executable_NumReplicas: Unused,
            PJRT_Executable_NumPartitions: Unused,
            PJRT_Executable_NumOutputs: ApiFn<PJRT_Executable_NumOutputs_Args>,
            PJRT_Executable_SizeOfGeneratedCodeInBytes: Unused,
            PJRT_Executable_GetCostAnalysis: Unused,
            PJRT_Executable_OutputMemoryKinds: Unused,
            PJRT_Executable_OptimizedProgram: Unused,
            PJRT_Executable_Serialize: ApiFn<PJRT_Executable_Serialize_Args>,
            PJRT_LoadedExecutable_Destroy: ApiFn<PJRT_LoadedExecutable_Destroy_Args>,
            PJRT_LoadedExecutable_GetExecutable: ApiFn<PJRT_LoadedExecutable_GetExecutable_Args>,
            PJRT_LoadedExecutable_AddressableDevices: Unused,
            PJRT_LoadedExecutable_Delete: Unused,
            PJRT_LoadedExecutable_IsDeleted: Unused,
            PJRT_LoadedExecutable_Execute: ApiFn<PJRT_LoadedExecutable_Execute_Args>,
            PJRT_Executable_DeserializeAndLoad: ApiFn<PJRT_Executable_DeserializeAndLoad_Args>,
            PJRT_LoadedExecutable_Fingerprint: Unused,
            PJRT_Buffer_Destroy: ApiFn<PJRT_Buffer_Destroy_Args>,
            PJRT_Buffer_ElementType: ApiFn<PJRT_Buffer_ElementType_Args>,
            PJRT_Buffer_Dimensions: ApiFn<PJRT_Buffer_Dimensions_Args>,
            PJRT_Buffer_UnpaddedDimensions: Unused,
            PJRT_Buffer_DynamicDimensionIndices: Unused,
            PJRT_Buffer_GetMemoryLayout: ApiFn<PJRT_Buffer_GetMemoryLayout_Args>,
            PJRT_Buffer_OnDeviceSizeInBytes: Unused,
            PJRT_Buffer_Device: Unused,
            PJRT_Buffer_Memory: Unused,
            PJRT_Buffer_Delete: Unused,
            PJRT_Buffer_IsDeleted: ApiFn<PJRT_Buffer_IsDeleted_Args>,
            PJRT_Buffer_CopyToDevice: Unused,
            PJRT_Buffer_ToHostBuffer: ApiFn<PJRT_Buffer_ToHostBuffer_Args>,
            PJRT_Buffer_IsOnCpu: ApiFn<PJRT_Buffer_IsOnCpu_Args>,
            PJRT_Buffer_ReadyEvent: ApiFn<PJRT_Buffer_ReadyEvent_Args>,
            PJRT_Buffer_UnsafePointer: ApiFn<PJRT_Buffer_UnsafePointer_Args>,
            PJRT_Buffer_IncreaseExternalReferenceCount: ApiFn<PJRT_Buffer_IncreaseExternalReferenceCount_Args>,
            PJRT_Buffer_DecreaseExternalReferenceCount: ApiFn<PJRT_Buffer_DecreaseExternalReferenceCount_Args>,
            PJRT_Buffer_OpaqueDeviceMemoryDataPointer: Unused,
            PJRT_CopyToDeviceStream_Destroy: Unused,
            PJRT_CopyToDeviceStream_AddChunk: Unused,
            PJRT_CopyToDeviceStream_TotalBytes: Unused,
            PJRT_CopyToDeviceStream_GranuleSize: Unused,
            PJRT_CopyToDeviceStream_CurrentBytes: Unused,
            PJRT_TopologyDescription_Create: Unused,
            PJRT_TopologyDescription_Destroy: Unused,
            PJRT_TopologyDescription_PlatformName: Unused,
            PJRT_TopologyDescription_PlatformVersion: Unused,
            PJRT_TopologyDescription_GetDeviceDescriptions: Unused,
            PJRT_TopologyDescription_Serialize: Unused,
            PJRT_TopologyDescription_Attributes: Unused,
            PJRT_Compile: Unused,
            PJRT_Executable_OutputElementTypes: Unused,
            PJRT_Executable_OutputDimensions: Unused,
            PJRT_Buffer_CopyToMemory: Unused,
            PJRT_Client_CreateViewOfDeviceBuffer: Unused,
            PJRT_Executable_Fingerprint: Unused,
            PJRT_Client_TopologyDescription: Unused,
            PJRT_Executable_GetCompiledMemoryStats: Unused,
            PJRT_Memory_Kind_Id: Unused,
            PJRT_ExecuteContext_Create: Unused,
            PJRT_ExecuteContext_Destroy: Unused,
            PJRT_Buffer_CopyRawToHost: Unused,
            PJRT_AsyncHostToDeviceTransferManager_Destroy: Unused,
            PJRT_AsyncHostToDeviceTransferManager_TransferData: Unused,
            PJRT_Client_CreateBuffersForAsyncHostToDevice: Unused,
            PJRT_AsyncHostToDeviceTransferManager_RetrieveBuffer: Unused,
            PJRT_AsyncHostToDeviceTransferManager_Device: Unused,
            PJRT_AsyncHostToDeviceTransferManager_BufferCount: Unused,
            PJRT_AsyncHostToDeviceTransferManager_BufferSize: Unused,
            PJRT_AsyncHostToDeviceTransferManager_SetBufferError: Unused,
            PJRT_AsyncHostToDeviceTransferManager_AddMetadata: Unused,
            PJRT_Client_DmaMap: Unused,
            PJRT_Client_DmaUnmap: Unused,
            PJRT_Client_CreateUninitializedBuffer: Unused,
            PJRT_Client_UpdateGlobalProcessInfo: Unused,
            PJRT_TopologyDescription_Deserialize: Unused,
            PJRT_Client_CreateAliasBuffer: Unused,
            PJRT_Client_FulfillAliasBuffer: Unused,
            PJRT_LoadedExecutable_GetDeviceAssignment: Unused,
        }

        /// The head of every extension struct, chained from `PJRT_Api.extension_start`.
        PJRT_Extension_Base {
            struct_size: usize,
            type_: PJRT_Extension_Type,
            next: *mut PJRT_Extension_Base,
        }
    }
    versioned: {
        PJRT_Api_Version {
            struct_size: usize,
            extension_start: *mut PJRT_Extension_Base,
            major_version: c_int,
            minor_version: c_int,
        }

        PJRT_Error_Destroy_Args {
            struct_size: usize,
            extension_start: *mut PJRT_Extension_Base,
            error: *mut PJRT_Error,
        }

        PJRT_Error_Message_Args {
            struct_size: usize,
            extension_start: *mut PJRT_Extension_Base,
            error: *const PJRT_Error,
            message: *const c_char,
            message_size: usize,
        }

        PJRT_Error_GetCode_Args {
            struct_size: usize,
            extension_start: *mut PJRT_Extension_Base,
            error: *const PJRT_Error,
            code: PJRT_Error_Code,
        }

        PJRT_Plugin_Initialize_Args {
            struct_size: usize,
            extension_start: *mut PJRT_Extension_Base,
        }

        PJRT_Event_Destroy_Args {
            struct_size: usize,
            extension_start: *mut PJRT_Extension_Base,
            event: *mut PJRT_Event,
        }

        PJRT_Event_IsReady_Args {
            struct_size: usize,
            extension_start: *mut PJRT_Extension_Base,
            event: *mut PJRT_Event,
            is_ready: bool,
        }

        PJRT_Event_Error_Args {
            struct_size: usize,
            extension_start: *mut PJRT_Extension_Base,
            event: *mut PJRT_Event,
        }

        PJRT_Event_Await_Args {
            struct_size: usize,
            extension_start: *mut PJRT_Extension_Base,
            event: *mut PJRT_Event,
        }

        PJRT_NamedValue {
            struct_size: usize,
            extension_start: *mut PJRT_Extension_Base,
            name: *const c_char,
            name_size: usize,
            type_: PJRT_NamedValue_Type,
            value: PJRT_NamedValue_Value,
            value_size: usize,
        }

        PJRT_Client_Create_Args {
            struct_size: usize,
            extension_start: *mut PJRT_Extension_Base,
            create_options: *const PJRT_NamedValue,
            num_options: usize,
            kv_get_callback: Unused,
            kv_get_user_arg: *mut c_void,
            kv_put_callback: Unused,
            kv_put_user_arg: *mut c_void,
            client: *mut PJRT_Client,
            kv_try_get_callback: Unused,
            kv_try_get_user_arg: *mut c_void,
        }

        PJRT_Client_Destroy_Args {
            struct_size: usize,
            extension_start: *mut PJRT_Extension_Base,
            client: *mut PJRT_Client,
        }

        PJRT_Client_PlatformName_Args {
            struct_size: usize,
            extension_start: *mut PJRT_Extension_Base,
            client: *mut PJRT_Client,
            platform_name: *const c_char,
            platform_name_size: usize,
        }

        PJRT_Client_PlatformVersion_Args {
            struct_size: usize,
            extension_start: *mut PJRT_Extension_Base,
            client: *mut PJRT_Client,
            platform_version: *const c_char,
            platform_version_size: usize,
        }

        PJRT_Client_AddressableDevices_Args {
            struct_size: usize,
            extension_start: *mut PJRT_Extension_Base,
            client: *mut PJRT_Client,
            addressable_devices: *const *mut PJRT_Device,
            num_addressable_devices: usize,
        }

        PJRT_Program {
            struct_size: usize,
            extension_start: *mut PJRT_Extension_Base,
            code: *mut c_char,
            code_size: usize,
            format: *const c_char,
            format_size: usize,
        }

        PJRT_Client_Compile_Args {
            struct_size: usize,
            extension_start: *mut PJRT_Extension_Base,
            client: *mut PJRT_Client,
            program: *const PJRT_Program,
            compile_options: *const c_char,
            compile_options_size: usize,
            executable: *mut PJRT_LoadedExecutable,
        }

        PJRT_Client_BufferFromHostBuffer_Args {
            struct_size: usize,
            extension_start: *mut PJRT_Extension_Base,
            client: *mut PJRT_Client,
            data: *const c_void,
            type_: PJRT_Buffer_Type,
            dims: *const i64,
            num_dims: usize,
            byte_strides: *const i64,
            num_byte_strides: usize,
            host_buffer_semantics: PJRT_HostBufferSemantics,
            device: *mut PJRT_Device,
            memory: *mut PJRT_Memory,
            device_layout: *mut PJRT_Buffer_MemoryLayout,
            done_with_host_buffer: *mut PJRT_Event,
            buffer: *mut PJRT_Buffer,
        }

        PJRT_DeviceDescription_Id_Args {
            struct_size: usize,
            extension_start: *mut PJRT_Extension_Base,
            device_description: *mut PJRT_DeviceDescription,
            id: c_int,
        }

        PJRT_DeviceDescription_Kind_Args {
            struct_size: usize,
            extension_start: *mut PJRT_Extension_Base,
            device_description: *mut PJRT_DeviceDescription,
            device_kind: *const c_char,
            device_kind_size: usize,
        }

        PJRT_DeviceDescription_ToString_Args {
            struct_size: usize,
            extension_start: *mut PJRT_Extension_Base,
            device_description: *mut PJRT_DeviceDescription,
            to_string: *const c_char,
            to_string_size: usize,
        }

        PJRT_Device_GetDescription_Args {
            struct_size: usize,
            extension_start: *mut PJRT_Extension_Base,
            device: *mut PJRT_Device,
            device_description: *mut PJRT_DeviceDescription,
        }

        PJRT_Executable_Destroy_Args {
            struct_size: usize,
            extension_start: *mut PJRT_Extension_Base,
            executable: *mut PJRT_Executable,
        }

        PJRT_Executable_NumOutputs_Args {
            struct_size: usize,
            extension_start: *mut PJRT_Extension_Base,
            executable: *mut PJRT_Executable,
            num_outputs: usize,
        }

        PJRT_Executable_Serialize_Args {
            struct_size: usize,
            extension_start: *mut PJRT_Extension_Base,
            executable: *const PJRT_Executable,
            serialized_bytes: *const c_char,
            serialized_bytes_size: usize,
            serialized_executable: *mut PJRT_SerializedExecutable,
            serialized_executable_deleter: Option<unsafe extern "C" fn(exec: *mut PJRT_SerializedExecutable)>,
        }

        PJRT_LoadedExecutable_Destroy_Args {
            struct_size: usize,
            extension_start: *mut PJRT_Extension_Base,
            executable: *mut PJRT_LoadedExecutable,
        }

        PJRT_LoadedExecutable_GetExecutable_Args {
            struct_size: usize,
            extension_start: *mut PJRT_Extension_Base,
            loaded_executable: *mut PJRT_LoadedExecutable,
            executable: *mut PJRT_Executable,
        }

        PJRT_ExecuteOptions {
            struct_size: usize,
            extension_start: *mut PJRT_Extension_Base,
            send_callbacks: *mut *mut PJRT_SendCallbackInfo,
            recv_callbacks: *mut *mut PJRT_RecvCallbackInfo,
            num_send_ops: usize,
            num_recv_ops: usize,
            launch_id: c_int,
            non_donatable_input_indices: *const i64,
            num_non_donatable_input_indices: usize,
            context: *mut PJRT_ExecuteContext,
            call_location: *const c_char,
            num_tasks: usize,
            task_ids: *mut c_int,
            incarnation_ids: *mut i64,
        }

        PJRT_LoadedExecutable_Execute_Args {
            struct_size: usize,
            extension_start: *mut PJRT_Extension_Base,
            executable: *mut PJRT_LoadedExecutable,
            options: *mut PJRT_ExecuteOptions,
            argument_lists: *const *const *mut PJRT_Buffer,
            num_devices: usize,
            num_args: usize,
            output_lists: *const *mut *mut PJRT_Buffer,
            device_complete_events: *mut *mut PJRT_Event,
            execute_device: *mut PJRT_Device,
        }

        PJRT_Executable_DeserializeAndLoad_Args {
            struct_size: usize,
            extension_start: *mut PJRT_Extension_Base,
            client: *mut PJRT_Client,
            serialized_executable: *const c_char,
            serialized_executable_size: usize,
            loaded_executable: *mut PJRT_LoadedExecutable,
            overridden_serialized_compile_options: *const c_char,
            overridden_serialized_compile_options_size: usize,
        }

        PJRT_Buffer_Destroy_Args {
            struct_size: usize,
            extension_start: *mut PJRT_Extension_Base,
            buffer: *mut PJRT_Buffer,
        }

        PJRT_Buffer_ElementType_Args {
            struct_size: usize,
            extension_start: *mut PJRT_Extension_Base,
            buffer: *mut PJRT_Buffer,
            type_: PJRT_Buffer_Type,
        }

        PJRT_Buffer_Dimensions_Args {
            struct_size: usize,
            extension_start: *mut PJRT_Extension_Base,
            buffer: *mut PJRT_Buffer,
            dims: *const i64,
            num_dims: usize,
        }

        PJRT_Buffer_MemoryLayout_Tiled {
            struct_size: usize,
            extension_start: *mut PJRT_Extension_Base,
            minor_to_major: *const i64,
            minor_to_major_size: usize,
            tile_dims: *const i64,
            tile_dim_sizes: *const usize,
            num_tiles: usize,
        }

        PJRT_Buffer_MemoryLayout_Strides {
            struct_size: usize,
            extension_start: *mut PJRT_Extension_Base,
            byte_strides: *const i64,
            num_byte_strides: usize,
        }

        PJRT_Buffer_MemoryLayout {
            struct_size: usize,
            extension_start: *mut PJRT_Extension_Base,
            value: PJRT_Buffer_MemoryLayout_Value,
            type_: PJRT_Buffer_MemoryLayout_Type,
        }

        PJRT_Buffer_GetMemoryLayout_Args {
            struct_size: usize,
            extension_start: *mut PJRT_Extension_Base,
            buffer: *mut PJRT_Buffer,
            layout: PJRT_Buffer_MemoryLayout,
        }

        PJRT_Buffer_IsDeleted_Args {
            struct_size: usize,
            extension_start: *mut PJRT_Extension_Base,
            buffer: *mut PJRT_Buffer,
            is_deleted: bool,
        }

        PJRT_Buffer_ToHostBuffer_Args {
            struct_size: usize,
            extension_start: *mut PJRT_Extension_Base,
            src: *mut PJRT_Buffer,
            host_layout: *mut PJRT_Buffer_MemoryLayout,
            dst: *mut c_void,
            dst_size: usize,
            event: *mut PJRT_Event,
        }

        PJRT_Buffer_IsOnCpu_Args {
            struct_size: usize,
            extension_start: *mut PJRT_Extension_Base,
            buffer: *mut PJRT_Buffer,
            is_on_cpu: bool,
        }

        PJRT_Buffer_ReadyEvent_Args {
            struct_size: usize,
            extension_start: *mut PJRT_Extension_Base,
            buffer: *mut PJRT_Buffer,
            event: *mut PJRT_Event,
        }

        PJRT_Buffer_UnsafePointer_Args {
            struct_size: usize,
            extension_start: *mut PJRT_Extension_Base,
            buffer: *mut PJRT_Buffer,
            buffer_pointer: usize,
        }

        PJRT_Buffer_IncreaseExternalReferenceCount_Args {
            struct_size: usize,
            extension_start: *mut PJRT_Extension_Base,
            buffer: *mut PJRT_Buffer,
        }

        PJRT_Buffer_DecreaseExternalReferenceCount_Args {
            struct_size: usize,
            extension_start: *mut PJRT_Extension_Base,
            buffer: *mut PJRT_Buffer,
        }
    }
}

/// Every mirrored struct and union of `pjrt_c_api.h` (the FFI extension's are added by
/// `ffi_extension::layout`): what `tests/abi_check` compares with bindgen's layout.
pub fn core_layout() -> Vec<FieldLayout> {
    let mut out = Vec::new();
    core_layouts(&mut out);
    union_layouts(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_size_is_the_end_of_the_last_field() {
        // As the header's PJRT_STRUCT_SIZE: no trailing padding.
        assert_eq!(PJRT_Event_IsReady_Args::STRUCT_SIZE, 25);
        assert_eq!(std::mem::size_of::<PJRT_Event_IsReady_Args>(), 32);
        assert_eq!(PJRT_Event_IsReady_Args::new().struct_size, 25);
        assert_eq!(PJRT_Api_Version::STRUCT_SIZE, 24);
        assert!(PJRT_Api_Version::new().extension_start.is_null());
    }

    #[test]
    fn the_api_table_has_every_0_81_slot() {
        // 3 header fields (struct_size, extension_start, pjrt_api_version: 8 + 8 + 24 bytes)
        // and 118 function pointers in PJRT C API 0.81.
        assert_eq!(std::mem::size_of::<PJRT_Api>(), 40 + 118 * 8);
        assert_eq!(std::mem::offset_of!(PJRT_Api, PJRT_Error_Destroy), 40);
    }
}
