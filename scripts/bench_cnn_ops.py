#!/usr/bin/env python3
"""Per-op timing of hlo/cnn (Keras' FlaxLayer CNN) through JAX's CPU backend, plus the conv
formulations tried as exporter options.

    .venv/bin/python scripts/bench_cnn_ops.py                 # batch 256 and 4, 5 rounds
    .venv/bin/python scripts/bench_cnn_ops.py --batch 1 --rounds 3

Each piece of the model is jitted on its own (inputs already on the device) and timed call by
call; the pieces and the variants alternate within each round. Columns: the median of the
per-round median wall times, the fastest single call, the CPU time per call (all threads), and
GFLOP/s at the median. The conv formulations are compared with the default one on the same inputs
(err = max |diff| / max(max|ref|, 1)). XLA_FLAGS applies as usual, e.g.
`XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type= ...` turns YNNPACK off; `taskset -c 1`
gives single-core numbers.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from safetensors.numpy import load_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CNN = os.path.join(REPO, "hlo", "cnn")


def load_params():
    v = load_file(os.path.join(CNN, "variables.safetensors"))
    return {k.split("/", 1)[1]: jnp.asarray(a) for k, a in v.items()}


# ---------------------------------------------------------------- pieces of MyFlaxModule

def conv_nhwc(p, x):
    y = lax.conv_general_dilated(x, p["Conv_0/kernel"], (1, 1), "SAME",
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + p["Conv_0/bias"]


def relu_pool(y):
    """nn.relu then nn.avg_pool((2, 2), strides (2, 2)): a window sum divided by 4."""
    y = jax.nn.relu(y)
    return lax.reduce_window(y, 0.0, lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "VALID") / 4.0


def head(p, z):
    z = z.reshape(z.shape[0], -1)
    z = jax.nn.relu(z @ p["Dense_0/kernel"] + p["Dense_0/bias"])
    return jax.nn.softmax(z @ p["Dense_1/kernel"] + p["Dense_1/bias"])


def full(p, x):
    return head(p, relu_pool(conv_nhwc(p, x)))


# ---------------------------------------------------------------- conv formulations

def conv_nchw(p, x):
    """Same conv in NCHW/OIHW inside the computation; NHWC in and out."""
    xc = jnp.transpose(x, (0, 3, 1, 2))
    k = jnp.transpose(p["Conv_0/kernel"], (3, 2, 0, 1))
    y = lax.conv_general_dilated(xc, k, (1, 1), "SAME", dimension_numbers=("NCHW", "OIHW", "NCHW"))
    return jnp.transpose(y, (0, 2, 3, 1)) + p["Conv_0/bias"]


def conv_im2col(p, x):
    """3x3 SAME conv as 9 shifted slices stacked (im2col) and one dot with the [9, 32] kernel."""
    b, h, w, _ = x.shape
    xp = jnp.pad(x[..., 0], ((0, 0), (1, 1), (1, 1)))
    cols = jnp.stack([xp[:, i:i + h, j:j + w] for i in range(3) for j in range(3)], axis=-1)
    return cols @ p["Conv_0/kernel"].reshape(9, -1) + p["Conv_0/bias"]


def conv_taps(p, x):
    """3x3 SAME conv as 9 broadcast multiply-adds (C_in = 1): elementwise, fusable by XLA."""
    b, h, w, _ = x.shape
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    k = p["Conv_0/kernel"]
    acc = None
    for i in range(3):
        for j in range(3):
            t = xp[:, i:i + h, j:j + w, :] * k[i, j, 0]
            acc = t if acc is None else acc + t
    return acc + p["Conv_0/bias"]


def full_with(conv):
    return lambda p, x: head(p, relu_pool(conv(p, x)))


# ---------------------------------------------------------------- timing

def sample(fn, args, seconds):
    """Per-call wall times (s) over about `seconds`, and CPU time per call (s, all threads)."""
    ts = []
    t0, c0 = time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < seconds:
        t1 = time.perf_counter()
        fn(*args).block_until_ready()
        ts.append(time.perf_counter() - t1)
    return ts, (time.process_time() - c0) / len(ts)


def err_vs(out, ref):
    return float(np.abs(out.astype(np.float64) - ref).max()) / max(float(np.abs(ref).max()), 1.0)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, nargs="*", default=[256, 4])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=1.0, help="time per cell per round")
    args = ap.parse_args()
    p = load_params()
    print(f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; jax {jax.__version__}")
    for b in args.batch:
        x = jnp.asarray(np.random.default_rng(0).standard_normal((b, 28, 28, 1)).astype(np.float32))
        y = jax.jit(conv_nhwc)(p, x)
        z = jax.jit(lambda p, x: relu_pool(conv_nhwc(p, x)))(p, x)
        conv_flops = 2 * b * 28 * 28 * 32 * 9
        head_flops = 2 * b * (6272 * 200 + 200 * 10)
        cells = {  # name: (function, args, FLOPs)
            "conv+bias": (jax.jit(conv_nhwc), (p, x), conv_flops),
            "relu+avg_pool": (jax.jit(relu_pool), (y,), None),
            "conv+bias+relu+avg_pool": (jax.jit(lambda p, x: relu_pool(conv_nhwc(p, x))), (p, x), conv_flops),
            "dense+relu, dense, softmax": (jax.jit(head), (p, z), head_flops),
            "full": (jax.jit(full), (p, x), conv_flops + head_flops),
            "full, conv NCHW": (jax.jit(full_with(conv_nchw)), (p, x), conv_flops + head_flops),
            "full, conv im2col": (jax.jit(full_with(conv_im2col)), (p, x), conv_flops + head_flops),
            "full, conv 9 taps": (jax.jit(full_with(conv_taps)), (p, x), conv_flops + head_flops),
        }
        ref = np.asarray(jax.jit(full)(p, x))
        outs = {n: np.asarray(f(*a)) for n, (f, a, _) in cells.items()}  # compiles every cell
        errs = {n: err_vs(o, ref) for n, o in outs.items() if n.startswith("full")}
        walls = {n: [] for n in cells}
        mins = {n: [] for n in cells}
        cpus = {n: [] for n in cells}
        for _ in range(args.rounds):
            for n, (f, a, _) in cells.items():
                ts, cpu = sample(f, a, args.seconds)
                walls[n].append(statistics.median(ts))
                mins[n].append(min(ts))
                cpus[n].append(cpu)
        print(f"\nbatch {b}: {args.rounds} rounds, load average {os.getloadavg()[0]:.2f} at the end")
        print(f"{'piece':28s} {'ms/call':>8s} {'min ms':>8s} {'CPU ms':>8s} {'GFLOP/s':>8s} {'err':>8s}")
        for n, (_, _, flops) in cells.items():
            med = statistics.median(walls[n])
            gf = f"{flops / med / 1e9:8.1f}" if flops else " " * 8
            e = f"{errs[n]:8.1e}" if n in errs else ""
            print(f"{n:28s} {med * 1e3:8.3f} {min(mins[n]) * 1e3:8.3f} {statistics.median(cpus[n]) * 1e3:8.3f} {gf} {e}")
        print("per-round medians (ms):")
        for n, ts in walls.items():
            print(f"  {n}: " + ", ".join(f"{t * 1e3:.3f}" for t in ts))


if __name__ == "__main__":
    main()
