"""The exporter across its supported JAX range, and model code it did not write.

Run under both ends of the range: .venv (Python 3.11, jax 0.10.2; scripts/test.sh's pytest
phase) and .venv-jax012 (Python 3.12, jax 0.12.0.1, flax 0.12.12; scripts/matrix.sh).

- Range bundles: linen and NNX models with BatchNorm, dropout, attention and int32 token
  inputs are exported under the running JAX, run by the Rust CLI (`flaxlayer run`, inference
  and training) and compared with what this JAX computed (golden.safetensors, written from
  plain module.apply / NNX calls).
- ModelOutput-style returns (a flax.struct.dataclass) export as dicts by field name, and the
  Rust outputs carry those names; other custom PyTree nodes are refused by name.
- The padding check on a CLIP-like [B, B] output says "not paddable" and why;
  `batching=False` (CLI: --no-batching-check) skips it.
- Given variables that miss a collection get a short message that names it.
- `bundle_variables=False`: an init-only bundle, which Rust starts from init under the seed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import flaxlayer_export as ef
from flaxlayer_export.outputs import OutputTypeError

REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------
# running bundles in Rust
# ---------------------------------------------------------------------------

# flaxlayer_bin: the Rust CLI, a fixture of conftest.py.


def run_cli(binary, *args, ok=True):
    # The PJRT plugin is the repo's .venv's, whichever Python runs the tests (.venv-jax012 has
    # none; the working directory is never searched).
    env = {**os.environ, "VIRTUAL_ENV": str(REPO / ".venv")}
    env["FLAXLAYER_CACHE"] = str(REPO / "target" / "compile-cache")
    r = subprocess.run([str(binary), *map(str, args)], capture_output=True, text=True, env=env,
                       cwd=REPO, timeout=600)
    if ok:
        assert r.returncode == 0, r.stderr
    return r


def group(golden: dict, prefix: str) -> dict:
    p = prefix + "/"
    return {k[len(p):]: v for k, v in golden.items() if k.startswith(p)}


def assert_named_close(got: dict, want: dict, what: str):
    assert sorted(got) == sorted(want), f"{what}: names {sorted(got)} vs {sorted(want)}"
    for name in want:
        g, w = np.asarray(got[name]), np.asarray(want[name])
        assert g.shape == w.shape and g.dtype == w.dtype, f"{what} {name}: {g.dtype}{g.shape} vs {w.dtype}{w.shape}"
        if np.issubdtype(w.dtype, np.floating):
            np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-5, err_msg=f"{what} {name}")
        else:
            np.testing.assert_array_equal(g, w, err_msg=f"{what} {name}")


def rust_matches_jax(binary, bundle: Path, tmp: Path, *, training=True) -> dict:
    """Runs `bundle` with the Rust CLI on its golden inputs, in inference and (first call)
    training mode, and compares with the golden outputs JAX computed at export. Returns
    Rust's inference outputs by name."""
    golden = ef.read_safetensors(str(bundle / "golden.safetensors"))[0]
    inputs = tmp / f"{bundle.name}.in.safetensors"
    ef.write_safetensors(str(inputs), group(golden, "inputs"))
    got = {}
    for mode in ("inference", "training") if training else ("inference",):
        out = tmp / f"{bundle.name}.{mode}.safetensors"
        run_cli(binary, "run", bundle, "--input", inputs, "--output", out,
                *(["--training"] if mode == "training" else []))
        got[mode] = ef.read_safetensors(str(out))[0]
        want = group(golden, "inference" if mode == "inference" else "training/0")
        assert_named_close(got[mode], want, f"{bundle.name} {mode} (Rust vs jax {jax.__version__})")
    return got["inference"]


# ---------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------

class LinenBNDropout(nn.Module):
    @nn.compact
    def __call__(self, x, training: bool):
        x = nn.Dense(16)(x)
        x = nn.BatchNorm(use_running_average=not training, momentum=0.9)(x)
        x = nn.Dropout(0.3, deterministic=not training)(nn.relu(x))
        return nn.Dense(3)(x)


class LinenTokenAttention(nn.Module):
    """int32 tokens -> embedding -> self-attention (dropout) -> logits."""
    vocab: int = 13

    @nn.compact
    def __call__(self, tokens, training: bool):
        h = nn.Embed(self.vocab, 8)(tokens)
        a = nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=8, dropout_rate=0.1,
                                            deterministic=not training)(h)
        return nn.Dense(self.vocab)(nn.LayerNorm()(h + a))


