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

/// The process's client on the default plugin, with flaxlayer's custom-call handlers
/// registered (as a layer registers them on its client), so that programs compiled straight
/// on it may call the LAPACK targets.
pub fn client() -> Client {
    static CLIENT: OnceLock<Client> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            let c = Client::new(None).expect("a PJRT plugin (run scripts/setup.sh)");
            flaxlayer::custom_calls::register(&c).expect("the handlers");
            c
        })
        .clone()
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

/// Copies the files of `from` (one level, as a bundle is) into `to`, creating it.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// Starts `flaxlayer serve` as `cmd` configures it (stdout is taken here) and returns the
/// child and the address it printed; its stdout keeps being read so it never blocks.
pub fn start_server(mut cmd: std::process::Command) -> (std::process::Child, String) {
    use std::io::{BufRead, BufReader};
    let mut child = cmd.stdout(std::process::Stdio::piped()).spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = loop {
        let line = lines.next().expect("the server printed its address").unwrap();
        if let Some(addr) = line.strip_prefix("listening on ") {
            break addr.to_string();
        }
    };
    std::thread::spawn(move || lines.for_each(drop));
    (child, url)
}

/// A running `flaxlayer serve` (started by [`start_server`]) over a temporary model
/// repository, killed when dropped.
pub struct Served {
    pub child: std::process::Child,
    /// `http://host:port`, as the server printed it.
    pub url: String,
    _repo: tempfile::TempDir,
}

impl Served {
    /// Starts `cmd` (a `flaxlayer serve` over `repo`) and waits for its address.
    pub fn start(cmd: std::process::Command, repo: tempfile::TempDir) -> Self {
        let (child, url) = start_server(cmd);
        Served { child, url, _repo: repo }
    }

    /// `host:port`, for raw TCP clients.
    pub fn addr(&self) -> &str {
        self.url.trim_start_matches("http://")
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Greedy decoding with a decoder bundle's layer (hlo/decoder*, batch 1): feeds `prompt` one
/// token per inference call, then `steps` times the argmax of the last logits; returns the
/// chosen tokens.
pub fn greedy_decode(layer: &mut flaxlayer::FlaxLayer, prompt: &[i32], steps: usize) -> Vec<i32> {
    let token = |t: i32| flaxlayer::PyTree::leaf(Tensor::from_vec(vec![1, 1], vec![t]).unwrap());
    let mut logits = flaxlayer::PyTree::None;
    for &t in prompt {
        logits = layer.call(token(t), flaxlayer::Mode::Inference).unwrap();
    }
    let mut got = Vec::with_capacity(steps);
    for _ in 0..steps {
        let l = logits.as_tensor().unwrap().to_vec::<f32>().unwrap();
        let best = l.iter().enumerate().fold(0, |best, (i, &v)| if v > l[best] { i } else { best }) as i32;
        got.push(best);
        logits = layer.call(token(best), flaxlayer::Mode::Inference).unwrap();
    }
    got
}

/// The input signature of buffers that hold JAX's arguments of a program (the dtypes and
/// shapes JAX traced it with): what an executable compiled straight from the program checks
/// its arguments against.
pub fn signature_of<'a>(buffers: impl IntoIterator<Item = &'a flaxlayer::pjrt::Buffer>) -> Vec<flaxlayer::TensorSpec> {
    buffers.into_iter().map(|b| flaxlayer::TensorSpec::new("", b.dtype(), b.dims().iter().map(|&d| d as usize).collect())).collect()
}
