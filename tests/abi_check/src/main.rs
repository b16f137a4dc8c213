//! Compares the layout of every struct and field of our PJRT mirror with the C headers'
//! (through bindgen); exits 1 on any difference. See Cargo.toml.

#[allow(dead_code, non_camel_case_types, non_snake_case, non_upper_case_globals, clippy::all)]
mod c {
    include!(concat!(env!("OUT_DIR"), "/c.rs"));
}

// Our mirror, reachable as `crate::pjrt::ffi` as in flaxlayer.
#[allow(dead_code, unused_imports, clippy::all)]
#[path = "../../../src/pjrt/ffi.rs"]
pub mod ffi;
#[allow(dead_code, unused_imports, clippy::all)]
#[path = "../../../src/pjrt/ffi_extension.rs"]
pub mod ffi_extension;
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
    let ours: Vec<Row> = pjrt::ffi::layout()
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
    let skipped = if FFI_EXTENSION_CHECKED {
        ""
    } else {
        " (FFI extension structs not checked: set PJRT_FFI_EXTENSION_HEADER to pjrt_c_api_ffi_extension.h)"
    };
    if bad > 0 {
        eprintln!("abi_check: {bad} difference(s) between src/pjrt's mirror and the C headers");
        std::process::exit(1);
    }
    println!("abi_check: {structs} structs, {} fields match the C headers{skipped}", theirs.len() - structs);
}
