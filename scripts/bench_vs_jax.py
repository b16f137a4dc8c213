#!/usr/bin/env python3
"""Benchmark flaxlayer (Rust, PJRT C API) against JAX on the committed bundles.

    .venv/bin/python scripts/bench_vs_jax.py             # full run (~3-5 min), writes BENCHMARKS.md
    .venv/bin/python scripts/bench_vs_jax.py --quick     # smoke run
    .venv/bin/python scripts/bench_vs_jax.py --rounds 3 --no-write

Each workload is measured in rounds that ALTERNATE a JAX measurement (in this process: jit,
numpy in, numpy out) and a `flaxlayer bench --json` run (a subprocess; and `--raw`, the plain
PJRT loop, when the CLI has it). The reported number is the median of the per-round medians.
Same modules (flaxlayer_export.examples.models) and the same variables (hlo/<b>/variables.safetensors) as the
bundles. Workloads:
  1. mlp b1 inference latency          target: flaxlayer <= 0.35x JAX, <= 1.1x raw
  2. cnn b256 inference throughput     target: flaxlayer >= 1.05x JAX samples/s
  3. dense_bn_dropout b4 training call target: flaxlayer time <= JAX time
  4. decoder one decode step (b1)      target: flaxlayer >= 2x JAX tokens/s
  5. cold start (cnn b256, cnn b4, decoder), compile cache off vs warm   target: warm <= 0.2x cold
     (JAX cold start for reference: fresh subprocesses, persistent compilation cache off)
  6. mlp b1 / cnn b256 under each of the three CPU PJRT plugins (flaxlayer only)
The generated part of BENCHMARKS.md sits between `<!-- bench:begin -->` and
`<!-- bench:end -->`; everything outside the markers is kept.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.metadata as md
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
HLO = os.path.join(REPO, "hlo")
BIN = os.path.join(REPO, "target", "release", "flaxlayer")
SITE = os.path.join(REPO, ".venv", "lib", "python3.11", "site-packages")
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"

# (label, plugin .so relative to site-packages, pip distribution)
PLUGINS = [
    ("lammps_jax_pjrt_cpu (default)", "lammps_jax_pjrt_cpu/pjrt_c_api_cpu_plugin.so", "lammps-jax-pjrt-cpu"),
    ("fastatomstruct_xla_cpu", "fastatomstruct_xla_cpu/libpjrt_cpu.so", "fastatomstruct-xla-cpu"),
    ("xla_cpu_pjrt", "xla_plugins/xla_cpu_pjrt/xla_cpu_pjrt.so", "xla-cpu-pjrt"),
]
DEFAULT_PLUGIN = os.path.join(SITE, PLUGINS[0][1])

# The decoder's caches hold max_len = 16 positions; warmup + timed calls per sequence stay within.
DECODER_WARMUP, DECODER_ITERS = 4, 12


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# flaxlayer CLI
# --------------------------------------------------------------------------------------------

class FlError(Exception):
    pass


def _short_err(text: str) -> str:
    text = re.sub(r"0x[0-9a-fA-F]+", "0x…", text)  # addresses vary per run
    text = text.replace(REPO + os.sep, "").replace(REPO, ".")  # no paths of this machine
    lines = [l.strip() for l in text.strip().splitlines() if l.strip()]
    if not lines:
        return "no output"
    # prefer an informative line (error / abort / assertion) over a backtrace tail
    for l in lines:
        if re.search(r"error|abort|assert|panick|failed|parse", l, re.I):
            return l[:160]
    return lines[-1][:160]


def run_fl(bundle: str, *extra: str, plugin: str | None = None, env: dict | None = None,
           timeout: float = 300) -> dict:
    cmd = [BIN, "bench", os.path.join(HLO, bundle), "--json", *extra]
    if plugin:
        cmd += ["--plugin", plugin]
    e = dict(os.environ)
    if env:
        e.update(env)
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=e, timeout=timeout, cwd=REPO)
    except subprocess.TimeoutExpired:
        raise FlError(f"timeout after {timeout:.0f} s")
    if p.returncode != 0:
        if p.returncode < 0:
            try:
                import signal
                why = signal.Signals(-p.returncode).name
            except ValueError:
                why = f"signal {-p.returncode}"
        else:
            why = f"exit {p.returncode}"
        raise FlError(f"{why}: {_short_err(p.stderr + p.stdout)}")
    for line in reversed(p.stdout.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise FlError(f"no JSON in output: {_short_err(p.stdout + p.stderr)}")


def fl_has_raw() -> bool:
    try:
        p = subprocess.run([BIN, "bench", "--help"], capture_output=True, text=True, timeout=60)
        return "--raw" in p.stdout
    except Exception:
        return False


class Series:
    """Per-round medians of one measurement, or the first error."""

    def __init__(self):
        self.vals: list[float] = []
        self.err: str | None = None

    def add(self, fn):
        if self.err is not None:
            return
        try:
            self.vals.append(fn())
        except FlError as e:
            self.err = str(e)
        except Exception as e:  # noqa: BLE001 (robust: show it in the table)
            self.err = f"{type(e).__name__}: {e}"[:160]

    @property
    def ok(self) -> bool:
        return self.err is None and bool(self.vals)

    @property
    def med(self) -> float:
        return statistics.median(self.vals)

    def spread(self) -> float:
        """(max - min) / median of the per-round medians."""
        return (max(self.vals) - min(self.vals)) / self.med if len(self.vals) > 1 else 0.0


# --------------------------------------------------------------------------------------------
# JAX side
# --------------------------------------------------------------------------------------------

def jax_setup():
    os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)
    import jax
    jax.config.update("jax_enable_compilation_cache", False)
    jax.config.update("jax_platforms", "cpu")
    warnings.filterwarnings("ignore", message=".*donated buffers were not usable.*")
    return jax


def load_variables(bundle: str) -> dict:
    from flax.traverse_util import unflatten_dict
    from safetensors.numpy import load_file
    return unflatten_dict(load_file(os.path.join(HLO, bundle, "variables.safetensors")), sep="/")


def timed_loop(call, warmup: int, iters: int) -> float:
    """Median µs per call."""
    pc = time.perf_counter_ns
    for _ in range(warmup):
        call()
    ts = []
    for _ in range(iters):
        t = pc()
        call()
        ts.append(pc() - t)
    return statistics.median(ts) / 1e3


def jax_stateless(bundle: str, module, x):
    """jit(module.apply), variables on device, numpy in, numpy out; returns call()."""
    import jax
    import numpy as np
    v = jax.device_put(load_variables(bundle))
    f = jax.jit(lambda v, x: module.apply(v, x))

    def call():
        return np.asarray(f(v, x))
    return call


def jax_training(bundle: str, module, x):
    """What the layer's training call does: K, k = split(K) inside the jit, apply with
    mutable=DenyList(["params"]) and rngs={"dropout": k}; state and key stay on device (donated)."""
    import jax
    import numpy as np
    from flax.core import DenyList
    variables = load_variables(bundle)
    params = jax.device_put(variables["params"])
    st = {"state": jax.device_put({c: t for c, t in variables.items() if c != "params"}),
          "key": jax.random.key(0, impl="threefry2x32")}

    def _step(params, state, key, x):
        key, k = jax.random.split(key)
        out, new_state = module.apply({"params": params, **state}, x, training=True,
                                      rngs={"dropout": k}, mutable=DenyList(["params"]))
        return out, dict(new_state), key
    step = jax.jit(_step, donate_argnums=(1, 2))

    def call():
        out, st["state"], st["key"] = step(params, st["state"], st["key"], x)
        return np.asarray(out)
    return call


def jax_decoder(bundle: str, module):
    """Returns make_seq() -> call; each sequence starts from the bundle's initial caches."""
    import jax
    import numpy as np
    variables = load_variables(bundle)
    params = jax.device_put(variables["params"])
    cache0 = variables["cache"]
    step = jax.jit(lambda p, c, ids: module.apply({"params": p, "cache": c}, ids, training=False,
                                                   mutable=["cache"]), donate_argnums=(1,))
    tok = np.array([[1]], dtype=np.int32)

    def make_seq():
        st = {"cache": jax.device_put(cache0)}

        def call():
            logits, mut = step(params, st["cache"], tok)
            st["cache"] = mut["cache"]
            return np.asarray(logits)
        return call
    return make_seq


