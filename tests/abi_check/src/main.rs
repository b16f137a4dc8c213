//! Compares the layout of every struct and field of our PJRT mirror with the C headers'
//! (through bindgen); exits 1 on any difference. See Cargo.toml.

#[allow(dead_code, non_camel_case_types, non_snake_case, non_upper_case_globals, clippy::all)]
mod c {
    include!(concat!(env!("OUT_DIR"), "/c.rs"));
}

#[allow(dead_code, non_camel_case_types, non_snake_case, non_upper_case_globals, clippy::all)]
mod xla_c {
    include!(concat!(env!("OUT_DIR"), "/xla_c.rs"));
}

// Our mirror, reachable as `crate::pjrt::ffi` as in flaxlayer.
#[allow(dead_code, unused_imports, clippy::all)]
#[path = "../../../src/pjrt/ffi.rs"]
pub mod ffi;
#[allow(dead_code, unused_imports, clippy::all)]
#[path = "../../../src/pjrt/ffi_extension.rs"]
pub mod ffi_extension;
#[allow(dead_code, unused_imports, non_upper_case_globals, clippy::all)]
#[path = "../../../src/pjrt/xla_ffi_api.rs"]
pub mod xla_ffi_api;
mod pjrt {
    pub use super::ffi;
}

/// (struct, field, offset, size); an empty field is the struct's own size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    strukt: &'static str,
    field: &'static str,
    offset: usize,
    size: usize,
}

impl Row {
    fn new(strukt: &'static str, field: &'static str, offset: usize, size: usize) -> Row {
        Row { strukt, field, offset, size }
    }
}

/// The size of a union member, which is not compared.
const UNCHECKED: usize = usize::MAX;

fn field_size<S, F>(_: impl Fn(&S) -> &F) -> usize {
    std::mem::size_of::<F>()
}

include!(concat!(env!("OUT_DIR"), "/checks.rs"));

fn main() {
    let mut layouts = ffi_extension::layout();
    xla_ffi_api::xla_ffi_layouts(&mut layouts);
    let ours: Vec<Row> = layouts
        .into_iter()
        .map(|r| Row::new(r.strukt, r.field, r.offset, r.size))
        .collect();
    let theirs = c_layout();
    let mut bad = 0;
    for c in &theirs {
        let Some(o) = ours.iter().find(|o| o.strukt == c.strukt && o.field == c.field) else { continue };
        if o.offset != c.offset || (c.size != UNCHECKED && o.size != c.size) {
            bad += 1;
            let what = if c.field.is_empty() { c.strukt.to_string() } else { format!("{}.{}", c.strukt, c.field) };
            eprintln!("MISMATCH {what}: ours offset {} size {}, C offset {} size {}", o.offset, o.size, c.offset, c.size);
        }
    }
    let structs = theirs.iter().filter(|r| r.field.is_empty()).count();
    let mut skipped = String::new();
    if !FFI_EXTENSION_CHECKED {
        skipped += " (FFI extension structs not checked: set PJRT_FFI_EXTENSION_HEADER to pjrt_c_api_ffi_extension.h)";
    }
    if !XLA_FFI_CHECKED {
        skipped += " (XLA FFI structs not checked: set XLA_FFI_C_API_HEADER to xla/ffi/api/c_api.h, or install jaxlib in .venv)";
    }
    if bad > 0 {
        eprintln!("abi_check: {bad} difference(s) between src/pjrt's mirror and the C headers");
        std::process::exit(1);
    }
    println!("abi_check: {structs} structs, {} fields match the C headers{skipped}", theirs.len() - structs);
}
