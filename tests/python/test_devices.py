"""Tests of exports on a mesh of several devices (flaxlayer_export.sharding) and of the mesh
bundles under hlo/ (flaxlayer_export.examples.registry.MESH_EXAMPLES, MESH_TRAIN_EXAMPLES).

Run: .venv/bin/python -m pytest tests/python -q   (conftest.py gives JAX 8 CPU devices)

The oracle is Flax's own `module.apply` / `module.init` jitted on ONE device, written here;
the exported computations run on the mesh through jax.export's own `call`, with their
arguments placed as the export recorded.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest

import jax
import flax
from flax.core import DenyList
from jax import export as jax_export
from jax.sharding import PartitionSpec as P

import flaxlayer_export as ef
from flaxlayer_export import sharding as sh
from flaxlayer_export import train as et
from flaxlayer_export.examples import digits, models
from flaxlayer_export.examples import registry as ee

from bundlecmp import drift, tree_bytes  # tests/python

REPO = Path(__file__).resolve().parents[2]
HLO = REPO / "hlo"
KEY_IMPL = "threefry2x32"
TOL = 1e-5

TP = {"params/Dense_0/kernel": [None, "model"], "params/Dense_0/bias": ["model"],
      "params/Dense_1/kernel": ["model", None]}
# name: (axis names, shape, the variables split (others replicated), the inputs' spec)
EXPECTED = {
    "dp_mlp": (["data"], [4], {}, ["data", None]),
    "tp_mlp": (["model"], [4], TP, [None, None]),
    "mesh2x2_mlp": (["data", "model"], [2, 2], TP, ["data", None]),
    "mesh2x4_mlp": (["data", "model"], [2, 4], TP, ["data", None]),
}
NAMES = list(ee.MESH_EXAMPLES)


def test_the_expectations_cover_every_mesh_example():
    assert sorted(EXPECTED) == sorted(NAMES)
    assert list(ee.MESH_TRAIN_EXAMPLES) == ["dp_digits_train"]
    assert jax.device_count() >= 8, "conftest.py sets XLA_FLAGS for 8 CPU devices"


def manifest(name):
    return json.loads((HLO / name / "manifest.json").read_text())


def exported(name, fname):
    return jax_export.deserialize(bytearray((HLO / name / fname).read_bytes()))


def mesh_of(m):
    return sh.cpu_mesh(tuple(m["mesh"]["shape"]), tuple(m["mesh"]["axis_names"]))


def computations(m):
    entries = [m["init"]]
    for meth in m["methods"].values():
        entries += meth["inference"] + meth["training"]
    if "train" in m:
        entries += [m["train"][k] for k in ("init_opt_state", "train_step", "eval_step")]
    return entries


def padded(spec, rank):
    return sh.spec_json(spec, rank)


def call_on_mesh(exp, mesh, *args):
    """exp.call on `mesh`, every argument placed as the export recorded."""
    flat, tree = jax.tree_util.tree_flatten(args)
    placed = [a if s is None else jax.device_put(a, s) for a, s in zip(flat, exp.in_shardings_jax(mesh))]
    out_shardings = jax.tree_util.tree_unflatten(exp.out_tree, exp.out_shardings_jax(mesh))
    return jax.jit(exp.call, out_shardings=out_shardings)(*jax.tree_util.tree_unflatten(tree, placed))


def assert_close(got, want, what):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype, what
    np.testing.assert_allclose(got, want, rtol=TOL, atol=TOL, err_msg=what)


class MeshBundle:
    def __init__(self, name):
        self.name = name
        self.example = ee.MESH_EXAMPLES[name]
        self.manifest = manifest(name)
        self.mesh = mesh_of(self.manifest)
        self.module = self.example.make_module()
        self.inputs = self.example.make_inputs()
        self.takes_training = self.manifest["methods"]["__call__"]["takes_training"]
        flat, _ = ef.read_safetensors(str(HLO / name / "variables.safetensors"))
        self.variables = self._tree(flat)
        self.golden, _ = ef.read_safetensors(str(HLO / name / "golden.safetensors"))

    def _tree(self, flat):
        shapes = jax.eval_shape(
            lambda x: flax.core.meta.unbox(self.module.init(jax.random.key(0), x, **self.kw(True))), self.inputs)
        return jax.tree_util.tree_map_with_path(lambda p, _: flat[ef.leaf_name(p, "?")], flax.core.unfreeze(shapes))

    def kw(self, training):
        return {"training": training} if self.takes_training else {}

    @functools.cached_property
    def infer(self):
        return jax.jit(lambda v, x: self.module.apply(v, x, mutable=DenyList(["params"]), **self.kw(False)))

    @functools.cached_property
    def train(self):
        return jax.jit(lambda v, x, k: self.module.apply(
            v, x, rngs={"dropout": k}, mutable=DenyList(["params"]), **self.kw(True)))


@functools.lru_cache(maxsize=None)
def bundle(name) -> MeshBundle:
    return MeshBundle(name)


def state_of(v):
    return {c: x for c, x in v.items() if c != "params"}


@pytest.mark.parametrize("name", NAMES)
def test_mesh_manifest_and_recorded_shardings(name):
    m = manifest(name)
    names, shape, split, inputs = EXPECTED[name]
    assert m["partitioner"] == "shardy"
    assert (m["mesh"]["axis_names"], m["mesh"]["shape"]) == (names, shape)
    ranks = {v["name"]: len(v["shape"]) for v in m["variables"]}
    assert m["mesh"]["variables"] == {n: split.get(n, [None] * r) for n, r in ranks.items()}
    assert m["mesh"]["inputs"] == {"inputs": inputs}
    mesh = mesh_of(m)
    for entry in computations(m):
        exp = exported(name, entry["file"])
        assert exp.nr_devices == int(np.prod(shape)), entry["file"]
        in_sh, out_sh = exp.in_shardings_jax(mesh), exp.out_shardings_jax(mesh)
        for slots, shardings in ((entry["args"], in_sh), (entry["results"], out_sh)):
            assert len(slots) == len(shardings)
            for i, (slot, s) in enumerate(zip(slots, shardings)):
                if s is None:  # an argument the module does not use: jax.export records none
                    assert slots is entry["args"] and i not in exp.module_kept_var_idx, (entry["file"], slot)
                    continue
                got = padded(s.spec, len(slot["shape"]))
                if slot["role"] in ("param", "state"):
                    want = m["mesh"]["variables"][slot["name"]]
                elif slot["role"] == "input" and entry is not m["init"]:
                    want = m["mesh"]["inputs"][slot["name"]]
                elif slot["role"] == "output":
                    want = m["mesh"]["outputs"][slot["name"]]
                else:  # the key; init's inputs
                    want = [None] * len(slot["shape"])
                assert got == want, (entry["file"], slot)


@pytest.mark.parametrize("name", NAMES)
def test_mesh_computations_match_flax_on_one_device(name):
    b = bundle(name)
    v = b.variables
    for entry in b.manifest["methods"]["__call__"]["inference"]:
        x = jax.tree_util.tree_map(lambda a: np.resize(a, (entry["batch_size"],) + a.shape[1:]), b.inputs)
        out, new_state = call_on_mesh(exported(name, entry["file"]), b.mesh, v["params"], state_of(v), x)
        ref, mut = b.infer(v, x)
        assert_close(out, ref, f"{entry['file']} outputs")
        for c in new_state:
            jax.tree_util.tree_map(lambda g, w: assert_close(g, w, f"{entry['file']} state"),
                                   new_state[c], {**state_of(v), **flax.core.unfreeze(mut)}[c])
    for entry in b.manifest["methods"]["__call__"]["training"]:
        x = jax.tree_util.tree_map(lambda a: np.resize(a, (entry["batch_size"],) + a.shape[1:]), b.inputs)
        exp = exported(name, entry["file"])
        cur, K = dict(v), jax.random.key(0, impl=KEY_IMPL)
        key = jax.random.key_data(K)
        for step in range(2):
            out, new_state, key = call_on_mesh(exp, b.mesh, cur["params"], state_of(cur), key, x)
            K, k = jax.random.split(K)
            ref, mut = b.train(cur, x, k)
            assert_close(out, ref, f"{entry['file']} step {step}")
            np.testing.assert_array_equal(np.asarray(key), np.asarray(jax.random.key_data(K)))
            cur = {**cur, **jax.tree_util.tree_map(np.asarray, flax.core.unfreeze(mut))}


@pytest.mark.parametrize("name", NAMES)
def test_mesh_init_equals_module_init(name):
    b = bundle(name)
    init = exported(name, b.manifest["init"]["file"])
    got = call_on_mesh(init, b.mesh, jax.random.key_data(jax.random.key(0, impl=KEY_IMPL)), b.inputs)
    rngs = {"params": jax.random.key(0, impl=KEY_IMPL), "dropout": jax.random.key(0, impl=KEY_IMPL)}
    want = flax.core.meta.unbox(jax.jit(lambda r, x: b.module.init(r, x, **b.kw(True)))(rngs, b.inputs))
    for (n, g), (_, w) in zip(ef.named_leaves(got, "v"), ef.named_leaves(flax.core.unfreeze(want), "v")):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w), err_msg=n)
    for n, x in ef.named_leaves(b.variables, "v"):
        np.testing.assert_array_equal(x, np.asarray(dict(ef.named_leaves(got, "v"))[n]), err_msg=n)


@pytest.mark.parametrize("name", NAMES)
def test_mesh_golden_matches_flax_on_one_device(name):
    b = bundle(name)
    g, v = b.golden, b.variables
    ref, _ = b.infer(v, b.inputs)
    assert_close(g["inference/outputs"], ref, "inference")
    K, cur = jax.random.key(0, impl=KEY_IMPL), dict(v)
    for step in range(2):
        K, k = jax.random.split(K)
        ref, mut = b.train(cur, b.inputs, k)
        assert_close(g[f"training/{step}/outputs"], ref, f"training/{step}")
        cur = {**cur, **jax.tree_util.tree_map(np.asarray, flax.core.unfreeze(mut))}
    np.testing.assert_array_equal(g["key/after_training"], np.asarray(jax.random.key_data(K)))


def test_tensor_parallel_bundles_hold_the_mlp_variables():
    """tp_mlp is models.MLP under seed 0: hlo/mlp's variables exactly (a single-device twin);
    PartitionedMLP (with metadata) inits the same values as MLP."""
    tp, mlp = (ef.read_safetensors(str(HLO / n / "variables.safetensors"))[0] for n in ("tp_mlp", "mlp"))
    assert sorted(tp) == sorted(mlp)
    for n in tp:
        np.testing.assert_array_equal(tp[n], mlp[n], err_msg=n)
    x = np.zeros((2, 64), np.float32)
    a = jax.jit(models.MLP().init)(jax.random.key(0), x)
    for logical in (False, True):
        b = flax.core.meta.unbox(jax.jit(models.PartitionedMLP(logical=logical).init)(jax.random.key(0), x))
        jax.tree_util.tree_map(np.testing.assert_array_equal, flax.core.unfreeze(a), flax.core.unfreeze(b))


def test_data_parallel_training_equals_single_device_training():
    """hlo/dp_digits_train's golden loop (JAX's data-parallel step on 4 devices) against
    hlo/digits_train's (the same model, seed and batches on one device): the same losses and
    variables up to float rounding (the all-reduce sums in another order)."""
    dp, one = (ef.read_safetensors(str(HLO / n / "golden.safetensors"))[0] for n in ("dp_digits_train", "digits_train"))
    np.testing.assert_allclose(dp["train/loss"], one["train/loss"], rtol=TOL)
    np.testing.assert_array_equal(dp["train/key_after"], one["train/key_after"])
    for k in one:
        if k.startswith("train/after/"):
            np.testing.assert_allclose(dp[k], one[k], rtol=1e-4, atol=TOL, err_msg=k)


def test_data_parallel_train_step_reproduces_its_golden():
    m = manifest("dp_digits_train")
    mesh = mesh_of(m)
    assert m["mesh"]["batch"] == {"w": ["data"], "x": ["data", None], "y": ["data"]}
    assert all(all(d is None for d in s) for s in m["mesh"]["opt_state"].values())
    g, _ = ef.read_safetensors(str(HLO / "dp_digits_train" / "golden.safetensors"))
    flat, _ = ef.read_safetensors(str(HLO / "dp_digits_train" / "variables.safetensors"))
    module = ee.MESH_TRAIN_EXAMPLES["dp_digits_train"].make_module()
    shapes = jax.eval_shape(lambda x: module.init(jax.random.key(0), x, training=False), np.zeros((32, 64), np.float32))
    v = jax.tree_util.tree_map_with_path(lambda p, _: flat[ef.leaf_name(p, "?")], flax.core.unfreeze(shapes))
    params, state = v["params"], state_of(v)
    init_opt = exported("dp_digits_train", m["train"]["init_opt_state"]["file"])
    step = exported("dp_digits_train", m["train"]["train_step"]["file"])
    opt = call_on_mesh(init_opt, mesh, params)
    key = jax.random.key_data(jax.random.key(0, impl=KEY_IMPL))
    data = digits.load_digits_split()
    n = len(data["y_train"])
    for i in range(3):
        idx = et.epoch_batches(0, 0, n, 32)[i]
        params, state, opt, key, metrics = call_on_mesh(
            step, mesh, params, state, opt, key, {"x": data["x_train"][idx], "y": data["y_train"][idx]})
        np.testing.assert_allclose(np.float32(metrics["loss"]), g["train/loss"][i], rtol=1e-6)


def test_reexport_matches_the_committed_mesh_bundles(tmp_path):
    fresh, committed = {}, {}
    for n in [*NAMES, *ee.MESH_TRAIN_EXAMPLES]:
        ee.export_any(n, str(tmp_path / n))
        fresh.update({f"{n}/{k}": v for k, v in tree_bytes(tmp_path / n).items()})
        committed.update({f"{n}/{k}": v for k, v in tree_bytes(HLO / n).items()})
    bad = drift(fresh, committed)
    assert not bad, f"committed hlo/ differs from a fresh export: {bad} (run scripts/export_examples.py)"


# ---------------------------------------------------------------------------
# the three forms of a sharding, metadata, and refusals (small exports into tmp_path)
# ---------------------------------------------------------------------------

X = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)


def mesh2(axis="model"):
    return sh.cpu_mesh((2,), (axis,))


def test_a_spec_a_tree_and_a_function_give_the_same_bundle(tmp_path):
    forms = {
        "tree": {"Dense_0": {"kernel": P(None, "model"), "bias": P("model")}},
        "function": lambda n: {"Dense_0/kernel": P(None, "model"), "Dense_0/bias": P("model")}.get(n),
    }
    out = {}
    for form, given in forms.items():
        ef.export_flax(models.TinyDense(), X, str(tmp_path / form), mesh=mesh2(), param_sharding=given)
        out[form] = tree_bytes(tmp_path / form)
    assert out["tree"] == out["function"]
    m = json.loads(out["tree"]["manifest.json"])
    assert m["mesh"]["variables"] == {"params/Dense_0/bias": ["model"], "params/Dense_0/kernel": [None, "model"]}
    # One PartitionSpec for every leaf: the inputs' batch axis.
    ef.export_flax(models.TinyDense(), X, str(tmp_path / "spec"), mesh=mesh2("data"), input_sharding=P("data"))
    m = json.loads((tmp_path / "spec" / "manifest.json").read_text())
    assert m["mesh"]["inputs"] == {"inputs": ["data", None]}
    assert m["mesh"]["outputs"] == {"outputs": [None, None]}


def test_given_shardings_override_the_metadata(tmp_path):
    small = models.PartitionedMLP(features=(4, 4, 2))
    ef.export_flax(small, X, str(tmp_path / "meta"), mesh=mesh2())
    ef.export_flax(small, X, str(tmp_path / "given"), mesh=mesh2(), param_sharding=P())
    meta = json.loads((tmp_path / "meta" / "manifest.json").read_text())["mesh"]["variables"]
    given = json.loads((tmp_path / "given" / "manifest.json").read_text())["mesh"]["variables"]
    assert meta["params/Dense_0/kernel"] == [None, "model"] and meta["params/Dense_1/kernel"] == ["model", None]
    assert all(all(d is None for d in s) for s in given.values())


def test_auto_batch_sizes_keep_those_the_batch_split_divides(tmp_path):
    m = ef.export_flax(models.TinyDense(), X, str(tmp_path / "b"), mesh=mesh2("data"), input_sharding=P("data"),
                       batch_sizes="auto", max_batch=8)
    assert [e["batch_size"] for e in m["methods"]["__call__"]["inference"]] == [2, 4, 8]


def test_an_uneven_split_is_refused_naming_the_input_and_the_axis(tmp_path):
    with pytest.raises(ValueError, match=r"input 'inputs' of shape \[3, 3\]: dimension 0 \(size 3\) is split over "
                                         r"mesh axis 'data' \(size 2\), which does not divide it"):
        ef.export_flax(models.TinyDense(), X[:3], str(tmp_path / "a"), mesh=mesh2("data"), input_sharding=P("data"))
    with pytest.raises(ValueError, match=r"input 'inputs' of shape \[6, 3\]: dimension 0 \(size 6\) is split over "
                                         r"mesh axis 'data' \(size 4\)"):
        ef.export_flax(models.TinyDense(), X, str(tmp_path / "b"), mesh=sh.cpu_mesh((4,), ("data",)),
                       input_sharding=P("data"), batch_sizes=[4, 6])
    with pytest.raises(ValueError, match=r"variable 'params/Dense_0/bias' of shape \[4\]: dimension 0 \(size 4\) is "
                                         r"split over mesh axis 'model' \(size 8\)"):
        ef.export_flax(models.TinyDense(), X, str(tmp_path / "c"), mesh=sh.cpu_mesh((8,), ("model",)),
                       param_sharding=lambda n: P("model") if n.endswith("bias") else None)
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()


def test_bad_sharding_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="names mesh axis 'modle'"):
        ef.export_flax(models.TinyDense(), X, str(tmp_path / "a"), mesh=mesh2(), param_sharding=P("modle"))
    with pytest.raises(ValueError, match=r"param_sharding: the partition specs are for leaves \['Dense_0/kernel'\]"):
        ef.export_flax(models.TinyDense(), X, str(tmp_path / "a"), mesh=mesh2(),
                       param_sharding={"Dense_0": {"kernel": P()}})
    with pytest.raises(TypeError, match=r"param_sharding 'Dense_0/bias': a sharding must be"):
        ef.export_flax(models.TinyDense(), X, str(tmp_path / "a"), mesh=mesh2(), param_sharding=lambda n: "model")
    with pytest.raises(ValueError, match="input_sharding given without a mesh"):
        ef.export_flax(models.TinyDense(), X, str(tmp_path / "a"), input_sharding=P("data"))
    with pytest.raises(TypeError, match="mesh must be a jax.sharding.Mesh"):
        ef.export_flax(models.TinyDense(), X, str(tmp_path / "a"), mesh=("data", 2))
    with pytest.raises(ValueError, match="batch_sharding given without a mesh"):
        et.export_train_step(models.TinyDense(), {"x": X, "y": X[:, :1].astype(np.float32)}, str(tmp_path / "t"),
                             loss="mse", batch_sharding=P("data"))
    with pytest.raises(RuntimeError, match="needs 64 CPU devices but JAX has .*XLA_FLAGS=--xla_force_host_platform_device_count"):
        sh.cpu_mesh((64,), ("data",))


def test_an_nnx_module_on_a_mesh_is_refused(tmp_path):
    """NNX modules export on one device only: on a mesh, export_flax and export_train_step
    say so (docs/exporter.md, "Several devices") and write nothing."""
    from flax import nnx

    from flaxlayer_export.examples import nnx_models

    x = np.random.default_rng(1).standard_normal((4, 12)).astype(np.float32)
    for module in (nnx_models.NnxMLPBNDropout, nnx_models.NnxMLPBNDropout(rngs=nnx.Rngs(0))):
        with pytest.raises(NotImplementedError, match=r"NNX module on a mesh .*nnx\.bridge\.to_linen"):
            ef.export_flax(module, x, str(tmp_path / "a"), mesh=mesh2("data"), input_sharding=P("data"))
    with pytest.raises(NotImplementedError, match="NNX module on a mesh"):
        et.export_train_step(nnx_models.NnxMLPBNDropout, {"x": x, "y": np.zeros(4, np.int32)},
                             str(tmp_path / "t"), mesh=mesh2("data"), batch_sharding=P("data"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "t").exists()
