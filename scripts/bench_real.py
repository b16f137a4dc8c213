#!/usr/bin/env python3
"""Real-size benchmark: Hugging Face Flax models with random weights (no download), flaxlayer
against JAX, ONNX Runtime and IREE, same weights, outputs checked against JAX first.

    python3 scripts/bench_real.py                        # everything (~45 min here), writes BENCHMARKS.md
    python3 scripts/bench_real.py --rounds 3 --only bert_b1 gpt2_decode --no-write
    python3 scripts/bench_real.py --keep                 # keep the exported bundles (target/bench-real)

Not part of scripts/demo.sh or scripts/test.sh (the README's two commands). It runs in
.venv-peers (scripts/requirements-peers.txt, created on first use as scripts/bench_peers.py
does, plus transformers 4.57.6 with its pins from scripts/requirements-hf.txt) with the
exporter from scripts/ (the script's own directory), and builds target/release/flaxlayer.

Workloads (random weights from the default configs, seed 0):
  bert_b1, bert_b16   FlaxBertModel (BERT-base, 110M params), batch 1 / 16 x 128 tokens
  gpt2_decode         FlaxGPT2LMHeadModel (GPT-2 small, 124M), one decode step at batch 1, cache
                      of 256 positions (export_causal_lm); each process/loop starts from an
                      empty cache and advances it one token per call
  resnet50_b1, _b16   FlaxResNetForImageClassification (ResNet-50, 25.6M), 224x224, NHWC
  vit_b1              FlaxViTForImageClassification (ViT-B/16, 86M), 224x224, NHWC
Systems, each timed host in -> host out per call:
  flaxlayer args      `flaxlayer bench BUNDLE --no-frozen`: params as arguments; the computation
                      the layer selects (its JSON `mode` is reported: a bundle with a params-only
                      prologue runs it once and says so)
  flaxlayer frozen    `flaxlayer bench BUNDLE`: the frozen variant (params compiled in)
  JAX                 jax.jit of the same Flax function, numpy in, numpy out
  ORT                 jax2onnx conversion of the same function (params as initializers),
                      onnxruntime's Python API (default session options)
  IREE                iree-compile of the bundle's StableHLO (params as arguments, uploaded once),
                      iree.runtime's Python API, local-task driver
Rounds alternate the systems within a workload (round r: flaxlayer args, frozen, JAX, ORT,
IREE); each value is the median of the round's calls; the table gives the median over rounds
and the min-max of the round medians. For decode it adds the floor: the bytes of weights read
per token over the read bandwidth this script measures (numpy reductions over 1 GiB, 1 and 2 threads).
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


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def ensure_venv() -> None:
    """Create/update .venv-peers (as scripts/bench_peers.py does), then re-exec in it."""
    py = os.path.join(VENV, "bin", "python")
    if os.path.realpath(sys.prefix) == os.path.realpath(VENV):
        return
    if not os.path.exists(py):
        log("[real] creating .venv-peers")
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
    # A stamp of its own: bench_peers.py's covers requirements-peers.txt alone.
    stamp = os.path.join(VENV, ".requirements-real.sha256")
    with open(REQUIREMENTS, "rb") as f, open(os.path.join(HERE, "requirements-hf.txt"), "rb") as g:
        want = hashlib.sha256(f.read() + g.read()).hexdigest()
    have = open(stamp).read().strip() if os.path.exists(stamp) else ""
    if have != want:
        log("[real] installing scripts/requirements-peers.txt into .venv-peers")
        subprocess.run([py, "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r", REQUIREMENTS],
                       check=True)
        # transformers 4.57.6 with its own pins, over what jax2onnx brought (a huggingface_hub
        # too new for it), --no-deps so that jax and numpy stay as they are.
        log("[real] installing scripts/requirements-hf.txt (--no-deps) into .venv-peers")
        subprocess.run([py, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
                        "-r", os.path.join(HERE, "requirements-hf.txt")], check=True)
        with open(stamp, "w") as f:
            f.write(want + "\n")
    os.execv(py, [py, os.path.abspath(__file__), *sys.argv[1:]])


if __name__ == "__main__":
    ensure_venv()

# ---------------------------------------------------------------------------------------------
# Everything below runs inside .venv-peers.
# ---------------------------------------------------------------------------------------------

import argparse  # noqa: E402
import datetime as _dt  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import threading  # noqa: E402

# bench_peers (shared helpers) is beside this script, on the import path of a script run;
# transformers 4.57.6 and its pins (scripts/requirements-hf.txt) are in .venv-peers itself (see
# ensure_venv), the flaxlayer_export package too.
import bench_peers as bp  # noqa: E402

WORK = os.path.join(REPO, "target", "bench-real")
FL_BIN = os.path.join(REPO, "target", "release", "flaxlayer")
BEGIN, END = "<!-- real:begin -->", "<!-- real:end -->"
PROF_BEGIN, PROF_END = "<!-- real-profile:begin -->", "<!-- real-profile:end -->"
# Outputs agree when max|x - jax| <= RTOL * max(max|jax|, 1): deep f32 networks compiled by
# another XLA (the PJRT plugin's) or another compiler reassociate sums differently.
RTOL = 1e-4
SEQ = 128
IREE_COMPILE_TIMEOUT = 600  # seconds; a compile that takes longer is reported as failed
CACHE = 256
IMG = 224


def run(cmd, timeout=3600, env=None):
    return bp.run(cmd, timeout=timeout, env=env)


def fl_env() -> dict:
    """flaxlayer's environment: the CPU plugin from the repo's .venv, the compile cache here."""
    return {"VIRTUAL_ENV": os.path.join(REPO, ".venv"), "FLAXLAYER_CACHE": os.path.join(WORK, "fl-cache")}


# ---------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------

class Model:
    """One exported model and its JAX function. `fn(params_tree, inputs_dict) -> outputs dict`
    is what every system runs (JAX jits it, jax2onnx converts it with the params closed over,
    the bundle exports it)."""

    def __init__(self, name):
        self.name = name
        self.dir = os.path.join(WORK, "bundles", name)
        self.export_seconds = None


def _ints(shape, high, seed=0):
    import numpy as np
    return np.random.default_rng(seed).integers(0, high, size=shape).astype(np.int32)


def _floats(shape, seed=0):
    import numpy as np
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def bert_model():
    import numpy as np
    from transformers import BertConfig, FlaxBertModel
    m = Model("bert")
    hf = FlaxBertModel(BertConfig(), seed=0, input_shape=(1, SEQ))
    m.module, m.variables = hf.module, {"params": hf.params}

    def fn(module, inputs, training=False):
        return module(inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"],
                      inputs["position_ids"], None, deterministic=not training)

    def inputs(b):
        return {"input_ids": _ints((b, SEQ), 30522), "attention_mask": np.ones((b, SEQ), np.int32),
                "token_type_ids": np.zeros((b, SEQ), np.int32),
                "position_ids": np.broadcast_to(np.arange(SEQ, dtype=np.int32), (b, SEQ)).copy()}
    m.fn, m.inputs, m.batch_sizes = fn, inputs, [1, 16]
    return m


def resnet_model():
    from transformers import FlaxResNetForImageClassification, ResNetConfig
    m = Model("resnet50")
    hf = FlaxResNetForImageClassification(ResNetConfig(), seed=0, input_shape=(1, IMG, IMG, 3))
    m.module = hf.module
    m.variables = {"params": hf.params["params"], "batch_stats": hf.params["batch_stats"]}

    def fn(module, inputs, training=False):  # NHWC, as the module takes it
        return module(inputs, deterministic=not training)
    m.fn, m.inputs, m.batch_sizes = fn, (lambda b: _floats((b, IMG, IMG, 3))), [1, 16]
    return m


def vit_model():
    from transformers import FlaxViTForImageClassification, ViTConfig
    m = Model("vit")
    hf = FlaxViTForImageClassification(ViTConfig(), seed=0, input_shape=(1, IMG, IMG, 3))
    m.module, m.variables = hf.module, {"params": hf.params}

    def fn(module, inputs, training=False):
        return module(inputs, deterministic=not training)
    m.fn, m.inputs, m.batch_sizes = fn, (lambda b: _floats((b, IMG, IMG, 3))), [1]
    return m


def export_model(m: Model, frozen_batch_sizes) -> None:
    import flaxlayer_export as ef
    t0 = time.time()
    ef.export_flax(m.module, m.inputs(m.batch_sizes[0]), m.dir, method=m.fn, seed=0,
                   variables=m.variables, batch_sizes=m.batch_sizes, frozen=True,
                   frozen_batch_sizes=frozen_batch_sizes, batching=False)
    m.export_seconds = time.time() - t0
    log(f"[real] exported {m.name} in {m.export_seconds:.0f} s")


def gpt2_model():
    from transformers import FlaxGPT2LMHeadModel, GPT2Config
    m = Model("gpt2")
    m.hf = FlaxGPT2LMHeadModel(GPT2Config(), seed=0)
    m.batch_sizes = [1]
    return m


def export_gpt2(m: Model) -> None:
    from flaxlayer_export.causal_lm import export_causal_lm
    t0 = time.time()
    export_causal_lm(m.hf, m.dir, max_len=CACHE, prefill_lens=[16], frozen=True, frozen_methods=["decode"])
    m.export_seconds = time.time() - t0
    log(f"[real] exported gpt2 in {m.export_seconds:.0f} s")


# ---------------------------------------------------------------------------------------------
# workloads and systems
# ---------------------------------------------------------------------------------------------

class Workload:
    def __init__(self, name, label, model, batch, method, warmup, iters):
        self.name, self.label, self.model, self.batch = name, label, model, batch
        self.method, self.warmup, self.iters = method, warmup, iters
        self.systems = {}  # name -> {"check": errors | str, "run": fn -> per-call µs list, "note"}
        self.expected = None  # [(name, array)]


def named_outputs(out, host=True):
    """[(output name as the bundle names it, array)]; host=False keeps JAX values (tracers)."""
    import numpy as np
    from flaxlayer_export.names import named_leaves
    from flaxlayer_export.outputs import plain_outputs
    return [(n, np.asarray(x) if host else x) for n, x in named_leaves(plain_outputs(out), "outputs")]


def compare(w: Workload, got: dict) -> list | str:
    import numpy as np
    errs = []
    for name, want in w.expected:
        g = got.get(name)
        if g is None:
            return f"{name}: missing (got {sorted(got)})"
        g = np.asarray(g)
        if g.shape != want.shape:
            return f"{name}: shape {list(g.shape)} vs JAX {list(want.shape)}"
        err = float(np.abs(g.astype(np.float64) - want).max()) / max(float(np.abs(want).max()), 1.0)
        if not np.isfinite(err) or err > RTOL:
            return f"{name}: max |diff| / max(max|JAX|, 1) = {err:.3g} > {RTOL:g}"
        errs.append((name, err))
    return errs


def timed(call, warmup, iters) -> list[float]:
    for _ in range(warmup):
        call()
    us = []
    for _ in range(iters):
        t = time.perf_counter()
        call()
        us.append((time.perf_counter() - t) * 1e6)
    return us


# ---- JAX ---------------------------------------------------------------------------------------

def jax_system(w: Workload, x):
    """(the jitted call on `x` giving named numpy outputs, a timing function)."""
    import jax
    import numpy as np
    m = w.model
    if w.method == "decode":
        step = gpt2_step(m)
        cache0 = m.cache
        f = jax.jit(step, donate_argnums=(1,))

        def once():
            out, _ = jax.jit(step)(m.hf.params, cache0, x)
            return [("logits", np.asarray(out))]

        def bench():
            cache = jax.tree_util.tree_map(lambda a: jax.numpy.array(a), cache0)
            for _ in range(w.warmup):
                out, cache = f(m.hf.params, cache, x)
                np.asarray(out)
            us = []
            for _ in range(w.iters):
                t = time.perf_counter()
                out, cache = f(m.hf.params, cache, x)
                np.asarray(out)
                us.append((time.perf_counter() - t) * 1e6)
            return us
        return once, bench
    variables = m.variables
    f = jax.jit(lambda v, x: m.module.apply(v, x, method=m.fn))

    def call():
        return [(n, np.asarray(a)) for n, a in named_outputs(f(variables, x))]
    return call, (lambda: timed(call, w.warmup, w.iters))


def gpt2_step(m: Model):
    """The decode step the bundle exports: one token at the cache's position, logits [B, V]."""
    import jax.numpy as jnp
    from flaxlayer_export.causal_lm import hf_start, hf_step
    from flaxlayer_export.linen import to_plain
    if not hasattr(m, "cache"):
        m.cache = to_plain(m.hf.init_cache(1, CACHE))
    step, start = hf_step(m.hf, CACHE), hf_start(m.cache)

    def decode(params, cache, ids):
        logits, new_cache = step(params, cache, ids, start(cache), jnp.int32(1))
        return logits[:, 0], new_cache
    return decode


