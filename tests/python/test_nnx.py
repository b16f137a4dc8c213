"""Tests of the NNX exporter (flaxlayer_export with flax.nnx modules) and the committed NNX
bundles hlo/nnx_* (flaxlayer_export.examples.registry.NNX_EXAMPLES, TRAIN_EXAMPLES
"nnx_digits_train").

Run: .venv/bin/python -m pytest tests/python -q

The oracle is the NNX module itself, called as a JAX user calls it: `model.eval()` /
`model.train()`, `nnx.reseed` per the RNG contract of docs/exporter.md, `model(x)`. The
variables go in and out through the snippet of docs/exporter.md ("Loading variables into an
NNX module") and a naming table written here, not through the exporter's code.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax import export as jax_export
from safetensors.numpy import save_file

import flaxlayer_export as ef
from flaxlayer_export import nnx_state
from flaxlayer_export import train as et
from flaxlayer_export.examples import digits as make_digits
from flaxlayer_export.examples import nnx_models
from flaxlayer_export.examples import registry as ee

from bundlecmp import drift, tree_bytes  # tests/python

REPO = Path(__file__).resolve().parents[2]
HLO = REPO / "hlo"
NAMES = list(ee.NNX_EXAMPLES)
TRAIN = "nnx_digits_train"
KEY_IMPL = "threefry2x32"
TOL = 1e-6

# The collection of each Variable type, as docs/bundle-format.md ("NNX variables") lists it.
COLLECTIONS = {nnx.Param: "params", nnx.BatchStat: "batch_stats", nnx.RngKey: "rngs",
               nnx.RngCount: "rngs", nnx_models.Count: "count"}

# What each example is: its module factory (None: an instance), the streams the layer key
# reseeds, and the manifest's nnx.rng.
EXPECTED = {
    "nnx_mlp_bn_dropout": dict(origin="init", streams=["default"], rng="layer_key", takes_training=False),
    "nnx_attention": dict(origin="module", streams=[], rng="module", takes_training=False),
    "nnx_counter": dict(origin="module", streams=[], rng="none", takes_training=True),
}


# ---------------------------------------------------------------------------
# the docs' snippet, and the oracle's own naming of NNX state
# ---------------------------------------------------------------------------

def docs_snippet() -> str:
    text = (REPO / "docs" / "exporter.md").read_text()
    section = text.split("#### Loading variables into an NNX module", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


@functools.lru_cache(maxsize=None)
def load_variables():
    """`load_variables(model, path)` from docs/exporter.md, executed as written there."""
    scope: dict = {}
    exec(compile(docs_snippet(), "docs/exporter.md", "exec"), scope)
    return scope["load_variables"]


def named_state(model) -> dict[str, np.ndarray]:
    """{`<collection>/<path>`: value} of the module's state, typed keys as key data."""
    out = {}
    for path, var in nnx.to_flat_state(nnx.state(model)):
        x = var.get_value()
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        out[f"{COLLECTIONS[type(var)]}/{'/'.join(map(str, path))}"] = np.asarray(x)
    return out


def nest(flat: dict, prefix_filter=None) -> dict:
    """{"a/b/c": x} -> {"a": {"b": {"c": x}}}: the exported computations' variables trees."""
    out: dict = {}
    for name, x in flat.items():
        parts = name.split("/")
        if prefix_filter is not None and not prefix_filter(parts[0]):
            continue
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = x
    return out


