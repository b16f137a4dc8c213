#!/usr/bin/env python3
"""Regenerate the committed example bundles under hlo/<name>/ (deterministic).

    .venv/bin/python scripts/export_examples.py            # all bundles into hlo/
    .venv/bin/python scripts/export_examples.py mlp cnn    # some of them
    .venv/bin/python scripts/export_examples.py --out-root /tmp/x

Besides the FlaxLayer bundles (EXAMPLES): the data set `digits` (hlo/digits/data.safetensors,
scripts/make_digits.py) and the training bundle `digits_train` (TRAIN_EXAMPLES,
scripts/export_train.py, docs/training.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Any, Callable

import numpy as np
import ml_dtypes

import jax
import jax.numpy as jnp
import optax
from flax.core import DenyList

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import models  # noqa: E402
import make_digits  # noqa: E402
from export_flax import export_flax  # noqa: E402
from export_train import epoch_permutation, export_train_step  # noqa: E402

REPO = os.path.dirname(HERE)
HLO = os.path.join(REPO, "hlo")

GREEDY_PROMPT = np.array([[5, 9, 2, 7]], dtype=np.int32)  # [1, P], P = 4
GREEDY_STEPS = 8  # N


@dataclasses.dataclass(frozen=True)
class Example:
    make_module: Callable[[], Any]
    make_inputs: Callable[[], Any]
    method: Any = None
    make_init_inputs: Callable[[], Any] | None = None
    batch_sizes: tuple[int, ...] | None = None
    platforms: tuple[str, ...] = ("cpu",)
    rng_streams: tuple[str, ...] = ("dropout",)
    seed: int = 0
    # f(module, variables) -> extra golden tensors
    extra_golden: Callable[[Any, Any], dict] | None = None


def _normal(seed, shape, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32).astype(dtype)


def greedy_decode(module, variables, prompt, steps):
    """JAX greedy decode with inference-mode module.apply (the oracle).

    Starting from `variables` (the initial caches): feed the prompt tokens one
    per call; then `steps` times: token = argmax(last logits[0, -1]) (first
    index on ties), record it, feed it. Returns int32 [1, steps].
    """
    step = jax.jit(lambda v, ids: module.apply(
        v, ids, training=False, mutable=DenyList(["params"])))
    v = dict(variables)
    logits = None
    for t in np.asarray(prompt)[0]:
        logits, mut = step(v, np.array([[t]], np.int32))
        v = {**v, **mut}
    out = []
    for _ in range(steps):
        tok = int(jnp.argmax(logits[0, -1]))
        out.append(tok)
        logits, mut = step(v, np.array([[tok]], np.int32))
        v = {**v, **mut}
    return np.array([out], dtype=np.int32)


def _decoder_golden(module, variables):
    return {
        "greedy/prompt": GREEDY_PROMPT,
        "greedy/tokens": greedy_decode(module, variables, GREEDY_PROMPT, GREEDY_STEPS),
    }


EXAMPLES: dict[str, Example] = {
    "cnn": Example(
        make_module=models.MyFlaxModule,
        make_inputs=lambda: _normal(1, (4, 28, 28, 1)),
        batch_sizes=(4, 256),
    ),
    "wrapper": Example(
        make_module=models.TwoInputModule,
        make_inputs=lambda: (_normal(2, (3, 6)), _normal(3, (3, 10))),
        method=models.my_flax_module_wrapper,
    ),
    "dense_bn_dropout": Example(
        make_module=models.DenseBNDropout,
        make_inputs=lambda: _normal(4, (4, 12)),
    ),
    "mixed": Example(
        make_module=models.MixedDtypes,
        make_inputs=lambda: {
            "x": _normal(5, (3, 8)),
            "scale": _normal(6, (3, 8), ml_dtypes.bfloat16),
            "ids": np.random.default_rng(7).integers(0, 20, size=(3, 4)).astype(np.int32),
        },
    ),
    "decoder": Example(
        make_module=models.TinyDecoder,
        make_inputs=lambda: np.array([[7]], dtype=np.int32),
        make_init_inputs=lambda: np.zeros((1, 16), dtype=np.int32),
        extra_golden=_decoder_golden,
    ),
    "mlp": Example(
        make_module=models.MLP,
        make_inputs=lambda: _normal(8, (1, 64)),
        batch_sizes=(1, 8, 256),
    ),
    "multi_platform": Example(
        make_module=models.TinyDense,
        make_inputs=lambda: _normal(9, (2, 3)),
        platforms=("cpu", "cuda"),
    ),
}


def export_example(name: str, out_dir: str) -> dict:
    ex = EXAMPLES[name]
    module = ex.make_module()
    return export_flax(
        module, ex.make_inputs(), out_dir,
        method=ex.method, seed=ex.seed, rng_streams=ex.rng_streams,
        init_inputs=ex.make_init_inputs() if ex.make_init_inputs else None,
        platforms=ex.platforms, batch_sizes=ex.batch_sizes,
        extra_golden=(lambda v: ex.extra_golden(module, v)) if ex.extra_golden else None)


@dataclasses.dataclass(frozen=True)
class TrainExample:
    make_module: Callable[[], Any]
    # () -> {"x_train", "y_train"[, "x_test", "y_test"]}
    make_data: Callable[[], dict]
    batch_size: int
    loss: str = "softmax_cross_entropy"
    # () -> (optax optimizer, its manifest description)
    make_optimizer: Callable[[], tuple[Any, str]] | None = None
    rng_streams: tuple[str, ...] = ("dropout",)
    seed: int = 0

    def sample_batch(self, data: dict) -> dict:
        return {"x": data["x_train"][:self.batch_size], "y": data["y_train"][:self.batch_size]}


TRAIN_EXAMPLES: dict[str, TrainExample] = {
    "digits_train": TrainExample(
        make_module=models.DigitsMLP,
        make_data=make_digits.load_digits_split,
        batch_size=32,
        make_optimizer=lambda: (optax.adam(1e-3), "adam(learning_rate=0.001)"),
    ),
}

# Data sets: name -> fn(out_dir) writing <out_dir>/data.safetensors.
DATA: dict[str, Callable[[str], Any]] = {
    "digits": lambda out_dir: make_digits.write_digits(os.path.join(out_dir, "data.safetensors")),
}


# (seed, epoch, n) of the batch-order golden `batch_order/<seed>/<epoch>/<n>` (int64 [n]):
# the Rust and Python permutations must agree (docs/training.md).
BATCH_ORDER_CASES = ((0, 0, 1437), (0, 1, 1437), (42, 5, 100), (2**64 - 1, 3, 33), (7, 0, 1), (7, 2, 2))


def batch_order_golden() -> dict[str, np.ndarray]:
    return {f"batch_order/{s}/{e}/{n}": epoch_permutation(s, e, n) for s, e, n in BATCH_ORDER_CASES}


def export_train_example(name: str, out_dir: str) -> dict:
    ex = TRAIN_EXAMPLES[name]
    data = ex.make_data()
    optimizer, optimizer_name = ex.make_optimizer() if ex.make_optimizer else (None, None)
    return export_train_step(
        ex.make_module(), ex.sample_batch(data), out_dir, loss=ex.loss, optimizer=optimizer,
        optimizer_name=optimizer_name, seed=ex.seed, rng_streams=ex.rng_streams, golden_data=data,
        extra_golden=batch_order_golden())


ALL = [*EXAMPLES, *DATA, *TRAIN_EXAMPLES]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="*", help=f"bundles to export (default all: {', '.join(ALL)})")
    p.add_argument("--out-root", default=HLO)
    args = p.parse_args(argv)
    names = args.names or ALL
    for n in names:
        if n not in ALL:
            raise SystemExit(f"unknown example {n!r}")
    for n in names:
        out = os.path.join(args.out_root, n)
        if n in EXAMPLES:
            export_example(n, out)
        elif n in DATA:
            DATA[n](out)
        else:
            export_train_example(n, out)
        print(f"exported {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
