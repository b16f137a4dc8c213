#!/usr/bin/env python3
"""Benchmark flaxlayer against the other ways to run an exported JAX model outside Python:
ONNX Runtime (jax2onnx + the Rust `ort` crate) and IREE (StableHLO compiled by iree-compile).

    python3 scripts/bench_peers.py              # full run (~10 min the first time), writes BENCHMARKS.md
    python3 scripts/bench_peers.py --quick      # smoke run, writes nothing
    python3 scripts/bench_peers.py --rounds 3 --no-write --no-profile
    python3 scripts/bench_peers.py --profile-only   # only the profiles of flaxlayer's MLP b1 call

Not part of scripts/demo.sh or scripts/test.sh. On first use it creates .venv-peers/ (gitignored)
with the pins of scripts/requirements-peers.txt, idempotently (a stamp holds the file's sha256),
then re-runs itself in it. It builds `target/profiling/flaxlayer` (the release build with line
tables, for perf and callgrind) and the ORT bench
(benches/peers, its own crate) and keeps its artifacts in target/peers-work/.

Workloads, on the committed bundles and their variables:
  mlp      hlo/mlp, batch 1          (MLP 64-256-256-10)
  cnn      hlo/cnn, batch 256        (Keras' FlaxLayer CNN)
  decoder  hlo/decoder, one inference step at batch 1 (2-layer decoder with a KV cache)
Systems:
  flaxlayer  `flaxlayer bench BUNDLE --batch B --json`: host in -> host out per call.
             mlp and decoder also as "flaxlayer frozen": hlo/mlp_frozen, hlo/decoder_frozen (the
             same module and variables exported with frozen=True, params compiled in).
  ORT        jax2onnx converts the same Flax module (flaxlayer_export/examples/models.py) with the bundle's
             variables as initializers; benches/peers times host in -> host out per call.
  IREE       iree-compile compiles the StableHLO the bundle holds (`tf.aliasing_output` stripped:
             IREE 3.13 computes wrong decoder results with them), params as arguments ("args");
             and the same computation with the params folded in as constants ("consts").
             iree-benchmark-module times it with the local-sync and local-task drivers.
Every peer's outputs are checked against JAX (the bundle's `.jaxexport` called by JAX on the
same inputs) before it is timed; a peer whose outputs differ is reported as wrong, not timed.
Rounds alternate the systems (round r: flaxlayer, ORT, IREE ...). The table between
`<!-- peers:begin -->` and `<!-- peers:end -->` in BENCHMARKS.md is rewritten; the rest is kept.
Unless --no-profile, flaxlayer's MLP batch-1 call is also profiled: `perf` (time, by library and
by the PJRT call our crate made) and callgrind (instructions per call, by library and by function);
--profile-only does only that and rewrites only the `<!-- profile:... -->` block.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
VENV = os.path.join(REPO, ".venv-peers")
REQUIREMENTS = os.path.join(HERE, "requirements-peers.txt")
# The example modules of the bundles: one file that needs only flax, loaded by its path (the
# flaxlayer_export package is not installed in .venv-peers).
MODELS = os.path.join(HERE, "flaxlayer_export", "examples", "models.py")


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# .venv-peers (standard library only: this part runs under any python3)
# --------------------------------------------------------------------------------------------

def ensure_venv() -> None:
    """Create/update .venv-peers from requirements-peers.txt, then re-exec this script in it."""
    py = os.path.join(VENV, "bin", "python")
    if os.path.realpath(sys.prefix) == os.path.realpath(VENV):
        return
    t0 = time.time()
    if not os.path.exists(py):
        log(f"[peers] creating {os.path.relpath(VENV, REPO)}")
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
    stamp = os.path.join(VENV, ".requirements.sha256")
    with open(REQUIREMENTS, "rb") as f:
        want = hashlib.sha256(f.read()).hexdigest()
    have = open(stamp).read().strip() if os.path.exists(stamp) else ""
    if have != want:
        log("[peers] installing scripts/requirements-peers.txt into .venv-peers")
        subprocess.run([py, "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r", REQUIREMENTS],
                       check=True)
        with open(stamp, "w") as f:
            f.write(want + "\n")
    os.environ["PEERS_SETUP_SECONDS"] = f"{time.time() - t0:.1f}"
    log(f"[peers] .venv-peers ready in {time.time() - t0:.1f} s")
    os.execv(py, [py, os.path.abspath(__file__), *sys.argv[1:]])


if __name__ == "__main__":
    ensure_venv()

# --------------------------------------------------------------------------------------------
# Everything below runs inside .venv-peers.
# --------------------------------------------------------------------------------------------

import argparse  # noqa: E402
import datetime as _dt  # noqa: E402
import glob  # noqa: E402
import importlib.metadata as md  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402

HLO = os.path.join(REPO, "hlo")
WORK = os.path.join(REPO, "target", "peers-work")
# The release build with line tables (Cargo.toml's `profiling` profile): perf's DWARF call
# graphs and callgrind_annotate need them; the code is the release build's.
FL_BIN = os.path.join(REPO, "target", "profiling", "flaxlayer")
ORT_BENCH_DIR = os.path.join(REPO, "benches", "peers")
ORT_BIN = os.path.join(REPO, "target", "peers", "release", "flaxlayer-peers-bench")
MAIN_SITE = os.path.join(REPO, ".venv", "lib", "python3.11", "site-packages")
BEGIN, END = "<!-- peers:begin -->", "<!-- peers:end -->"
PROF_BEGIN, PROF_END = "<!-- profile:begin -->", "<!-- profile:end -->"

# Outputs agree when max|peer - jax| <= RTOL * max(max|jax|, 1) (f32); integers exactly.
RTOL = 1e-5
IREE_DRIVERS = ("local-sync", "local-task")
IREE_COMPILE_FLAGS = [
    "--iree-input-type=stablehlo", "--iree-hal-target-device=local",
    "--iree-hal-local-target-device-backends=llvm-cpu", "--iree-llvmcpu-target-cpu=host",
    "--iree-opt-level=O3",
]


def run(cmd, timeout=900, env=None, cwd=REPO) -> subprocess.CompletedProcess:
    e = dict(os.environ)
    if env:
        e.update(env)
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=e, cwd=cwd)
    if p.returncode != 0:
        tail = "\n".join((p.stderr + p.stdout).strip().splitlines()[-15:])
        raise RuntimeError(f"{os.path.basename(cmd[0])} exited {p.returncode}:\n{tail}")
    return p


def last_json(text: str) -> dict:
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"no JSON line in: {text[-300:]}")


def sha256_files(*paths) -> str:
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            h.update(f.read())
    return h.hexdigest()


def load_models():
    """flaxlayer_export/examples/models.py as a module of its own, loaded by its path."""
    spec = importlib.util.spec_from_file_location("flaxlayer_example_models", MODELS)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses (every flax module) look it up there
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------------------------
# Workloads
# --------------------------------------------------------------------------------------------

class Workload:
    """One bundle computation: its args (manifest order), JAX's results on fixed inputs."""

    def __init__(self, name, bundle, batch, make_module, iters, warmup):
        import numpy as np
        from flax.traverse_util import unflatten_dict
        from jax import export as jax_export
        from safetensors.numpy import load_file

        self.name, self.bundle, self.batch = name, bundle, batch
        self.iters, self.warmup = iters, warmup
        self.dir = os.path.join(HLO, bundle)
        self.module = make_module()
        with open(os.path.join(self.dir, "manifest.json")) as f:
            manifest = json.load(f)
        comp = [c for c in manifest["methods"]["__call__"]["inference"] if c["batch_size"] == batch]
        if len(comp) != 1:
            raise SystemExit(f"{bundle}: no inference computation for batch {batch}")
        self.file = os.path.join(self.dir, comp[0]["file"])
        self.arg_specs, self.result_specs = comp[0]["args"], comp[0]["results"]
        self.variables = load_file(os.path.join(self.dir, "variables.safetensors"))
        golden = load_file(os.path.join(self.dir, "golden.safetensors"))
        (in_spec,) = [a for a in self.arg_specs if a["role"] == "input"]
        g = golden.get("inputs/inputs")
        if g is not None and list(g.shape) == in_spec["shape"]:
            self.x = g  # the bundle's golden inputs where the batch matches
        else:
            self.x = np.random.default_rng(0).standard_normal(in_spec["shape"]).astype(in_spec["dtype"])
        self.args = [self.x if a["role"] == "input" else self.variables[a["name"]] for a in self.arg_specs]
        nested = unflatten_dict(dict(self.variables), sep="/")
        self.params = nested["params"]
        self.state_names = [a["name"] for a in self.arg_specs if a["role"] == "state"]
        with open(self.file, "rb") as f:
            self.exported = jax_export.deserialize(bytearray(f.read()))
        self.expected = self._jax_results(golden)

    def state_tree(self, values):
        from flax.traverse_util import unflatten_dict
        return unflatten_dict(dict(zip(self.state_names, values)), sep="/")

    def _jax_results(self, golden) -> list:
        """JAX's results of the bundle's computation: [(result name, array)] in manifest order."""
        import jax
        import numpy as np
        state = self.state_tree([self.variables[n] for n in self.state_names])
        out = self.exported.call(self.params, state, self.x)
        leaves = [np.asarray(v) for v in jax.tree_util.tree_leaves(out)]
        names = [r["name"] for r in self.result_specs]
        if len(leaves) != len(names):
            raise SystemExit(f"{self.name}: JAX returned {len(leaves)} results, manifest has {len(names)}")
        g = golden.get("inference/outputs")
        if g is not None and g.shape == leaves[0].shape:  # sanity: JAX here agrees with the golden data
            bad = check(leaves[0], g)
            if bad:
                raise SystemExit(f"{self.name}: JAX on this machine disagrees with golden data: {bad}")
        return list(zip(names, leaves))