# Cold-start workloads: (label, bundle, batch or None for the first exported batch).
COLD_WORKLOADS = [("cnn b256", "cnn", "256"), ("cnn b4", "cnn", None), ("decoder b1", "decoder", None)]

JAX_COLD_SNIPPET = r"""
import os, sys, time, json
os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)
import numpy as np, jax
jax.config.update("jax_enable_compilation_cache", False)
jax.config.update("jax_platforms", "cpu")
from jax import export as jax_export
from flax.traverse_util import unflatten_dict
from safetensors.numpy import load_file
jax.devices()  # backend up before timing (flaxlayer loads its plugin before timing too)
d = sys.argv[1]
x = np.random.default_rng(0).standard_normal((256, 28, 28, 1)).astype(np.float32)
t0 = time.perf_counter()
with open(os.path.join(d, "__call__.inference.b256.jaxexport"), "rb") as f:
    exp = jax_export.deserialize(bytearray(f.read()))
v = unflatten_dict(load_file(os.path.join(d, "variables.safetensors")), sep="/")
params = v.pop("params")
out, _ = exp.call(params, v, x)
np.asarray(out)
print(json.dumps({"cold_us": (time.perf_counter() - t0) * 1e6}))
"""


def jax_cold_start() -> float:
    p = subprocess.run([sys.executable, "-c", JAX_COLD_SNIPPET, os.path.join(HLO, "cnn")],
                       capture_output=True, text=True, timeout=300)
    if p.returncode != 0:
        raise FlError(f"JAX cold start failed: {_short_err(p.stderr)}")
    return json.loads(p.stdout.strip().splitlines()[-1])["cold_us"]