def flat_named(tree, prefix="") -> dict:
    return {prefix + ef.leaf_name(p, "?"): np.asarray(x)
            for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def assert_close(got, want, what, exact=False):
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype and got.shape == want.shape, (what, got.dtype, got.shape, want.dtype, want.shape)
    if exact or not np.issubdtype(want.dtype, np.floating):
        np.testing.assert_array_equal(got, want, err_msg=what)
    else:
        np.testing.assert_allclose(got, want, rtol=TOL, atol=TOL, err_msg=what)


def assert_named_close(got: dict, want: dict, what):
    assert sorted(got) == sorted(want), f"{what}: {sorted(got)} vs {sorted(want)}"
    for n in want:
        assert_close(got[n], want[n], f"{what} {n}")


# ---------------------------------------------------------------------------
# a committed bundle and its module
# ---------------------------------------------------------------------------

class Bundle:
    def __init__(self, name):
        self.name, self.dir = name, HLO / name
        self.example = ee.NNX_EXAMPLES[name]
        self.manifest = json.loads((self.dir / "manifest.json").read_text())
        self.variables = ef.read_safetensors(str(self.dir / "variables.safetensors"))[0]
        self.golden = ef.read_safetensors(str(self.dir / "golden.safetensors"))[0]
        self.inputs = self.example.make_inputs()
        self.streams = self.manifest["rng_streams"]

    def module(self, mode):
        """The module with the bundle's variables, in `mode` (a fresh copy each time)."""
        made = self.example.make_module()
        model = made(rngs=nnx.Rngs(self.example.seed)) if isinstance(made, type) else made
        load_variables()(model, str(self.dir / "variables.safetensors"))
        model.train() if mode == "training" else model.eval()
        return model

    def entries(self, mode):
        return self.manifest["methods"]["__call__"][mode]

    def exported(self, fname):
        return jax_export.deserialize(bytearray((self.dir / fname).read_bytes()))

    def call(self, model, x, training: bool):
        """model(x), with `training` when the method takes it (nnx_counter)."""
        kw = {"training": training} if EXPECTED[self.name]["takes_training"] else {}
        return model(x, **kw)


@functools.lru_cache(maxsize=None)
def bundle(name) -> Bundle:
    return Bundle(name)


def inputs_at(b: Bundle, batch: int):
    x = np.asarray(b.inputs)
    if batch == x.shape[0]:
        return x
    idx = np.arange(batch) % x.shape[0]
    return (x[idx] + (np.arange(batch) // x.shape[0])[:, None, None].astype(np.float32) * 0.25).astype(x.dtype)


def oracle_calls(b: Bundle, x, steps: int, mode: str):
    """`steps` calls of the module in `mode` per the RNG contract: (outputs per call, named
    state after, layer key after)."""
    model = b.module(mode)
    K = jax.random.key(b.example.seed, impl=KEY_IMPL)
    outs = []
    for _ in range(steps):
        if mode == "training":
            K, k = jax.random.split(K)
            if b.streams:
                nnx.reseed(model, **{s: k for s in b.streams})
        outs.append(np.asarray(b.call(model, x, mode == "training")))
    return outs, named_state(model), np.asarray(jax.random.key_data(K))


def state_only(named: dict) -> dict:
    return {n: x for n, x in named.items() if not n.startswith("params/")}


# ---------------------------------------------------------------------------
# the committed bundles against the NNX module
# ---------------------------------------------------------------------------

def test_bundle_dirs_include_the_nnx_examples():
    for name in [*NAMES, TRAIN]:
        assert (HLO / name / "manifest.json").is_file(), name


@pytest.mark.parametrize("name", NAMES)
def test_manifest_names_and_sections(name):
    b, want = bundle(name), EXPECTED[name]
    m = b.manifest
    oracle = named_state(b.module("inference"))
    assert [v["name"] for v in m["variables"]] == sorted(oracle)
    assert sorted(b.variables) == sorted(oracle)
    for v in m["variables"]:
        assert v["collection"] == v["name"].split("/")[0]
        assert (v["dtype"], v["shape"]) == (oracle[v["name"]].dtype.name, list(oracle[v["name"]].shape))
    assert m["variables_origin"] == want["origin"]
    assert ("init" in m) == (want["origin"] == "init")
    assert m["rng_streams"] == want["streams"]
    assert m["module"] == type(b.module("inference")).__name__
    meth = m["methods"]["__call__"]
    assert meth["takes_training"] == want["takes_training"]
    assert m["nnx"]["rng"] == want["rng"]
    assert m["nnx"]["modes"] == {"inference": {"deterministic": True, "use_running_average": True},
                                 "training": {"deterministic": False, "use_running_average": False}}
    keys = [n for n in oracle if n.startswith("rngs/") and n.endswith("/key")]
    assert [k["name"] for k in m["nnx"]["rng_keys"]] == keys
    assert all(k["impl"] == KEY_IMPL for k in m["nnx"]["rng_keys"])
    for k in keys:
        assert b.variables[k].dtype == np.uint32 and b.variables[k].shape == (2,)
    files = {e["file"] for mode in ("inference", "training") for e in b.entries(mode)}
    files |= {m["init"]["file"]} if "init" in m else set()
    assert files == {p.name for p in b.dir.glob("*.jaxexport")}


def test_names_of_the_examples():
    """The naming scheme on the examples, written out."""
    v = lambda name: [x["name"] for x in bundle(name).manifest["variables"]]
    assert v("nnx_mlp_bn_dropout") == [
        "batch_stats/bn/mean", "batch_stats/bn/var", "params/bn/bias", "params/bn/scale",
        "params/linear1/bias", "params/linear1/kernel", "params/linear2/bias",
        "params/linear2/kernel", "rngs/dropout/rngs/count", "rngs/dropout/rngs/key"]
    assert v("nnx_counter") == ["count/calls", "params/linear/bias", "params/linear/kernel"]
    assert "rngs/attention/rngs/key" in v("nnx_attention")
    assert int(bundle("nnx_counter").variables["count/calls"]) == 1  # the instance was used once


def test_init_builds_the_module_again():
    """nnx_mlp_bn_dropout is exported from its class: init(key) == Class(rngs=nnx.Rngs(seed))."""
    b = bundle("nnx_mlp_bn_dropout")
    init = b.exported(b.manifest["init"]["file"])
    assert init.module_kept_var_idx == (0,)  # the key only: NNX init reads no inputs
    for seed in (0, 7):
        got = flat_named(init.call(jax.random.key_data(jax.random.key(seed)), b.inputs))
        want = named_state(nnx_models.NnxMLPBNDropout(rngs=nnx.Rngs(seed)))
        assert_named_close(got, want, f"init under seed {seed}")
        if seed == 0:
            for n, x in got.items():  # variables.safetensors is init's result
                assert_close(b.variables[n], x, f"variables.safetensors {n}", exact=True)


@pytest.mark.parametrize("name", NAMES)
def test_inference_matches_nnx(name):
    b = bundle(name)
    for e in b.entries("inference"):
        x = inputs_at(b, e["batch_size"])
        out, new_state = b.exported(e["file"]).call(
            nest(b.variables, lambda c: c == "params")["params"],
            nest(b.variables, lambda c: c != "params"), x)
        want, after, _ = oracle_calls(b, x, 1, "inference")
        assert_close(out, want[0], f"{e['file']} outputs")
        assert_named_close(flat_named(new_state), state_only(after), f"{e['file']} state")


@pytest.mark.parametrize("name", NAMES)
def test_two_training_calls_match_nnx(name):
    b = bundle(name)
    for e in b.entries("training"):
        x = inputs_at(b, e["batch_size"])
        exp = b.exported(e["file"])
        params = nest(b.variables, lambda c: c == "params")["params"]
        state = nest(b.variables, lambda c: c != "params")
        key = jax.random.key_data(jax.random.key(b.example.seed, impl=KEY_IMPL))
        outs = []
        for _ in range(2):
            out, state, key = exp.call(params, state, key, x)
            outs.append(out)
        want, after, want_key = oracle_calls(b, x, 2, "training")
        for i in range(2):
            assert_close(outs[i], want[i], f"{e['file']} call {i}")
        assert_named_close(flat_named(state), state_only(after), f"{e['file']} state after two calls")
        assert_close(key, want_key, "key", exact=True)


@pytest.mark.parametrize("name", NAMES)
def test_golden_matches_nnx(name):
    b = bundle(name)
    g = b.golden
    out, after, _ = oracle_calls(b, b.inputs, 1, "inference")
    assert_close(g["inference/outputs"], out[0], "inference")
    assert_named_close({n[len("inference_state/"):]: x for n, x in g.items() if n.startswith("inference_state/")},
                       state_only(after), "inference_state")
    outs, after, key = oracle_calls(b, b.inputs, 2, "training")
    for i in range(2):
        assert_close(g[f"training/{i}/outputs"], outs[i], f"training/{i}")
    assert_named_close({n[len("after_training/"):]: x for n, x in g.items() if n.startswith("after_training/")},
                       state_only(after), "after_training")
    assert_close(g["key/after_training"], key, "key", exact=True)


def test_rng_state_and_counts_move_as_nnx_says():
    """Reseeded streams restart at count 0 each call (count 1 after one draw); the attention
    model's own streams count on; the counter counts calls."""
    g = bundle("nnx_mlp_bn_dropout").golden
    assert int(g["after_training/rngs/dropout/rngs/count"]) == 1
    assert int(g["inference_state/rngs/dropout/rngs/count"]) == 0
    assert not np.array_equal(g["training/0/outputs"], g["training/1/outputs"])
    g = bundle("nnx_attention").golden
    for s in ("attention", "dropout"):
        assert int(g[f"after_training/rngs/{s}/rngs/count"]) == 2
        np.testing.assert_array_equal(g[f"after_training/rngs/{s}/rngs/key"],
                                      bundle("nnx_attention").variables[f"rngs/{s}/rngs/key"])
    g = bundle("nnx_counter").golden
    assert int(g["inference_state/count/calls"]) == 2 and int(g["after_training/count/calls"]) == 5


def test_padding_marks():
    for name in NAMES:
        batching = bundle(name).manifest["methods"]["__call__"]["batching"]
        assert batching["paddable"], (name, batching)
        assert batching["stateful"] == (name == "nnx_counter"), name  # RNG state passes through


# ---------------------------------------------------------------------------
# the docs' loader
# ---------------------------------------------------------------------------

def test_docs_snippet_loads_every_variable(tmp_path):
    b = bundle("nnx_mlp_bn_dropout")
    changed = {n: (x + 1 if n != "rngs/dropout/rngs/key" else np.array([3, 4], np.uint32)).astype(x.dtype)
               for n, x in b.variables.items()}
    save_file(changed, str(tmp_path / "v.safetensors"))
    model = nnx_models.NnxMLPBNDropout(rngs=nnx.Rngs(5))
    load_variables()(model, str(tmp_path / "v.safetensors"))
    got = named_state(model)
    assert_named_close(got, changed, "loaded")
    assert jax.random.key_impl(model.dropout.rngs.key.get_value()) == KEY_IMPL


def test_readme_nnx_snippet_runs(tmp_path, monkeypatch, capsys):
    """The README's NNX example ("From Python" / "NNX modules"), as written, from tmp_path."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## From Python"):]
    section = section[section.index("### NNX modules"):section.index("\n## ", 1)]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    assert capsys.readouterr().out.strip() == "['rngs/dropout/rngs/count', 'rngs/dropout/rngs/key']"
    a = json.loads((tmp_path / "target/bundles/nnx_mlp/manifest.json").read_text())
    b = json.loads((tmp_path / "target/bundles/nnx_mlp_init/manifest.json").read_text())
    assert (a["variables_origin"], "init" in a) == ("module", False)
    assert (b["variables_origin"], "init" in b) == ("init", True)


# ---------------------------------------------------------------------------
# determinism
# ---------------------------------------------------------------------------

def test_reexport_matches_the_committed_bundles(tmp_path):
    names = [*NAMES, TRAIN]
    ee.main(["--out-root", str(tmp_path), *names])
    fresh = tree_bytes(tmp_path)
    committed = {f"{n}/{k}": v for n in names for k, v in tree_bytes(HLO / n).items()}
    bad = drift(fresh, committed)
    assert not bad, f"committed hlo/ differs from a fresh export: {bad} (run scripts/export_examples.py)"


# ---------------------------------------------------------------------------
# training bundle: the exported steps against an NNX + optax loop
# ---------------------------------------------------------------------------

def test_nnx_digits_train_steps_equal_an_nnx_optimizer_loop():
    """The golden first steps (the exported step functions in JAX) and the bundle's
    train_step against nnx.Optimizer on the module, reseeded per the contract."""
    d = make_digits.load_digits_split()
    g = ef.read_safetensors(str(HLO / TRAIN / "golden.safetensors"))[0]
    man = json.loads((HLO / TRAIN / "manifest.json").read_text())
    assert man["train"]["batch_size"] == 32 and man["rng_streams"] == ["default"]
    steps = len(g["train/loss"])
    model = nnx_models.NnxDigitsMLP(rngs=nnx.Rngs(0))
    load_variables()(model, str(HLO / TRAIN / "variables.safetensors"))
    model.train()
    opt = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)

    @nnx.jit
    def step(model, opt, x, y):
        def loss_fn(m):
            logits = m(x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), logits
        (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        opt.update(model, grads)
        return loss, (jnp.argmax(logits, -1) == y).mean()

    K = jax.random.key(0)
    n = len(d["y_train"])
    losses, accs = [], []
    for i in range(steps):
        idx = et.epoch_batches(0, i // (n // 32), n, 32)[i % (n // 32)]
        K, k = jax.random.split(K)
        nnx.reseed(model, default=k)
        loss, acc = step(model, opt, d["x_train"][idx], d["y_train"][idx])
        losses.append(float(loss))
        accs.append(float(acc))
    np.testing.assert_allclose(g["train/loss"], losses, rtol=1e-5)
    np.testing.assert_allclose(g["train/accuracy"], accs, atol=1e-6)
    after = named_state(model)
    for name, x in after.items():
        np.testing.assert_allclose(g[f"train/after/{name}"], x, rtol=1e-5, atol=1e-5, err_msg=name)
    assert g["train/loss"][-1] < g["train/loss"][0] - 0.5


# ---------------------------------------------------------------------------
# export behaviour and errors (small modules exported to tmp_path)
# ---------------------------------------------------------------------------

class Tiny(nnx.Module):
    def __init__(self, *, rngs):
        self.linear = nnx.Linear(3, 2, rngs=rngs)
        self.dropout = nnx.Dropout(0.5, rngs=rngs)

    def __call__(self, x):
        return self.dropout(self.linear(x))


X = np.ones((2, 3), np.float32)


def test_the_users_module_is_not_changed(tmp_path):
    model = Tiny(rngs=nnx.Rngs(0))
    before = named_state(model)
    ef.export_flax(model, X, str(tmp_path / "b"))
    assert model.dropout.deterministic is False  # neither eval() nor train() reached it
    assert_named_close(named_state(model), before, "state after export")


def test_given_state_and_a_factory(tmp_path):
    trained = Tiny(rngs=nnx.Rngs(3))
    m = ef.export_flax(Tiny, X, str(tmp_path / "b"), variables=nnx.state(trained), seed=1)
    assert m["variables_origin"] == "given" and "init" in m and m["seed"] == 1
    v = ef.read_safetensors(str(tmp_path / "b" / "variables.safetensors"))[0]
    assert_named_close(v, named_state(trained), "given state")
    g = ef.read_safetensors(str(tmp_path / "b" / "golden.safetensors"))[0]
    init = {n[len("init/"):]: x for n, x in g.items() if n.startswith("init/")}
    assert_named_close(init, named_state(Tiny(rngs=nnx.Rngs(1))), "golden init under seed 1")


def test_rng_streams_choice(tmp_path):
    model = Tiny(rngs=nnx.Rngs(params=0, dropout=1))
    assert ef.export_flax(model, X, str(tmp_path / "a"))["rng_streams"] == ["dropout"]
    m = ef.export_flax(model, X, str(tmp_path / "b"), rng_streams=())
    assert m["rng_streams"] == [] and m["nnx"]["rng"] == "module"
    with pytest.raises(ValueError, match=r"'default'.*not streams of the module.*\['dropout'\]"):
        ef.export_flax(model, X, str(tmp_path / "c"), rng_streams=("default",))


class TwoMethods(nnx.Module):
    def __init__(self, *, rngs):
        self.linear = nnx.Linear(3, 2, rngs=rngs)
        self.bn = nnx.BatchNorm(2, rngs=rngs)

    def __call__(self, x):
        return self.linear(x)

    def normalized(self, x):
        return self.bn(self.linear(x))


def test_a_named_method(tmp_path):
    model = TwoMethods(rngs=nnx.Rngs(0))
    m = ef.export_flax(model, X, str(tmp_path / "b"), method="normalized")
    assert m["default_method"] == "normalized"
    entry = m["methods"]["normalized"]["training"][0]
    exp = jax_export.deserialize(bytearray((tmp_path / "b" / entry["file"]).read_bytes()))
    v = ef.read_safetensors(str(tmp_path / "b" / "variables.safetensors"))[0]
    out, state, _ = exp.call(nest(v, lambda c: c == "params")["params"], nest(v, lambda c: c != "params"),
                             jax.random.key_data(jax.random.key(0)), X)
    model.train()
    assert_close(out, np.asarray(model.normalized(X)), "normalized, training mode")
    assert_named_close(flat_named(state), state_only(named_state(model)), "batch stats after")


class GrowsState(nnx.Module):
    """Creates a Variable during the call (as `sow` and lazy initialisation do)."""

    def __init__(self, *, rngs):
        self.linear = nnx.Linear(3, 2, rngs=rngs)

    def __call__(self, x):
        y = self.linear(x)
        self.last_mean = nnx.BatchStat(y.mean())
        return y


class WritesParam(nnx.Module):
    def __init__(self, *, rngs):
        self.linear = nnx.Linear(3, 2, rngs=rngs)

    def __call__(self, x):
        self.linear.bias[...] = self.linear.bias[...] + 1
        return self.linear(x)


class Params(nnx.Variable):
    """Not an nnx.Param, yet its snake-case name would be `params`."""


def test_state_errors(tmp_path):
    with pytest.raises(nnx_state.StateError, match=r"new: \['last_mean \(BatchStat\)'\]"):
        ef.export_flax(GrowsState(rngs=nnx.Rngs(0)), X, str(tmp_path / "a"))
    with pytest.raises(nnx_state.StateError, match="wrote the nnx.Param 'linear/bias'"):
        ef.export_flax(WritesParam(rngs=nnx.Rngs(0)), X, str(tmp_path / "b"))
    with pytest.raises(ValueError, match="init_inputs is for linen"):
        ef.export_flax(Tiny(rngs=nnx.Rngs(0)), X, str(tmp_path / "c"), init_inputs=X)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_collections():
    c = nnx_state.collection_of
    assert c(nnx.Param) == "params" and c(nnx.LoRAParam) == "params"
    assert (c(nnx.BatchStat), c(nnx.Cache), c(nnx.RngKey), c(nnx.RngCount)) == ("batch_stats", "cache", "rngs", "rngs")
    assert c(nnx_models.Count) == "count"

    class MyRunningState2(nnx.Variable):
        pass
    assert c(MyRunningState2) == "my_running_state2"
    with pytest.raises(ValueError, match="not an nnx.Param"):
        c(Params)


def test_what_is_not_a_module_is_a_clear_type_error(tmp_path):
    with pytest.raises(TypeError, match=r"flax\.nnx\.Module instance.*got builtins\.object.*nnx\.bridge"):
        ef.export_flax(object(), X, str(tmp_path / "a"))

    class NeedsSize(nnx.Module):
        def __init__(self, size, *, rngs):
            self.linear = nnx.Linear(3, size, rngs=rngs)
    with pytest.raises(TypeError, match=r"the class NeedsSize itself: pass an instance.*lambda rngs"):
        ef.export_flax(NeedsSize, X, str(tmp_path / "b"))
    with pytest.raises(TypeError, match="must return an nnx.Module"):
        ef.export_flax(lambda rngs: 3, X, str(tmp_path / "c"))


def test_bridged_models_export_through_their_outer_kind(tmp_path):
    """nnx.bridge.to_linen (NNX inside linen) and nnx.bridge.ToNNX (linen inside NNX), as the
    TypeError's hint says."""
    import flax.linen as nn

    class Inner(nnx.Module):
        def __init__(self, *, rngs):
            self.linear = nnx.Linear(3, 2, rngs=rngs)
            self.bn = nnx.BatchNorm(2, rngs=rngs)

        def __call__(self, x):
            return self.bn(self.linear(x))

    class LinenOuter(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(2)(nnx.bridge.to_linen(Inner)(x))

    class NnxOuter(nnx.Module):
        def __init__(self, *, rngs):
            self.inner = nnx.bridge.ToNNX(nn.Dense(2), rngs=rngs)
            nnx.bridge.lazy_init(self.inner, X)

        def __call__(self, x):
            return self.inner(x)

    a = [v["name"] for v in ef.export_flax(LinenOuter(), X, str(tmp_path / "a"))["variables"]]
    assert "batch_stats/ToLinen_0/bn/mean" in a and "params/ToLinen_0/linear/kernel" in a
    b = [v["name"] for v in ef.export_flax(NnxOuter(rngs=nnx.Rngs(0)), X, str(tmp_path / "b"))["variables"]]
    assert b[:2] == ["params/inner/bias", "params/inner/kernel"]


def test_cli_exports_an_nnx_instance(tmp_path):
    src = tmp_path / "models.py"
    src.write_text("from flax import nnx\n"
                   "class M(nnx.Module):\n"
                   "    def __init__(self, *, rngs):\n"
                   "        self.linear = nnx.Linear(4, 2, rngs=rngs)\n"
                   "        self.bn = nnx.BatchNorm(2, rngs=rngs)\n"
                   "    def __call__(self, x):\n"
                   "        return self.bn(self.linear(x))\n"
                   "model = M(rngs=nnx.Rngs(0))\n")
    from flaxlayer_export import cli as cli_module
    for target, origin in (("model", "module"), ("M", "init")):
        out = tmp_path / target
        assert cli_module.main([f"{src}:{target}", "--input", "inputs=3,4:float32", "--out", str(out)]) == 0
        m = json.loads((out / "manifest.json").read_text())
        assert m["variables_origin"] == origin and m["rng_streams"] == []
        assert "batch_stats/bn/mean" in [v["name"] for v in m["variables"]]


# ---------------------------------------------------------------------------
# acceptance: export -> Rust inference and training -> saved variables -> nnx.update
# ---------------------------------------------------------------------------

# flaxlayer_bin: the Rust CLI, a fixture of conftest.py.


def run_cli(binary, *args):
    env = {**os.environ, "FLAXLAYER_CACHE": str(REPO / "target" / "compile-cache")}
    r = subprocess.run([str(binary), *map(str, args)], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    return r


def test_rust_training_then_nnx_update_gives_the_same_module(tmp_path, flaxlayer_bin):
    b = bundle("nnx_mlp_bn_dropout")
    x = np.asarray(b.inputs)
    save_file({"inputs": x}, str(tmp_path / "in.safetensors"))
    run_cli(flaxlayer_bin, "run", b.dir, "--input", tmp_path / "in.safetensors", "--output",
            tmp_path / "train.safetensors", "--training", "--steps", "2", "--save-variables",
            tmp_path / "after.safetensors")
    rust_train = ef.read_safetensors(str(tmp_path / "train.safetensors"))[0]["outputs"]

    outs, after, _ = oracle_calls(b, x, 2, "training")
    assert_close(rust_train, outs[1], "second Rust training call vs NNX")

    model = nnx_models.NnxMLPBNDropout(rngs=nnx.Rngs(9))
    load_variables()(model, str(tmp_path / "after.safetensors"))
    assert_named_close(named_state(model), after, "Rust's variables after two calls, loaded with nnx.update")

    run_cli(flaxlayer_bin, "run", b.dir, "--input", tmp_path / "in.safetensors", "--output",
            tmp_path / "infer.safetensors", "--variables", tmp_path / "after.safetensors")
    rust_infer = ef.read_safetensors(str(tmp_path / "infer.safetensors"))[0]["outputs"]
    model.eval()
    assert_close(rust_infer, np.asarray(model(x)), "Rust inference vs the loaded NNX module")
    assert not np.allclose(rust_infer, outs[1])  # inference: no dropout

    r = run_cli(flaxlayer_bin, "inspect", b.dir)
    assert "rngs/dropout/rngs/key" in r.stdout and "uint32[2]" in r.stdout

    counter = bundle("nnx_counter")
    r = run_cli(flaxlayer_bin, "inspect", counter.dir)
    assert "init: none" in r.stdout


@pytest.mark.parametrize("name", ["nnx_mlp_bn_dropout", "nnx_counter"])
def test_frozen_nnx_inference_in_rust(tmp_path, flaxlayer_bin, name):
    """export_flax(..., frozen=True) of an NNX module: Rust runs the frozen inference (params
    compiled in; state such as batch statistics and a custom counter stays an argument) and
    gets what the NNX module computes."""
    ex, b = ee.NNX_EXAMPLES[name], bundle(name)
    module = ex.make_module()
    out = tmp_path / "frozen"
    m = ef.export_flax(module, ex.make_inputs(), str(out), method=ex.method, seed=ex.seed,
                       rng_streams=ex.rng_streams, variables=ee.example_variables(name, module),
                       batch_sizes=ex.batch_sizes, max_batch=ex.max_batch, frozen=True)
    entries = m["methods"][m["default_method"]]["inference"]
    assert all("param" not in [a["role"] for a in e["frozen"]["args"]] for e in entries)
    x = np.asarray(b.inputs)
    save_file({"inputs": x}, str(tmp_path / "in.safetensors"))
    run_cli(flaxlayer_bin, "run", out, "--input", tmp_path / "in.safetensors", "--output",
            tmp_path / "out.safetensors")
    got = ef.read_safetensors(str(tmp_path / "out.safetensors"))[0]["outputs"]
    outs, _, _ = oracle_calls(b, x, 1, "inference")
    assert_close(got, outs[0], f"{name}: Rust's frozen inference vs NNX")
    r = run_cli(flaxlayer_bin, "bench", out, "--batch", x.shape[0], "--iters", 3)
    assert "(inference, frozen)" in r.stdout