def check(got, want) -> str | None:
    """None when `got` agrees with `want`, else what differs."""
    import numpy as np
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape or got.dtype != want.dtype:
        return f"{got.dtype}{list(got.shape)} vs JAX {want.dtype}{list(want.shape)}"
    if np.issubdtype(want.dtype, np.integer):
        return None if np.array_equal(got, want) else f"integers differ (max {np.abs(got - want).max()})"
    err = float(np.abs(got.astype(np.float64) - want).max())
    scale = max(float(np.abs(want).max()), 1.0)
    if not np.isfinite(err) or err > RTOL * scale:
        return f"max |diff| {err:.3g} > {RTOL:g} × {scale:.3g}"
    return None


def rel_err(got, want) -> float:
    import numpy as np
    want = np.asarray(want)
    if np.issubdtype(want.dtype, np.integer):
        return 0.0 if np.array_equal(got, want) else float("inf")
    return float(np.abs(np.asarray(got, np.float64) - want).max()) / max(float(np.abs(want).max()), 1.0)


# --------------------------------------------------------------------------------------------
# ONNX Runtime
# --------------------------------------------------------------------------------------------

def ort_lib() -> str:
    import onnxruntime
    libs = sorted(glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), "capi", "libonnxruntime.so*")))
    if not libs:
        raise SystemExit("libonnxruntime.so not found in the onnxruntime wheel")
    return libs[0]