# --------------------------------------------------------------------------------------------
# environment description
# --------------------------------------------------------------------------------------------

def machine() -> str:
    cpu = platform.processor() or "?"
    fam = mod = None
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
        m = re.search(r"^model name\s*:\s*(.+)$", info, re.M)
        cpu = m.group(1).strip() if m else cpu
        fam = re.search(r"^cpu family\s*:\s*(\d+)", info, re.M)
        mod = re.search(r"^model\s*:\s*(\d+)", info, re.M)
        flags = re.search(r"^flags\s*:\s*(.+)$", info, re.M)
        flags = flags.group(1).split() if flags else []
    except OSError:
        flags = []
    extra = []
    if fam and mod:
        extra.append(f"family {fam.group(1)} model {mod.group(1)}")
    if "hypervisor" in flags:
        extra.append("VM")
    isa = [f for f in ("avx2", "avx512f", "amx_tile") if f in flags]
    if isa:
        extra.append("/".join(isa))
    mem = "?"
    try:
        with open("/proc/meminfo") as f:
            kb = int(re.search(r"MemTotal:\s*(\d+)", f.read()).group(1))
        mem = f"{kb / 1024 / 1024:.1f} GiB"
    except (OSError, AttributeError):
        pass
    return f"{cpu} ({', '.join(extra)}), {os.cpu_count()} logical cores, {mem} RAM, {platform.system()} {platform.release()}"


def dist_version(name: str) -> str:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return "?"


