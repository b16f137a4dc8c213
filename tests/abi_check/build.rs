//! Generates, from the real headers: bindgen's bindings (`c.rs` for PJRT, `xla_c.rs` for
//! XLA FFI), and `checks.rs`, which reads the offset and size of every field our mirror has
//! out of those bindings.

use std::env;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

// Our mirror, for its field list; reachable as `crate::pjrt::ffi` as in flaxlayer.
#[allow(dead_code, unused_imports, clippy::all)]
#[path = "../../src/pjrt/ffi.rs"]
pub mod ffi;
#[allow(dead_code, unused_imports, clippy::all)]
#[path = "../../src/pjrt/ffi_extension.rs"]
pub mod ffi_extension;
#[allow(dead_code, unused_imports, non_upper_case_globals, clippy::all)]
#[path = "../../src/pjrt/xla_ffi_api.rs"]
pub mod xla_ffi_api;
mod pjrt {
    pub use super::{ffi, ffi_extension, xla_ffi_api};
}

use pjrt::ffi::FieldLayout;

const WHEEL_HEADER: &str = "site-packages/xla_plugins/xla_cpu_pjrt/include/pjrt_c_api.h";
/// The XLA FFI header jaxlib ships (`jax.ffi.include_dir()`).
const JAXLIB_XLA_FFI_HEADER: &str = "site-packages/jaxlib/include/xla/ffi/api/c_api.h";

fn main() {
    println!("cargo:rerun-if-env-changed=PJRT_C_API_HEADER");
    println!("cargo:rerun-if-env-changed=PJRT_FFI_EXTENSION_HEADER");
    println!("cargo:rerun-if-env-changed=XLA_FFI_C_API_HEADER");
    println!("cargo:rerun-if-changed=../../src/pjrt/xla_ffi_api.rs");
    println!("cargo:rerun-if-changed=../../src/pjrt/ffi.rs");
    println!("cargo:rerun-if-changed=../../src/pjrt/ffi_extension.rs");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    let header = find_header("PJRT_C_API_HEADER", WHEEL_HEADER).expect(
        "pjrt_c_api.h not found: set PJRT_C_API_HEADER, or run scripts/setup.sh (the xla-cpu-pjrt wheel in .venv ships it)",
    );
    println!("cargo:rerun-if-changed={}", header.display());
    // The FFI extension header includes "xla/pjrt/c/pjrt_c_api.h": give it that path.
    let include = out.join("include");
    let nested = include.join("xla/pjrt/c");
    std::fs::create_dir_all(&nested).unwrap();
    if let Err(e) = std::fs::copy(&header, nested.join("pjrt_c_api.h")) {
        panic!("cannot read pjrt_c_api.h at {} (relative paths are taken from tests/abi_check): {e}", header.display());
    }
    let ffi_header = env::var_os("PJRT_FFI_EXTENSION_HEADER").map(PathBuf::from);
    let mut wrapper = String::from("#include \"xla/pjrt/c/pjrt_c_api.h\"\n");
    if let Some(h) = &ffi_header {
        println!("cargo:rerun-if-changed={}", h.display());
        writeln!(wrapper, "#include \"{}\"", h.display()).unwrap();
    }
    bindgen::Builder::default()
        .header_contents("wrapper.h", &wrapper)
        .clang_arg(format!("-I{}", include.display()))
        .allowlist_type("PJRT_.*")
        .layout_tests(false)
        .derive_default(false)
        .derive_debug(false)
        .generate_comments(false)
        .generate()
        .expect("bindgen failed on the headers (is libclang installed? Debian: libclang-dev)")
        .write_to_file(out.join("c.rs"))
        .unwrap();

    let mut rows = Vec::new();
    pjrt::ffi::core_layouts(&mut rows);
    let mut unions = Vec::new();
    pjrt::ffi::core_layout().into_iter().filter(|r| r.strukt.ends_with("_Value")).for_each(|r| unions.push(r));
    rows.extend(unions);
    let mut ffi_rows = Vec::new();
    pjrt::ffi_extension::ffi_extension_layouts(&mut ffi_rows);
    let xla_header = find_header("XLA_FFI_C_API_HEADER", JAXLIB_XLA_FFI_HEADER);
    let mut xla_bindings = String::new();
    if let Some(h) = &xla_header {
        println!("cargo:rerun-if-changed={}", h.display());
        xla_bindings = bindgen::Builder::default()
            .header(h.display().to_string())
            .allowlist_type("XLA_FFI_.*")
            .layout_tests(false)
            .derive_default(false)
            .derive_debug(false)
            .generate_comments(false)
            .generate()
            .expect("bindgen failed on xla/ffi/api/c_api.h")
            .to_string();
    }
    std::fs::write(out.join("xla_c.rs"), xla_bindings).unwrap();
    let mut xla_rows = Vec::new();
    pjrt::xla_ffi_api::xla_ffi_layouts(&mut xla_rows);
    let mut checks = String::from("pub fn c_layout() -> Vec<Row> {\n    let mut rows = Vec::new();\n");
    emit(&mut checks, "c", &rows);
    if ffi_header.is_some() {
        emit(&mut checks, "c", &ffi_rows);
    }
    if xla_header.is_some() {
        emit(&mut checks, "xla_c", &xla_rows);
    }
    checks.push_str("    rows\n}\n");
    writeln!(checks, "pub const FFI_EXTENSION_CHECKED: bool = {};", ffi_header.is_some()).unwrap();
    writeln!(checks, "pub const XLA_FFI_CHECKED: bool = {};", xla_header.is_some()).unwrap();
    std::fs::write(out.join("checks.rs"), checks).unwrap();
}