def ort_model(w: Workload) -> tuple[str, list[str]]:
    """Convert the Flax module with jax2onnx (variables as initializers, state as inputs and
    outputs); reuse the file while the bundle and the pins are unchanged. Returns the .onnx path
    and the ONNX output names in manifest result order."""
    from jax2onnx import to_onnx
    from flax.traverse_util import flatten_dict
    import jax
    out_dir = os.path.join(WORK, "onnx", w.name)
    path = os.path.join(out_dir, "model.onnx")
    stamp = os.path.join(out_dir, "stamp")
    key = sha256_files(w.file, os.path.join(w.dir, "variables.safetensors"), REQUIREMENTS,
                       MODELS, os.path.abspath(__file__))
    out_names = ["outputs"] + [f"new/{n}" for n in w.state_names]
    if os.path.exists(path) and os.path.exists(stamp) and open(stamp).read() == key:
        return path, out_names
    shutil.rmtree(out_dir, ignore_errors=True)
    os.makedirs(out_dir)
    module, params, names = w.module, w.params, w.state_names

    def step(*args):
        """The inference call: state leaves (manifest order) and the inputs in; the outputs and
        the updated state leaves out."""
        if not names:
            return module.apply({"params": params}, args[-1])
        state = w.state_tree(args[:-1])
        out, mut = module.apply({"params": params, **state}, args[-1], training=False, mutable=list(state))
        flat = flatten_dict(mut, sep="/")
        return (out, *[flat[n] for n in names])

    ins = [w.variables[n] for n in names] + [w.x]
    t0 = time.time()
    log(f"  jax2onnx: converting {w.name} ...")
    to_onnx(step, [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in ins], model_name=w.name,
            return_mode="file", output_path=path, input_names=[*names, "inputs"], output_names=out_names)
    log(f"  jax2onnx: {w.name} in {time.time() - t0:.0f} s")
    with open(stamp, "w") as f:
        f.write(key)
    return path, out_names


def ort_inputs_file(w: Workload) -> str:
    from safetensors.numpy import save_file
    path = os.path.join(WORK, "onnx", w.name, "inputs.safetensors")
    save_file({**{n: w.variables[n] for n in w.state_names}, "inputs": w.x}, path)
    return path


def ort_bench(model, inputs, warmup, iters, save=None) -> dict:
    cmd = [ORT_BIN, "--ort-lib", ort_lib(), "--model", model, "--inputs", inputs,
           "--warmup", str(warmup), "--iters", str(iters)]
    if save:
        cmd += ["--save-outputs", save]
    return last_json(run(cmd).stdout)


def ort_check(w: Workload, model, out_names) -> list[tuple[str, float]] | str:
    """Errors per result (name, scale-relative error), or what is wrong."""
    from safetensors.numpy import load_file
    inputs = ort_inputs_file(w)
    save = os.path.join(WORK, "onnx", w.name, "outputs.safetensors")
    ort_bench(model, inputs, 0, 1, save=save)
    got = load_file(save)
    return compare(w, [got.get(n) for n in out_names])


def compare(w: Workload, got: list) -> list[tuple[str, float]] | str:
    errs = []
    for (name, want), g in zip(w.expected, got):
        if g is None:
            return f"{name}: missing"
        bad = check(g, want)
        if bad:
            return f"{name}: {bad}"
        errs.append((name, rel_err(g, want)))
    return errs


# --------------------------------------------------------------------------------------------
# IREE
# --------------------------------------------------------------------------------------------

ALIASING = re.compile(r"\s*\{tf\.aliasing_output = \d+ : i32\}")


def strip_aliasing(text: str) -> str:
    out = ALIASING.sub("", text)
    if "tf.aliasing_output" in out:
        raise SystemExit("tf.aliasing_output left in the module after stripping")
    return out


def iree_bin(tool: str) -> str:
    return os.path.join(VENV, "bin", tool)


def iree_variant_mlir(w: Workload, variant: str) -> tuple[str, list]:
    """StableHLO text and its arguments: 'args' = the bundle's module as it is (params as
    arguments); 'consts' = the same computation called with the params as constants."""
    import jax
    if variant == "args":
        return strip_aliasing(w.exported.mlir_module()), w.args
    state_vals = [w.variables[n] for n in w.state_names]

    def f(state, x):  # numpy params closed over: jax.jit lowers them as constants
        return w.exported.call(w.params, w.state_tree(state), x)

    lowered = jax.jit(f).lower(state_vals, w.x)
    text = lowered.compiler_ir("stablehlo").operation.get_asm(large_elements_limit=None)
    if "__elided__" in text:
        raise SystemExit("constants were elided from the printed module")
    return strip_aliasing(text), [*state_vals, w.x]


def iree_prepare(w: Workload, variant: str) -> tuple[str, list[str]]:
    """Compile (cached by content) and write the .npy inputs; returns (vmfb, --input flags)."""
    import numpy as np
    d = os.path.join(WORK, "iree", w.name, variant)
    os.makedirs(d, exist_ok=True)
    text, args = iree_variant_mlir(w, variant)
    mlir = os.path.join(d, "module.mlir")
    vmfb = os.path.join(d, "module.vmfb")
    key = hashlib.sha256((text + " ".join(IREE_COMPILE_FLAGS)).encode()).hexdigest()
    stamp = os.path.join(d, "stamp")
    if not (os.path.exists(vmfb) and os.path.exists(stamp) and open(stamp).read() == key):
        with open(mlir, "w") as f:
            f.write(text)
        t0 = time.time()
        run([iree_bin("iree-compile"), mlir, *IREE_COMPILE_FLAGS, "-o", vmfb])
        log(f"  iree-compile {w.name} ({variant}): {time.time() - t0:.1f} s")
        with open(stamp, "w") as f:
            f.write(key)
    flags = []
    for i, a in enumerate(args):
        p = os.path.join(d, f"in{i}.npy")
        np.save(p, np.asarray(a))
        flags.append(f"--input=@{p}")
    return vmfb, flags


def iree_check(w: Workload, vmfb, inputs, driver) -> list[tuple[str, float]] | str:
    import numpy as np
    d = os.path.dirname(vmfb)
    outs = [os.path.join(d, f"out{i}.{driver}.npy") for i in range(len(w.expected))]
    for o in outs:
        if os.path.exists(o):
            os.remove(o)
    run([iree_bin("iree-run-module"), f"--module={vmfb}", f"--device={driver}", "--function=main",
         *inputs, *[f"--output=@{o}" for o in outs]])
    return compare(w, [np.load(o) if os.path.exists(o) else None for o in outs])


