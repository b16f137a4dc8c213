"""Tests of flaxlayer_export.export_flax and the committed bundles under hlo/
(flaxlayer_export.examples.registry writes them: scripts/export_examples.py).

Run: .venv/bin/python -m pytest tests/python -q

The oracle everywhere is Flax's own `module.apply` / `module.init` (jitted),
written here independently of the exporter's wrapper functions.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import ml_dtypes
import pytest

import jax
import flax
import flax.linen as nn
from flax.core import DenyList
from jax import export as jax_export

import flaxlayer_export as ef
from flaxlayer_export.cli import make_cli_inputs
from flaxlayer_export.examples import models
from flaxlayer_export.examples import registry as ee
from flaxlayer_export.hoist import PROLOGUE_NAME

import fixture_model  # tests/python (pytest puts a test's directory on sys.path)
from bundlecmp import assert_cross_cpu, drift, tree_bytes

REPO = Path(__file__).resolve().parents[2]
HLO = REPO / "hlo"
FIXTURE = Path(__file__).resolve().parent / "fixture_model.py"
CLI = Path(sys.executable).parent / "flaxlayer-export"

NAMES = list(ee.EXAMPLES)
KEY_IMPL = "threefry2x32"
RTOL = ATOL = 1e-6
FORBIDDEN = re.compile(rb"/root|/home|/tmp|site-packages")

# Expected Keras `training` detection per example.
EXPECTED_TAKES_TRAINING = {
    "cnn": False, "wrapper": True, "dense_bn_dropout": True, "mixed": False,
    "decoder": True, "mlp": False, "multi_platform": False, "actnorm": False,
    "pretrained_mlp": False, "buckets": False, "bn_batch_stats": False, "decoder_b4": True,
    "lstm": True, "linalg": False, "mlp_frozen": False, "decoder_frozen": True,
    "image_meta": False,
}
# Bundles whose computations may use custom calls, with the expected targets per computation.
CUSTOM_CALLS = {
    "lstm": {"init": ["lapack_sgeqrf_ffi", "lapack_sorgqr_ffi"]},
    "linalg": {"inference": ["lapack_sgetrf_ffi", "lapack_spotrf_ffi", "lapack_ssyevd_ffi",
                             "lapack_strsm_ffi"],
               "training": ["lapack_sgetrf_ffi", "lapack_spotrf_ffi", "lapack_ssyevd_ffi",
                            "lapack_strsm_ffi"]},
}


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

def assert_same(actual, expected, what="", exact=False):
    a, e = np.asarray(actual), np.asarray(expected)
    assert a.dtype == e.dtype, f"{what}: dtype {a.dtype} != {e.dtype}"
    assert a.shape == e.shape, f"{what}: shape {a.shape} != {e.shape}"
    floating = np.issubdtype(a.dtype, np.floating) or a.dtype == np.dtype(ml_dtypes.bfloat16)
    if exact or not floating:
        np.testing.assert_array_equal(a, e, err_msg=what)
    else:
        np.testing.assert_allclose(a.astype(np.float32), e.astype(np.float32),
                                   rtol=RTOL, atol=ATOL, err_msg=what)


def named(tree, bare):
    return dict(ef.named_leaves(tree, bare))


def assert_tree_same(actual, expected, bare, what="", exact=False):
    a, e = named(actual, bare), named(expected, bare)
    assert list(a) == list(e), f"{what}: leaves {list(a)} != {list(e)}"
    for n in e:
        assert_same(a[n], e[n], f"{what} {n}", exact=exact)


def state_of(variables):
    return {c: v for c, v in variables.items() if c != "params"}


class Bundle:
    def __init__(self, name):
        self.name = name
        self.dir = HLO / name
        self.example = ee.EXAMPLES[name]
        self.manifest = json.loads((self.dir / "manifest.json").read_text())
        self.variables_flat, self.variables_meta = ef.read_safetensors(str(self.dir / "variables.safetensors"))
        self.golden, self.golden_meta = ef.read_safetensors(str(self.dir / "golden.safetensors"))
        self.module = self.example.make_module()
        self.method = self.example.method
        self.inputs = self.example.make_inputs()
        self.init_inputs = (self.example.make_init_inputs() if self.example.make_init_inputs
                            else self.inputs)
        self.seed = self.example.seed
        self.streams = self.example.rng_streams
        self.mname = self.manifest["default_method"]
        # Whether any computation calls LAPACK: its floats then differ by ulps between CPUs,
        # so committed results are compared with bundlecmp's cross-CPU tolerance.
        self.runs_lapack = '"lapack_' in (self.dir / "manifest.json").read_text()
        self.takes_training = self.manifest["methods"][self.mname]["takes_training"]
        self.K0 = jax.random.key(self.seed, impl=KEY_IMPL)
        self.given = ee.example_variables(name, self.module)

    # -- Flax oracle ----------------------------------------------------------
    def _kw(self, training):
        return {"training": training} if self.takes_training else {}

    @functools.cached_property
    def flax_init(self):
        rngs = {"params": self.K0, **{s: self.K0 for s in self.streams}}
        v = jax.jit(lambda r, x: self.module.init(r, x, method=self.method, **self._kw(True)))(
            rngs, self.init_inputs)
        return jax.tree_util.tree_map(np.asarray, flax.core.unfreeze(v))

    @functools.cached_property
    def _apply_infer(self):
        return jax.jit(lambda v, x: self.module.apply(
            v, x, method=self.method, mutable=DenyList(["params"]), **self._kw(False)))

    @functools.cached_property
    def _apply_train(self):
        return jax.jit(lambda v, x, k: self.module.apply(
            v, x, method=self.method, rngs={s: k for s in self.streams},
            mutable=DenyList(["params"]), **self._kw(True)))

    def flax_inference(self, variables, inputs):
        out, mut = self._apply_infer(variables, inputs)
        return out, {**state_of(variables), **flax.core.unfreeze(mut)}

    def flax_training(self, variables, inputs, k):
        out, mut = self._apply_train(variables, inputs, k)
        return out, {**state_of(variables), **flax.core.unfreeze(mut)}

    # -- bundle contents ------------------------------------------------------
    def expected_variables(self):
        """What variables.safetensors must hold: the given variables, else Flax's init."""
        if self.given is None:
            return self.flax_init
        return jax.tree_util.tree_map(np.asarray, self.given)

    def variables(self):
        """variables.safetensors as the Flax variables tree."""
        flat = self.variables_flat
        return jax.tree_util.tree_map_with_path(
            lambda p, _: flat[ef.leaf_name(p, "?")], self.flax_init)

    def exported(self, fname):
        return jax_export.deserialize(bytearray((self.dir / fname).read_bytes()))

    def entries(self, mode):
        return self.manifest["methods"][self.mname][mode]

    def inputs_for_batch(self, b):
        """The sample inputs for the sample batch; rows cycled + shifted otherwise."""
        sample_b = jax.tree_util.tree_leaves(self.inputs)[0].shape[0]
        if b == sample_b:
            return self.inputs

        def f(x):
            x = np.asarray(x)
            idx = np.arange(b) % sample_b
            y = x[idx]
            if np.issubdtype(x.dtype, np.floating) or x.dtype == np.dtype(ml_dtypes.bfloat16):
                shift = (np.arange(b) // sample_b).reshape((b,) + (1,) * (x.ndim - 1)) * 0.125
                y = (y.astype(np.float32) + shift).astype(x.dtype)
            return y
        return jax.tree_util.tree_map(f, self.inputs)


@functools.lru_cache(maxsize=None)
def get_bundle(name) -> Bundle:
    return Bundle(name)


# ---------------------------------------------------------------------------
# bundle layout and manifest
# ---------------------------------------------------------------------------

def test_bundle_dirs_are_the_examples():
    dirs = sorted(p.parent.name for p in HLO.glob("*/manifest.json"))
    # training bundles (ee.TRAIN_EXAMPLES) are tested in test_train.py, NNX bundles
    # (ee.NNX_EXAMPLES, nnx_digits_train) in test_nnx.py, mesh bundles (ee.MESH_EXAMPLES,
    # ee.MESH_TRAIN_EXAMPLES) in test_devices.py; the generation bundles (lm_*, made by
    # scripts/make_lm_fixtures.py from transformers models) in tests/it/generate.rs
    lm = ["lm_gemma", "lm_gpt2", "lm_llama", "lm_mistral"]
    assert dirs == sorted(NAMES + list(ee.NNX_EXAMPLES) + list(ee.TRAIN_EXAMPLES) + list(ee.MESH_EXAMPLES)
                          + list(ee.MESH_TRAIN_EXAMPLES) + lm)


@pytest.mark.parametrize("name", NAMES)
def test_manifest(name):
    b = get_bundle(name)
    m = b.manifest
    assert m["format"] == "flaxlayer.bundle" and m["version"] == 1
    assert m["module"] == type(b.module).__name__
    assert m["seed"] == b.seed
    assert m["rng_streams"] == list(b.streams)
    assert m["platforms"] == list(b.example.platforms)
    assert m["key"]["initial"] == [int(v) for v in np.asarray(jax.random.key_data(b.K0))]
    assert list(m["methods"]) == [m["default_method"]]
    expected_mname = (b.method if isinstance(b.method, str) else
                      "__call__" if b.method is None else b.method.__name__)
    assert m["default_method"] == expected_mname
    assert b.takes_training == EXPECTED_TAKES_TRAINING[name]

    # variables: flatten order of the variables dict, matching variables.safetensors
    assert m["variables_origin"] == ("init" if b.given is None else "given")
    init_named = named(b.flax_init, "variables")
    assert [v["name"] for v in m["variables"]] == list(init_named)
    assert sorted(b.variables_flat) == sorted(init_named)
    for v in m["variables"]:
        arr = b.variables_flat[v["name"]]
        assert v["collection"] == v["name"].split("/")[0]
        assert v["dtype"] == arr.dtype.name and v["shape"] == list(arr.shape)

    # every .jaxexport file is referenced, and exists
    files = {m["init"]["file"]}
    for mode in ("inference", "training"):
        files |= {e["file"] for e in b.entries(mode)}
        files |= {e["frozen"]["file"] for e in b.entries(mode) if "frozen" in e}
        files |= {e["hoisted"][part]["file"] for e in b.entries(mode) if "hoisted" in e
                  for part in ("prologue", "body")}
    assert files == {p.name for p in b.dir.glob("*.jaxexport")}
    batches = [e["batch_size"] for e in b.entries("inference")]
    assert batches == [e["batch_size"] for e in b.entries("training")]
    sample_b = jax.tree_util.tree_leaves(b.inputs)[0].shape[0]
    assert batches == ef.resolve_batch_sizes(b.example.batch_sizes, b.example.max_batch, sample_b)
    want_files = {"manifest.json", "variables.safetensors", "golden.safetensors"} | files
    if "inputs_file" in m["init"]:
        want_files.add("init_inputs.safetensors")
    assert {p.name for p in b.dir.iterdir()} == want_files

    inputs_spec = [{"name": n, "dtype": np.asarray(x).dtype.name, "shape": list(np.shape(x))}
                   for n, x in named(b.inputs, "inputs").items()]
    assert m["methods"][m["default_method"]]["inputs"] == inputs_spec


def _check_roles(exp, entry_args, entry_results, arg_tree, res_tree):
    """Manifest args/results agree with the Exported's flat in/out avals and trees."""
    assert len(exp.in_avals) == len(entry_args)
    assert len(exp.out_avals) == len(entry_results)
    for spec, aval in list(zip(entry_args, exp.in_avals)) + list(zip(entry_results, exp.out_avals)):
        assert spec["shape"] == list(aval.shape), (spec, aval)
        assert spec["dtype"] == np.dtype(aval.dtype).name, (spec, aval)
    # positions: unflatten the Exported's trees with leaf indices and name them
    args_tree, kwargs = jax.tree_util.tree_unflatten(exp.in_tree, list(range(len(exp.in_avals))))
    assert kwargs == {}
    expected = arg_tree(args_tree)
    assert [(s["role"], s.get("name")) for s in entry_args] == expected
    res = jax.tree_util.tree_unflatten(exp.out_tree, list(range(len(exp.out_avals))))
    assert [(s["role"], s.get("name")) for s in entry_results] == res_tree(res)


def _positions(tree, role, bare, prefix=None):
    """[(role, name)] ordered by the flat position stored at the leaves."""
    if prefix is not None:
        tree = {prefix: tree}
    return [(ef.leaf_name(p, bare), i) for p, i in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _ordered(*groups):
    items = []
    for role, pairs in groups:
        items += [(i, role, n) for n, i in pairs]
    items.sort()
    assert [i for i, _, _ in items] == list(range(len(items)))
    return [(r, n) for _, r, n in items]


@pytest.mark.parametrize("name", NAMES)
def test_roles_match_exported(name):
    b = get_bundle(name)
    m = b.manifest
    init = b.exported(m["init"]["file"])
    # init(key, inputs) -> variables
    _check_roles(
        init, m["init"]["args"], m["init"]["results"],
        lambda t: _ordered(("key", [(None, t[0])]), ("input", _positions(t[1], "input", "inputs"))),
        lambda r: _ordered(*[(("param" if n.startswith("params/") else "state"), [(n, i)])
                             for n, i in _positions(r, None, "variables")]))
    for e in b.entries("inference"):
        exp = b.exported(e["file"])
        assert tuple(exp.platforms) == tuple(m["platforms"])
        _check_roles(
            exp, e["args"], e["results"],
            lambda t: _ordered(("param", _positions(t[0], None, "params", prefix="params")),
                               ("state", _positions(t[1], None, "state")),
                               ("input", _positions(t[2], None, "inputs"))),
            lambda r: _ordered(("output", _positions(r[0], None, "outputs")),
                               ("state", _positions(r[1], None, "state"))))
        for s in e["args"]:
            if s["role"] == "input":
                assert s["shape"][0] == e["batch_size"]
    for e in b.entries("training"):
        exp = b.exported(e["file"])
        _check_roles(
            exp, e["args"], e["results"],
            lambda t: _ordered(("param", _positions(t[0], None, "params", prefix="params")),
                               ("state", _positions(t[1], None, "state")),
                               ("key", [(None, t[2])]),
                               ("input", _positions(t[3], None, "inputs"))),
            lambda r: _ordered(("output", _positions(r[0], None, "outputs")),
                               ("state", _positions(r[1], None, "state")),
                               ("key", [(None, r[2])])))
        key_specs = [s for s in e["args"] if s["role"] == "key"]
        assert key_specs == [{"role": "key", "dtype": "uint32", "shape": [2]}]


@pytest.mark.parametrize("name", NAMES)
def test_exported_artifact_properties(name):
    """Concrete shapes, VHLO portable artifact, no debug locations, custom calls listed."""
    b = get_bundle(name)
    m = b.manifest
    entries = {m["init"]["file"]: ("init", m["init"])}
    for mode in ("inference", "training"):
        entries.update({e["file"]: (mode, e) for e in b.entries(mode)})
        entries.update({e["frozen"]["file"]: (mode, e["frozen"]) for e in b.entries(mode) if "frozen" in e})
        entries.update({e["hoisted"][part]["file"]: (f"{mode} hoisted", e["hoisted"][part])
                        for e in b.entries(mode) if "hoisted" in e for part in ("prologue", "body")})
    for f in sorted(b.dir.glob("*.jaxexport")):
        exp = b.exported(f.name)
        assert exp.mlir_module_serialized.startswith(b"ML\xefR")
        assert b"StableHLO_v" in exp.mlir_module_serialized[:32]
        assert exp.calling_convention_version == 10
        assert exp.nr_devices == 1
        for aval in exp.in_avals + exp.out_avals:
            assert all(isinstance(d, int) for d in aval.shape), (f.name, aval)
        text = exp.mlir_module()
        assert 'loc("' not in text, f"{f.name} still has named locations"
        assert "callsite" not in text
        if len(exp.platforms) > 1:
            assert "_platform_index" in text
        assert exp.fun_name in ("init", f"{b.mname}.inference", f"{b.mname}.inference.frozen",
                                f"{b.mname}.inference.hoisted", PROLOGUE_NAME,
                                f"{b.mname}.training")
        # custom_call_targets: what the MLIR text says, and what the example is known to need
        kind, entry = entries[f.name]
        in_text = sorted(set(re.findall(r"stablehlo\.custom_call @([A-Za-z0-9_.$-]+)", text)))
        assert entry["custom_call_targets"] == in_text, f.name
        if kind.endswith(" hoisted"):  # the prologue or the body: a part of the computation's
            known = CUSTOM_CALLS.get(name, {}).get(kind.split()[0], [])
            assert set(entry["custom_call_targets"]) <= set(known), f.name
        else:
            assert entry["custom_call_targets"] == CUSTOM_CALLS.get(name, {}).get(kind, []), f.name
        assert ("custom_call" in text) == bool(in_text)


# ---------------------------------------------------------------------------
# numerics vs Flax
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_init_matches_flax(name):
    b = get_bundle(name)
    init = b.exported(b.manifest["init"]["file"])
    key = jax.random.key_data(b.K0)
    got = init.call(key, b.init_inputs)
    assert_tree_same(got, b.flax_init, "variables", "init vs flax", exact=True)
    # the committed variables are the init'd ones (or the given ones); an init through LAPACK
    # (an orthogonal initializer's QR) was computed on the exporting machine's CPU
    if b.runs_lapack:
        got_v, want_v = named(b.variables(), "variables"), named(b.expected_variables(), "variables")
        assert list(got_v) == list(want_v)
        for n in want_v:
            assert_cross_cpu(got_v[n], want_v[n], f"variables.safetensors {n}")
    else:
        assert_tree_same(b.variables(), b.expected_variables(), "variables", "variables.safetensors", exact=True)
    # params equal plain module.init(jax.random.key(seed), ...)
    plain = jax.jit(lambda k, x: b.module.init(k, x, method=b.method, **b._kw(True)))(
        jax.random.key(b.seed), b.init_inputs)
    assert_tree_same(got["params"], flax.core.unfreeze(plain)["params"], "params",
                     "init vs module.init(key(seed))", exact=True)


@pytest.mark.parametrize("name", NAMES)
def test_inference_matches_flax(name):
    b = get_bundle(name)
    variables = b.variables()
    for e in b.entries("inference"):
        exp = b.exported(e["file"])
        x = b.inputs_for_batch(e["batch_size"])
        out, new_state = exp.call(variables["params"], state_of(variables), x)
        ref_out, ref_state = b.flax_inference(variables, x)
        assert_tree_same(out, ref_out, "outputs", f"{e['file']} outputs")
        assert_tree_same(new_state, ref_state, "state", f"{e['file']} state")


FROZEN = [n for n in NAMES if ee.EXAMPLES[n].frozen]


def test_frozen_examples():
    assert FROZEN == ["mlp_frozen", "decoder_frozen"]
    for n in NAMES:
        entries = get_bundle(n).entries("inference")
        assert all(("frozen" in e) == (n in FROZEN) for e in entries), n
        assert not any("frozen" in e for e in get_bundle(n).entries("training")), n


@pytest.mark.parametrize("name", FROZEN)
def test_frozen_inference_matches_flax(name):
    """The frozen variant takes the state and inputs only, names the variables file its
    constants came from, and computes what Flax does with the bundle's variables."""
    b = get_bundle(name)
    variables = b.variables()
    digest = hashlib.sha256((b.dir / "variables.safetensors").read_bytes()).hexdigest()
    for e in b.entries("inference"):
        f = e["frozen"]
        assert f["batch_size"] == e["batch_size"] and f["results"] == e["results"]
        assert f["args"] == [a for a in e["args"] if a["role"] != "param"]
        assert f["variables_sha256"] == digest
        assert f["file"] == e["file"].replace(".jaxexport", ".frozen.jaxexport")
        exp = b.exported(f["file"])
        x = b.inputs_for_batch(e["batch_size"])
        out, new_state = exp.call(state_of(variables), x)
        ref_out, ref_state = b.flax_inference(variables, x)
        assert_tree_same(out, ref_out, "outputs", f"{f['file']} outputs")
        assert_tree_same(new_state, ref_state, "state", f"{f['file']} state")


def test_frozen_on_a_mesh_is_refused(tmp_path):
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    with pytest.raises(NotImplementedError, match="single-device"):
        ef.export_flax(models.MLP(), np.ones((1, 64), np.float32), str(tmp_path / "b"),
                       mesh=mesh, frozen=True)


def test_cli_help_covers_linen_and_nnx():
    # The console script exports both kinds of module; its help says so (it said "linen").
    r = subprocess.run([str(CLI), "--help"], capture_output=True, text=True, check=True)
    assert "linen or NNX" in r.stdout and "function of rngs" in r.stdout, r.stdout


def test_cli_frozen(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("import flax.linen as nn\n"
                   "class M(nn.Module):\n"
                   "    @nn.compact\n"
                   "    def __call__(self, x):\n"
                   "        return nn.Dense(3)(x)\n")
    out = tmp_path / "b"
    subprocess.run([str(CLI), f"{src}:M", "--input", "inputs=2,4:float32", "--out", str(out), "--frozen"],
                   check=True, capture_output=True, text=True)
    m = json.loads((out / "manifest.json").read_text())
    (e,) = m["methods"]["__call__"]["inference"]
    assert [a["role"] for a in e["frozen"]["args"]] == ["input"]
    assert (out / e["frozen"]["file"]).is_file()
    # --frozen-batch-sizes: only the sizes named get a frozen copy
    out2 = tmp_path / "b2"
    subprocess.run([str(CLI), f"{src}:M", "--input", "inputs=2,4:float32", "--out", str(out2), "--frozen",
                    "--batch-sizes", "1,2", "--frozen-batch-sizes", "2"], check=True, capture_output=True, text=True)
    m = json.loads((out2 / "manifest.json").read_text())
    assert {e["batch_size"]: "frozen" in e for e in m["methods"]["__call__"]["inference"]} == {1: False, 2: True}
    assert sorted(f.name for f in out2.glob("*.frozen.jaxexport")) == ["__call__.inference.b2.frozen.jaxexport"]
    r = subprocess.run([str(CLI), f"{src}:M", "--input", "inputs=2,4:float32", "--out", str(tmp_path / "b3"),
                        "--frozen", "--frozen-batch-sizes", "4"], capture_output=True, text=True)
    assert r.returncode != 0 and "not among the exported batch sizes [2]" in r.stderr, r.stderr


@pytest.mark.parametrize("kwargs, error", [
    ({"frozen_batch_sizes": [2]}, "needs frozen=True"),
    ({"frozen": True, "frozen_batch_sizes": [8]}, r"\[8\] are not among the exported batch sizes \[1, 2\]"),
    ({"frozen": True, "frozen_batch_sizes": []}, "empty"),
    ({"frozen": True, "frozen_batch_sizes": "1"}, "list of batch sizes"),
])
def test_frozen_batch_sizes_are_checked(tmp_path, kwargs, error):
    with pytest.raises((ValueError, TypeError), match=error):
        ef.export_flax(models.TinyDense(), np.ones((2, 3), np.float32), str(tmp_path / "x"),
                       batch_sizes=[1, 2], **kwargs)
    assert not (tmp_path / "x").exists()


class _Wide(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(64)(x)


def test_given_variables_golden_records_init_without_a_copy(tmp_path):
    """With given variables, golden.safetensors says what init computes under the seed without
    holding a second copy of the weights: leaves up to init_golden.WHOLE_MAX elements whole,
    larger ones as a sample and moments (docs/bundle-format.md)."""
    mod, x = _Wide(), np.ones((2, 32), np.float32)
    init = flax.core.unfreeze(mod.init(jax.random.key(0), x))
    given = jax.tree_util.tree_map(lambda a: np.asarray(a) * np.float32(2) + np.float32(1), init)
    out = tmp_path / "wide"
    ef.export_flax(mod, x, str(out), variables=given, rng_streams=())
    g, _ = ef.read_safetensors(str(out / "golden.safetensors"))
    k = "params/Dense_0/kernel"
    assert sorted(n for n in g if n.startswith("init")) == [
        "init/params/Dense_0/bias", f"init_moments/{k}", f"init_sample/{k}", f"init_sample_index/{k}"]
    assert g[f"init_sample/{k}"].shape == (64,) and g[f"init_sample_index/{k}"].dtype == np.int64
    assert sum(a.nbytes for n, a in g.items() if n.startswith("init")) < given["params"]["Dense_0"]["kernel"].nbytes / 4
    # the bundle's init (run by JAX) agrees with the record; the given variables, another seed
    # and a permuted kernel (same moments) do not
    exp = jax_export.deserialize(bytearray((out / "init.jaxexport").read_bytes()))
    got = dict(ef.named_leaves(exp.call(np.asarray(jax.random.key_data(jax.random.key(0))), x), "variables"))
    assert ef.init_mismatches(g, got) == []
    assert any(k in p for p in ef.init_mismatches(g, dict(ef.named_leaves(given, "variables"))))
    other = dict(ef.named_leaves(flax.core.unfreeze(mod.init(jax.random.key(1), x)), "variables"))
    assert any(k in p for p in ef.init_mismatches(g, other))
    permuted = {**got, k: np.asarray(got[k])[::-1]}
    assert [p.split(":")[0] for p in ef.init_mismatches(g, permuted)] == [k]


@pytest.mark.parametrize("name", NAMES)
def test_training_matches_flax(name):
    """Two successive training calls under the RNG contract."""
    b = get_bundle(name)
    for e in b.entries("training"):
        exp = b.exported(e["file"])
        x = b.inputs_for_batch(e["batch_size"])
        cur = b.variables()
        key = jax.random.key_data(b.K0)
        K = b.K0
        for step in range(2):
            out, new_state, key = exp.call(cur["params"], state_of(cur), key, x)
            K, k = jax.random.split(K)
            ref_out, ref_state = b.flax_training(cur, x, k)
            assert_tree_same(out, ref_out, "outputs", f"{e['file']} step {step} outputs")
            assert_tree_same(new_state, ref_state, "state", f"{e['file']} step {step} state")
            assert_same(key, jax.random.key_data(K), "key", exact=True)
            cur = {"params": cur["params"], **jax.tree_util.tree_map(np.asarray, new_state)}


@pytest.mark.parametrize("name", NAMES)
def test_golden_matches_flax(name):
    b = get_bundle(name)
    g = b.golden
    variables = b.variables()
    expected_keys = set()

    for n, x in named(b.inputs, "inputs").items():
        assert_same(g[f"inputs/{n}"], x, f"inputs/{n}", exact=True)
        expected_keys.add(f"inputs/{n}")

    # golden (committed, maybe from another CPU) against Flax here
    same = assert_cross_cpu if b.runs_lapack else assert_same
    out, st = b.flax_inference(variables, b.inputs)
    for n, x in named(out, "outputs").items():
        same(g[f"inference/{n}"], x, f"inference/{n}")
        expected_keys.add(f"inference/{n}")
    for n, x in named(st, "state").items():
        same(g[f"inference_state/{n}"], x, f"inference_state/{n}")
        expected_keys.add(f"inference_state/{n}")

    K, cur = b.K0, dict(variables)
    for step in range(2):
        K, k = jax.random.split(K)
        out, st = b.flax_training(cur, b.inputs, k)
        for n, x in named(out, "outputs").items():
            same(g[f"training/{step}/{n}"], x, f"training/{step}/{n}")
            expected_keys.add(f"training/{step}/{n}")
        cur = {"params": cur["params"], **st}
    for n, x in named(state_of(cur), "state").items():
        same(g[f"after_training/{n}"], x, f"after_training/{n}")
        expected_keys.add(f"after_training/{n}")
    assert_same(g["key/after_training"], jax.random.key_data(K), "key/after_training", exact=True)
    expected_keys.add("key/after_training")
    if b.given is not None:  # else variables.safetensors is init's result (checked elsewhere)
        init = named(b.flax_init, "variables")
        assert ef.init_mismatches(g, init, atol=0) == []
        expected_keys |= set(ef.init_golden(list(init.items())))
    expected_keys |= EXTRA_GOLDEN.get(name, set())
    assert set(g) == expected_keys
    if b.manifest["variables"] and any(v["collection"] != "params" for v in b.manifest["variables"]):
        assert any(k.startswith("after_training/") for k in g)


EXTRA_GOLDEN = {
    "decoder": {"greedy/prompt", "greedy/tokens"},
    "decoder_frozen": {"greedy/prompt", "greedy/tokens"},
    "decoder_b4": {f"greedy/{n}/{k}" for n in (3, 4) for k in ("prompt", "tokens")},
    "buckets": {"rows/a", "rows/b"} | {f"exact/{n}/{i}" for n in range(1, 41) for i in (0, 1)},
}


def test_training_changes_things():
    """Sanity: dropout/batch-stats bundles really differ between modes and steps."""
    g = get_bundle("dense_bn_dropout").golden
    assert not np.array_equal(g["training/0/outputs"], g["training/1/outputs"])
    assert not np.array_equal(g["inference/outputs"], g["training/0/outputs"])
    assert not np.array_equal(g["after_training/batch_stats/BatchNorm_0/mean"],
                              get_bundle("dense_bn_dropout").variables_flat["batch_stats/BatchNorm_0/mean"])
    g = get_bundle("decoder").golden
    assert not np.array_equal(g["training/0/outputs"], g["training/1/outputs"])
    assert int(g["after_training/cache/position"]) == 2
    assert int(g["inference_state/cache/position"]) == 1


def test_mixed_dtypes():
    m = get_bundle("mixed").manifest["methods"]["__call__"]
    assert {(s["name"], s["dtype"]) for s in m["inputs"]} == {
        ("x", "float32"), ("scale", "bfloat16"), ("ids", "int32")}
    assert [(s["name"], s["dtype"]) for s in m["outputs"]] == [
        ("0", "float32"), ("1", "bfloat16"), ("2", "int32")]


def test_decoder_greedy():
    """Greedy decode with the exported INFERENCE computation reproduces the golden
    tokens, following the procedure in docs/bundle-format.md."""
    b = get_bundle("decoder")
    prompt, tokens = b.golden["greedy/prompt"], b.golden["greedy/tokens"]
    assert prompt.dtype == np.int32 and prompt.shape == (1, 4)
    assert tokens.dtype == np.int32 and tokens.shape == (1, 8)
    exp = b.exported(b.entries("inference")[0]["file"])
    v = b.variables()
    params, state = v["params"], state_of(v)
    logits = None
    for t in prompt[0]:
        logits, state = exp.call(params, state, np.array([[t]], np.int32))
    out = []
    for _ in range(tokens.shape[1]):
        tok = int(np.argmax(np.asarray(logits)[0, -1]))
        out.append(tok)
        logits, state = exp.call(params, state, np.array([[tok]], np.int32))
    assert out == tokens[0].tolist()
    # and the oracle agrees
    np.testing.assert_array_equal(ee.greedy_decode(b.module, v, prompt, 8), tokens)
    assert len(set(out)) > 1  # not a degenerate constant sequence


# ---------------------------------------------------------------------------
# determinism, portability
# ---------------------------------------------------------------------------

def test_reexport_matches_the_committed_bundles(tmp_path):
    """A fresh export of every example equals the committed files (golden floats up to ulps
    between CPUs, see bundlecmp.py); the committed files were written by another process."""
    fresh, committed = {}, {}
    for n in NAMES:
        ee.export_example(n, str(tmp_path / n))
        fresh.update({f"{n}/{k}": v for k, v in tree_bytes(tmp_path / n).items()})
        committed.update({f"{n}/{k}": v for k, v in tree_bytes(HLO / n).items()})
    bad = drift(fresh, committed)
    assert not bad, f"committed hlo/ differs from a fresh export: {bad} (run scripts/export_examples.py)"


def test_export_twice_is_byte_identical(tmp_path):
    for d in ("a", "b"):
        ee.export_example("actnorm", str(tmp_path / d))
    a, b = tree_bytes(tmp_path / "a"), tree_bytes(tmp_path / "b")
    assert a == b and "init_inputs.safetensors" in a


def test_no_absolute_paths_in_hlo():
    bad = []
    for p in sorted(HLO.rglob("*")):
        if p.is_file() and FORBIDDEN.search(p.read_bytes()):
            bad.append(str(p.relative_to(REPO)))
    assert not bad, f"absolute paths in {bad}"


def test_safetensors_readable_by_library():
    import safetensors.flax
    for n in NAMES:
        for f in ("variables.safetensors", "golden.safetensors", "init_inputs.safetensors"):
            if not (HLO / n / f).exists():
                continue
            lib = safetensors.flax.load_file(str(HLO / n / f))
            own, meta = ef.read_safetensors(str(HLO / n / f))
            assert sorted(lib) == sorted(own)
            for k in own:
                assert_same(np.asarray(lib[k]), own[k], f"{n}/{f}:{k}", exact=True)
            assert meta["format"] == "flaxlayer.bundle"


# ---------------------------------------------------------------------------
# exporter API details
# ---------------------------------------------------------------------------

class _Sow(nn.Module):
    @nn.compact
    def __call__(self, inputs):
        y = nn.Dense(2)(inputs)
        self.sow("intermediates", "y", y)
        return y


class _NoParams(nn.Module):
    def __call__(self, inputs):
        return inputs * 2.0


def test_new_collection_in_apply_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="intermediates"):
        ef.export_flax(_Sow(), np.ones((2, 3), np.float32), str(tmp_path / "x"))


def test_batch_sizes_must_include_sample_batch(tmp_path):
    with pytest.raises(ValueError, match="sample batch"):
        ef.export_flax(models.TinyDense(), np.ones((2, 3), np.float32), str(tmp_path / "x"),
                       batch_sizes=[1, 8])


def test_given_variables_are_bundled(tmp_path):
    mod = models.TinyDense()
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    v = {"params": {"Dense_0": {"kernel": np.full((3, 4), 0.5, np.float32),
                                "bias": np.arange(4, dtype=np.float32)}}}
    out = tmp_path / "given"
    ef.export_flax(mod, x, str(out), variables=v, seed=3, rng_streams=())
    flat, _ = ef.read_safetensors(str(out / "variables.safetensors"))
    assert_same(flat["params/Dense_0/kernel"], v["params"]["Dense_0"]["kernel"], exact=True)
    g, _ = ef.read_safetensors(str(out / "golden.safetensors"))
    assert_same(g["inference/outputs"], x @ v["params"]["Dense_0"]["kernel"] + v["params"]["Dense_0"]["bias"])
    man = json.loads((out / "manifest.json").read_text())
    assert man["rng_streams"] == [] and man["seed"] == 3
    # init still follows the seed
    init = jax_export.deserialize(bytearray((out / "init.jaxexport").read_bytes()))
    ref = mod.init(jax.random.key(3), x)
    assert_tree_same(init.call(jax.random.key_data(jax.random.key(3)), x), flax.core.unfreeze(ref),
                     "variables", exact=True)
    # wrong shapes are rejected
    bad = {"params": {"Dense_0": {"kernel": np.zeros((3, 5), np.float32), "bias": np.zeros(5, np.float32)}}}
    with pytest.raises(ValueError):
        ef.export_flax(mod, x, str(tmp_path / "bad"), variables=bad)


def test_stateless_module_without_params(tmp_path):
    out = tmp_path / "np"
    man = ef.export_flax(_NoParams(), np.ones((2, 3), np.float32), str(out))
    assert man["variables"] == []
    tr = man["methods"]["__call__"]["training"][0]
    assert [s["role"] for s in tr["args"]] == ["key", "input"]
    assert [s["role"] for s in tr["results"]] == ["output", "key"]
    exp = jax_export.deserialize(bytearray((out / tr["file"]).read_bytes()))
    o, st, k = exp.call({}, {}, jax.random.key_data(jax.random.key(0)), np.ones((2, 3), np.float32))
    assert_same(o, np.full((2, 3), 2.0, np.float32), exact=True)
    assert st == {}
    assert_same(k, jax.random.key_data(jax.random.split(jax.random.key(0))[0]), exact=True)


def test_takes_training_detection():
    m = models.DenseBNDropout()
    assert ef.takes_training(m, None)
    assert not ef.takes_training(models.MLP(), None)
    assert ef.takes_training(models.TwoInputModule(), models.my_flax_module_wrapper)
    assert not ef.takes_training(models.TwoInputModule(), "forward")
    assert ef.method_name_of(models.my_flax_module_wrapper) == "my_flax_module_wrapper"
    assert ef.method_name_of("forward") == "forward"
    assert ef.method_name_of(None) == "__call__"


def test_cli_input_structure():
    f32, i32 = np.dtype(np.float32), np.dtype(np.int32)
    x = make_cli_inputs([("inputs", (2, 3), f32)])
    assert isinstance(x, np.ndarray) and x.shape == (2, 3)
    t = make_cli_inputs([("1", (2, 5), i32), ("0", (2, 3), f32)])
    assert isinstance(t, tuple) and t[0].shape == (2, 3) and t[1].dtype == i32
    assert t[1].min() >= 0 and t[1].max() < 10
    d = make_cli_inputs([("x", (2, 3), f32)])
    assert isinstance(d, dict) and list(d) == ["x"]
    a = make_cli_inputs([("inputs", (4,), f32)])
    np.testing.assert_array_equal(a, np.random.default_rng(0).standard_normal((4,)).astype(np.float32))


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------

def _run_cli(*args):
    r = subprocess.run([str(CLI), *args], capture_output=True, text=True, cwd=str(REPO))
    assert r.returncode == 0, r.stderr
    return r


def _check_bundle_against_flax(out: Path, module, method, inputs, takes_training):
    man = json.loads((out / "manifest.json").read_text())
    flat, _ = ef.read_safetensors(str(out / "variables.safetensors"))
    g, _ = ef.read_safetensors(str(out / "golden.safetensors"))
    kw = {"training": False} if takes_training else {}
    K0 = jax.random.key(0)
    ref_v = module.init({"params": K0, "dropout": K0}, inputs, method=method,
                        **({"training": True} if takes_training else {}))
    ref_v = flax.core.unfreeze(ref_v)
    assert_tree_same(jax.tree_util.tree_map_with_path(lambda p, _: flat[ef.leaf_name(p, "?")], ref_v),
                     ref_v, "variables", exact=True)
    ref_out, _ = jax.jit(lambda v, x: module.apply(v, x, method=method, mutable=DenyList(["params"]), **kw))(
        ref_v, inputs)
    for n, x in named(inputs, "inputs").items():
        assert_same(g[f"inputs/{n}"], x, exact=True)
    for n, x in named(ref_out, "outputs").items():
        assert_same(g[f"inference/{n}"], x)
    entry = man["methods"][man["default_method"]]["inference"]
    b = jax.tree_util.tree_leaves(inputs)[0].shape[0]
    e = [e for e in entry if e["batch_size"] == b][0]
    exp = jax_export.deserialize(bytearray((out / e["file"]).read_bytes()))
    out_, _ = exp.call(ref_v["params"], state_of(ref_v), inputs)
    assert_tree_same(out_, ref_out, "outputs")
    return man


def test_cli_bare_array(tmp_path):
    out = tmp_path / "tiny"
    _run_cli(f"{FIXTURE}:make_model", "--input", "inputs=4,5:float32", "--out", str(out),
             "--batch-sizes", "2,4")
    inputs = make_cli_inputs([("inputs", (4, 5), np.dtype(np.float32))])
    man = _check_bundle_against_flax(out, fixture_model.TinyModel(), None, inputs, True)
    assert man["module"] == "TinyModel" and man["default_method"] == "__call__"
    assert [e["batch_size"] for e in man["methods"]["__call__"]["inference"]] == [2, 4]
    assert {c["collection"] for c in man["variables"]} == {"params", "batch_stats"}
    for p in out.iterdir():
        assert not FORBIDDEN.search(p.read_bytes()), p.name


def test_cli_tuple_inputs_and_function_method(tmp_path):
    out = tmp_path / "pair"
    _run_cli(f"{FIXTURE}:pair_model", "--input", "0=3,4:float32", "--input", "1=3,2:int32",
             "--method", "pair_fn", "--out", str(out), "--seed", "0")
    inputs = make_cli_inputs([("0", (3, 4), np.dtype(np.float32)), ("1", (3, 2), np.dtype(np.int32))])
    assert isinstance(inputs, tuple)
    man = _check_bundle_against_flax(out, fixture_model.PairModel(), fixture_model.pair_fn, inputs, False)
    assert man["default_method"] == "pair_fn"
    assert man["methods"]["pair_fn"]["takes_training"] is False
    assert [s["name"] for s in man["methods"]["pair_fn"]["inputs"]] == ["0", "1"]


def test_frozen_check_is_relative_to_the_output_scale():
    """Issue 25: the frozen check refused ResNet-50 (logits up to |174| differing by 9.5e-5,
    5e-7 of their scale). Rounding relative to the scale passes; a real difference does not."""
    from flaxlayer_export.linen import check_frozen_outputs
    logits = np.linspace(-174.0, 174.0, 1000, dtype=np.float32).reshape(2, 500)
    check_frozen_outputs([logits], [logits + np.float32(9.5e-5)], "resnet")
    small = np.linspace(-1, 1, 10, dtype=np.float32)
    check_frozen_outputs([small], [small + np.float32(5e-6)], "small")
    with pytest.raises(ValueError, match="of its scale"):
        check_frozen_outputs([logits], [logits + np.float32(0.01)], "resnet")
    with pytest.raises(ValueError, match="of its scale"):
        check_frozen_outputs([small], [small + np.float32(1e-4)], "small")
    with pytest.raises(ValueError, match="int32"):
        check_frozen_outputs([np.arange(3, dtype=np.int32)], [np.arange(1, 4, dtype=np.int32)], "ids")
    with pytest.raises(ValueError, match=r"float32\[3\]"):
        check_frozen_outputs([np.zeros(2, np.float32)], [np.zeros(3, np.float32)], "shape")