def versions() -> str:
    vs = [f"{n} {dist_version(n)}" for n in ("jax", "jaxlib", "flax", "numpy")]
    fl = "?"
    try:
        fl = subprocess.run([BIN, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    except Exception:  # noqa: BLE001
        pass
    git = ""
    try:
        git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=REPO, timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, cwd=REPO, timeout=30).stdout.strip()
        git = f" (git {git}{', dirty tree' if dirty else ''})"
    except Exception:  # noqa: BLE001
        pass
    return (f"{', '.join(vs)}; {fl}{git}; default plugin {PLUGINS[0][2]} {dist_version(PLUGINS[0][2])} "
            f"(`{os.path.relpath(DEFAULT_PLUGIN, REPO)}`)")


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------

def fmt_us(x: float) -> str:
    if x >= 1e5:
        return f"{x / 1e6:.2f} s"
    if x >= 1e3:
        return f"{x / 1e3:.2f} ms"
    return f"{x:.1f} µs"


def fmt_rate(x: float, unit: str) -> str:
    return f"{x:,.0f} {unit}"


def cell(s: Series, fmt, conv=lambda v: v) -> str:
    if s.err is not None:
        return f"FAILED: {s.err}"
    if not s.vals:
        return "n/a"
    out = fmt(conv(s.med))
    if len(s.vals) > 1:
        out += f" (±{s.spread() * 50:.0f}%)"
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5, help="alternating JAX/flaxlayer rounds (default 5)")
    ap.add_argument("--quick", action="store_true", help="fewer iterations and rounds (smoke run)")
    ap.add_argument("--no-write", action="store_true", help="do not write BENCHMARKS.md")
    ap.add_argument("--out", default=os.path.join(REPO, "BENCHMARKS.md"))
    args = ap.parse_args(argv)
    rounds = min(args.rounds, 2) if args.quick else args.rounds
    q = args.quick
    it = {  # (warmup, iters) per round
        "mlp": (50, 300) if q else (300, 3000),
        "cnn": (2, 8) if q else (10, 80),
        "train": (50, 300) if q else (300, 3000),
        "cold": 2 if q else 5,
        "jax_cold": 1 if q else 3,
        "plugin_mlp": (50, 300) if q else (200, 2000),
        "plugin_cnn": (2, 8) if q else (3, 20),
    }
    t_start = time.time()

    if not os.path.exists(BIN):
        log("building the CLI: cargo build --release --bin flaxlayer")
        subprocess.run(["cargo", "build", "--release", "--bin", "flaxlayer"], cwd=REPO, check=False)
    has_raw = os.path.exists(BIN) and fl_has_raw()
    if not has_raw:
        log("note: `flaxlayer bench --raw` not available; the raw-floor column is n/a")

    jax = jax_setup()
    import numpy as np
    from flaxlayer_export.examples import models

    work = tempfile.mkdtemp(prefix="flaxlayer-bench-")
    # Steady-state runs compile in every process (cache off), as JAX compiles in-process.
    nocache = {"FLAXLAYER_CACHE": "0"}

    def fl(bundle, warmup, iters, *extra, plugin=None, env=nocache, raw=False):
        def go():
            a = ["--warmup", str(warmup), "--iters", str(iters), *extra]
            if raw:
                a.append("--raw")
            return run_fl(bundle, *a, plugin=plugin, env=env)["median_us"]
        return go

    rng = np.random.default_rng(0)
    res: dict[str, dict[str, Series]] = {}

    def series(name):
        return res.setdefault(name, {"jax": Series(), "fl": Series(), "raw": Series()})

    try:
        # ---- set up JAX callables (compile outside the timed rounds) -----------------------
        log("compiling JAX workloads ...")
        mlp_call = jax_stateless("mlp", models.MLP(), rng.standard_normal((1, 64)).astype(np.float32))
        cnn_call = jax_stateless("cnn", models.MyFlaxModule(),
                                 rng.standard_normal((256, 28, 28, 1)).astype(np.float32))
        train_call = jax_training("dense_bn_dropout", models.DenseBNDropout(),
                                  rng.standard_normal((4, 12)).astype(np.float32))
        dec_seq = jax_decoder("decoder", models.TinyDecoder())
        for c in (mlp_call, cnn_call, train_call, dec_seq()):
            c()

        def dec_jax():
            return timed_loop(dec_seq(), DECODER_WARMUP, DECODER_ITERS)

        plan = [
            ("mlp", lambda: timed_loop(mlp_call, *it["mlp"]), ("mlp", *it["mlp"])),
            ("cnn", lambda: timed_loop(cnn_call, *it["cnn"]), ("cnn", *it["cnn"], "--batch", "256")),
            ("train", lambda: timed_loop(train_call, *it["train"]), ("dense_bn_dropout", *it["train"], "--training")),
            ("decoder", dec_jax, ("decoder", DECODER_WARMUP, DECODER_ITERS)),
        ]
        for r in range(rounds):
            log(f"round {r + 1}/{rounds}")
            for name, jfn, flargs in plan:
                s = series(name)
                # alternate which side goes first, to cancel drift
                sides = [("jax", jfn), ("fl", fl(*flargs))]
                if r % 2:
                    sides.reverse()
                for side, fn in sides:
                    s[side].add(fn)
                if has_raw:
                    s["raw"].add(fl(*flargs, raw=True))

        # ---- cold start ------------------------------------------------------------------
        log("cold start ...")
        n = it["cold"]
        cold_rounds = 1 if q else 2
        for label, bundle, batch in COLD_WORKLOADS:
            warm_dir = os.path.join(work, f"warm-cache-{label}")
            cold, warm = series(f"cold {label}"), series(f"warm {label}")
            cold_args = (bundle, "--cold-start") + (("--batch", batch) if batch else ())
            warm_fill = Series()
            warm_fill.add(lambda: run_fl(*cold_args, "--iters", "1", env={"FLAXLAYER_CACHE": warm_dir})["median_us"])
            if warm_fill.err:
                warm["fl"].err = f"filling the cache: {warm_fill.err}"
            for r in range(cold_rounds):
                cold["fl"].add(lambda: run_fl(*cold_args, "--iters", str(n), env={"FLAXLAYER_CACHE": "0"})["median_us"])
                warm["fl"].add(lambda: run_fl(*cold_args, "--iters", str(n), env={"FLAXLAYER_CACHE": warm_dir})["median_us"])
            if label == "cnn b256":
                for _ in range(it["jax_cold"]):
                    cold["jax"].add(jax_cold_start)

        # ---- plugins ---------------------------------------------------------------------
        log("plugins ...")
        pl: dict[str, dict[str, Series]] = {lab: {"mlp": Series(), "cnn": Series()} for lab, _, _ in PLUGINS}
        for r in range(1 if q else 2):
            for lab, rel, _ in PLUGINS:
                path = os.path.join(SITE, rel)
                if not os.path.exists(path):
                    pl[lab]["mlp"].err = pl[lab]["cnn"].err = f"not installed: {rel}"
                    continue
                pl[lab]["mlp"].add(fl("mlp", *it["plugin_mlp"], plugin=path))
                pl[lab]["cnn"].add(fl("cnn", *it["plugin_cnn"], "--batch", "256", plugin=path))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    elapsed = time.time() - t_start

    # ---- table -----------------------------------------------------------------------------
    rows = []

    def ratio_row(label, s, conv, fmt, ratio_fn, target_txt, target_ok, raw_fmt=None):
        j, f, rw = s["jax"], s["fl"], s["raw"]
        jtxt, ftxt = cell(j, fmt, conv), cell(f, fmt, conv)
        rtxt = cell(rw, raw_fmt or fmt, conv) if has_raw or rw.err else "n/a (no --raw)"
        if j.ok and f.ok:
            ratio = ratio_fn(j.med, f.med, rw.med if rw.ok else None)
        else:
            ratio = None
        if ratio is None:
            rows.append([label, jtxt, ftxt, rtxt, "—", target_txt, "?"])
        else:
            rows.append([label, jtxt, ftxt, rtxt, f"{ratio:.2f}×", target_txt,
                         "yes" if target_ok(ratio) else "**NO**"])

    us = lambda v: v  # noqa: E731
    ratio_row("mlp b1 inference, latency/call", series("mlp"), us, fmt_us,
              lambda j, f, r: f / j, "flaxlayer/JAX time ≤ 0.35×", lambda x: x <= 0.35)
    s = series("mlp")
    if s["fl"].ok and s["raw"].ok:
        x = s["fl"].med / s["raw"].med
        rows.append(["mlp b1 inference, vs raw PJRT loop", "", cell(s["fl"], fmt_us), cell(s["raw"], fmt_us),
                     f"{x:.2f}×", "flaxlayer/raw time ≤ 1.1×", "yes" if x <= 1.1 else "**NO**"])
    else:
        rows.append(["mlp b1 inference, vs raw PJRT loop", "", cell(s["fl"], fmt_us),
                     cell(s["raw"], fmt_us) if has_raw else "n/a (no --raw)", "—",
                     "flaxlayer/raw time ≤ 1.1×", "?"])
    ratio_row("cnn b256 inference, throughput", series("cnn"), lambda v: 256e6 / v,
              lambda x: fmt_rate(x, "samples/s"),
              lambda j, f, r: j / f, "flaxlayer/JAX samples/s ≥ 1.05×", lambda x: x >= 1.05)
    ratio_row("dense_bn_dropout b4 training call", series("train"), us, fmt_us,
              lambda j, f, r: f / j, "flaxlayer/JAX time ≤ 1.0×", lambda x: x <= 1.0)
    ratio_row("decoder b1 decode step, tokens/s", series("decoder"), lambda v: 1e6 / v,
              lambda x: fmt_rate(x, "tok/s"),
              lambda j, f, r: j / f, "flaxlayer/JAX tokens/s ≥ 2×", lambda x: x >= 2.0)
    # cold start: JAX column = JAX's cold start (reference only, cnn b256)
    for label, _, _ in COLD_WORKLOADS:
        c, w = series(f"cold {label}"), series(f"warm {label}")
        rows.append([f"{label} cold start, compile cache off", cell(c["jax"], fmt_us) if c["jax"].vals else "",
                     cell(c["fl"], fmt_us), "",
                     f"{c['fl'].med / c['jax'].med:.2f}× JAX" if c["fl"].ok and c["jax"].ok and c["jax"].vals else "—",
                     "(reference)", ""])
        if c["fl"].ok and w["fl"].ok:
            x = w["fl"].med / c["fl"].med
            rows.append([f"{label} cold start, warm compile cache", "", cell(w["fl"], fmt_us), "",
                         f"{x:.2f}× cold", "warm/cold ≤ 0.2×", "yes" if x <= 0.2 else "**NO**"])
        else:
            rows.append([f"{label} cold start, warm compile cache", "", cell(w["fl"], fmt_us), "", "—",
                         "warm/cold ≤ 0.2×", "?"])

    detail = []
    for name, ss in res.items():
        for side, se in ss.items():
            if se.vals:
                detail.append(f"{name}/{side}: " + ", ".join(f"{v:.1f}" for v in se.vals))
    for lab in pl:
        for name, se in pl[lab].items():
            if se.vals:
                detail.append(f"plugin {lab.split()[0]}/{name}: " + ", ".join(f"{v:.1f}" for v in se.vals))
    log("per-round medians (µs):\n  " + "\n  ".join(detail))

    head = ["workload", "JAX", "flaxlayer", "raw floor", "ratio", "target", "met?"]
    table = md_table(head, rows)

    prow = []
    for lab, rel, dist in PLUGINS:
        m, cn = pl[lab]["mlp"], pl[lab]["cnn"]
        status = "ok" if m.ok and cn.ok else "**FAILS**"
        prow.append([f"{lab} {dist_version(dist)}", cell(m, fmt_us),
                     cell(cn, lambda x: fmt_rate(x, "samples/s"), lambda v: 256e6 / v), status])
    ptable = md_table(["plugin", "mlp b1 latency/call", "cnn b256 throughput", "status"], prow)

    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    it_txt = (f"per round: mlp {it['mlp'][1]} calls (+{it['mlp'][0]} warmup), cnn {it['cnn'][1]} (+{it['cnn'][0]}), "
              f"training {it['train'][1]} (+{it['train'][0]}), decoder {DECODER_ITERS} (+{DECODER_WARMUP}) "
              f"per fresh cache; cold start {it['cold']} cold starts × {1 if q else 2} runs per mode, "
              f"JAX cold start {it['jax_cold']} fresh subprocesses")
    gen = f"""Reproduce: `.venv/bin/python scripts/bench_vs_jax.py` (after `cargo build --release --bin flaxlayer`){' — this was a `--quick` smoke run' if q else ''}.

- Date: {now}; {rounds} alternating rounds (JAX, flaxlayer{', raw' if has_raw else ''}); {elapsed:.0f} s total.
- Machine: {machine()}.
- Versions: {versions()}.
- Method: µs per call host in to host out (numpy in / numpy out for JAX: `jax.jit`, variables on
  device, `np.asarray` of the result; `flaxlayer bench --json` for flaxlayer, random inputs of the
  bundle's shapes; `--raw` is the same computation through a bare PJRT C-API loop). Each cell is the
  median of per-round medians; (±x%) is half the (max − min) spread of the round medians.
  {it_txt}. flaxlayer steady-state runs use `FLAXLAYER_CACHE=0` (compile in-process, like JAX).
- Training: JAX jits `K, k = split(K)` + `apply(..., training=True, rngs={{"dropout": k}},
  mutable=DenyList(["params"]))`, state and key donated and kept on device.
- Decoder: JAX jits `apply(..., training=False, mutable=["cache"])`, cache kept on device
  (donated), token from numpy, logits to numpy. Both sides make {DECODER_WARMUP} + {DECODER_ITERS} =
  {DECODER_WARMUP + DECODER_ITERS} calls per sequence from the initial caches, i.e. exactly `max_len` = 16
  positions (no out-of-range cache writes).
- Cold start: flaxlayer = open bundle + build layer (compile, or load from the compile cache in a
  warm `FLAXLAYER_CACHE` dir) + first call, plugin already loaded. JAX = `jax.export.deserialize` of
  `__call__.inference.b256.jaxexport` + load variables + first `exp.call` + `np.asarray`, in a fresh
  subprocess each time (backend initialised before timing, persistent compilation cache off).

{table}

### PJRT plugins (flaxlayer only)

{ptable}

<details><summary>Per-round medians (µs per call)</summary>

```
{chr(10).join(detail)}
```
</details>
"""
    print()
    print(table)
    print()
    print(ptable)
    print(f"\n({rounds} rounds, {elapsed:.0f} s)")
    if not args.no_write:
        write_md(args.out, gen)
        log(f"wrote {args.out}")
    return 0


def md_table(head, rows) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        out.append("| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |")
    return "\n".join(out)


def write_md(path: str, generated: str):
    block = f"{BEGIN}\n{generated.strip()}\n{END}"
    if os.path.exists(path):
        with open(path) as f:
            text = f.read()
        if BEGIN in text and END in text:
            a = text.index(BEGIN)
            b = text.index(END, a) + len(END)
            text = text[:a] + block + text[b:]
        else:
            text = text.rstrip("\n") + "\n\n" + block + "\n"
    else:
        text = f"""# Benchmarks: flaxlayer vs JAX

Generated by `scripts/bench_vs_jax.py`; the part between the `bench` markers is rewritten on
every run, everything else is kept.

{block}

## Notes

_To be written._
"""
    with open(path, "w") as f:
        f.write(text)


if __name__ == "__main__":
    sys.exit(main())
