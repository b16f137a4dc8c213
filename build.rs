//! Generates the PJRT C API bindings at build time from the `pjrt_c_api.h` that the
//! `xla-cpu-pjrt` wheel ships (PJRT C API 0.81). Nothing generated is committed.
//!
//! The header is found at, in order:
//! 1. `$PJRT_C_API_HEADER`;
//! 2. `<crate>/.venv/lib/python3*/site-packages/xla_plugins/xla_cpu_pjrt/include/pjrt_c_api.h`,
//!    which `scripts/setup.sh` installs.

use std::env;
use std::path::{Path, PathBuf};

const WHEEL_HEADER: &str = "site-packages/xla_plugins/xla_cpu_pjrt/include/pjrt_c_api.h";

fn main() {
    println!("cargo:rerun-if-env-changed=PJRT_C_API_HEADER");
    let header = find_header().unwrap_or_else(|| {
        panic!(
            "pjrt_c_api.h not found. Run scripts/setup.sh (it installs the xla-cpu-pjrt wheel \
             into .venv), or set PJRT_C_API_HEADER to the header's path."
        )
    });
    println!("cargo:rerun-if-changed={}", header.display());
    let bindings = bindgen::Builder::default()
        .header(header.to_string_lossy())
        .allowlist_type("PJRT_.*")
        .allowlist_var("PJRT_API_.*")
        .derive_default(true)
        .derive_debug(false)
        .layout_tests(false)
        .prepend_enum_name(false)
        .generate_comments(false)
        .generate()
        .expect("bindgen failed on pjrt_c_api.h (is Debian's libclang-dev installed?)");
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR is set by cargo"));
    bindings
        .write_to_file(out.join("pjrt_c_api.rs"))
        .expect("writing the generated bindings");
}

fn find_header() -> Option<PathBuf> {
    if let Ok(p) = env::var("PJRT_C_API_HEADER") {
        return Some(PathBuf::from(p));
    }
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").ok()?);
    venv_header(&manifest.join(".venv"))
}

fn venv_header(venv: &Path) -> Option<PathBuf> {
    let lib = venv.join("lib");
    let mut pythons: Vec<PathBuf> = std::fs::read_dir(&lib)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("python")))
        .collect();
    pythons.sort();
    pythons.into_iter().map(|p| p.join(WHEEL_HEADER)).find(|p| p.is_file())
}