def iree_bench(vmfb, inputs, driver, warmup, iters, reps=5) -> float:
    """Median over `reps` repetitions of the mean µs per call (iree-benchmark-module
    reports a mean per repetition); a warm-up run first."""
    per = max(1, iters // reps)
    cmd = [iree_bin("iree-benchmark-module"), f"--module={vmfb}", f"--device={driver}", "--function=main",
           *inputs, f"--benchmark_min_time={per}x", f"--benchmark_repetitions={reps}",
           "--benchmark_format=json", f"--benchmark_min_warmup_time={0.0001 * max(warmup, 1)}"]
    out = json.loads(run(cmd).stdout)
    times = [b for b in out["benchmarks"] if b.get("run_type") == "iteration"]
    unit = {"ns": 1e-3, "us": 1.0, "ms": 1e3, "s": 1e6}
    return statistics.median(b["real_time"] * unit[b["time_unit"]] for b in times)


# --------------------------------------------------------------------------------------------
# flaxlayer
# --------------------------------------------------------------------------------------------

def fl_bench(w: Workload, processes: int, bundle_dir: str | None = None) -> float:
    """Median µs per call of `flaxlayer bench` on the workload's bundle (or `bundle_dir`: its
    frozen twin); the decoder's caches hold max_len = 16 positions, so it runs 4 + 12 calls per
    process in several processes."""
    cache = os.path.join(WORK, "fl-cache")
    meds = []
    for _ in range(processes):
        p = run([FL_BIN, "bench", bundle_dir or w.dir, "--batch", str(w.batch), "--warmup", str(w.warmup),
                 "--iters", str(w.iters), "--json"], env={"FLAXLAYER_CACHE": cache})
        meds.append(last_json(p.stdout)["median_us"])
    return statistics.median(meds)


# --------------------------------------------------------------------------------------------
# perf profile of flaxlayer's MLP batch-1 call
# --------------------------------------------------------------------------------------------

def perf_works() -> bool:
    try:
        p = subprocess.run(["perf", "record", "-e", "cpu-clock", "-o", os.devnull, "--", "true"],
                           capture_output=True, text=True, timeout=60)
        return p.returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def category(dso: str, sym: str) -> str:
    """Where a sample's leaf frame runs."""
    s = sym.lower()
    if dso.startswith("[kernel"):
        return "kernel"
    if re.search(r"(^|[^a-z])(malloc|free|calloc|realloc|cfree|_int_malloc|_int_free|malloc_consolidate|"
                 r"_int_memalign|_mid_memalign|__libc_memalign|unlink_chunk|operator new|operator delete)"
                 r"([^a-z]|$)", s):
        return "malloc/free (libc, operator new/delete)"
    if dso == "flaxlayer":
        return "flaxlayer (our crate + Rust std)"
    if "pjrt" in dso or "plugin" in dso:
        return "plugin .so (stripped: PJRT/XLA runtime and its Eigen kernels)"
    if dso.startswith(("[JIT", "[unknown]", "perf-", "//anon")):
        return "XLA-compiled kernels (JIT code)"
    if dso.startswith("libc") or dso.startswith("ld-linux"):
        return "libc other (memcpy, strcmp, ...)"
    if "libstdc++" in dso or "libgcc" in dso:
        return "libstdc++/libgcc (dynamic_cast, ...)"
    return f"other ({dso})"


SETUP_FRAMES = ("FlaxLayerBuilder::build", "Bundle::open", "Plugin::load", "Client::new")


def entry_point(frames) -> str:
    """The flaxlayer function a sample is under: the innermost `flaxlayer::pjrt::` frame (the
    PJRT call our crate made), else the innermost `flaxlayer::` frame (our own code)."""
    syms = [sym for sym, _ in frames]
    if any(any(f in sym for f in SETUP_FRAMES) for sym in syms):
        return "setup (bundle, plugin, compile cache)"
    for pat in ("flaxlayer::pjrt::", "flaxlayer::"):
        for sym in syms:
            if sym.startswith(pat) or f"<impl {pat}" in sym or sym.startswith(f"<{pat}"):
                return re.sub(r"^flaxlayer::", "", sym)
    return "(stack not unwound past JIT/stripped code)"


def perf_profile(calls: int) -> dict:
    """`perf record` (cpu-clock sampling, DWARF call graphs) of `flaxlayer bench hlo/mlp --batch 1`:
    self time by category and by symbol, and the flaxlayer function each sample is under."""
    data = os.path.join(WORK, "perf.data")
    cache = os.path.join(WORK, "fl-cache")
    run(["perf", "record", "-e", "cpu-clock", "-F", "999", "--call-graph", "dwarf,16384", "-o", data, "--",
         FL_BIN, "bench", os.path.join(HLO, "mlp"), "--batch", "1", "--warmup", "1000", "--iters", str(calls),
         "--json"], env={"FLAXLAYER_CACHE": cache})
    script = run(["perf", "script", "-i", data, "-F", "ip,sym,dso"], timeout=900).stdout
    samples = []
    for block in script.split("\n\n"):
        raw = []
        for line in block.splitlines():
            m = re.match(r"\s*([0-9a-f]+) (.*) \((.*)\)$", line)
            if m:
                raw.append((m.group(1), m.group(2).strip(), os.path.basename(m.group(3))))
        # an inlined frame belongs to the next real frame at the same address; perf prints none
        # for frames inlined inside libc (tcache_get, __GI___libc_free, ...)
        frames = []
        for i, (ip, sym, dso) in enumerate(raw):
            if dso == "inlined":
                dso = next((d for a, _, d in raw[i + 1:] if a == ip and d != "inlined"), "libc.so.6")
            frames.append((sym, dso))
        if frames:
            samples.append(frames)
    n = len(samples)
    cats: dict[str, int] = {}
    entries: dict[str, dict[str, int]] = {}
    syms: dict[tuple[str, str], int] = {}
    for frames in samples:
        sym, dso = frames[0]
        if category(dso, sym).startswith("XLA-compiled"):
            dso, sym = "[JIT code]", "(XLA-compiled code, all addresses)"
        elif re.fullmatch(r"\[unknown\]|0x[0-9a-f]+", sym) or sym == "[unknown]":
            sym = "(stripped, all addresses)"
        c = category(dso, sym)
        cats[c] = cats.get(c, 0) + 1
        e = entries.setdefault(entry_point(frames), {})
        e[c] = e.get(c, 0) + 1
        syms[(dso, sym)] = syms.get((dso, sym), 0) + 1
    pct = lambda k: 100.0 * k / max(n, 1)  # noqa: E731
    top = [f"{pct(k):6.2f}%  {k:6d}  {dso[:28]:28s}  {sym[:110]}"
           for (dso, sym), k in sorted(syms.items(), key=lambda kv: -kv[1])[:30]]
    entry_rows = []
    for e, cs in sorted(entries.items(), key=lambda kv: -sum(kv[1].values()))[:12]:
        parts = ", ".join(f"{c.split(' (')[0]} {pct(k):.1f}" for c, k in sorted(cs.items(), key=lambda kv: -kv[1])[:4])
        entry_rows.append((e, pct(sum(cs.values())), parts))
    return {"categories": [(c, pct(k)) for c, k in sorted(cats.items(), key=lambda kv: -kv[1])],
            "entries": entry_rows, "top": top, "samples": n, "calls": calls}


def callgrind_profile(calls: int) -> dict | None:
    """valgrind --tool=callgrind on `flaxlayer bench hlo/mlp --batch 1`, collecting only inside
    `FlaxLayer::call`: instructions per call by library (self) and by flaxlayer function
    (inclusive). Instruction counts don't depend on what else the machine runs."""
    if shutil.which("valgrind") is None or shutil.which("callgrind_annotate") is None:
        return None
    out = os.path.join(WORK, "callgrind.out")
    warmup = 10
    run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
         "--toggle-collect=flaxlayer::layer::jax_layer::FlaxLayer::call", FL_BIN, "bench",
         os.path.join(HLO, "mlp"), "--batch", "1", "--warmup", str(warmup), "--iters", str(calls), "--json"],
        env={"FLAXLAYER_CACHE": os.path.join(WORK, "fl-cache")}, timeout=1800)
    n = calls + warmup
    line = re.compile(r"^\s*([\d,]+) \(\s*[\d.]+%\)\s+(.*?):(.*) \[(.*)\]$")

    def annotate(inclusive: bool):
        # run outside the repo: inside it, callgrind_annotate shortens source paths and then
        # splits a function's inclusive cost by source file
        txt = run(["callgrind_annotate", "--auto=no", "--threshold=100", f"--inclusive={'yes' if inclusive else 'no'}",
                   out], cwd=WORK).stdout
        totals.extend(int(m.group(1).replace(",", "")) for m in re.finditer(r"^\s*([\d,]+) \S+\s+PROGRAM TOTALS", txt, re.M))
        rows = []
        for l in txt.splitlines():
            m = line.match(l)
            if m:
                rows.append((int(m.group(1).replace(",", "")), m.group(3).strip(), os.path.basename(m.group(4))))
        return rows

    totals: list[int] = []
    self_rows = annotate(False)
    total = totals[0]
    cats: dict[str, int] = {}
    for ir, fn, obj in self_rows:
        c = category("[JIT code]" if obj == "???" else obj, fn)
        cats[c] = cats.get(c, 0) + ir
    incl = {}
    for ir, fn, obj in annotate(True):
        if obj == "flaxlayer" and fn.startswith(("flaxlayer::", "<flaxlayer::", "core::ptr::drop_in_place<flaxlayer::")):
            incl[fn] = max(incl.get(fn, 0), ir)
    wanted = ["FlaxLayer::call", "Computation::run_with_opt_state", "LoadedExecutable::execute_on",
              "Computation::executable", "jax_layer::prepare", "buffer_from_bytes", "jax_layer::download_outputs",
              "Buffer::copy_to_host_bytes", "jax_layer::to_tensor"]
    fn_rows = []
    for w in wanted:
        hits = [(ir, fn) for fn, ir in incl.items() if fn.endswith(w)]
        if hits:
            ir, fn = max(hits)
            fn_rows.append((re.sub(r"^flaxlayer::", "", fn), ir / n, 100.0 * ir / total))
    return {"calls": n, "total": total, "per_call": total / n,
            "categories": [(c, ir / n, 100.0 * ir / total) for c, ir in sorted(cats.items(), key=lambda kv: -kv[1])]
            + [("(functions below callgrind_annotate's cut-off)", (total - sum(cats.values())) / n,
                100.0 * (total - sum(cats.values())) / total)],
            "functions": fn_rows}


