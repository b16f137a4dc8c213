//! Our `#[repr(C)]` mirror of XLA's `pjrt_c_api_ffi_extension.h`, extension version 2 as
//! openxla/xla has it since `register_handler` was added (openxla/xla#29390, August 2025):
//! the PJRT extension through which a plugin registers typed XLA FFI handlers (custom
//! calls) and types. A plugin that has it chains a `PJRT_FFI_Extension` from
//! `PJRT_Api.extension_start`, with `base.type_ == PJRT_Extension_Type_FFI` (5). Plugins
//! built before that have version 1, whose struct ends before `register_handler`.
//!
//! Beware: a draft of that change had an `int api_version` field after `target_name_size`
//! in `PJRT_FFI_Register_Handler_Args`; the merged header (and the CPU plugin we ship
//! with, which we checked by registering a handler) has none. `tests/abi_check` checks these
//! structs when `PJRT_FFI_EXTENSION_HEADER` names the header.
//!
//! Extend it as `ffi.rs` says: fields are appended at the end, and a field is only read
//! after the extension's `base.struct_size` shows the plugin has it.
#![allow(non_camel_case_types, non_snake_case, non_upper_case_globals, dead_code)]

use std::os::raw::{c_char, c_uint, c_void};

use super::ffi::{mirror, ApiFn, PJRT_Extension_Base, PJRT_ExecuteContext};

/// The FFI extension version this mirror follows (`PJRT_API_FFI_EXTENSION_VERSION`).
pub const PJRT_API_FFI_EXTENSION_VERSION: i32 = 2;

/// `PJRT_FFI_Handler_TraitsBits`.
pub type PJRT_FFI_Handler_TraitsBits = c_uint;
pub const PJRT_FFI_HANDLER_TRAITS_COMMAND_BUFFER_COMPATIBLE: PJRT_FFI_Handler_TraitsBits = 1;

mirror! {
    layout_fn: ffi_extension_layouts;
    plain: {
        /// User data forwarded to FFI handlers; `deleter` may be null.
        PJRT_FFI_UserData {
            type_id: i64,
            data: *mut c_void,
            deleter: Option<unsafe extern "C" fn(data: *mut c_void)>,
        }

        /// The extension: its base, then its functions (version 2 added `register_handler`).
        PJRT_FFI_Extension {
            base: PJRT_Extension_Base,
            type_id_register: ApiFn<PJRT_FFI_TypeID_Register_Args>,
            user_data_add: ApiFn<PJRT_FFI_UserData_Add_Args>,
            register_handler: ApiFn<PJRT_FFI_Register_Handler_Args>,
        }
    }
    versioned: {
        PJRT_FFI_TypeID_Register_Args {
            struct_size: usize,
            extension_start: *mut PJRT_Extension_Base,
            type_name: *const c_char,
            type_name_size: usize,
            type_id: i64,
        }

        PJRT_FFI_UserData_Add_Args {
            struct_size: usize,
            extension_start: *mut PJRT_Extension_Base,
            context: *mut PJRT_ExecuteContext,
            user_data: PJRT_FFI_UserData,
        }

        /// Registers a typed handler (`XLA_FFI_Handler*`) for `target_name` on
        /// `platform_name` (this struct has no `extension_start`).
        PJRT_FFI_Register_Handler_Args {
            struct_size: usize,
            target_name: *const c_char,
            target_name_size: usize,
            handler: *mut c_void,
            platform_name: *const c_char,
            platform_name_size: usize,
            traits: PJRT_FFI_Handler_TraitsBits,
        }
    }
}

/// Every mirrored struct and union (of `pjrt_c_api.h` and the FFI extension header): what
/// `tests/abi_check` compares with bindgen's layout of the headers.
#[allow(dead_code)] // read by tests/abi_check, which includes this file
pub fn layout() -> Vec<super::ffi::FieldLayout> {
    let mut out = super::ffi::core_layout();
    ffi_extension_layouts(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_in_order_and_do_not_overlap() {
        let rows = layout(); // the core's structs and the extension's
        let mut by_struct: std::collections::BTreeMap<&str, Vec<super::super::ffi::FieldLayout>> = Default::default();
        for r in rows {
            by_struct.entry(r.strukt).or_default().push(r);
        }
        for (name, rows) in by_struct {
            let size = rows.iter().find(|r| r.field.is_empty()).unwrap().size;
            let fields: Vec<_> = rows.iter().filter(|r| !r.field.is_empty()).collect();
            assert!(!fields.is_empty(), "{name}");
            let union = name.ends_with("_Value");
            for w in fields.windows(2) {
                if union {
                    assert_eq!(w[1].offset, 0, "{name}.{}", w[1].field);
                } else {
                    assert!(w[0].offset + w[0].size <= w[1].offset, "{name}: {} overlaps {}", w[0].field, w[1].field);
                }
            }
            assert!(fields.iter().all(|f| f.offset + f.size <= size), "{name}");
        }
    }
}
