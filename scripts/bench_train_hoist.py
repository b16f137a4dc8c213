"""Trainer step time with and without hoisted inference in the bundle (issue 25: hoisting must
leave training as fast as before). A mid-size model with params-only work in its inference
(GPT-2-style Conv1D blocks, `x @ kernel.T`, width 1024, 4 blocks: 8.4M params), batch 64,
adam, exported twice with export_train_step: hoist=True (the default) and hoist=False.
`flaxlayer train` runs the same epochs on both in alternating rounds; the step time is the
epochs' wall time (`--json`'s `seconds`, compile excluded) over their steps. With `--old-exe`, also the hoist=False bundle under another
flaxlayer binary (e.g. main's, before hoisting).

`--model bert-base`: BERT-base (110M params, Hugging Face FlaxBertForSequenceClassification
with random weights from the default config, 2 labels), batch 8 x 128 tokens, the issue's
real-size case.

Run: .venv/bin/python scripts/bench_train_hoist.py [--rounds 5] [--exe target/release/flaxlayer]
     [--model conv1d|bert-base] [--old-exe OLD_BINARY]
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import statistics
import subprocess

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import optax

from flaxlayer_export import export_train_step
from flaxlayer_export.safetensors_io import safetensors_bytes

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "target" / "bench" / "train_hoist"
BATCH, WIDTH, BLOCKS, N = 64, 1024, 4, 64 * 64


class Conv1D(nn.Module):
    features: int

    @nn.compact
    def __call__(self, x):
        k = self.param("kernel", nn.initializers.normal(0.02), (self.features, x.shape[-1]))
        b = self.param("bias", nn.initializers.zeros, (self.features,))
        return jnp.dot(x, k.T) + b


class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = Conv1D(WIDTH)(x)
        for _ in range(BLOCKS):
            h = h + Conv1D(WIDTH)(nn.gelu(Conv1D(WIDTH)(nn.LayerNorm()(h))))
        return Conv1D(10)(h)


def bert_base():
    """BERT-base for sequence classification (2 labels), random weights from the default
    config: (module, method, variables)."""
    from transformers import BertConfig, FlaxBertForSequenceClassification
    model = FlaxBertForSequenceClassification(BertConfig(num_labels=2), seed=0)

    def fn(module, x, training):
        return module(input_ids=x, attention_mask=jnp.ones_like(x), token_type_ids=jnp.zeros_like(x),
                      position_ids=jnp.broadcast_to(jnp.arange(x.shape[-1]), x.shape), head_mask=None,
                      deterministic=not training).logits
    return model.module, fn, {"params": model.params}


def main() -> None:
    global BATCH, N
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--model", choices=["conv1d", "bert-base"], default="conv1d")
    ap.add_argument("--exe", default=str(ROOT / "target" / "release" / "flaxlayer"))
    ap.add_argument("--old-exe", default=None)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    out = OUT if args.model == "conv1d" else OUT.with_name("train_hoist_bert")
    if args.model == "conv1d":
        module, method, variables = Net(), None, None
        x = rng.standard_normal((N, 256)).astype(np.float32)
        y = rng.integers(0, 10, N).astype(np.int32)
    else:
        module, method, variables = bert_base()
        BATCH, N = 8, 8 * 4
        x = rng.integers(0, 30522, (N, 128)).astype(np.int32)
        y = rng.integers(0, 2, N).astype(np.int32)
    out.mkdir(parents=True, exist_ok=True)
    data = out / "data.safetensors"
    data.write_bytes(safetensors_bytes({"x_train": x, "y_train": y}, {}))
    for hoist in (True, False):
        d = out / f"hoist_{hoist}"
        if not (d / "manifest.json").exists():
            export_train_step(module, {"x": x[:BATCH], "y": y[:BATCH]}, str(d), optimizer=optax.adam(1e-3),
                              method=method, variables=variables, hoist=hoist)
    runs = {"hoisted bundle": (args.exe, out / "hoist_True"), "plain bundle": (args.exe, out / "hoist_False")}
    if args.old_exe:
        runs["plain bundle, old binary"] = (args.old_exe, out / "hoist_False")
    steps = N // BATCH * args.epochs
    times: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(args.rounds):
        order = list(runs.items())
        for name, (exe, bundle) in (order if r % 2 == 0 else order[::-1]):  # the order alternates too
            res = subprocess.run([exe, "train", str(bundle), "--data", str(data), "--epochs", str(args.epochs),
                                  "--batch-size", str(BATCH), "--json"], check=True, capture_output=True, text=True,
                                 env={**os.environ, "VIRTUAL_ENV": os.environ.get("VIRTUAL_ENV", str(ROOT / ".venv"))})
            seconds = sum(json.loads(line)["seconds"] for line in res.stdout.splitlines() if line.startswith("{"))
            times[name].append(seconds / steps * 1e3)
        print(f"round {r}: " + ", ".join(f"{k} {v[-1]:.1f} ms/step" for k, v in times.items()), flush=True)
    if not args.rounds:
        return
    print("| bundle | ms per step (the epochs' wall time over their steps), median | spread |")
    print("|---|---|---|")
    for k, v in times.items():
        print(f"| {k} | {statistics.median(v):.1f} | {min(v):.1f}-{max(v):.1f} |")
    shutil.rmtree(out / "cache", ignore_errors=True)


if __name__ == "__main__":
    main()
