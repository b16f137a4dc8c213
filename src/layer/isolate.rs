//! Isolated compilation for bundles from elsewhere: the StableHLO goes to XLA's compiler in
//! a child process with a time limit, so a payload that crashes or hangs the compiler is a
//! typed error in this process instead of an abort or a hang.
//!
//! The child is the **current executable, run again**: a program that uses untrusted mode
//! calls [`maybe_run_worker`] first thing in `main`. Started as a worker (the request in the
//! environment variable `FLAXLAYER_COMPILE_WORKER_REQUEST`, and the argument
//! `--flaxlayer-compile-worker` last), it reads the program on stdin, compiles it on the same
//! plugin, writes the serialized executable to stdout and exits; otherwise it returns at once.
//! No `flaxlayer` command line needs to be installed. [`Isolation::worker`] can name another
//! binary that calls the hook (the `flaxlayer` CLI does).
//!
//! ```no_run
//! fn main() -> flaxlayer::Result<()> {
//!     // Before anything else: in a compile worker this never returns.
//!     flaxlayer::layer::isolate::maybe_run_worker();
//!     let layer = flaxlayer::FlaxLayer::builder("downloaded/bundle")
//!         .untrusted(flaxlayer::layer::isolate::Isolation::default())
//!         .build()?;
//!     Ok(())
//! }
//! ```
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

/// The environment variable that carries a worker's request (plugin and compile options, as
/// JSON); [`maybe_run_worker`] runs the worker when it is set.
const REQUEST_ENV: &str = "FLAXLAYER_COMPILE_WORKER_REQUEST";

/// The last argument a worker is started with. A program that does not call
/// [`maybe_run_worker`] sees an argument it does not know and (as most argument parsers and
/// the test harness do) stops at once, instead of running its own `main` as a child.
const WORKER_FLAG: &str = "--flaxlayer-compile-worker";

/// The header of a worker's answer on stdout, before the executable's length (u64, little
/// endian) and bytes: whatever else the child prints (a test harness's banner) is skipped.
const FRAME_MAGIC: &[u8; 8] = b"FLXLWRK1";

/// How a worker's own errors start on its stderr.
const WORKER_ERROR: &str = "flaxlayer compile worker:";

/// What a program that never ran the worker misses.
const NO_HOOK: &str = "its main must call flaxlayer::layer::isolate::maybe_run_worker() first";

/// How to compile in a child process: which program, and how long to wait for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Isolation {
    /// The program to run as the worker; `None` (the default): the current executable,
    /// whose `main` must call [`maybe_run_worker`] first. Another binary must call it too
    /// (the `flaxlayer` command line does).
    pub worker: Option<PathBuf>,
    /// Arguments the worker starts with, before `--flaxlayer-compile-worker`; default none.
    /// A program that dispatches on its arguments can route the worker to the code that calls
    /// [`maybe_run_worker`] (a test binary names the test that calls it).
    pub worker_args: Vec<String>,
    /// How long one compile may take before the child is killed.
    pub timeout: Duration,
}

impl Default for Isolation {
    fn default() -> Self {
        Isolation { worker: None, worker_args: Vec::new(), timeout: Duration::from_secs(120) }
    }
}

/// The options a worker compiles with, as its environment carries them.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct WorkerRequest {
    /// The plugin `.so` the parent's client runs on.
    plugin: PathBuf,
    /// The compile options' fields.
    num_replicas: i64,
    /// See [`CompileOptions`].
    num_partitions: i64,
    /// See [`CompileOptions`].
    device_ordinal: i64,
    /// See [`CompileOptions`].
    portable: bool,
    /// The partitions' device ids of an SPMD compile.
    #[serde(default)]
    spmd_device_ids: Option<Vec<i64>>,
    /// Whether the SPMD program uses Shardy.
    #[serde(default)]
    shardy: bool,
}