# ---- flaxlayer ---------------------------------------------------------------------------------

def fl_check(w: Workload, x, frozen: bool):
    import numpy as np
    from safetensors.numpy import load_file, save_file
    d = os.path.join(WORK, "io", w.name)
    os.makedirs(d, exist_ok=True)
    inp, out = os.path.join(d, "in.safetensors"), os.path.join(d, f"out-{int(frozen)}.safetensors")
    save_file({k: np.ascontiguousarray(v) for k, v in x.items()} if isinstance(x, dict)
              else {"inputs": np.ascontiguousarray(x)}, inp)
    cmd = [FL_BIN, "run", w.model.dir, "--input", inp, "--output", out]
    if w.method != "__call__":
        cmd += ["--method", w.method]
    if not frozen:
        cmd += ["--no-frozen"]
    run(cmd, env=fl_env())
    return compare(w, load_file(out))


def fl_bench(w: Workload, frozen: bool, info: dict) -> list[float]:
    cmd = [FL_BIN, "bench", w.model.dir, "--batch", str(w.batch), "--warmup", str(w.warmup),
           "--iters", str(w.iters), "--json"]
    if w.method != "__call__":
        cmd += ["--method", w.method]
    if not frozen:
        cmd += ["--no-frozen"]
    line = bp.last_json(run(cmd, env=fl_env()).stdout)
    info.update(line)
    return [line["median_us"]]  # per-call times stay in the process: its median