class NnxTokenBNAttention(nnx.Module):
    def __init__(self, rngs: nnx.Rngs, vocab: int = 13):
        self.embed = nnx.Embed(vocab, 8, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(num_heads=2, in_features=8, dropout_rate=0.1,
                                           decode=False, rngs=rngs)
        self.bn = nnx.BatchNorm(8, rngs=rngs)
        self.drop = nnx.Dropout(0.2, rngs=rngs)
        self.out = nnx.Linear(8, vocab, rngs=rngs)

    def __call__(self, tokens):
        h = self.embed(tokens)
        h = h + self.attn(h)
        h = self.bn(h.reshape(-1, 8)).reshape(h.shape)
        return self.out(self.drop(nnx.relu(h)))


@flax.struct.dataclass
class Output:
    """A ModelOutput-style return (as Hugging Face's FlaxMaskedLMOutput)."""
    logits: jax.Array
    hidden_states: tuple
    attentions: jax.Array | None = None


class LinenWithOutput(nn.Module):
    @nn.compact
    def __call__(self, x, training: bool):
        h = nn.Dense(8)(x)
        h2 = nn.Dropout(0.5, deterministic=not training)(nn.relu(h))
        return Output(logits=nn.Dense(4)(h2), hidden_states=(h, h2))


class NnxWithOutput(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.a = nnx.Linear(6, 8, rngs=rngs)
        self.b = nnx.Linear(8, 4, rngs=rngs)

    def __call__(self, x):
        h = self.a(x)
        return Output(logits=self.b(nnx.relu(h)), hidden_states=(h,))


def tokens(b=4, t=5, vocab=13, seed=0):
    return np.random.default_rng(seed).integers(0, vocab, size=(b, t)).astype(np.int32)


def floats(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# ---------------------------------------------------------------------------
# range bundles: exported here, run in Rust, compared with this JAX
# ---------------------------------------------------------------------------

RANGE = {
    "linen_bn_dropout": lambda: (LinenBNDropout(), floats(4, 6), {}),
    "linen_token_attention": lambda: (LinenTokenAttention(), tokens(), {}),
    "nnx_token_bn_attention": lambda: (NnxTokenBNAttention, tokens(), {}),
}


@pytest.mark.parametrize("name", list(RANGE))
def test_range_bundle_runs_in_rust_and_matches_jax(tmp_path, flaxlayer_bin, name):
    module, x, kw = RANGE[name]()
    out = tmp_path / name
    m = ef.export_flax(module, x, str(out), seed=3, **kw)
    assert m["producer"]["jax"] == jax.__version__
    if x.dtype == np.int32:
        assert m["methods"][m["default_method"]]["inputs"][0]["dtype"] == "int32"
    got = rust_matches_jax(flaxlayer_bin, out, tmp_path)
    assert got["outputs"].shape[0] == x.shape[0]
    if not name.startswith("linen_token"):  # BatchNorm's batch statistics mix rows in training only
        golden = ef.read_safetensors(str(out / "golden.safetensors"))[0]
        # training mode updated the batch statistics (state) in JAX; Rust ran the same step
        assert any(k.startswith("after_training/") for k in golden)


def test_serialization_version_of_this_jax(tmp_path):
    """jax 0.12 writes serialization version 12 with its own version string; 0.10.x writes 3.
    (What the Rust reader accepts: 2..=12.)"""
    m = ef.export_flax(LinenBNDropout(), floats(2, 6), str(tmp_path / "b"), batch_sizes=[2])
    data = (tmp_path / "b" / m["init"]["file"]).read_bytes()
    root = int.from_bytes(data[:4], "little")
    vtable = root - int.from_bytes(data[root:root + 4], "little", signed=True)
    field = int.from_bytes(data[vtable + 4:vtable + 6], "little")
    version = int.from_bytes(data[root + field:root + field + 2], "little")
    major_minor = tuple(int(p) for p in jax.__version__.split(".")[:2])
    assert version == (12 if major_minor >= (0, 12) else 3)
    if version == 12:
        assert jax.__version__.encode() in data


# ---------------------------------------------------------------------------
# ModelOutput-style returns
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["linen", "nnx"])
def test_dataclass_outputs_export_by_field_name(tmp_path, flaxlayer_bin, kind):
    module, kw = (LinenWithOutput(), {}) if kind == "linen" else (NnxWithOutput, {})
    x = floats(3, 6)
    out = tmp_path / kind
    m = ef.export_flax(module, x, str(out), seed=1, **kw)
    names = [o["name"] for o in m["methods"][m["default_method"]]["outputs"]]
    want = ["hidden_states/0", "hidden_states/1", "logits"] if kind == "linen" else ["hidden_states/0", "logits"]
    assert names == want  # `attentions` is None: dropped, as ModelOutput does
    got = rust_matches_jax(flaxlayer_bin, out, tmp_path)
    assert sorted(got) == want
    # JAX's own result, fields by name
    if kind == "linen":
        v = ef.read_safetensors(str(out / "variables.safetensors"))[0]
        params = {}
        for k, a in v.items():
            d = params
            *path, leaf = k.split("/")[1:]
            for p in path:
                d = d.setdefault(p, {})
            d[leaf] = a
        res = LinenWithOutput().apply({"params": params}, x, training=False)
        np.testing.assert_allclose(got["logits"], np.asarray(res.logits), rtol=2e-5, atol=2e-5)
        np.testing.assert_allclose(got["hidden_states/1"], np.asarray(res.hidden_states[1]), rtol=2e-5, atol=2e-5)


class Opaque:
    """A custom PyTree node without field names."""

    def __init__(self, a, b):
        self.a, self.b = a, b


jax.tree_util.register_pytree_node(Opaque, lambda o: ((o.a, o.b), None), lambda _, c: Opaque(*c))


class ReturnsOpaque(nn.Module):
    @nn.compact
    def __call__(self, x):
        y = nn.Dense(3)(x)
        return {"ok": y, "bad": Opaque(y, y * 2)}


def test_other_custom_nodes_are_refused_by_name(tmp_path):
    with pytest.raises(OutputTypeError, match=r"outputs/bad is a .*Opaque.*return a dict"):
        ef.export_flax(ReturnsOpaque(), floats(2, 5), str(tmp_path / "b"))
    assert not (tmp_path / "b").exists()


# ---------------------------------------------------------------------------
# the padding check
# ---------------------------------------------------------------------------

class ClipLike(nn.Module):
    """Two towers and CLIP's similarity logits: logits_per_image is [B, B]."""

    @nn.compact
    def __call__(self, inputs):
        img = nn.Dense(8)(inputs["pixels"])
        txt = nn.Dense(8)(nn.Embed(13, 8)(inputs["ids"]).mean(axis=1))
        img = img / jnp.linalg.norm(img, axis=-1, keepdims=True)
        txt = txt / jnp.linalg.norm(txt, axis=-1, keepdims=True)
        logits_per_image = img @ txt.T
        return {"logits_per_image": logits_per_image, "image_embeds": img, "text_embeds": txt}


class TimeMajor(nn.Module):
    """Outputs with the batch as the second axis."""

    @nn.compact
    def __call__(self, x):
        return jnp.swapaxes(nn.Dense(4)(x), 0, 1)


def clip_inputs(b=3):
    return {"pixels": floats(b, 10), "ids": tokens(b, 4)}


def test_padding_check_on_a_b_by_b_output_says_why(tmp_path, flaxlayer_bin):
    m = ef.export_flax(ClipLike(), clip_inputs(), str(tmp_path / "clip"), batch_sizes=[2, 3])
    batching = m["methods"]["__call__"]["batching"]
    assert batching["paddable"] is False
    assert "logits_per_image" in batching["reason"] and "more than its leading axis" in batching["reason"]
    rust_matches_jax(flaxlayer_bin, tmp_path / "clip", tmp_path, training=False)

    m = ef.export_flax(TimeMajor(), floats(3, 5, 6), str(tmp_path / "tm"))
    reason = m["methods"]["__call__"]["batching"]["reason"]
    assert m["methods"]["__call__"]["batching"]["paddable"] is False and "no leading batch axis" in reason


def test_batching_false_skips_the_check(tmp_path, monkeypatch):
    from flaxlayer_export import batching as eb

    def never(*a, **k):
        raise AssertionError("inference ran for the padding check")

    m = ef.export_flax(LinenBNDropout(), floats(2, 6), str(tmp_path / "a"), batching=False)
    b = m["methods"]["__call__"]["batching"]
    assert b["paddable"] is False and "skipped" in b["reason"]
    # the CLI flag does the same
    fixture = tmp_path / "model.py"
    fixture.write_text("import flax.linen as nn\n"
                       "class M(nn.Module):\n"
                       "    @nn.compact\n"
                       "    def __call__(self, x):\n"
                       "        return nn.Dense(2)(x)\n"
                       "model = M()\n")
    r = subprocess.run([sys.executable, "-m", "flaxlayer_export.cli", f"{fixture}:model", "--input",
                        "inputs=2,3:float32", "--out", str(tmp_path / "cli"), "--no-batching-check"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    cli = json.loads((tmp_path / "cli" / "manifest.json").read_text())
    assert "skipped" in cli["methods"]["__call__"]["batching"]["reason"]
    monkeypatch.setattr(eb, "_pad", never)
    ef.export_flax(LinenBNDropout(), floats(2, 6), str(tmp_path / "b"), batching=False)


# ---------------------------------------------------------------------------
# given variables
# ---------------------------------------------------------------------------

class WithCache(nn.Module):
    """A decoder-like module: params, and a `cache` collection made at init."""

    @nn.compact
    def __call__(self, x):
        c = self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
        if not self.is_initializing():
            c.value = c.value + 1
        return nn.Dense(4)(nn.Dense(5)(x))


def test_given_variables_errors_say_what_differs(tmp_path):
    x = floats(2, 3)
    full = flax.core.unfreeze(WithCache().init(jax.random.key(0), x))
    with pytest.raises(ValueError) as e:
        ef.export_flax(WithCache(), x, str(tmp_path / "a"), variables={"params": full["params"]})
    msg = str(e.value)
    assert "missing collections: cache" in msg and len(msg) < 600 and len(msg.splitlines()) <= 4, msg

    params = dict(full["params"])
    del params["Dense_1"]
    params["Extra"] = {"w": np.zeros(2, np.float32)}
    params["Dense_0"] = {"kernel": np.zeros((3, 7), np.float32), "bias": np.zeros(4, np.int32)}
    with pytest.raises(ValueError) as e:
        ef.export_flax(WithCache(), x, str(tmp_path / "b"), variables={**full, "params": params})
    msg = str(e.value)
    assert "missing 2 leaves: params/Dense_1/bias, params/Dense_1/kernel" in msg, msg
    assert "extra 1 leaves: params/Extra/w" in msg, msg
    # (linen names Dense(4) Dense_0: it is made first)
    assert "params/Dense_0/kernel: given float32[3, 7], init makes float32[5, 4]" in msg, msg
    assert "params/Dense_0/bias: given int32[4], init makes float32[4]" in msg, msg
    assert "missing collections" not in msg and len(msg.splitlines()) <= 8, msg


# ---------------------------------------------------------------------------
# init-only bundles
# ---------------------------------------------------------------------------

def test_init_only_bundle_runs_init_in_rust(tmp_path, flaxlayer_bin):
    out = tmp_path / "init_only"
    m = ef.export_flax(LinenBNDropout(), floats(4, 6), str(out), seed=5, bundle_variables=False)
    assert m["variables_origin"] == "init-only" and not (out / "variables.safetensors").exists()
    rust_matches_jax(flaxlayer_bin, out, tmp_path, training=False)
    variables = flax.core.unfreeze(LinenBNDropout().init(jax.random.key(5), floats(4, 6), training=False))
    with pytest.raises(ValueError, match="given variables must be bundled"):
        ef.export_flax(LinenBNDropout(), floats(4, 6), str(tmp_path / "x"), bundle_variables=False,
                       variables=variables)
    with pytest.raises(ValueError, match="not an instance"):
        ef.export_flax(NnxWithOutput(nnx.Rngs(0)), floats(3, 6), str(tmp_path / "y"), bundle_variables=False)


class TwoLayers(nnx.Module):
    def __init__(self, rngs: nnx.Rngs, width: int = 4):
        self.a = nnx.Linear(3, width, rngs=rngs)
        self.bn = nnx.BatchNorm(width, rngs=rngs)

    def __call__(self, x):
        return self.bn(self.a(x))


def test_given_nnx_state_errors_say_what_differs(tmp_path):
    wider = nnx.state(TwoLayers(nnx.Rngs(1), width=5))
    with pytest.raises(ValueError) as e:
        ef.export_flax(TwoLayers, floats(2, 3), str(tmp_path / "a"), variables=wider)
    msg = str(e.value)
    assert "a/kernel: given float32[3, 5], the module has float32[3, 4]" in msg, msg
    assert "bn/mean: given float32[5], the module has float32[4]" in msg, msg
    assert len(msg.splitlines()) <= 8, msg
    # a part of the state is fine (nnx.update keeps the rest)
    part = nnx.state(TwoLayers(nnx.Rngs(1)), nnx.Param)
    m = ef.export_flax(TwoLayers, floats(2, 3), str(tmp_path / "b"), variables=part)
    assert m["variables_origin"] == "given"
