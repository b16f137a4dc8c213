//! What the integration tests share: where the committed bundles are, one PJRT client per
//! test process, the check that a save left no temporary files, and golden data
//! (`golden`).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use flaxlayer::pjrt::Client;
use flaxlayer::Tensor;

pub mod golden;

/// A committed bundle under `hlo/` (written by the exporter's `export_examples`).
pub fn hlo(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("hlo").join(name)
}

/// The process's client on the default plugin.
pub fn client() -> Client {
    static CLIENT: OnceLock<Client> = OnceLock::new();
    CLIENT.get_or_init(|| Client::new(None).expect("a PJRT plugin (run scripts/setup.sh)")).clone()
}

/// Temporary files and staging directories (`.tmp-` names) under `dir`, recursively.
pub fn leftovers(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if name.contains(".tmp-") {
            out.push(name);
        }
        if e.path().is_dir() {
            out.extend(leftovers(&e.path()));
        }
    }
    out
}

/// The rows `idx` of a `[B, ...]` tensor, in that order (a batch picked from a data set).
pub fn pick_rows(t: &Tensor, idx: &[usize]) -> Tensor {
    let row = t.num_bytes() / t.shape()[0];
    let bytes: Vec<u8> = idx.iter().flat_map(|&i| t.as_bytes()[i * row..(i + 1) * row].iter().copied()).collect();
    let mut shape = t.shape().to_vec();
    shape[0] = idx.len();
    Tensor::new(t.dtype(), shape, &bytes).unwrap()
}

/// The rows `start..start + n` of a `[B, ...]` tensor.
pub fn row_range(t: &Tensor, start: usize, n: usize) -> Tensor {
    pick_rows(t, &(start..start + n).collect::<Vec<_>>())
}