/// bindgen's names for what we name differently: C's anonymous unions.
fn c_name(strukt: &str, field: &str) -> (String, String) {
    let strukt = match strukt {
        "PJRT_NamedValue_Value" => "PJRT_NamedValue__bindgen_ty_1",
        "PJRT_Buffer_MemoryLayout_Value" => "PJRT_Buffer_MemoryLayout__bindgen_ty_1",
        s => s,
    };
    let field = match (strukt, field) {
        ("PJRT_NamedValue" | "PJRT_Buffer_MemoryLayout", "value") => "__bindgen_anon_1",
        (_, f) => f,
    };
    (strukt.to_string(), field.to_string())
}

fn emit(out: &mut String, module: &str, rows: &[FieldLayout]) {
    for r in rows {
        let (s, f) = c_name(r.strukt, r.field);
        if r.field.is_empty() {
            writeln!(out, "    rows.push(Row::new({:?}, \"\", 0, std::mem::size_of::<{module}::{s}>()));", r.strukt).unwrap();
        } else if r.strukt.ends_with("_Value") {
            // A union member: its type cannot be named from a safe projection, so only its
            // offset is compared (the union's size and each member struct are checked too).
            writeln!(
                out,
                "    rows.push(Row::new({:?}, {:?}, std::mem::offset_of!({module}::{s}, {f}), UNCHECKED));",
                r.strukt, r.field
            )
            .unwrap();
        } else {
            writeln!(
                out,
                "    rows.push(Row::new({:?}, {:?}, std::mem::offset_of!({module}::{s}, {f}), field_size(|x: &{module}::{s}| &x.{f})));",
                r.strukt, r.field
            )
            .unwrap();
        }
    }
}

/// `$env`, else `wheel_path` under the first `.venv/lib/python*` that has it.
fn find_header(env: &str, wheel_path: &str) -> Option<PathBuf> {
    if let Some(p) = env::var_os(env) {
        return Some(PathBuf::from(p));
    }
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/lib");
    let mut pythons: Vec<PathBuf> = std::fs::read_dir(lib)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("python")))
        .collect();
    pythons.sort();
    pythons.into_iter().map(|p| p.join(wheel_path)).find(|p| p.is_file())
}