# ---- ONNX Runtime (jax2onnx) ------------------------------------------------------------------

def ort_system(w: Workload, x):
    import jax
    import numpy as np
    import onnxruntime as ort
    from jax2onnx import to_onnx
    m = w.model
    d = os.path.join(WORK, "onnx", w.name)
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, "model.onnx")
    if w.method == "decode":
        step = gpt2_step(m)
        paths, tree = jax.tree_util.tree_flatten_with_path(m.cache)
        leaves = [a for _, a in paths]
        # the updated keys and values are outputs; the per-layer `cache_index` counters are one
        # value (start + 1) that jax2onnx cannot name once per layer, so they are left out
        kv = [i for i, (p, _) in enumerate(paths) if getattr(p[-1], "key", None) != "cache_index"]
        params = m.hf.params

        def f(*args):
            logits, new_cache = step(params, jax.tree_util.tree_unflatten(tree, list(args[:-1])), args[-1])
            new = jax.tree_util.tree_leaves(new_cache)
            return (logits, *[new[i] for i in kv])
        ins = [np.asarray(a) for a in leaves] + [x]
        in_names = [f"c{i}" for i in range(len(leaves))] + ["input_ids"]
        out_names = ["logits"] + [f"new_c{i}" for i in kv]
        n_named = 1
    else:
        variables = m.variables
        if isinstance(x, dict):
            keys = sorted(x)

            def f(*args):
                outs = named_outputs(m.module.apply(variables, dict(zip(keys, args)), method=m.fn), host=False)
                return tuple(a for _, a in outs)
            ins = [x[k] for k in keys]
            in_names = keys
        else:
            def f(a):
                return tuple(v for _, v in named_outputs(m.module.apply(variables, a, method=m.fn), host=False))
            ins, in_names = [x], ["inputs"]
        out_names = [n for n, _ in w.expected]
        n_named = len(out_names)
    t0 = time.time()
    to_onnx(f, [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in ins], model_name=w.name,
            return_mode="file", output_path=path, input_names=in_names, output_names=out_names)
    log(f"  jax2onnx {w.name}: {time.time() - t0:.0f} s")
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    feed = dict(zip(in_names, ins))
    got = dict(zip(out_names[:n_named], sess.run(out_names[:n_named], feed)))
    check = compare(w, got)

    def call():
        return sess.run(out_names, feed)
    return check, (lambda: timed(call, w.warmup, w.iters)), sess


