"""GPT-2 small (124M, random weights from the config), one decode step with a cache of 256,
batch 1: flaxlayer with the params as arguments (plain), hoisted (params-only prologue once,
body per call), frozen (params compiled in), JAX jit (params as arguments), and the floor
(weight bytes read per token over this machine's single-thread read bandwidth).
BENCHMARKS.md, "Decode: params as arguments at frozen speed".

Run: .venv/bin/python scripts/bench_decode.py [--rounds 5] [--iters 30]
(needs `cargo build --release`; exports target/bench/gpt2_decode256 once, ~2 GB with the
frozen variants; `--clean` removes it afterwards)

Each round runs every mode once, in turn (alternating rounds); the table gives the median
over rounds of each round's median step time, and the spread (min-max of the round medians).
Before timing, the decode logits of the hoisted and plain bundle computations are checked
against JAX's (`flaxlayer run`).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import shutil
import statistics
import subprocess
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
MAX_LEN = 256
OUT = ROOT / "target" / "bench" / "gpt2_decode256"


def read_bandwidth_gbs(nbytes: int = 1 << 30, reps: int = 5) -> float:
    """Single-thread read bandwidth: bytes summed per second by numpy over a 1 GiB array,
    best of `reps` (numpy's sum runs on one thread)."""
    a = np.ones(nbytes // 4, np.float32)
    a.sum()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a.sum()
        best = min(best, time.perf_counter() - t)
    return nbytes / best / 1e9


def export(model, out: pathlib.Path) -> dict:
    from flaxlayer_export import export_causal_lm
    if (out / "manifest.json").exists():
        return json.loads((out / "manifest.json").read_text())
    t = time.perf_counter()
    m = export_causal_lm(model, str(out), max_len=MAX_LEN, prefill_lens=[16], frozen=True)
    print(f"exported {out} in {time.perf_counter() - t:.0f} s")
    return m


def flaxlayer_bench(exe, bundle, flags, iters, env) -> float:
    """Median decode step (ms) of one `flaxlayer bench` process (tried again once if it is
    killed: on a machine short of memory, the OOM killer may pick it)."""
    cmd = [str(exe), "bench", str(bundle), "--method", "decode", "--iters", str(iters), "--warmup", "5", "--json", *flags]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode < 0:
        print(f"  {' '.join(flags) or 'frozen'}: killed by signal {-out.returncode}, once more", flush=True)
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    out.check_returncode()
    line = json.loads(out.stdout.strip().splitlines()[-1])
    return line["median_us"] / 1e3, line["mode"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--clean", action="store_true", help="remove the exported bundle at the end")
    ap.add_argument("--exe", default=str(ROOT / "target" / "release" / "flaxlayer"), help="the flaxlayer binary")
    args = ap.parse_args()
    from transformers import FlaxGPT2LMHeadModel, GPT2Config

    from flaxlayer_export.causal_lm import hf_start, hf_step
    from flaxlayer_export.linen import to_plain

    exe = pathlib.Path(args.exe)
    model = FlaxGPT2LMHeadModel(GPT2Config(), seed=0)
    manifest = export(model, OUT)
    params = jax.device_put(to_plain(model.params))
    cache = to_plain(model.init_cache(1, MAX_LEN))
    step, start = hf_step(model, MAX_LEN), hf_start(cache)

    def decode(p, c, ids):
        logits, c = step(p, c, ids, start(c), jnp.int32(1))
        return logits[:, -1], c

    jit = jax.jit(decode, donate_argnums=(1,))
    ids = jnp.array([[464]], jnp.int32)

    def jax_round(iters):
        c = jax.device_put(cache)
        logits, c = jit(params, c, ids)
        logits.block_until_ready()
        ts = []
        for _ in range(iters):
            t = time.perf_counter()
            logits, c = jit(params, c, ids)
            logits.block_until_ready()
            ts.append(time.perf_counter() - t)
        return statistics.median(ts) * 1e3

    hoisted = manifest["methods"]["decode"]["inference"][0]["hoisted"]
    p_bytes = {v["name"]: int(np.prod(v["shape"])) * 4 for v in manifest["variables"] if v["collection"] == "params"}
    wpe = next(b for n, b in p_bytes.items() if n.endswith("wpe/embedding"))
    weights = sum(p_bytes.values()) - wpe  # one row of wpe and of wte's lookup; wte whole as the LM head
    cache_bytes = sum(int(np.prod(v["shape"])) * np.dtype(v["dtype"]).itemsize for v in manifest["variables"]
                      if v["collection"] == "cache")
    bw = read_bandwidth_gbs()
    floor = weights / (bw * 1e9) * 1e3

    env = dict(os.environ, FLAXLAYER_CACHE=tempfile.mkdtemp(prefix="flaxlayer-bench-cache-"))
    env.setdefault("VIRTUAL_ENV", str(ROOT / ".venv"))  # the CPU plugin scripts/setup.sh installs
    modes = {"plain": ["--no-frozen", "--no-hoisted"], "hoisted": ["--no-frozen"], "frozen": []}
    # every mode's first decode step (empty cache) against JAX's
    want = np.asarray(jit(params, jax.device_put(cache), ids)[0])
    scale = float(np.abs(want).max())
    with tempfile.TemporaryDirectory() as tmp:
        np.save(f"{tmp}/ids.npy", np.asarray(ids))
        from safetensors.numpy import load_file
        for name, flags in modes.items():
            subprocess.run([str(exe), "run", str(OUT), "--method", "decode", "--input", f"input_ids={tmp}/ids.npy",
                            "--output", f"{tmp}/{name}.safetensors", *flags], check=True, env=env,
                           stdout=subprocess.DEVNULL)
            got = load_file(f"{tmp}/{name}.safetensors")["logits"]
            err = float(np.abs(got - want).max())
            print(f"{name}: logits max abs diff vs JAX {err:.2e} (scale {scale:.2f})")
            assert err <= 1e-4 * max(1.0, scale), f"{name} differs from JAX"
    times: dict[str, list[float]] = {m: [] for m in [*modes, "jax"]}
    for r in range(args.rounds):
        for name, flags in modes.items():
            ms, mode = flaxlayer_bench(exe, OUT, flags, args.iters, env)
            times[name].append(ms)
        times["jax"].append(jax_round(args.iters))
        print(f"round {r}: " + ", ".join(f"{m} {t[-1]:.1f} ms" for m, t in times.items()), flush=True)
    shutil.rmtree(env["FLAXLAYER_CACHE"], ignore_errors=True)
    med = {m: statistics.median(t) for m, t in times.items()}
    print()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; jax {jax.__version__}; "
          f"single-thread read bandwidth {bw:.1f} GB/s (numpy sum over 1 GiB, best of 5)")
    print(f"weights read per token: {weights / 1e6:.0f} MB (f32 params without wpe); KV cache {cache_bytes / 1e6:.1f} MB; "
          f"floor {floor:.1f} ms")
    print(f"hoisted: prologue reads {len(hoisted['params_read'])} params ({hoisted['params_read_bytes'] / 1e6:.0f} MB), "
          f"keeps {len(hoisted['prologue']['results'])} residuals ({hoisted['residual_bytes'] / 1e6:.0f} MB)")
    print()
    print("| mode | median ms | spread (round medians) | / frozen | / floor |")
    print("|---|---|---|---|---|")
    for m in ("plain", "hoisted", "frozen", "jax"):
        t = times[m]
        print(f"| {m} | {med[m]:.1f} | {min(t):.1f}-{max(t):.1f} | {med[m] / med['frozen']:.2f}x | {med[m] / floor:.2f}x |")
    print(f"| floor | {floor:.1f} | | | 1.00x |")
    if args.clean:
        shutil.rmtree(OUT, ignore_errors=True)


if __name__ == "__main__":
    main()
