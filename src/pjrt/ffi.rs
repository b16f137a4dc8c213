//! Raw bindings, generated at build time by bindgen from `pjrt_c_api.h` (see `build.rs`).
#![allow(non_camel_case_types, non_snake_case, non_upper_case_globals, dead_code, clippy::all)]

include!(concat!(env!("OUT_DIR"), "/pjrt_c_api.rs"));
