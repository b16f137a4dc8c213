"""Hoisting (issue 25): the exporter splits inference into a params-only prologue and a
per-call body by JAX's partial evaluation (flaxlayer_export.hoist, _jax_internals.split_known).
The split must compute what the unsplit function computes under jax.jit, pass params that are
only forwarded as themselves, and keep residuals from outgrowing the params."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export as jax_export

from flaxlayer_export import _jax_internals, export_flax
from flaxlayer_export.linen import check_same_outputs


class Conv1D(nn.Module):
    """Hugging Face's GPT-2 Conv1D: kernel [out, in], x @ kernel.T + bias."""
    features: int

    @nn.compact
    def __call__(self, x):
        k = self.param("kernel", nn.initializers.normal(0.3), (self.features, x.shape[-1]))
        b = self.param("bias", nn.initializers.normal(0.1), (self.features,))
        return jnp.dot(x, k.T) + b


def _f(p, x):
    """Params-only work of several kinds: a transpose, a bf16 cast, weight norm; a bias that is
    only broadcast (no residual: the param itself); a constant mask (made in the body)."""
    w = p["v"] / jnp.linalg.norm(p["v"], axis=0, keepdims=True) * p["g"]
    h = jnp.tanh(jnp.dot(x, p["k"].T) + p["b"])
    mask = jnp.tril(jnp.ones((x.shape[0], x.shape[0]), bool))
    y = jnp.dot(h.astype(jnp.bfloat16), w.astype(jnp.bfloat16), preferred_element_type=jnp.float32)
    return jnp.where(mask[:, :1], y, 0.0)


def _params(rng):
    return {"k": rng.standard_normal((8, 5)).astype(np.float32),
            "b": rng.standard_normal((8,)).astype(np.float32),
            "v": rng.standard_normal((8, 3)).astype(np.float32),
            "g": rng.standard_normal((3,)).astype(np.float32)}


def test_split_equals_the_unsplit_jitted_function_exactly():
    rng = np.random.default_rng(0)
    p, x = _params(rng), rng.standard_normal((4, 5)).astype(np.float32)
    leaves, tree = jax.tree_util.tree_flatten(p)
    flat = lambda *a: [_f(jax.tree_util.tree_unflatten(tree, a[:4]), a[4])]
    split = _jax_internals.split_known(flat, 4, [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in [*leaves, x]])
    names = sorted(p)  # tree_flatten's order of a dict
    assert [names[j] for kind, j in split.residuals if kind == "param"] == ["b"], "the bias is passed on as itself"
    assert [kind for kind, _ in split.residuals].count("constant") >= 1, "the mask is made in the body"
    # the prologue computes k.T and the weight-normed v in bf16, nothing else
    assert [(tuple(a.shape), str(a.dtype)) for a in split.computed_avals] == [((5, 8), "float32"), ((8, 3), "bfloat16")]
    res = jax.jit(split.prologue)(*leaves)
    got = jax.jit(split.body)(*leaves, *res, x)[0]
    want = jax.jit(_f)(p, x)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_a_param_broadcast_to_the_batch_is_not_a_residual():
    p = {"b": np.ones((64,), np.float32), "k": np.ones((64, 64), np.float32)}
    x = np.ones((512, 64), np.float32)

    def f(b, k, x):
        return [x @ k.T + jnp.broadcast_to(b * 2.0, (512, 64))]

    split = _jax_internals.split_known(f, 2, [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in (p["b"], p["k"], x)])
    computed = sum(int(np.prod(a.shape)) for a in split.computed_avals)
    assert computed <= 64 * 64 + 64, split.computed_avals  # k.T and b * 2, never [512, 64]
    res = split.prologue(p["b"], p["k"])
    np.testing.assert_array_equal(np.asarray(split.body(p["b"], p["k"], *res, x)[0]),
                                  np.asarray(jax.jit(f)(p["b"], p["k"], x)[0]))


def test_export_flax_hoists_only_real_params_work(tmp_path):
    x = np.random.default_rng(1).standard_normal((4, 6)).astype(np.float32)
    m = export_flax(nn.Dense(5), x, str(tmp_path / "dense"))
    assert "hoisted" not in m["methods"]["__call__"]["inference"][0], "a Dense uses its params as they are"

    m = export_flax(Conv1D(5), x, str(tmp_path / "conv1d"), batch_sizes=[4, 8])
    entries = m["methods"]["__call__"]["inference"]
    hs = [e["hoisted"] for e in entries]
    assert len({h["prologue"]["file"] for h in hs}) == 1, "both batch sizes share the prologue"
    h = hs[0]
    assert h["params_read"] == ["params/kernel"]
    assert h["residual_bytes"] == h["params_read_bytes"] == 5 * 6 * 4
    assert [r["role"] for r in h["prologue"]["results"]] == ["residual"]
    assert [a["role"] for a in h["body"]["args"]] == ["param", "param", "residual", "input"]
    assert json.loads((tmp_path / "conv1d" / "manifest.json").read_text())["methods"] == m["methods"]
    # the exported prologue and body give the bundled inference's golden outputs
    load = lambda f: jax_export.deserialize(bytearray((tmp_path / "conv1d" / f).read_bytes()))
    from safetensors.numpy import load_file
    v = load_file(str(tmp_path / "conv1d" / "variables.safetensors"))
    params = {"bias": v["params/bias"], "kernel": v["params/kernel"]}
    res = load(h["prologue"]["file"]).call(params, {})
    out, _ = load(h["body"]["file"]).call(params, res, {}, x)
    want = load_file(str(tmp_path / "conv1d" / "golden.safetensors"))["inference/outputs"]
    np.testing.assert_allclose(np.asarray(out), want, rtol=0, atol=1e-6)
    m = export_flax(Conv1D(5), x, str(tmp_path / "off"), hoist=False)
    assert "hoisted" not in m["methods"]["__call__"]["inference"][0]


def test_a_split_that_differs_is_refused_with_the_reason():
    want = {"y": np.array([1.0, 2.0], np.float32)}
    check_same_outputs(want, {"y": np.array([1.0, 2.0 + 1e-6], np.float32)}, "f.jaxexport")
    with pytest.raises(ValueError, match=r"f\.jaxexport: output 0 of the hoisted inference differs .* by 0\.5.*hoist=False"):
        check_same_outputs(want, {"y": np.array([1.0, 2.5], np.float32)}, "f.jaxexport")