impl WorkerRequest {
    /// The request for compiling on `client` with `options`.
    fn new(client: &Client, options: &CompileOptions) -> WorkerRequest {
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
    fn options(&self) -> CompileOptions {
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
    /// The worker program to run: the one named, else the current executable.
    fn worker_program(&self) -> Result<PathBuf> {
        match &self.worker {
            Some(w) => Ok(w.clone()),
            None => std::env::current_exe().map_err(|e| Error::IsolatedCompile {
                what: "the compile worker".into(),
                reason: format!("the current executable cannot be found to run again ({e}); name a worker in Isolation::worker"),
            }),
        }
    }

    /// Serializes `program` compiled on `client` in a child process.
    pub(crate) fn compile(&self, client: &Client, mlir: &[u8], options: &CompileOptions, what: &str) -> Result<Vec<u8>> {
        let fail = |reason: String| Error::IsolatedCompile { what: what.to_string(), reason };
        let worker = self.worker_program()?;
        let request = serde_json::to_string(&WorkerRequest::new(client, options)).map_err(|e| Error::json("worker request", e))?;
        let mut child = Command::new(&worker)
            .args(&self.worker_args)
            .arg(WORKER_FLAG)
            .env(REQUEST_ENV, &request)
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
        let last = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
        if !status.success() {
            let how = describe_exit(&status);
            if status.code().is_some() && !stderr.contains(WORKER_ERROR) {
                // It stopped on its own without the worker's error: it never ran the worker.
                return Err(fail(format!("{} {how} without running the compile worker: {NO_HOOK}; {last}", worker.display())));
            }
            return Err(fail(format!("the compiler {how}: {last}")));
        }
        unframe(&bytes)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| fail(format!("{} exited without a compiled executable: {NO_HOOK}; {last}", worker.display())))
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

/// The executable in a worker's stdout: the bytes after the first [`FRAME_MAGIC`] whose
/// length fits in what follows.
fn unframe(out: &[u8]) -> Option<&[u8]> {
    let head = FRAME_MAGIC.len() + 8;
    (0..out.len().saturating_sub(head - 1)).filter(|&i| out[i..].starts_with(FRAME_MAGIC)).find_map(|i| {
        let len = u64::from_le_bytes(out[i + FRAME_MAGIC.len()..i + head].try_into().ok()?);
        let start = i + head;
        let end = start.checked_add(usize::try_from(len).ok()?)?;
        out.get(start..end)
    })
}

/// Runs the compile worker and exits when this process was started as one (see the module
/// docs); returns at once otherwise. Call it first thing in `main` of a program that uses
/// untrusted mode with the default [`Isolation`] (the current executable as the worker), before
/// it starts threads or parses its arguments.
pub fn maybe_run_worker() {
    let Some(request) = std::env::var_os(REQUEST_ENV).filter(|r| !r.is_empty()) else { return };
    let request = request.to_string_lossy().into_owned();
    let (mut stdin, mut stdout) = (std::io::stdin().lock(), std::io::stdout().lock());
    match run_worker(&request, &mut stdin, &mut stdout) {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("{WORKER_ERROR} {e}");
            std::process::exit(1)
        }
    }
}

/// The worker side: compiles the program read from `input` as `request` says and writes the
/// serialized executable to `output`, framed.
fn run_worker(request: &str, input: &mut impl Read, output: &mut impl Write) -> Result<()> {
    let request: WorkerRequest = serde_json::from_str(request).map_err(|e| Error::json("worker request", e))?;
    let mut program = Vec::new();
    input.read_to_end(&mut program).map_err(|e| Error::io("<stdin>", e))?;
    let client = Client::new(Some(&request.plugin))?;
    // The parent's layer registered flaxlayer's custom-call handlers on its client; the
    // program may call them, so this client gets them too.
    crate::custom_calls::register(&client)?;
    let exe = client.compile(crate::pjrt::Program::Mlir(&program), &request.options())?;
    let bytes = exe.serialize()?;
    let len = u64::try_from(bytes.len()).map_err(|_| Error::invalid("executable", "larger than u64"))?;
    let write = |output: &mut dyn Write| -> std::io::Result<()> {
        output.write_all(FRAME_MAGIC)?;
        output.write_all(&len.to_le_bytes())?;
        output.write_all(&bytes)?;
        output.flush()
    };
    write(output).map_err(|e| Error::io("<stdout>", e))
}

/// Loads what a worker compiled.
pub(crate) fn load(client: &Client, bytes: &[u8], what: &str) -> Result<LoadedExecutable> {
    client.deserialize_trusted(bytes).map_err(|e| Error::IsolatedCompile { what: what.to_string(), reason: format!("the worker's executable does not load: {e}") })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_is_found_behind_other_output() {
        let mut out = b"running 1 test\n".to_vec();
        out.extend_from_slice(FRAME_MAGIC);
        out.extend_from_slice(&3u64.to_le_bytes());
        out.extend_from_slice(b"abc");
        out.extend_from_slice(b"\ntrailing noise");
        assert_eq!(unframe(&out), Some(&b"abc"[..]));
        assert_eq!(unframe(b"running 1 test\ntest result: ok"), None);
        let mut short = FRAME_MAGIC.to_vec();
        short.extend_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(unframe(&short), None, "a length past the end is no answer");
    }
}