# ---- IREE ----------------------------------------------------------------------------------------

def iree_system(w: Workload, x):
    """iree-compile of the bundle's own computation (params as arguments), run by iree.runtime
    with the params uploaded once; inputs uploaded and outputs copied to the host per call."""
    import numpy as np
    import iree.runtime as rt
    from jax import export as jax_export
    from safetensors.numpy import load_file
    m = w.model
    man = json.load(open(os.path.join(m.dir, "manifest.json")))
    method = man["default_method"] if w.method == "__call__" else w.method
    (c,) = [c for c in man["methods"][method]["inference"] if c["batch_size"] == w.batch]
    exp = jax_export.deserialize(bytearray(open(os.path.join(m.dir, c["file"]), "rb").read()))
    d = os.path.join(WORK, "iree", w.name)
    os.makedirs(d, exist_ok=True)
    mlir, vmfb = os.path.join(d, "module.mlir"), os.path.join(d, "module.vmfb")
    with open(mlir, "w") as f:
        f.write(bp.strip_aliasing(exp.mlir_module()))
    t0 = time.time()
    run([bp.iree_bin("iree-compile"), mlir, *bp.IREE_COMPILE_FLAGS, "-o", vmfb], timeout=IREE_COMPILE_TIMEOUT)
    log(f"  iree-compile {w.name}: {time.time() - t0:.0f} s")
    os.remove(mlir)
    variables = load_file(os.path.join(m.dir, "variables.safetensors"))
    kept = sorted(exp.module_kept_var_idx)
    args = [c["args"][i] for i in kept]
    xin = x if isinstance(x, dict) else {"inputs": x}
    config = rt.Config("local-task")
    ctx = rt.SystemContext(config=config)
    with open(vmfb, "rb") as f:
        vm_module = rt.VmModule.copy_buffer(ctx.instance, f.read())
    ctx.add_vm_module(vm_module)
    fn = ctx.modules[vm_module.name]["main"]
    dev = config.device
    on_device = {i: rt.asdevicearray(dev, variables[a["name"]]) for i, a in enumerate(args)
                 if a["role"] in ("param", "state")}

    def call():
        vals = [on_device[i] if i in on_device else xin[a["name"]] for i, a in enumerate(args)]
        out = fn(*vals)
        out = out if isinstance(out, (list, tuple)) else [out]
        return [np.asarray(o.to_host()) for o in out]
    res_names = [r.get("name", r["role"]) for r in c["results"]]
    got = dict(zip(res_names, call()))
    return compare(w, got), (lambda: timed(call, w.warmup, w.iters)), ctx


# ---------------------------------------------------------------------------------------------
# per-op profile (JAX's profiler on the XLA CPU executable of the same Flax call)
# ---------------------------------------------------------------------------------------------

WRAPPER_EVENTS = ("ThreadpoolListener", "ThunkExecutor", "SlinkyThreadPool")


def op_category(name: str) -> str:
    n = name.lower()
    for key, cat in (("ynn", "YNNPACK fusions (matmuls, convolutions with their epilogues)"),
                     ("xnn", "XNNPACK fusions"), ("onednn", "oneDNN calls"),
                     ("convolution", "convolutions (XLA)"), ("dot", "dots / matmuls (XLA)"),
                     ("transpose", "transposes"), ("copy", "copies"), ("reduce", "reductions"),
                     ("fusion", "elementwise / loop fusions (XLA JIT)")):
        if key in n:
            return cat
    return "other"