# --------------------------------------------------------------------------------------------
# Environment description
# --------------------------------------------------------------------------------------------

def lscpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=30).stdout
    except OSError:
        return platform.processor() or "?"
    info = dict(re.findall(r"^([^:\n]+):\s*(.+)$", out, re.M))
    model = info.get("Model name", "?").strip()
    hv = info.get("Hypervisor vendor")
    return f"{model}{f' ({hv} VM)' if hv else ''}, {os.cpu_count()} logical cores"


def dist_version(name: str, path=None) -> str:
    try:
        if path:
            (d,) = [d for d in md.distributions(path=[path]) if d.metadata["Name"].lower() == name.lower()]
            return d.version
        return md.version(name)
    except (md.PackageNotFoundError, ValueError):
        return "?"


def ort_crate_version() -> str:
    try:
        with open(os.path.join(ORT_BENCH_DIR, "Cargo.lock")) as f:
            m = re.search(r'name = "ort"\nversion = "([^"]+)"', f.read())
        return m.group(1) if m else "?"
    except OSError:
        return "?"


def git_rev() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=REPO, timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=REPO, timeout=30).stdout.strip()
        return rev + (", dirty tree" if dirty else "")
    except OSError:
        return "?"


def loadavg() -> str:
    try:
        return open("/proc/loadavg").read().split()[0]
    except OSError:
        return "?"


