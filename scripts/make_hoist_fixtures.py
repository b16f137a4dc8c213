"""Writes tests/fixtures/hoist/, the bundle of tests/it/hoist.rs: a model whose inference has
real params-only work, so the exporter hoists it (a params-only prologue and a per-call body):
- `Conv1D` as Hugging Face's GPT-2 has it: `kernel` is [out, in] and the layer computes
  `x @ kernel.T + bias` (the transpose is the prologue's);
- an output layer whose kernel is cast to bfloat16 (the cast is the prologue's);
- a scalar param `gate` that goes through the test-only custom call
  `flaxlayer_test_fail_if` (tests/fixtures/fail_if, scripts/make_fault_fixtures.py), which
  fails when its input is positive: setting `gate` to 1 makes the prologue fail.
With its training step (export_train_step, adam, mse; one golden step) and golden data from
JAX besides the standard ones (`hoist/y_train`: the training targets; the training inputs
are the sample inputs):
- `hoist/set/<variable>` new params and `hoist/set_outputs/<output>` JAX's inference on the
  sample inputs with them;
- `hoist/after_train_outputs/<output>` JAX's inference with the params after the first
  training step (`train/after/...`).

Run: .venv/bin/python scripts/make_hoist_fixtures.py   (needs a C++ compiler, `c++`)
"""
import pathlib
import sys
import tempfile

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

# (run as a script, scripts/ is on the import path: make_fault_fixtures is beside this file)
from make_fault_fixtures import TARGET, register_jax_handler  # noqa: E402

from flaxlayer_export import export_train_step  # noqa: E402
from flaxlayer_export.names import named_leaves  # noqa: E402
from flaxlayer_export.safetensors_io import safetensors_bytes  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "hoist"
BATCH = 8


class Conv1D(nn.Module):
    """Hugging Face's Flax GPT-2 Conv1D: kernel [features, in], `x @ kernel.T + bias`."""
    features: int

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", nn.initializers.normal(0.3), (self.features, x.shape[-1]))
        bias = self.param("bias", nn.initializers.normal(0.1), (self.features,))
        return jnp.dot(x, kernel.T) + bias


class HoistNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        gate = self.param("gate", nn.initializers.zeros, ())
        # the test-only custom call: a copy of `gate`, or a failure when it is positive
        g = jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct((), jnp.float32))(jax.lax.stop_gradient(gate))
        h = jnp.tanh(Conv1D(16)(x))
        w = self.param("out_kernel", nn.initializers.normal(0.3), (3, 16))
        # bf16 operands, f32 accumulation: exact products, so XLA builds agree to f32 rounding
        y = jnp.dot(h.astype(jnp.bfloat16), w.astype(jnp.bfloat16).T, preferred_element_type=jnp.float32)
        return y + g


def main():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((BATCH, 6)).astype(np.float32)
    y = rng.standard_normal((BATCH, 3)).astype(np.float32)
    module = HoistNet()
    apply = jax.jit(lambda v, x: module.apply(v, x))
    with tempfile.TemporaryDirectory() as tmp:
        _handle = register_jax_handler(pathlib.Path(tmp))

        def extra(variables):
            g = {}
            new = jax.tree_util.tree_map(lambda a: np.asarray(a) * 1.5 + 0.01, variables)
            new["params"]["gate"] = np.zeros((), np.float32)  # the custom call fails above 0
            for n, a in named_leaves(new, "variables"):
                g[f"hoist/set/{n}"] = np.asarray(a)
            g["hoist/set_outputs/outputs"] = np.asarray(apply(new, x))
            g["hoist/y_train"] = y  # the training targets (x_train is the sample inputs)
            return g

        from flaxlayer_export.linen import allowing_custom_calls
        with allowing_custom_calls([TARGET]):
            manifest = export_train_step(module, {"x": x, "y": y}, str(OUT), loss="mse",
                                         optimizer=optax.adam(0.05), optimizer_name="adam(learning_rate=0.05)",
                                         golden_data={"x_train": x, "y_train": y}, golden_steps=1,
                                         extra_golden=extra)
        # JAX's inference with the params after the first training step
        from safetensors.numpy import load_file
        golden = load_file(str(OUT / "golden.safetensors"))
        after = {"params": {}}
        for n, a in golden.items():
            if n.startswith("train/after/params/"):
                node = after["params"]
                *path, leaf = n[len("train/after/params/"):].split("/")
                for p in path:
                    node = node.setdefault(p, {})
                node[leaf] = a
        golden["hoist/after_train_outputs/outputs"] = np.asarray(apply(after, x))
        from flaxlayer_export.linen import _meta
        (OUT / "golden.safetensors").write_bytes(safetensors_bytes(golden, _meta("golden")))
    h = manifest["methods"]["__call__"]["inference"][0]["hoisted"]
    print(f"wrote {OUT.relative_to(ROOT)}: prologue {h['prologue']['file']} reads {h['params_read']}, "
          f"{len(h['prologue']['results'])} residuals ({h['residual_bytes']} bytes)")


if __name__ == "__main__":
    main()
