//! Isolated compilation for bundles from elsewhere: the StableHLO goes to XLA's compiler in
//! a child process with a time limit, so a payload that crashes or hangs the compiler is a
//! typed error in this process instead of an abort or a hang.
//!
//! The child is the `flaxlayer` binary's hidden `compile-worker` command: it reads the
//! program on stdin, compiles it on the same plugin, and writes the serialized executable to
//! stdout; the parent stores it in the compile cache and loads it.
//!
//! What this protects against: a compiler crash, heap corruption or hang on hostile input.
//! What it does not: an executable is native code, and the one the child returns is loaded
//! and run here; running a bundle still means trusting it as you would a shared library.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use wait_timeout::ChildExt;

use crate::pjrt::{Client, CompileOptions, LoadedExecutable};
use crate::{Error, Result};

/// The environment variable that names the worker binary.
pub const WORKER_ENV: &str = "FLAXLAYER_COMPILE_WORKER";

/// The worker command's name on the `flaxlayer` binary.
pub const WORKER_COMMAND: &str = "compile-worker";

/// How to compile in a child process: which worker binary, and how long to wait for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Isolation {
    /// The `flaxlayer` binary that runs `compile-worker`; `None`: `$FLAXLAYER_COMPILE_WORKER`,
    /// else `flaxlayer` next to the running executable, else `flaxlayer` on the `PATH`.
    pub worker: Option<PathBuf>,
    /// How long one compile may take before the child is killed.
    pub timeout: Duration,
}

impl Default for Isolation {
    fn default() -> Self {
        Isolation { worker: None, timeout: Duration::from_secs(120) }
    }
}

/// The options a worker compiles with, as its command line carries them.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct WorkerRequest {
    /// The plugin `.so` the parent's client runs on.
    pub plugin: PathBuf,
    /// The compile options' fields.
    pub num_replicas: i64,
    /// See [`CompileOptions`].
    pub num_partitions: i64,
    /// See [`CompileOptions`].
    pub device_ordinal: i64,
    /// See [`CompileOptions`].
    pub portable: bool,
    /// The partitions' device ids of an SPMD compile.
    #[serde(default)]
    pub spmd_device_ids: Option<Vec<i64>>,
    /// Whether the SPMD program uses Shardy.
    #[serde(default)]
    pub shardy: bool,
}

impl WorkerRequest {
    /// The request for compiling on `client` with `options`.
    pub fn new(client: &Client, options: &CompileOptions) -> WorkerRequest {
        WorkerRequest {
            plugin: client.plugin().path().to_path_buf(),
            num_replicas: options.num_replicas,
            num_partitions: options.num_partitions,
            device_ordinal: options.device_ordinal,
            portable: options.portable,
            spmd_device_ids: options.spmd.as_ref().map(|s| s.device_ids.clone()),
            shardy: options.spmd.as_ref().is_some_and(|s| s.shardy),
        }
    }

    /// The compile options.
    pub fn options(&self) -> CompileOptions {
        CompileOptions {
            num_replicas: self.num_replicas,
            num_partitions: self.num_partitions,
            device_ordinal: self.device_ordinal,
            portable: self.portable,
            spmd: self.spmd_device_ids.clone().map(|device_ids| crate::pjrt::Spmd { device_ids, shardy: self.shardy }),
        }
    }
}

impl Isolation {
    /// The worker binary to run.
    fn worker(&self) -> Result<PathBuf> {
        if let Some(w) = &self.worker {
            return Ok(w.clone());
        }
        if let Some(w) = std::env::var_os(WORKER_ENV).filter(|w| !w.is_empty()) {
            return Ok(PathBuf::from(w));
        }
        let beside = std::env::current_exe().ok().and_then(|e| e.parent().map(|d| d.join("flaxlayer"))).filter(|p| p.is_file());
        let on_path = || std::env::var_os("PATH").and_then(|paths| std::env::split_paths(&paths).map(|d| d.join("flaxlayer")).find(|p| p.is_file()));
        beside.or_else(on_path).ok_or_else(|| Error::IsolatedCompile {
            what: "the compile worker".into(),
            reason: format!(
                "no `flaxlayer` binary found (set {WORKER_ENV}, put it next to the executable or on the PATH, \
                 or name it in Isolation::worker)"
            ),
        })
    }

    /// Serializes `program` compiled on `client` in a child process.
    pub(crate) fn compile(&self, client: &Client, mlir: &[u8], options: &CompileOptions, what: &str) -> Result<Vec<u8>> {
        let fail = |reason: String| Error::IsolatedCompile { what: what.to_string(), reason };
        let worker = self.worker()?;
        let request = serde_json::to_string(&WorkerRequest::new(client, options)).map_err(|e| Error::json("worker request", e))?;
        let mut child = Command::new(&worker)
            .args([WORKER_COMMAND, "--request", &request])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| fail(format!("cannot start {}: {e}", worker.display())))?;
        // Feed the program and drain the outputs on threads, so neither side blocks on a full
        // pipe while the clock runs.
        let mut stdin = child.stdin.take().ok_or_else(|| fail("no stdin".into()))?;
        let program = mlir.to_vec();
        let feeder = std::thread::spawn(move || stdin.write_all(&program));
        let out = drain(child.stdout.take());
        let err = drain(child.stderr.take());
        let status = match child.wait_timeout(self.timeout).map_err(|e| fail(format!("waiting for the worker: {e}")))? {
            Some(status) => status,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(fail(format!("the compile took longer than {:?}; the worker was killed", self.timeout)));
            }
        };
        let _ = feeder.join();
        let (bytes, stderr) = (out.join().unwrap_or_default(), err.join().unwrap_or_default());
        let stderr = String::from_utf8_lossy(&stderr);
        if !status.success() {
            let how = describe_exit(&status);
            let last = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
            return Err(fail(format!("the compiler {how}: {last}")));
        }
        Ok(bytes)
    }
}

/// Reads a pipe to the end on a thread.
fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        buf
    })
}

fn describe_exit(status: &std::process::ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = status.signal() {
            return format!("crashed (signal {sig})");
        }
    }
    format!("failed ({status})")
}

/// The worker side: compiles the program read from `input` as `request` says and writes the
/// serialized executable to `output`. The `flaxlayer` binary's `compile-worker` runs this.
pub fn run_worker(request: &str, input: &mut impl Read, output: &mut impl Write) -> Result<()> {
    let request: WorkerRequest = serde_json::from_str(request).map_err(|e| Error::json("worker request", e))?;
    let mut program = Vec::new();
    input.read_to_end(&mut program).map_err(|e| Error::io("<stdin>", e))?;
    let client = Client::new(Some(&request.plugin))?;
    // The parent's layer registered flaxlayer's custom-call handlers on its client; the
    // program may call them, so this client gets them too.
    crate::custom_calls::register(&client)?;
    let exe = client.compile(crate::pjrt::Program::Mlir(&program), &request.options())?;
    let bytes = exe.serialize()?;
    output.write_all(&bytes).map_err(|e| Error::io("<stdout>", e))
}

/// Loads what a worker compiled.
pub(crate) fn load(client: &Client, bytes: &[u8], what: &str) -> Result<LoadedExecutable> {
    client.deserialize_trusted(bytes).map_err(|e| Error::IsolatedCompile { what: what.to_string(), reason: format!("the worker's executable does not load: {e}") })
}