def load1() -> float:
    try:
        return float(loadavg())
    except ValueError:
        return 0.0


# --------------------------------------------------------------------------------------------
# Table
# --------------------------------------------------------------------------------------------

def fmt_us(x: float) -> str:
    return f"{x / 1e3:.2f} ms" if x >= 1e3 else f"{x:.1f} µs"


def cell(vals: list[float], ours: list[float]) -> str:
    """median over rounds (min–max of round medians), and peer/flaxlayer median of per-round ratios."""
    if not vals:
        return "—"
    med = statistics.median(vals)
    lo, hi = min(vals), max(vals)
    rng = f"{lo:.1f}–{hi:.1f} µs" if hi < 1e3 else f"{lo / 1e3:.2f}–{hi / 1e3:.2f} ms"
    txt = f"{fmt_us(med)} ({rng})"
    if ours and len(ours) == len(vals):
        txt += f", **{statistics.median(v / o for v, o in zip(vals, ours)):.2f}×**"
    return txt


def md_table(head, rows) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(out)


def replace_block(text: str, begin: str, end: str, body: str) -> str:
    block = f"{begin}\n{body.strip()}\n{end}"
    if begin in text and end in text:
        a = text.index(begin)
        b = text.index(end, a) + len(end)
        return text[:a] + block + text[b:]
    return text.rstrip("\n") + "\n\n" + block + "\n"


def profile_markdown(profile, callgrind, now, load) -> str | None:
    parts = []
    if callgrind:
        cg_cats = md_table(["library (self)", "instructions per call", "share"],
                           [[c, f"{ir:,.0f}", f"{p:.1f}%"] for c, ir, p in callgrind["categories"] if p >= 0.05])
        cg_fns = md_table(["flaxlayer function (inclusive)", "instructions per call", "share"],
                          [[f"`{fn}`", f"{ir:,.0f}", f"{p:.1f}%"] for fn, ir, p in callgrind["functions"]])
        parts.append(f"""**Instructions** (`valgrind --tool=callgrind`, collecting inside `FlaxLayer::call` only,
{callgrind['calls']:,} calls of `flaxlayer bench hlo/mlp --batch 1`): {callgrind['per_call']:,.0f} instructions per
call. These counts don't depend on the machine's load. The first call also loads the executable
from the compile cache (`Computation::executable`); that is a one-time cost, counted here once.

{cg_cats}

{cg_fns}
""")
    if profile:
        cats = md_table(["where (self time)", "share of samples"],
                        [[c, f"{p:.1f}%"] for c, p in profile["categories"] if p >= 0.05])
        entries = md_table(["under flaxlayer function", "share of samples", "of which (leaf, %)"],
                           [[f"`{e}`", f"{p:.1f}%", parts_] for e, p, parts_ in profile["entries"]])
        parts.append(f"""**Time** (`perf record -e cpu-clock -F 999 --call-graph dwarf` of `flaxlayer bench hlo/mlp
--batch 1 --iters {profile['calls']:,}`, {profile['samples']} samples). Hardware counters are not available in
this VM, so this is timer sampling; the 1-minute load average was {load} when the profile
started, so other processes compete for the cores. The plugin `.so` is stripped: its runtime
code and the Eigen kernels it calls can't be told apart by name. "XLA-compiled kernels" is the
code XLA generated for the MLP.

Self time by where the sampled instruction is:

{cats}

By the flaxlayer function the sample is under: the innermost `flaxlayer::pjrt::` frame, which is the PJRT
call our crate made, or else our own code. Unwinding often stops inside JIT code or the stripped plugin,
so these shares are lower bounds:

{entries}

<details><summary>Top 30 leaf symbols (self time; XLA-compiled addresses merged)</summary>

```
{chr(10).join(profile['top'])}
```
</details>
""")
    return f"Profiled {now}.\n\n" + "\n".join(parts) if parts else None


