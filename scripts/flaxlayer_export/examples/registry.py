"""The committed example bundles under hlo/<name>/, and how each is exported (deterministic).

    .venv/bin/python scripts/export_examples.py            # all bundles into hlo/
    .venv/bin/python scripts/export_examples.py mlp cnn    # some of them
    .venv/bin/python scripts/export_examples.py --out-root target/x

Besides the FlaxLayer bundles of linen modules (EXAMPLES) and of NNX modules (NNX_EXAMPLES): the
data set `digits` (hlo/digits/data.safetensors, digits.py), the training bundles (TRAIN_EXAMPLES,
export_train_step, docs/training.md) and the bundles exported on a mesh of several devices
(MESH_EXAMPLES, MESH_TRAIN_EXAMPLES; they need XLA_FLAGS=--xla_force_host_platform_device_count=8
set before jax initializes, which scripts/export_examples.py does).
Golden data beyond the standard names (docs/bundle-format.md) is computed here with plain
jitted `module.apply` / `module.init`, independently of the exporter's functions.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax.core import DenyList
from jax.sharding import PartitionSpec as P

from .. import export_flax
from ..batch_order import epoch_permutation
from ..linen import KEY_IMPL
from ..sharding import cpu_mesh
from . import digits, models, nnx_models

GREEDY_PROMPT = np.array([[5, 9, 2, 7]], dtype=np.int32)  # [1, P], P = 4
GREEDY_STEPS = 8  # N
# decoder_b4: four prompts; the golden decodes the first 3 at batch 3 and all 4 at batch 4.
GREEDY_PROMPTS_B4 = np.array([[5, 9, 2, 7], [1, 3, 3, 8], [30, 2, 11, 4], [6, 6, 0, 19]], dtype=np.int32)
# buckets: exact-batch golden outputs for every n in 1..BUCKET_ROWS.
BUCKET_ROWS = 40


@dataclasses.dataclass(frozen=True)
class Example:
    make_module: Callable[[], Any]
    make_inputs: Callable[[], Any]
    method: Any = None
    make_init_inputs: Callable[[], Any] | None = None
    batch_sizes: tuple[int, ...] | str | None = None
    max_batch: int = 64
    platforms: tuple[str, ...] = ("cpu",)
    rng_streams: tuple[str, ...] | None = ("dropout",)  # None: the exporter's default
    seed: int = 0
    # f(module, sample inputs) -> the variables to bundle (variables_origin "given")
    make_variables: Callable[[Any, Any], Any] | None = None
    # f(module, variables) -> extra golden tensors
    extra_golden: Callable[[Any, Any], dict] | None = None
    # () -> export_flax's mesh arguments (mesh, param_sharding, input_sharding, ...)
    make_sharding: Callable[[], dict] | None = None
    # also export inference with the params compiled in (export_flax's `frozen`)
    frozen: bool = False


def _normal(seed, shape, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32).astype(dtype)


def greedy_decode(module, variables, prompt, steps):
    """JAX greedy decode with inference-mode module.apply (the oracle), for a batch of
    prompts [n, P] at batch n.

    Starting from `variables` (the initial caches, at batch n): feed the prompt tokens one
    per call (column t of every row); then `steps` times: token = argmax(last logits[i, -1])
    per row (first index on ties), record it, feed it. Returns int32 [n, steps].
    """
    step = jax.jit(lambda v, ids: module.apply(
        v, ids, training=False, mutable=DenyList(["params"])))
    v = dict(variables)
    prompt = np.asarray(prompt, np.int32)
    logits = None
    for t in range(prompt.shape[1]):
        logits, mut = step(v, prompt[:, t:t + 1])
        v = {**v, **mut}
    out = []
    for _ in range(steps):
        tok = np.asarray(jnp.argmax(logits[:, -1], axis=-1), np.int32)
        out.append(tok)
        logits, mut = step(v, tok[:, None])
        v = {**v, **mut}
    return np.stack(out, axis=1).astype(np.int32)


def _decoder_golden(module, variables):
    return {
        "greedy/prompt": GREEDY_PROMPT,
        "greedy/tokens": greedy_decode(module, variables, GREEDY_PROMPT, GREEDY_STEPS),
    }


def _decoder_b4_golden(module, variables):
    """Greedy tokens for 3 prompts decoded at exactly batch 3 (caches made by module.init at
    batch 3) and for all 4 at batch 4 (the bundle's own caches)."""
    g = {}
    for n in (3, 4):
        k0 = jax.random.key(0, impl=KEY_IMPL)
        v = jax.jit(lambda k, x: module.init({"params": k, "dropout": k}, x, training=True))(
            k0, np.zeros((n, module.max_len), np.int32))
        v = {**jax.tree_util.tree_map(np.asarray, dict(v)), "params": variables["params"]}
        g[f"greedy/{n}/prompt"] = GREEDY_PROMPTS_B4[:n]
        g[f"greedy/{n}/tokens"] = greedy_decode(module, v, GREEDY_PROMPTS_B4[:n], GREEDY_STEPS)
    return g


def _bucket_rows():
    return {"a": _normal(20, (BUCKET_ROWS, 5)), "b": _normal(21, (BUCKET_ROWS, 3))}


def _buckets_golden(module, variables):
    """`rows/<input>`: 40 input rows; `exact/<n>/<output>`: the outputs for the first n rows,
    jitted at exactly batch n, for every n in 1..40."""
    rows = _bucket_rows()
    g = {f"rows/{k}": v for k, v in rows.items()}
    apply = jax.jit(lambda v, x: module.apply(v, x))
    for n in range(1, BUCKET_ROWS + 1):
        y, vec = apply(variables, {k: v[:n] for k, v in rows.items()})
        g[f"exact/{n}/0"] = np.asarray(y)
        g[f"exact/{n}/1"] = np.asarray(vec)
    return g


def _pretrained_variables(module, inputs):
    """Not module.init(seed): init under another seed, then scaled and shifted (as if loaded
    from a checkpoint)."""
    v = jax.jit(module.init)(jax.random.key(7, impl=KEY_IMPL), inputs)
    return jax.tree_util.tree_map(lambda a: np.asarray(a) * np.float32(1.5) + np.float32(0.25), dict(v))


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
    "image_meta": Example(
        make_module=models.ImageMeta,
        make_inputs=lambda: {"image": _normal(44, (2, 8, 8, 1)), "meta": _normal(45, (2, 3))},
        batch_sizes=(1, 2, 4),
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
    "mlp_frozen": Example(
        make_module=models.MLP,
        make_inputs=lambda: _normal(8, (1, 64)),
        batch_sizes=(1, 8),
        frozen=True,
    ),
    "decoder_frozen": Example(
        make_module=models.TinyDecoder,
        make_inputs=lambda: np.array([[7]], dtype=np.int32),
        make_init_inputs=lambda: np.zeros((1, 16), dtype=np.int32),
        extra_golden=_decoder_golden,
        frozen=True,
    ),
    "multi_platform": Example(
        make_module=models.TinyDense,
        make_inputs=lambda: _normal(9, (2, 3)),
        platforms=("cpu", "cuda"),
    ),
    "actnorm": Example(
        make_module=models.ActNormDense,
        make_inputs=lambda: _normal(10, (8, 6)) * np.float32(3.0) + np.float32(2.0),
    ),
    "pretrained_mlp": Example(
        make_module=models.SmallMLP,
        make_inputs=lambda: _normal(11, (2, 8)),
        batch_sizes="auto",
        max_batch=8,
        make_variables=_pretrained_variables,
    ),
    "buckets": Example(
        make_module=models.Buckets,
        make_inputs=lambda: {k: v[:4] for k, v in _bucket_rows().items()},
        batch_sizes=(1, 4, 16),
        extra_golden=_buckets_golden,
    ),
    "bn_batch_stats": Example(
        make_module=models.BatchStatsBN,
        make_inputs=lambda: _normal(12, (4, 5)),
        batch_sizes=(4, 8),
    ),
    "decoder_b4": Example(
        make_module=models.TinyDecoder,
        make_inputs=lambda: np.array([[7], [3], [12], [0]], dtype=np.int32),
        make_init_inputs=lambda: np.zeros((4, 16), dtype=np.int32),
        extra_golden=_decoder_b4_golden,
    ),
    "lstm": Example(
        make_module=models.LSTMClassifier,
        make_inputs=lambda: _normal(13, (4, 6, 3)),
    ),
    "linalg": Example(
        make_module=models.LinalgModule,
        make_inputs=lambda: _normal(14, (3, 5)),
    ),
}


def _counter_used_once():
    """NnxCounter as a user would have it after one inference call: the bundle holds the
    instance's current state (count 1)."""
    from flax import nnx

    module = nnx_models.NnxCounter(rngs=nnx.Rngs(3))
    module(np.zeros((1, 3), np.float32), training=False)
    return module


def _attention_instance():
    from flax import nnx

    return nnx_models.NnxAttention(rngs=nnx.Rngs(params=1, dropout=2))


# NNX modules (flax.nnx): an nnx.Module instance (its state is bundled, no init) or a
# factory of `rngs` (a class; the bundle's init builds it again). rng_streams None: every
# stream of the module is reseeded from the layer key on each training call; (): none.
NNX_EXAMPLES: dict[str, Example] = {
    "nnx_mlp_bn_dropout": Example(
        make_module=lambda: nnx_models.NnxMLPBNDropout,
        make_inputs=lambda: _normal(4, (4, 12)),
        rng_streams=None,
    ),
    "nnx_attention": Example(
        make_module=_attention_instance,
        make_inputs=lambda: _normal(15, (2, 5, 8)),
        batch_sizes=(2, 4),
        rng_streams=(),
    ),
    "nnx_counter": Example(
        make_module=_counter_used_once,
        make_inputs=lambda: _normal(16, (3, 3)),
        rng_streams=None,
    ),
}


# Megatron-style tensor parallelism of MLP 64-256-256-10 over `model`: Dense_0 split by columns
# (kernel and bias), Dense_1 by rows (its bias replicated), Dense_2 replicated.
TP_PARAMS = {"Dense_0/kernel": P(None, "model"), "Dense_0/bias": P("model"), "Dense_1/kernel": P("model", None)}
# hlo/mesh2x4_mlp: PartitionedMLP(logical=True)'s logical axes on a data x model mesh.
LOGICAL_RULES = (("mlp", "model"), ("embed", None), ("vocab", None))

MESH_EXAMPLES: dict[str, Example] = {
    "dp_mlp": Example(
        make_module=models.DenseBNDropout,
        make_inputs=lambda: _normal(40, (8, 12)),
        batch_sizes=(4, 8, 16),
        make_sharding=lambda: {"mesh": cpu_mesh((4,), ("data",)), "input_sharding": P("data"),
                               "output_sharding": P("data")},
    ),
    "tp_mlp": Example(
        make_module=models.MLP,
        make_inputs=lambda: _normal(41, (8, 64)),
        batch_sizes=(1, 8),
        make_sharding=lambda: {"mesh": cpu_mesh((4,), ("model",)), "param_sharding": TP_PARAMS.get},
    ),
    "mesh2x2_mlp": Example(
        make_module=lambda: models.PartitionedMLP(features=(32, 16, 4)),
        make_inputs=lambda: _normal(42, (8, 16)),
        batch_sizes=(2, 8),
        make_sharding=lambda: {"mesh": cpu_mesh((2, 2), ("data", "model")), "input_sharding": P("data"),
                               "output_sharding": P("data")},
    ),
    "mesh2x4_mlp": Example(
        make_module=lambda: models.PartitionedMLP(logical=True, features=(32, 16, 4)),
        make_inputs=lambda: _normal(43, (8, 16)),
        make_sharding=lambda: {"mesh": cpu_mesh((2, 4), ("data", "model")), "input_sharding": P("data"),
                               "output_sharding": P("data"), "logical_rules": LOGICAL_RULES},
    ),
}


def example(name: str) -> Example:
    """EXAMPLES[name], NNX_EXAMPLES[name] or MESH_EXAMPLES[name]."""
    for examples in (EXAMPLES, NNX_EXAMPLES, MESH_EXAMPLES):
        if name in examples:
            return examples[name]
    raise KeyError(name)


def example_variables(name: str, module=None):
    """The variables given to export_flax for EXAMPLES[name] (None: module.init)."""
    ex = example(name)
    if ex.make_variables is None:
        return None
    return ex.make_variables(module or ex.make_module(), ex.make_inputs())


def export_example(name: str, out_dir: str) -> dict:
    ex = example(name)
    module = ex.make_module()
    return export_flax(
        module, ex.make_inputs(), out_dir,
        method=ex.method, seed=ex.seed, rng_streams=ex.rng_streams,
        variables=example_variables(name, module),
        init_inputs=ex.make_init_inputs() if ex.make_init_inputs else None,
        platforms=ex.platforms, batch_sizes=ex.batch_sizes, max_batch=ex.max_batch,
        extra_golden=(lambda v: ex.extra_golden(module, v)) if ex.extra_golden else None,
        frozen=ex.frozen, **(ex.make_sharding() if ex.make_sharding else {}))


@dataclasses.dataclass(frozen=True)
class TrainExample:
    make_module: Callable[[], Any]
    # () -> {"x_train", "y_train"[, "x_test", "y_test"]}
    make_data: Callable[[], dict]
    batch_size: int
    loss: str = "softmax_cross_entropy"
    # () -> (optax optimizer, its manifest description)
    make_optimizer: Callable[[], tuple[Any, str]] | None = None
    rng_streams: tuple[str, ...] | None = ("dropout",)
    seed: int = 0
    golden_steps: int = 20
    # () -> extra golden tensors
    extra_golden: Callable[[], dict] | None = None
    # () -> export_train_step's mesh arguments (mesh, batch_sharding, ...)
    make_sharding: Callable[[], dict] | None = None

    def sample_batch(self, data: dict) -> dict:
        return {"x": data["x_train"][:self.batch_size], "y": data["y_train"][:self.batch_size]}


def _adam(lr: float):
    import optax
    return optax.adam(lr), f"adam(learning_rate={lr})"


def sequence_data() -> dict[str, np.ndarray]:
    """Synthetic sequences for hlo/lstm_train: x [n, 6, 3] standard normal; the label says
    which of the three features has the largest sum over time."""
    out = {}
    for split, n, seed in (("train", 48, 30), ("test", 20, 31)):
        x = _normal(seed, (n, 6, 3))
        out[f"x_{split}"] = x
        out[f"y_{split}"] = np.argmax(x.sum(axis=1), axis=-1).astype(np.int32)
    return out


# (seed, epoch, n) of the batch-order golden `batch_order/<seed>/<epoch>/<n>` (int64 [n]):
# the Rust and Python permutations must agree (docs/training.md).
BATCH_ORDER_CASES = ((0, 0, 1437), (0, 1, 1437), (42, 5, 100), (2**64 - 1, 3, 33), (7, 0, 1), (7, 2, 2))


def batch_order_golden() -> dict[str, np.ndarray]:
    return {f"batch_order/{s}/{e}/{n}": epoch_permutation(s, e, n) for s, e, n in BATCH_ORDER_CASES}


TRAIN_EXAMPLES: dict[str, TrainExample] = {
    "digits_train": TrainExample(
        make_module=models.DigitsMLP,
        make_data=digits.load_digits_split,
        batch_size=32,
        make_optimizer=lambda: _adam(0.001),
        extra_golden=batch_order_golden,
    ),
    "lstm_train": TrainExample(
        make_module=models.LSTMClassifier,
        make_data=sequence_data,
        batch_size=8,
        make_optimizer=lambda: _adam(0.01),
        golden_steps=2,
    ),
    # NNX: the class is the factory (init builds it from the seed); every stream reseeded.
    "nnx_digits_train": TrainExample(
        make_module=lambda: nnx_models.NnxDigitsMLP,
        make_data=digits.load_digits_split,
        batch_size=32,
        make_optimizer=lambda: _adam(0.001),
        rng_streams=None,
    ),
}

MESH_TRAIN_EXAMPLES: dict[str, TrainExample] = {
    # Data parallel on 4 devices: the batch of 32 split 4 ways, params, batch statistics and
    # optimizer state replicated; XLA all-reduces the gradients and the batch statistics.
    "dp_digits_train": TrainExample(
        make_module=models.DigitsMLP,
        make_data=digits.load_digits_split,
        batch_size=32,
        make_optimizer=lambda: _adam(0.001),
        make_sharding=lambda: {"mesh": cpu_mesh((4,), ("data",)), "batch_sharding": P("data")},
    ),
}

# Data sets: name -> fn(out_dir) writing <out_dir>/data.safetensors.
DATA: dict[str, Callable[[str], Any]] = {
    "digits": lambda out_dir: digits.write_digits(os.path.join(out_dir, "data.safetensors")),
}


def export_train_example(name: str, out_dir: str) -> dict:
    from ..train import export_train_step

    ex = TRAIN_EXAMPLES[name] if name in TRAIN_EXAMPLES else MESH_TRAIN_EXAMPLES[name]
    data = ex.make_data()
    optimizer, optimizer_name = ex.make_optimizer() if ex.make_optimizer else (None, None)
    return export_train_step(
        ex.make_module(), ex.sample_batch(data), out_dir, loss=ex.loss, optimizer=optimizer,
        optimizer_name=optimizer_name, seed=ex.seed, rng_streams=ex.rng_streams, golden_data=data,
        golden_steps=ex.golden_steps, extra_golden=ex.extra_golden() if ex.extra_golden else None,
        **(ex.make_sharding() if ex.make_sharding else {}))


ALL = [*EXAMPLES, *NNX_EXAMPLES, *DATA, *TRAIN_EXAMPLES, *MESH_EXAMPLES, *MESH_TRAIN_EXAMPLES]


def export_any(name: str, out_dir: str):
    if name in EXAMPLES or name in NNX_EXAMPLES or name in MESH_EXAMPLES:
        return export_example(name, out_dir)
    if name in DATA:
        return DATA[name](out_dir)
    if name in TRAIN_EXAMPLES or name in MESH_TRAIN_EXAMPLES:
        return export_train_example(name, out_dir)
    raise ValueError(f"unknown example {name!r}")


def main(argv=None, *, default_out_root: str | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="*", help=f"bundles to export (default all: {', '.join(ALL)})")
    p.add_argument("--out-root", default=default_out_root, required=default_out_root is None)
    args = p.parse_args(argv)
    names = args.names or ALL
    for n in names:
        if n not in ALL:
            raise SystemExit(f"unknown example {n!r}")
    for n in names:
        out = os.path.join(args.out_root, n)
        export_any(n, out)
        print(f"exported {out}")
    return 0