def op_profile(fam: str, batch: int, calls: int = 5) -> dict:
    """Per-op time of `calls` calls of jax.jit of the model's Flax call: the XLA CPU runtime's
    trace events (one per executed thunk: YNNPACK/XNNPACK/oneDNN fusions, XLA fusions, copies),
    summed by op name and by kind, per call."""
    import glob
    import tempfile
    import jax
    from jax.profiler import ProfileData
    m = FAMILIES[fam]()
    x = m.inputs(batch)
    f = jax.jit(lambda v, x: m.module.apply(v, x, method=m.fn))
    for _ in range(2):
        jax.block_until_ready(f(m.variables, x))
    d = tempfile.mkdtemp(prefix="real-prof-", dir=WORK)
    t0 = time.perf_counter()
    with jax.profiler.trace(d):
        for _ in range(calls):
            jax.block_until_ready(f(m.variables, x))
    wall = (time.perf_counter() - t0) / calls
    (path,) = glob.glob(os.path.join(d, "**", "*.xplane.pb"), recursive=True)
    pd = ProfileData.from_file(path)
    by_op: dict[str, float] = {}
    for plane in pd.planes:
        if plane.name != "/host:CPU":
            continue
        for line in plane.lines:
            if line.name == "python":
                continue
            for e in line.events:
                # the executor's and thread pool's own events enclose the thunks: left out
                if e.name.startswith(WRAPPER_EVENTS) or e.duration_ns <= 0:
                    continue
                by_op[e.name] = by_op.get(e.name, 0.0) + e.duration_ns / 1e3 / calls
    shutil.rmtree(d, ignore_errors=True)
    by_cat: dict[str, float] = {}
    for n, us in by_op.items():
        by_cat[op_category(n)] = by_cat.get(op_category(n), 0.0) + us
    return {"wall_us": wall * 1e6, "ops": sorted(by_op.items(), key=lambda kv: -kv[1]),
            "cats": sorted(by_cat.items(), key=lambda kv: -kv[1])}


def op_profile_markdown(profiles: dict) -> str:
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [f"""Per-op profile (`python3 scripts/bench_real.py --op-profile ...`, {now}, load average
{bp.loadavg()}): JAX's profiler (`jax.profiler.trace`) over 5 calls of `jax.jit` of the same
Flax call, after 2 warm-up calls; the XLA CPU runtime records one event per executed thunk (a
YNNPACK fusion, an XLA loop fusion, a copy), summed by name and by kind, per call. Thunks run
on two threads, so the busy time can exceed the wall time. flaxlayer runs the same StableHLO
through the PJRT plugin's XLA (lammps-jax-pjrt-cpu), a build without symbols and without a
profiler hook, so the breakdown is JAX's; the plugin's XLA makes the same kinds of thunks."""]
    for name, p in profiles.items():
        total = sum(us for _, us in p["cats"]) or 1.0
        cats = bp.md_table(["kind", "busy time per call", "share"],
                           [[c, fmt_ms(us), f"{100 * us / total:.1f}%"] for c, us in p["cats"]])
        ops = bp.md_table(["op (thunk)", "time per call", "share"],
                          [[f"`{n}`", fmt_ms(us), f"{100 * us / total:.1f}%"] for n, us in p["ops"][:10]])
        parts.append(f"**{WORKLOADS[name][0]}**: wall {fmt_ms(p['wall_us'])} per call, "
                     f"{fmt_ms(total)} of thunk time.\n\n{cats}\n\nTop ops:\n\n{ops}")
    return "\n\n".join(parts)


# ---------------------------------------------------------------------------------------------
# machine
# ---------------------------------------------------------------------------------------------