def run_profiles():
    """(perf profile or None, callgrind profile or None) of flaxlayer's MLP batch-1 call."""
    profile = None
    if perf_works():
        log("[peers] perf profile of flaxlayer's mlp b1 call")
        profile = perf_profile(200_000)
    else:
        log("[peers] perf does not work here: no perf profile")
    log("[peers] callgrind profile of flaxlayer's mlp b1 call")
    return profile, callgrind_profile(2000)


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="2 rounds, few iterations, no BENCHMARKS.md")
    ap.add_argument("--no-write", action="store_true", help="do not write BENCHMARKS.md")
    ap.add_argument("--no-profile", action="store_true", help="skip the profiles")
    ap.add_argument("--profile-only", action="store_true", help="only the profiles (no peers, no rounds)")
    ap.add_argument("--only", nargs="*", choices=["mlp", "cnn", "decoder"], help="some workloads only")
    ap.add_argument("--wait-idle", type=float, default=0, metavar="SECONDS",
                    help="before timing, wait up to SECONDS for the 1-minute load average to drop below 1")
    args = ap.parse_args(argv)
    q = args.quick
    rounds = 2 if q else args.rounds
    write = not (args.no_write or q)
    t_start = time.time()
    os.makedirs(WORK, exist_ok=True)

    log("[peers] building target/release/flaxlayer and the ORT bench")
    run(["cargo", "build", "--profile", "profiling", "--bin", "flaxlayer"], timeout=3600)
    run(["cargo", "build", "--release", "--manifest-path", os.path.join(ORT_BENCH_DIR, "Cargo.toml"),
         "--target-dir", os.path.join(REPO, "target", "peers")], timeout=3600)

    if args.profile_only:
        profile, callgrind = run_profiles()
        now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        prof_body = profile_markdown(profile, callgrind, now, loadavg())
        print(prof_body)
        if write and prof_body:
            path = os.path.join(REPO, "BENCHMARKS.md")
            with open(path) as f:
                text = f.read()
            with open(path, "w") as f:
                f.write(replace_block(text, PROF_BEGIN, PROF_END, prof_body))
            log(f"[peers] wrote the profile into {path}")
        return 0

    import jax
    jax.config.update("jax_platforms", "cpu")
    models = load_models()

    # (name, bundle, batch, module, iters, warmup); flaxlayer's decoder: 4 + 12 calls a process.
    # FROZEN: the same module and variables exported with frozen=True (params compiled in).
    specs = [
        ("mlp", "mlp", 1, models.MLP, 300 if q else 3000, 50 if q else 300),
        ("cnn", "cnn", 256, models.MyFlaxModule, 6 if q else 40, 2 if q else 5),
        ("decoder", "decoder", 1, models.TinyDecoder, 12, 4),
    ]
    peer_iters = {"mlp": (300, 50) if q else (3000, 300), "cnn": (6, 2) if q else (40, 5),
                  "decoder": (300, 50) if q else (3000, 300)}
    fl_procs = {"mlp": 1, "cnn": 1, "decoder": 2 if q else 4}
    workloads = [Workload(*s) for s in specs if not args.only or s[0] in args.only]
    frozen = {"mlp": "mlp_frozen", "decoder": "decoder_frozen"}

    # ---- prepare and check every peer (outputs vs JAX) before timing ----------------------
    systems: dict[str, dict[str, dict]] = {}  # workload -> system -> {check, run}
    for w in workloads:
        log(f"[peers] {w.name}: preparing peers")
        sy = systems[w.name] = {}
        try:
            model, out_names = ort_model(w)
            inputs = ort_inputs_file(w)
            chk = ort_check(w, model, out_names)
            sy["ORT"] = {"check": chk, "run": (lambda m=model, i=inputs, it=peer_iters[w.name]:
                                               ort_bench(m, i, it[1], it[0])["median_us"])}
        except Exception as e:  # noqa: BLE001 (a peer that fails is reported, not fatal)
            sy["ORT"] = {"check": f"failed: {str(e).strip().splitlines()[-1][:200]}"}
        for variant in ("args", "consts"):
            try:
                vmfb, flags = iree_prepare(w, variant)
            except Exception as e:  # noqa: BLE001
                for drv in IREE_DRIVERS:
                    sy[f"IREE {variant} {drv}"] = {"check": f"failed: {str(e).strip().splitlines()[-1][:200]}"}
                continue
            for drv in IREE_DRIVERS:
                try:
                    chk = iree_check(w, vmfb, flags, drv)
                except Exception as e:  # noqa: BLE001
                    chk = f"failed: {str(e).strip().splitlines()[-1][:200]}"
                sy[f"IREE {variant} {drv}"] = {
                    "check": chk, "run": (lambda v=vmfb, f=flags, d=drv, it=peer_iters[w.name]:
                                          iree_bench(v, f, d, it[1], it[0]))}
        for name, s in sy.items():
            ok = not isinstance(s["check"], str)
            log(f"  {name}: " + (f"outputs agree (max rel err {max(e for _, e in s['check']):.2g})" if ok
                                else f"NOT TIMED: {s['check']}"))

    # ---- alternating rounds -----------------------------------------------------------------
    deadline = time.time() + args.wait_idle
    while time.time() < deadline and load1() >= 1.0:
        log(f"[peers] load average {loadavg()}: waiting for the machine to be idle")
        time.sleep(min(30.0, max(deadline - time.time(), 0.0)))
    load_start = loadavg()
    if load1() >= 1.0:
        log(f"[peers] note: load average {load_start} at the start of the timed rounds")
    res: dict[str, dict[str, list[float]]] = {w.name: {} for w in workloads}
    for r in range(rounds):
        log(f"[peers] round {r + 1}/{rounds}")
        for w in workloads:
            res[w.name].setdefault("flaxlayer", []).append(fl_bench(w, fl_procs[w.name]))
            if w.name in frozen:
                res[w.name].setdefault("flaxlayer frozen", []).append(
                    fl_bench(w, fl_procs[w.name], os.path.join(HLO, frozen[w.name])))
            for name, s in systems[w.name].items():
                if isinstance(s["check"], str):
                    continue
                res[w.name].setdefault(name, []).append(s["run"]())
    load_end = loadavg()

    profile = callgrind = None
    if not args.no_profile and not q:
        profile, callgrind = run_profiles()
    elapsed = time.time() - t_start

    # ---- report -------------------------------------------------------------------------------
    rows, checks, detail = [], [], []
    for w in workloads:
        rs, sy = res[w.name], systems[w.name]
        ours = rs.get("flaxlayer", [])

        def best(prefix):
            cands = [(statistics.median(v), k) for k, v in rs.items() if k.startswith(prefix) and v]
            return min(cands)[1] if cands else None

        iree_a, iree_c = best("IREE args"), best("IREE consts")
        peers = [k for k in ("ORT", iree_a, iree_c) if k]
        # ours / best peer, per round
        ratio = "—"
        if peers and ours:
            per_round = [o / min(rs[k][i] for k in peers) for i, o in enumerate(ours)]
            ratio = f"{statistics.median(per_round):.2f}×"

        def peer_cell(k, label_missing):
            if k is None:
                return label_missing
            txt = cell(rs[k], ours)
            return txt + (f" [{k.split()[-1]}]" if k.startswith("IREE") else "")

        def missing(prefix):
            bad = [f"{k.split()[-1]}: {s['check']}" for k, s in sy.items()
                   if k.startswith(prefix) and isinstance(s["check"], str)]
            return "not timed: " + "; ".join(bad) if bad else "—"

        frz = rs.get("flaxlayer frozen", [])
        ratio_frozen = "—"
        if peers and frz:
            ratio_frozen = f"{statistics.median(f / min(rs[k][i] for k in peers) for i, f in enumerate(frz)):.2f}×"
        rows.append([f"{w.name} (b{w.batch})", cell(ours, []), cell(frz, ours) if frz else "—",
                     peer_cell("ORT" if "ORT" in rs else None, missing("ORT")),
                     peer_cell(iree_a, missing("IREE args")), peer_cell(iree_c, missing("IREE consts")), ratio, ratio_frozen])
        for k, s in sy.items():
            if isinstance(s["check"], str):
                checks.append([w.name, k, "**WRONG / FAILED**", s["check"]])
            else:
                checks.append([w.name, k, "ok", f"{max(e for _, e in s['check']):.2g}"])
        for k, v in rs.items():
            detail.append(f"{w.name}/{k}: " + ", ".join(f"{x:.1f}" for x in v))

    table = md_table(["workload", "flaxlayer", "flaxlayer, frozen inference", "ORT (ort crate)", "IREE, params as arguments",
                      "IREE, params as constants", "flaxlayer / best peer", "frozen / best peer"], rows)
    check_table = md_table(["workload", "peer", "outputs vs JAX", "max error / max(max|JAX|, 1)"], checks)
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    setup = os.environ.get("PEERS_SETUP_SECONDS", "?")
    vers = (f"onnxruntime {dist_version('onnxruntime')} (ort crate {ort_crate_version()}, load-dynamic, api-31), "
            f"jax2onnx {dist_version('jax2onnx')}, onnx {dist_version('onnx')}; "
            f"iree-base-compiler {dist_version('iree-base-compiler')}, iree-base-runtime {dist_version('iree-base-runtime')}; "
            f"jax {dist_version('jax')}, jaxlib {dist_version('jaxlib')}, flax {dist_version('flax')}; "
            f"flaxlayer {git_rev()} with lammps-jax-pjrt-cpu {dist_version('lammps-jax-pjrt-cpu', MAIN_SITE)}")
    it_txt = ", ".join(
        f"{w.name}: flaxlayer {fl_procs[w.name]}×{w.iters} (+{w.warmup}), peers {peer_iters[w.name][0]} (+{peer_iters[w.name][1]})"
        for w in workloads)
    body = f"""Reproduce: `python3 scripts/bench_peers.py` (installs `.venv-peers/` from
`scripts/requirements-peers.txt` on first use, builds `target/profiling/flaxlayer` and
`benches/peers`; not part of `scripts/demo.sh` or `scripts/test.sh`).

- Date: {now}; {rounds} rounds, each running flaxlayer, ORT, then IREE on a workload before the next; {elapsed:.0f} s total; 1-minute load average {load_start} at the start of the rounds, {load_end} at the end (other processes share the 2 cores).
- Machine: {lscpu_model()}.
- Versions: {vers}.
- Calls per round: {it_txt}.
- Each cell: median over rounds of the per-round median µs per call (min–max of the round
  medians), then **peer / flaxlayer** time, the median of the per-round ratios (< 1: the peer is
  faster). Last column: flaxlayer / the fastest peer, median of per-round ratios (> 1: a peer is faster).
- flaxlayer, frozen inference: the same on `hlo/mlp_frozen` / `hlo/decoder_frozen` (the same
  module and variables exported with `frozen=True`: params compiled in as constants, as in
  IREE's "constants" column), run right after flaxlayer in each round.
- flaxlayer: `flaxlayer bench BUNDLE --batch B --json`, host in → host out per call (inputs
  uploaded, outputs copied into new host tensors; params and the decoder's cache stay on the
  device, the cache advancing one position per call).
- ORT: `benches/peers` (Rust, `ort` crate) on the jax2onnx conversion of the same Flax module with
  the bundle's variables as initializers; per call: ORT values over host memory in, outputs
  copied into host `Vec`s. Default session options (all graph optimisations, one intra-op
  thread per core). The decoder's cache is an input and an output (fixed inputs every call).
- IREE: `iree-compile {' '.join(IREE_COMPILE_FLAGS)}` of the bundle's StableHLO
  (`tf.aliasing_output` stripped), timed by `iree-benchmark-module` (inputs already in HAL
  buffers, outputs left in them: no host copies; on CPU these are host memory). Reported: the
  faster driver over rounds, in brackets; value per round = median of 5 repetitions' mean.
  "Constants": the same exported computation called by `jax.jit` with the params closed over,
  so iree-compile sees them as constants (the decoder's cache stays an argument).
- Outputs checked against JAX before timing: max |peer − JAX| ≤ {RTOL:g} × max(max|JAX|, 1)
  for f32, integers exact; JAX = the bundle's `.jaxexport` called by JAX 0.10.2 on the same
  inputs (mlp and decoder: the bundle's golden inputs, and JAX agrees with the golden outputs;
  cnn b256: normal random inputs, seed 0).

{table}

Output checks (every result: the decoder's logits and its 7 updated cache entries):

{check_table}

<details><summary>Per-round medians (µs per call)</summary>

```
{chr(10).join(detail)}
```
</details>
"""
    prof_body = profile_markdown(profile, callgrind, now, load_end)
    print(table)
    print()
    print(check_table)
    print("\n".join(detail))
    if prof_body:
        print(prof_body)
    print(f"(.venv-peers setup {setup} s; run {elapsed:.0f} s)")
    if write:
        path = os.path.join(REPO, "BENCHMARKS.md")
        with open(path) as f:
            text = f.read()
        text = replace_block(text, BEGIN, END, body)
        if prof_body:
            text = replace_block(text, PROF_BEGIN, PROF_END, prof_body)
        with open(path, "w") as f:
            f.write(text)
        log(f"[peers] wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
