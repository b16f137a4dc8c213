"""Writes the StableHLO fixtures of the PJRT-level tests (tests/pjrt.rs) under hlo/pjrt/.

Each program is exported with jax.export, stripped of MLIR locations (no paths of this
machine), and written both as a StableHLO portable artifact (`NAME.mlirbc`, what
`Exported.mlir_module_serialized` holds) and, for one of them, as MLIR text (`NAME.mlir`).
`NAME.safetensors` holds the inputs (`in/0`, `in/1`, ...) and JAX's outputs (`out/0`, ...).

Run: .venv/bin/python scripts/export_pjrt_fixtures.py
"""
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from jax import export
from safetensors.numpy import save_file

from flaxlayer_export._jax_internals import stripped_module

OUT = pathlib.Path(__file__).resolve().parent.parent / "hlo" / "pjrt"


def mlp(x, w1, b1, w2, b2):
    h = jax.nn.relu(x @ w1 + b1)
    return jax.nn.softmax(h @ w2 + b2)


def mixed(x, scale, ids, mask):
    y = x * scale.astype(jnp.float32)
    return y.astype(jnp.bfloat16), jnp.sum(ids, axis=-1), jnp.logical_not(mask), y.astype(jnp.float64)


def donate(state, x):
    return state + x, jnp.sum(x)


def write(name, fn, inputs, donate_argnums=(), text=False):
    jitted = jax.jit(fn, donate_argnums=donate_argnums)
    avals = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in inputs]
    exp = export.export(jitted, platforms=("cpu",))(*avals)
    txt, bytecode = stripped_module(exp)
    (OUT / f"{name}.mlirbc").write_bytes(bytecode)
    if text:
        (OUT / f"{name}.mlir").write_text(txt)
    outs = jax.tree_util.tree_leaves(fn(*[jnp.asarray(a) for a in inputs]))
    tensors = {f"in/{i}": np.asarray(a) for i, a in enumerate(inputs)}
    tensors.update({f"out/{i}": np.asarray(o) for i, o in enumerate(outs)})
    save_file(tensors, OUT / f"{name}.safetensors")


def main():
    jax.config.update("jax_enable_x64", True)
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    f32 = lambda *s: rng.standard_normal(s).astype(np.float32)
    write("mlp", mlp, [f32(4, 16), f32(16, 32), f32(32), f32(32, 10), f32(10)], text=True)
    write(
        "mixed",
        mixed,
        [f32(2, 3), f32(2, 3).astype(jnp.bfloat16), rng.integers(-5, 5, (2, 4)).astype(np.int32),
         rng.integers(0, 2, (2, 3)).astype(bool)],
    )
    write("donate", donate, [f32(8), f32(8)], donate_argnums=(0,))


if __name__ == "__main__":
    main()
