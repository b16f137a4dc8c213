"""Tests of the manifest additions of docs/bundle-format.md and of the bundles that show them:
init inputs (hlo/actnorm), variables origin (hlo/pretrained_mlp), dtype canonicalisation,
custom calls (hlo/lstm, hlo/linalg), batch sizes and batching marks (hlo/buckets,
hlo/bn_batch_stats, hlo/decoder_b4).

The oracles are plain jitted `module.init` / `module.apply` written here; the exported
computations run through `jax.export` (`Exported.call`), as the runtime would run them.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export as jax_export

import flaxlayer_export as ef
from flaxlayer_export import batching
from flaxlayer_export.examples import models
from flaxlayer_export.examples import registry as ee
from flaxlayer_export.linen import check_exported, export_computation

REPO = Path(__file__).resolve().parents[2]
HLO = REPO / "hlo"
K0 = jax.random.key(0, impl="threefry2x32")
ALL_BUNDLES = [*ee.EXAMPLES, *ee.TRAIN_EXAMPLES]


@functools.lru_cache(maxsize=None)
def manifest(name):
    return json.loads((HLO / name / "manifest.json").read_text())


@functools.lru_cache(maxsize=None)
def golden(name):
    return ef.read_safetensors(str(HLO / name / "golden.safetensors"))[0]


@functools.lru_cache(maxsize=None)
def exported(name, fname):
    return jax_export.deserialize(bytearray((HLO / name / fname).read_bytes()))


def tree_of(flat: dict, prefix: str = ""):
    """{"a/b": x} -> {"a": {"b": x}} for the names under `prefix`."""
    tree: dict = {}
    for name, x in flat.items():
        if not name.startswith(prefix):
            continue
        *path, last = name[len(prefix):].split("/")
        d = tree
        for q in path:
            d = d.setdefault(q, {})
        d[last] = x
    return tree


def variables(name):
    return tree_of(ef.read_safetensors(str(HLO / name / "variables.safetensors"))[0])


def assert_trees_equal(a, b, what=""):
    na, nb = dict(ef.named_leaves(a, "v")), dict(ef.named_leaves(b, "v"))
    assert list(na) == list(nb), what
    for n in na:
        np.testing.assert_array_equal(np.asarray(na[n]), np.asarray(nb[n]), err_msg=f"{what} {n}")


def method(name):
    m = manifest(name)
    return m["methods"][m["default_method"]]


# ---------------------------------------------------------------------------
# init inputs (data-dependent init)
# ---------------------------------------------------------------------------

def test_actnorm_bundles_the_inputs_its_init_reads():
    m = manifest("actnorm")
    init = exported("actnorm", "init.jaxexport")
    assert init.module_kept_var_idx == (0, 1)  # key and the input
    assert m["init"]["inputs_file"] == "init_inputs.safetensors"
    tensors, meta = ef.read_safetensors(str(HLO / "actnorm" / "init_inputs.safetensors"))
    assert meta == {"format": "flaxlayer.bundle", "version": "1", "content": "init_inputs"}
    assert sorted(tensors) == [s["name"] for s in m["init"]["inputs"]] == ["inputs"]
    x = ee.EXAMPLES["actnorm"].make_inputs()
    np.testing.assert_array_equal(tensors["inputs"], x)

    # what the runtime does: exported init on the bundled inputs == module.init(K0, x)
    got = init.call(np.asarray(jax.random.key_data(K0)), tensors["inputs"])
    ref = flax.core.unfreeze(jax.jit(models.ActNormDense().init)(K0, x))
    assert_trees_equal(got, ref, "init")
    # variables.safetensors is init's result: golden holds no second copy (init_golden.py)
    assert not [k for k in golden("actnorm") if k.startswith("init")]
    assert_trees_equal(variables("actnorm"), ref, "variables.safetensors")
    # data-dependent for real: init on zeros (what a runtime feeding zeros computed) differs,
    # and the init batch comes out normalised
    zeros = init.call(np.asarray(jax.random.key_data(K0)), np.zeros_like(x))
    assert not np.allclose(zeros["params"]["ActNorm_0"]["loc"], ref["params"]["ActNorm_0"]["loc"])
    y = models.ActNorm().apply({"params": ref["params"]["ActNorm_0"]}, x)
    np.testing.assert_allclose(np.mean(y, axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(np.std(y, axis=0), 1, atol=1e-4)


@pytest.mark.parametrize("name", [n for n in ALL_BUNDLES if n != "actnorm"])
def test_no_init_inputs_when_init_reads_none(name):
    init = exported(name, manifest(name)["init"]["file"])
    assert init.module_kept_var_idx == (0,)  # only the key
    assert "inputs_file" not in manifest(name)["init"]
    assert not (HLO / name / "init_inputs.safetensors").exists()


# ---------------------------------------------------------------------------
# variables origin
# ---------------------------------------------------------------------------

def test_variables_origin():
    for name in ALL_BUNDLES:
        assert manifest(name)["variables_origin"] == ("given" if name == "pretrained_mlp" else "init"), name


def test_pretrained_mlp_bundles_the_given_variables():
    module = models.SmallMLP()
    x = ee.EXAMPLES["pretrained_mlp"].make_inputs()
    v = variables("pretrained_mlp")
    # what the registry gives: init under seed 7, then * 1.5 + 0.25, computed again here
    base = flax.core.unfreeze(module.init(jax.random.key(7), x))
    want = jax.tree_util.tree_map(lambda a: np.asarray(a) * np.float32(1.5) + np.float32(0.25), base)
    assert_trees_equal(v, want, "variables.safetensors")
    init = flax.core.unfreeze(module.init(jax.random.key(0), x))
    assert not np.allclose(v["params"]["Dense_0"]["kernel"], init["params"]["Dense_0"]["kernel"])
    g = golden("pretrained_mlp")
    assert_trees_equal(tree_of(g, "init/"), init, "golden init/ (module.init under the seed)")
    np.testing.assert_allclose(g["inference/outputs"], module.apply(v, x), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(g["inference/outputs"], module.apply(want, x), rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------
# dtypes
# ---------------------------------------------------------------------------

class _DictModel(nn.Module):
    @nn.compact
    def __call__(self, inputs):
        return nn.Dense(2)(inputs["x"]) + nn.Embed(10, 2)(inputs["ids"]).sum(axis=1)


def test_numpy_default_dtypes_are_canonicalised(tmp_path):
    """int64 / float64 sample inputs (numpy's defaults) are exported as int32 / float32, as
    jax.jit would run them, instead of failing an assertion."""
    rng = np.random.default_rng(0)
    x64 = rng.standard_normal((3, 4))
    ids64 = rng.integers(0, 10, size=(3, 2))
    assert (x64.dtype, ids64.dtype) == (np.float64, np.int64)
    out = tmp_path / "b"
    m = ef.export_flax(_DictModel(), {"x": x64, "ids": ids64}, str(out), rng_streams=())
    assert m["methods"]["__call__"]["inputs"] == [
        {"name": "ids", "dtype": "int32", "shape": [3, 2]},
        {"name": "x", "dtype": "float32", "shape": [3, 4]}]
    assert [s["dtype"] for s in m["init"]["inputs"]] == ["int32", "float32"]
    g = ef.read_safetensors(str(out / "golden.safetensors"))[0]
    assert g["inputs/x"].dtype == np.float32 and g["inputs/ids"].dtype == np.int32
    v = tree_of(ef.read_safetensors(str(out / "variables.safetensors"))[0])
    want = _DictModel().apply(v, {"x": x64.astype(np.float32), "ids": ids64.astype(np.int32)})
    np.testing.assert_allclose(g["inference/outputs"], want, rtol=1e-6)


def test_dtype_mismatches_are_value_errors_naming_the_slot(tmp_path):
    exp = jax_export.export(jax.jit(lambda x: x * 2))(jax.ShapeDtypeStruct((2,), jnp.float32))
    good_out = [{"role": "output", "name": "outputs", "dtype": "float32", "shape": [2]}]
    with pytest.raises(ValueError, match=r"argument input 'x' is float64\[2\] in the manifest but jax.export traced float32\[2\]"):
        check_exported(exp, [{"role": "input", "name": "x", "dtype": "float64", "shape": [2]}], good_out)
    with pytest.raises(ValueError, match="1 args / 2 results"):
        check_exported(exp, [{"role": "input", "name": "x", "dtype": "float32", "shape": [2]}], good_out * 2)
    with pytest.raises(ValueError, match="sample input 'name'.*not an array of numbers"):
        ef.export_flax(models.TinyDense(), {"name": np.array(["a", "b"])}, str(tmp_path / "s"))
    # given variables in float64 become float32 (as under jit); wrong shapes name the variable
    x = np.ones((2, 3), np.float32)
    v64 = {"params": {"Dense_0": {"kernel": np.ones((3, 4)), "bias": np.zeros(4)}}}
    m = ef.export_flax(models.TinyDense(), x, str(tmp_path / "v"), variables=v64, rng_streams=())
    assert {s["dtype"] for s in m["variables"]} == {"float32"}
    bad = {"params": {"Dense_0": {"kernel": np.ones((3, 5), np.float32), "bias": np.zeros(5, np.float32)}}}
    with pytest.raises(ValueError, match=r"params/Dense_0/bias: given float32\[5\], init makes float32\[4\]"):
        ef.export_flax(models.TinyDense(), x, str(tmp_path / "w"), variables=bad)


# ---------------------------------------------------------------------------
# custom calls
# ---------------------------------------------------------------------------

LAPACK_LINALG = ["lapack_sgetrf_ffi", "lapack_spotrf_ffi", "lapack_ssyevd_ffi", "lapack_strsm_ffi"]


def test_custom_calls_of_lstm_and_linalg():
    m = manifest("lstm")
    assert m["init"]["custom_call_targets"] == ["lapack_sgeqrf_ffi", "lapack_sorgqr_ffi"]
    for mode in ("inference", "training"):
        assert all(e["custom_call_targets"] == [] for e in method("lstm")[mode])
    m = manifest("linalg")
    assert m["init"]["custom_call_targets"] == []
    for mode in ("inference", "training"):
        assert [e["custom_call_targets"] for e in method("linalg")[mode]] == [LAPACK_LINALG]
    t = manifest("lstm_train")
    assert t["init"]["custom_call_targets"] == ["lapack_sgeqrf_ffi", "lapack_sorgqr_ffi"]
    for c in ("init_opt_state", "train_step", "eval_step"):
        assert t["train"][c]["custom_call_targets"] == []
    for name in ALL_BUNDLES:
        if name not in ("lstm", "lstm_train", "linalg"):
            m = manifest(name)
            entries = [m["init"], *method(name)["inference"], *method(name)["training"]]
            entries += [m["train"][c] for c in ("init_opt_state", "train_step", "eval_step")] if "train" in m else []
            assert all(e["custom_call_targets"] == [] for e in entries), name


def test_custom_calls_in_nested_regions_are_found():
    """A custom call inside a loop body and a conditional branch (not in main's own block)."""
    def f(a, n):
        def body(i, q):
            return jnp.linalg.qr(q + i)[0]
        q = jax.lax.fori_loop(0, n, body, a)
        return jax.lax.cond(n > 2, lambda q: jnp.linalg.cholesky(q @ q.T + jnp.eye(3)), lambda q: q, q)
    c = export_computation(f, "nested", (), (jax.ShapeDtypeStruct((3, 3), jnp.float32),
                                             jax.ShapeDtypeStruct((), jnp.int32)), ("cpu",))
    assert c.custom_call_targets == ["lapack_sgeqrf_ffi", "lapack_sorgqr_ffi", "lapack_spotrf_ffi"]
    assert export_computation(lambda x: x + 1, "plain", (), (jax.ShapeDtypeStruct((2,), jnp.float32),),
                              ("cpu",)).custom_call_targets == []


def test_linalg_outputs_match_numpy():
    """The golden data of hlo/linalg is what the math says (numpy's LAPACK as a second oracle)."""
    g = golden("linalg")
    v = variables("linalg")
    x = g["inputs/inputs"]
    kern, bias = v["params"]["Dense_0"]["kernel"], v["params"]["Dense_0"]["bias"]
    h = (x.astype(np.float64) @ kern + bias).reshape(3, 4, 4)
    a = h @ np.swapaxes(h, -1, -2) + np.eye(4)
    np.testing.assert_allclose(g["inference/cholesky"], np.linalg.cholesky(a), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(g["inference/solve"], np.linalg.solve(a, np.broadcast_to(v["params"]["rhs"], (3, 4))[..., None])[..., 0],
                               rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(g["inference/eigvals"], np.linalg.eigvalsh(a), rtol=1e-4, atol=1e-4)
    vecs = g["inference/eigvecs"]
    np.testing.assert_allclose(vecs @ (g["inference/eigvals"][..., None] * np.swapaxes(vecs, -1, -2)), a,
                               rtol=1e-4, atol=1e-3)


# ---------------------------------------------------------------------------
# batch sizes and batching marks
# ---------------------------------------------------------------------------

def test_resolve_batch_sizes():
    r = batching.resolve_batch_sizes
    assert r("auto", 64, 1) == [1, 2, 4, 8, 16, 32, 64]
    assert r("auto", 8, 3) == [1, 2, 3, 4, 8]
    assert r("auto", 6, 2) == [1, 2, 4]
    assert r(None, 64, 5) == [5]
    assert r([8, 1, 8], 64, 1) == [1, 8]
    with pytest.raises(ValueError, match="sample batch 2"):
        r([1, 8], 64, 2)
    with pytest.raises(ValueError, match="positive integers"):
        r([0, 2], 64, 2)
    with pytest.raises(ValueError, match='"auto"'):
        r("all", 64, 2)
    with pytest.raises(ValueError, match="max_batch"):
        r("auto", 0, 1)
    assert [e["batch_size"] for e in method("pretrained_mlp")["inference"]] == [1, 2, 4, 8]


def test_every_output_slot_is_marked():
    for name in ALL_BUNDLES:
        meth = method(name)
        for e in meth["inference"] + meth["training"]:
            for s in e["results"]:
                assert ("batched" in s) == (s["role"] == "output"), (name, s)
            for s in e["args"]:
                assert "batched" not in s
        assert all(isinstance(o["batched"], bool) for o in meth["outputs"])
        if name != "buckets":
            assert all(o["batched"] for o in meth["outputs"]), name


def test_buckets_marks():
    meth = method("buckets")
    assert meth["batching"] == {"paddable": True, "pad_value": 0, "stateful": False, "batched_state": []}
    assert [(o["name"], o["shape"], o["batched"]) for o in meth["outputs"]] == [("0", [4, 2], True), ("1", [4], False)]
    for mode in ("inference", "training"):
        assert [e["batch_size"] for e in meth[mode]] == [1, 4, 16]
        for e in meth[mode]:
            outs = [(s["name"], s["shape"], s["batched"]) for s in e["results"] if s["role"] == "output"]
            assert outs == [("0", [e["batch_size"], 2], True), ("1", [4], False)]


def run_padded(exps: dict[int, object], params, rows: dict, n: int):
    """A batch of n rows through exported sizes: chunks of at most the largest size, each
    padded with zero rows to the smallest exported size that holds it; real rows kept."""
    sizes = sorted(exps)
    ys, vec, start = [], None, 0
    while start < n:
        take = min(n - start, sizes[-1])
        b = min(s for s in sizes if s >= take)
        chunk = {k: np.concatenate([v[start:start + take], np.zeros((b - take,) + v.shape[1:], v.dtype)])
                 for k, v in rows.items()}
        (y, v), _ = exps[b].call(params, {}, chunk)
        ys.append(np.asarray(y)[:take])
        vec = np.asarray(v)
        start += take
    return np.concatenate(ys), vec


def test_buckets_any_batch_size_equals_exact_jax():
    """Every n in 1..40, served by the exported sizes 1, 4, 16 with zero padding, equals JAX
    jitted at exactly n (golden exact/<n>/...)."""
    g = golden("buckets")
    params = variables("buckets")["params"]
    exps = {e["batch_size"]: exported("buckets", e["file"]) for e in method("buckets")["inference"]}
    rows = {"a": g["rows/a"], "b": g["rows/b"]}
    assert rows["a"].shape == (40, 5) and rows["b"].shape == (40, 3)
    module = models.Buckets()
    apply = jax.jit(module.apply)
    for n in range(1, 41):
        y, vec = run_padded(exps, params, rows, n)
        np.testing.assert_allclose(y, g[f"exact/{n}/0"], rtol=1e-5, atol=1e-6, err_msg=str(n))
        np.testing.assert_allclose(vec, g[f"exact/{n}/1"], rtol=1e-6, err_msg=str(n))
        if n in (1, 7, 40):  # the golden is JAX at exactly n
            ry, rv = apply({"params": params}, {k: v[:n] for k, v in rows.items()})
            np.testing.assert_allclose(g[f"exact/{n}/0"], ry, rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(g[f"exact/{n}/1"], rv, rtol=1e-6)


def test_bn_batch_stats_is_not_paddable():
    b = method("bn_batch_stats")["batching"]
    assert b["paddable"] is False and b["pad_value"] == 0
    assert "mixes rows across the batch" in b["reason"] and "outputs" in b["reason"]
    assert (b["stateful"], b["batched_state"]) == (True, [])
    # and it is true: padding changes the real rows in plain JAX
    module = models.BatchStatsBN()
    v = variables("bn_batch_stats")
    x = golden("bn_batch_stats")["inputs/inputs"]
    f = jax.jit(lambda v, x: module.apply(v, x, mutable=["batch_stats"])[0])
    padded = np.concatenate([x, np.zeros((4, x.shape[1]), x.dtype)])
    assert np.max(np.abs(np.asarray(f(v, padded))[:4] - np.asarray(f(v, x)))) > 0.1


def test_paddable_and_stateless_examples():
    for name in ("cnn", "wrapper", "dense_bn_dropout", "mixed", "mlp", "multi_platform", "actnorm",
                 "pretrained_mlp", "lstm", "linalg", "digits_train", "lstm_train"):
        assert method(name)["batching"] == {"paddable": True, "pad_value": 0, "stateful": False,
                                            "batched_state": []}, name


CACHE = [f"cache/layer_{i}/MultiHeadDotProductAttention_0/cached_{kv}" for i in (0, 1) for kv in ("key", "value")]


def test_decoder_batching_marks():
    b4 = method("decoder_b4")["batching"]
    assert b4 == {"paddable": True, "pad_value": 0, "stateful": True, "batched_state": CACHE}
    b1 = method("decoder")["batching"]
    assert b1["paddable"] is False and "batch axis of size 1" in b1["reason"]
    assert (b1["stateful"], b1["batched_state"]) == (True, CACHE)
    assert [e["batch_size"] for e in method("decoder_b4")["inference"]] == [4]
    assert manifest("decoder_b4")["init"]["inputs"] == [{"name": "inputs", "dtype": "int32", "shape": [4, 16]}]
    for v in manifest("decoder_b4")["variables"]:
        if v["name"] in CACHE:
            assert v["shape"][0] == 4


def greedy_exported(exp, params, state, prompts, steps):
    """Greedy decode with the exported inference computation at its batch B, for n <= B
    prompts (rows n..B-1 padded with token 0, their outputs dropped)."""
    n, p = prompts.shape
    b = exp.in_avals[-1].shape[0]
    pad = lambda col: np.concatenate([col, np.zeros((b - n, 1), np.int32)])
    logits = None
    for t in range(p):
        logits, state = exp.call(params, state, pad(prompts[:, t:t + 1]))
    out = []
    for _ in range(steps):
        tok = np.argmax(np.asarray(logits)[:n, -1], axis=-1).astype(np.int32)
        out.append(tok)
        logits, state = exp.call(params, state, pad(tok[:, None]))
    return np.stack(out, axis=1)


def test_decoder_b4_padded_greedy_equals_jax_at_exact_batch():
    g = golden("decoder_b4")
    v = variables("decoder_b4")
    exp = exported("decoder_b4", method("decoder_b4")["inference"][0]["file"])
    params, state = v["params"], {c: x for c, x in v.items() if c != "params"}
    for n in (3, 4):
        prompts, tokens = g[f"greedy/{n}/prompt"], g[f"greedy/{n}/tokens"]
        assert prompts.shape == (n, 4) and tokens.shape == (n, 8)
        np.testing.assert_array_equal(greedy_exported(exp, params, state, prompts, 8), tokens)
    # rows do not depend on the batch: the first 3 sequences agree between n=3 and n=4
    np.testing.assert_array_equal(g["greedy/3/tokens"], g["greedy/4/tokens"][:3])
    assert len(set(g["greedy/4/tokens"].ravel().tolist())) > 2
    # the golden at n = 3 was decoded with caches made at batch 3
    shapes = jax.eval_shape(lambda x: models.TinyDecoder().init({"params": K0, "dropout": K0}, x, training=True),
                            jax.ShapeDtypeStruct((3, 16), jnp.int32))
    assert shapes["cache"]["layer_0"]["MultiHeadDotProductAttention_0"]["cached_key"].shape[0] == 3


class _RowMean(nn.Module):
    @nn.compact
    def __call__(self, inputs):
        return nn.Dense(3)(inputs - inputs.mean(axis=0))


class _Total(nn.Module):
    @nn.compact
    def __call__(self, inputs):
        y = nn.Dense(3)(inputs)
        return y, y.sum()  # the second output has no batch axis but depends on every row


def _check(module, x, sizes=(2, 4)):
    v = module.init(jax.random.key(0), x)
    f = jax.jit(lambda p, s, x: (module.apply({"params": p}, x), s))
    out = {b: jax.eval_shape(module.apply, v, batching.with_batch(x, b)) for b in (*sizes, max(sizes) + 1)}
    return batching.padding_check(f, v["params"], {}, x, sizes=list(sizes),
                                  batched_outputs=batching.batched_names(out, "outputs"),
                                  batched_state=[], stateful=False)


def test_padding_check_finds_row_mixing():
    x = np.random.default_rng(0).standard_normal((2, 5)).astype(np.float32)
    assert _check(models.TinyDense(), x[:, :3])["paddable"] is True
    r = _check(_RowMean(), x)
    assert r["paddable"] is False and "rows 0..1 of output `outputs`" in r["reason"]
    assert "padded to 4 with zero rows" in r["reason"]
    r = _check(_Total(), x)
    assert r["paddable"] is False and "output `1`" in r["reason"]


def test_state_with_batch_axis_needs_the_init_batch(tmp_path):
    with pytest.raises(ValueError, match=r"cache/.*init batch 1.*batch sizes \[4\]"):
        ef.export_flax(models.TinyDecoder(), np.zeros((1, 1), np.int32), str(tmp_path / "d"),
                       init_inputs=np.zeros((1, 16), np.int32), batch_sizes=[1, 4])
    assert not (tmp_path / "d").exists()