def read_bandwidth() -> dict:
    """Read bandwidth in GB/s over a 1 GiB array, best of 5: on one thread the faster of
    numpy's SIMD `max` (float32) and `bitwise_or.reduce` (int64 view); on two threads, two
    threads each reducing half (numpy releases the GIL in reductions)."""
    import numpy as np
    a = np.ones(1 << 28, np.float32)
    ints = a.view(np.int64)
    one = [lambda: a.max(), lambda: np.bitwise_or.reduce(ints)]
    for f in one:
        f()
    best1 = min(_t(f) for _ in range(5) for f in one)
    halves = [ints[: ints.size // 2], ints[ints.size // 2:]]

    def two():
        ts = [threading.Thread(target=np.bitwise_or.reduce, args=(h,)) for h in halves]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    best2 = min(_t(two) for _ in range(5))
    del a, ints, halves
    return {"1": a_bytes() / best1 / 1e9, "2": a_bytes() / best2 / 1e9}


def a_bytes():
    return (1 << 28) * 4


def _t(f):
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


def avx512() -> str:
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return "?"
    return "AVX-512" if "avx512f" in flags else ("AVX2, no AVX-512" if "avx2" in flags else "no AVX2")


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------

WORKLOADS = {
    # name: (label, model family, batch, method, warmup, iters per round); in the order they
    # run (decode first: the workload that matters most)
    "gpt2_decode": ("GPT-2 small (124M), one decode step, cache 256", "gpt2", 1, "decode", 3, 30),
    "bert_b1": ("BERT-base, batch 1 × 128 tokens", "bert", 1, "__call__", 2, 10),
    "bert_b16": ("BERT-base, batch 16 × 128 tokens", "bert", 16, "__call__", 1, 3),
    "resnet50_b1": ("ResNet-50, batch 1, 224²", "resnet50", 1, "__call__", 2, 10),
    "resnet50_b16": ("ResNet-50, batch 16, 224²", "resnet50", 16, "__call__", 1, 3),
    "vit_b1": ("ViT-B/16, batch 1, 224²", "vit", 1, "__call__", 2, 8),
}
FAMILIES = {"bert": bert_model, "gpt2": gpt2_model, "resnet50": resnet_model, "vit": vit_model}
SYSTEMS = ["flaxlayer args", "flaxlayer frozen", "JAX", "ORT", "IREE"]


def fmt_ms(us):
    return f"{us / 1e3:.1f} ms" if us < 1e6 else f"{us / 1e6:.2f} s"


def cell(vals):
    if not vals:
        return "—"
    return f"{fmt_ms(statistics.median(vals))} ({fmt_ms(min(vals))}–{fmt_ms(max(vals))})"


def first_line(e) -> str:
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else type(e).__name__)[:240]


def prepare(w: Workload, systems: list[str]):
    """Expected outputs from JAX; check every system against them."""
    m = w.model
    if w.method == "decode":
        x = {"input_ids": _ints((1, 1), 50257, seed=1)}
        once, bench = jax_system(w, x["input_ids"])
        w.expected = once()
        jax_bench = bench
    else:
        x = m.inputs(w.batch)
        call, jax_bench = jax_system(w, x)
        w.expected = call()
    keep = []
    w.systems["JAX"] = {"check": [(n, 0.0) for n, _ in w.expected], "run": jax_bench}
    for frozen in (False, True):
        name = "flaxlayer frozen" if frozen else "flaxlayer args"
        if name not in systems:
            continue
        try:
            chk = fl_check(w, x, frozen)
        except Exception as e:  # noqa: BLE001 - reported, not fatal
            chk = f"failed: {first_line(e)}"
        info = {}
        w.systems[name] = {"check": chk, "info": info,
                           "run": (lambda fz=frozen, i=info: fl_bench(w, fz, i))}
    for name, make in (("ORT", ort_system), ("IREE", iree_system)):
        if name not in systems:
            continue
        try:
            arg = x["input_ids"] if (w.method == "decode" and name == "ORT") else x
            chk, bench, handle = make(w, arg)
            keep.append(handle)
            w.systems[name] = {"check": chk, "run": bench}
        except Exception as e:  # noqa: BLE001
            w.systems[name] = {"check": f"failed: {first_line(e)}"}
    for name, s in w.systems.items():
        ok = not isinstance(s["check"], str)
        log(f"  {w.name} {name}: " + (f"outputs agree (max rel err {max(e for _, e in s['check']):.2g})" if ok
                                      else f"NOT TIMED: {s['check']}"))
    return keep


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--only", nargs="*", choices=list(WORKLOADS))
    ap.add_argument("--systems", nargs="*", choices=SYSTEMS, default=SYSTEMS)
    ap.add_argument("--no-write", action="store_true", help="do not write BENCHMARKS.md")
    ap.add_argument("--keep", action="store_true", help="keep target/bench-real (bundles: ~1 GB each)")
    ap.add_argument("--no-build", action="store_true", help="use target/release/flaxlayer as it is")
    ap.add_argument("--op-profile", nargs="+", choices=[n for n in WORKLOADS if WORKLOADS[n][3] == "__call__"],
                    help="only the per-op profiles of these workloads (JAX's profiler), into the "
                         "real-profile block of BENCHMARKS.md")
    args = ap.parse_args(argv)
    if args.op_profile:
        import jax
        jax.config.update("jax_platforms", "cpu")
        os.makedirs(WORK, exist_ok=True)
        profiles = {}
        for n in args.op_profile:
            log(f"[real] op profile of {n}")
            profiles[n] = op_profile(WORKLOADS[n][1], WORKLOADS[n][2])
        body = op_profile_markdown(profiles)
        print(body)
        if not args.no_write:
            path = os.path.join(REPO, "BENCHMARKS.md")
            text = open(path).read()
            with open(path, "w") as f:
                f.write(bp.replace_block(text, PROF_BEGIN, PROF_END, body))
        return 0
    t_start = time.time()
    names = args.only or list(WORKLOADS)
    os.makedirs(WORK, exist_ok=True)
    if not args.no_build:
        log("[real] cargo build --release --bin flaxlayer")
        run(["cargo", "build", "--release", "--bin", "flaxlayer"], timeout=7200)
    import jax
    jax.config.update("jax_platforms", "cpu")

    bw = read_bandwidth()
    log(f"[real] read bandwidth: {bw['1']:.1f} GB/s on 1 thread, {bw['2']:.1f} GB/s on 2")
    results, workloads, exports, notes = {}, [], {}, {}
    fams = []
    for n in names:
        if WORKLOADS[n][1] not in fams:
            fams.append(WORKLOADS[n][1])
    load_start = bp.loadavg()
    for fam in fams:
        log(f"[real] {fam}: building the model (random weights) and exporting")
        m = FAMILIES[fam]()
        ws = [n for n in names if WORKLOADS[n][1] == fam]
        if fam == "gpt2":
            export_gpt2(m)
            m.weight_bytes = sum(a.size * a.dtype.itemsize for a in jax.tree_util.tree_leaves(m.hf.params))
        else:
            m.batch_sizes = sorted({WORKLOADS[n][2] for n in ws})
            export_model(m, frozen_batch_sizes=m.batch_sizes)
        exports[fam] = (m.export_seconds, bundle_files(m.dir))
        for n in ws:
            label, _, batch, method, warmup, iters = WORKLOADS[n]
            w = Workload(n, label, m, batch, method, warmup, iters)
            log(f"[real] {n}: checking every system against JAX")
            handles = prepare(w, args.systems)
            res = {k: [] for k, s in w.systems.items() if not isinstance(s["check"], str)}
            for r in range(args.rounds):
                log(f"[real] {n}: round {r + 1}/{args.rounds}")
                for k in res:
                    vals = w.systems[k]["run"]()
                    res[k].append(statistics.median(vals))
                log("    " + ", ".join(f"{k} {fmt_ms(v[-1])}" for k, v in res.items()))
            results[n] = res
            workloads.append(w)
            if fam == "gpt2":
                notes["gpt2_weight_bytes"] = m.weight_bytes
            for s in w.systems.values():
                s.pop("run", None)  # drops the sessions and compiled functions they hold
            del handles
            gc.collect()
            # the table so far, after every workload: a run cut short keeps what it measured
            write(report(workloads, results, exports, bw, notes, args, time.time() - t_start,
                         load_start, bp.loadavg()), args)
        if not args.keep:
            shutil.rmtree(m.dir, ignore_errors=True)
        del m
        gc.collect()
    load_end = bp.loadavg()
    elapsed = time.time() - t_start
    body = report(workloads, results, exports, bw, notes, args, elapsed, load_start, load_end)
    print(body)
    write(body, args)
    if not args.keep:
        shutil.rmtree(WORK, ignore_errors=True)
    return 0


def write(body: str, args) -> None:
    if args.no_write:
        return
    path = os.path.join(REPO, "BENCHMARKS.md")
    text = open(path).read()
    with open(path, "w") as f:
        f.write(bp.replace_block(text, BEGIN, END, body))
    log(f"[real] wrote {path}")


def bundle_files(d) -> dict:
    out = {}
    for f in sorted(os.listdir(d)):
        out[f] = os.path.getsize(os.path.join(d, f))
    return out


def kind(f: str) -> str:
    if f == "variables.safetensors":
        return "weights"
    if f == "golden.safetensors":
        return "golden"
    if f.endswith(".frozen.jaxexport"):
        return "frozen copies"
    if f.endswith(".jaxexport"):
        return "computations"
    return "other"


def report(workloads, results, exports, bw, notes, args, elapsed, load_start, load_end) -> str:
    rows, checks, detail = [], [], []
    for w in workloads:
        res, sy = results[w.name], w.systems

        def c(k):
            if k in res:
                return cell(res[k])
            s = sy.get(k)
            return "not run" if s is None else f"not timed: {s['check']}"
        fl_mode = sy.get("flaxlayer args", {}).get("info", {}).get("mode", "")
        peers = [k for k in ("JAX", "ORT") if k in res]
        ratio = "—"
        if "flaxlayer args" in res and peers:
            per = [res["flaxlayer args"][i] / min(res[k][i] for k in peers) for i in range(len(res["flaxlayer args"]))]
            ratio = f"{statistics.median(per):.2f}×"
        best = "—"
        fl_modes = [k for k in ("flaxlayer args", "flaxlayer frozen") if k in res]
        if fl_modes and peers:
            per = [min(res[k][i] for k in fl_modes) / min(res[p][i] for p in peers) for i in range(args.rounds)]
            best = f"{statistics.median(per):.2f}×"
        rows.append([w.label, c("flaxlayer args") + (f" [{fl_mode}]" if fl_mode else ""), c("flaxlayer frozen"),
                     c("JAX"), c("ORT"), c("IREE"), ratio, best])
        for k, s in sy.items():
            chk = s["check"]
            checks.append([w.name, k, "ok" if not isinstance(chk, str) else "**failed / wrong**",
                           f"{max(e for _, e in chk):.2g}" if not isinstance(chk, str) else chk])
        for k, v in res.items():
            detail.append(f"{w.name}/{k}: " + ", ".join(f"{x / 1e3:.1f}" for x in v))
    table = bp.md_table(["workload", "flaxlayer, params as arguments", "flaxlayer frozen", "JAX jit",
                         "ONNX Runtime (jax2onnx)", "IREE (params as arguments)",
                         "args / faster of JAX, ORT", "best flaxlayer / faster of JAX, ORT"], rows)
    check_table = bp.md_table(["workload", "system", "outputs vs JAX", "max |x − JAX| / max(max|JAX|, 1)"], checks)
    floor = ""
    if "gpt2_weight_bytes" in notes and "gpt2_decode" in results:
        wb = notes["gpt2_weight_bytes"]
        res = results["gpt2_decode"]
        best = max(bw["1"], bw["2"])
        fl = wb / (best * 1e9) * 1e6
        parts = [f"{k} {statistics.median(v) / fl:.2f}×" for k, v in res.items()]
        floor = (f"\n**Decode floor.** GPT-2 small reads {wb / 1e6:.0f} MB of f32 weights per token (the tied "
                 f"LM head once). Measured read bandwidth (numpy reductions over 1 GiB, best of 5): "
                 f"{bw['1']:.1f} GB/s on one thread, {bw['2']:.1f} GB/s on two; at the better of the two, "
                 f"a floor of **{fmt_ms(fl)}** per token. Medians over the floor: {'; '.join(parts)}.\n")
    exp_rows = []
    for fam, (secs, files) in exports.items():
        by = {}
        for f, n in files.items():
            by[kind(f)] = by.get(kind(f), 0) + n
        exp_rows.append([fam, f"{secs:.0f} s", f"{sum(files.values()) / 1e6:.0f} MB",
                         ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in sorted(by.items()))])
    exp_table = bp.md_table(["model", "export time", "bundle", "by kind"], exp_rows)
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    vers = (f"jax {bp.dist_version('jax')}, jaxlib {bp.dist_version('jaxlib')}, flax {bp.dist_version('flax')}, "
            f"transformers {bp.dist_version('transformers')}; onnxruntime {bp.dist_version('onnxruntime')}, "
            f"jax2onnx {bp.dist_version('jax2onnx')}; iree-base-compiler {bp.dist_version('iree-base-compiler')}, "
            f"iree-base-runtime {bp.dist_version('iree-base-runtime')}; flaxlayer {bp.git_rev()} with "
            f"lammps-jax-pjrt-cpu {bp.dist_version('lammps-jax-pjrt-cpu', bp.MAIN_SITE)}")
    iters = ", ".join(f"{w.name} {w.warmup}+{w.iters}" for w in workloads)
    return f"""Reproduce: `python3 scripts/bench_real.py` (not part of `scripts/demo.sh` or
`scripts/test.sh`; uses `.venv-peers/` (with transformers 4.57.6), exports the
bundles into `target/bench-real/` and deletes them afterwards).

- Date: {now}; **{args.rounds} rounds** (few: the machine is shared, 2 cores), alternating the
  systems within each workload; {elapsed / 60:.0f} min in all; 1-minute load average
  {load_start} at the start, {load_end} at the end (other processes share the cores, so
  the spread is wide).
- Machine: {bp.lscpu_model()}; {avx512()}.
- Versions: {vers}.
- Models: Hugging Face Flax classes with random weights from their default configs (seed 0,
  no download). Every system runs the same weights. Warm-up + timed calls per round: {iters}.
- Each cell: median over rounds of the round's median per call (min–max of the round medians).
  Host in → host out per call everywhere. flaxlayer: `flaxlayer bench` (release build) in a
  fresh process per round; "params as arguments" is `--no-frozen`, with the runtime's mode in
  brackets as `flaxlayer bench --json` reports it; "frozen" runs the frozen variant
  (params compiled in as constants). JAX: `jax.jit` of the same Flax call. ORT: onnxruntime's
  Python API on the jax2onnx conversion (params as initializers), default session options.
  IREE: `iree-compile` of the bundle's own StableHLO ({' '.join(bp.IREE_COMPILE_FLAGS)}),
  params uploaded once, `local-task` driver, iree.runtime's Python API.
- Decode: every system starts from an empty cache; flaxlayer and JAX advance it one token per
  call, ORT and IREE take the empty cache as a fixed input (GPT-2's attention covers all 256
  positions under a mask, so the cost does not depend on the position).
- Checks before timing: every output of every system against JAX on the same inputs, max
  |x − JAX| ≤ {RTOL:g} × max(max|JAX|, 1).

{table}
{floor}
Export (`export_flax(..., variables=..., frozen=True, frozen_batch_sizes=<the timed sizes>)`;
GPT-2: `export_causal_lm(max_len=256, prefill_lens=[16], frozen=True, frozen_methods=["decode"])`),
time and bundle size by kind (`flaxlayer inspect` lists them per file):

{exp_table}

Output checks:

{check_table}

<details><summary>Round medians (ms per call)</summary>

```
{chr(10).join(detail)}
```
</details>
"""


if __name__ == "__main__":
    sys.exit(main())
