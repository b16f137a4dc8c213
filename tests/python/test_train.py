"""Tests of flaxlayer_export.export_train_step, the training bundles hlo/digits_train and
hlo/lstm_train and the digits data (hlo/digits, flaxlayer_export.examples.digits).

Run: .venv/bin/python -m pytest tests/python -q

The oracle is an optax loop written here from docs/training.md (its own loss, its own
batch order), independent of the exporter's step functions.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import numpy as np
import pytest

import jax
import jax.numpy as jnp
import flax
import flax.linen as nn
import optax
from flax.core import DenyList
from jax import export as jax_export

import flaxlayer_export as ef
from flaxlayer_export import batch_order
from flaxlayer_export import train as et
from flaxlayer_export.examples import digits as make_digits
from flaxlayer_export.examples import models
from flaxlayer_export.examples import registry as ee

from bundlecmp import assert_cross_cpu, drift, tree_bytes  # tests/python

REPO = Path(__file__).resolve().parents[2]
HLO = REPO / "hlo"

NAME = "digits_train"
BUNDLE = HLO / NAME
KEY_IMPL = "threefry2x32"
M64 = (1 << 64) - 1


# ---------------------------------------------------------------------------
# the documented batch order, written again from docs/training.md
# ---------------------------------------------------------------------------

def documented_permutation(seed, epoch, n):
    state = (seed ^ ((epoch + 1) * 0x9E3779B97F4A7C15)) & M64

    def nxt():
        nonlocal state
        state = (state + 0x9E3779B97F4A7C15) & M64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        return z ^ (z >> 31)

    perm = list(range(n))
    for i in range(n - 1, 0, -1):
        j = nxt() % (i + 1)
        perm[i], perm[j] = perm[j], perm[i]
    return perm


@pytest.mark.parametrize("seed,epoch,n", [(0, 0, 1437), (0, 1, 1437), (42, 5, 100), (M64, 3, 33),
                                          (7, 0, 1), (7, 2, 2), (123, 0, 0), (2**63, 2**40, 50)])
def test_batch_order_is_the_documented_one(seed, epoch, n):
    assert et.epoch_permutation(seed, epoch, n).tolist() == documented_permutation(seed, epoch, n)


def test_batch_order_golden_and_batches():
    g = golden()
    cases = [k for k in g if k.startswith("batch_order/")]
    assert len(cases) == len(ee.BATCH_ORDER_CASES)
    for k in cases:
        s, e, n = (int(v) for v in k.split("/")[1:])
        assert g[k].dtype == np.int64
        assert g[k].tolist() == documented_permutation(s, e, n)
    b = et.epoch_batches(0, 0, 10, 4)
    assert len(b) == 2 and np.concatenate(b).tolist() == documented_permutation(0, 0, 10)[:8]
    # splitmix64 from state 0 (Vigna's reference outputs)
    r = batch_order.SplitMix64(0)
    assert (r.next(), r.next()) == (0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4)


# ---------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def data():
    d, meta = ef.read_safetensors(str(HLO / "digits" / "data.safetensors"))
    return d


@functools.lru_cache(maxsize=None)
def golden():
    return ef.read_safetensors(str(BUNDLE / "golden.safetensors"))[0]


@functools.lru_cache(maxsize=None)
def manifest():
    return json.loads((BUNDLE / "manifest.json").read_text())


def exported(fname):
    return jax_export.deserialize(bytearray((BUNDLE / fname).read_bytes()))


def test_digits_data():
    d = data()
    assert {k: (v.dtype.name, v.shape) for k, v in d.items()} == {
        "x_train": ("float32", (1437, 64)), "y_train": ("int32", (1437,)),
        "x_test": ("float32", (360, 64)), "y_test": ("int32", (360,))}
    assert 0.0 <= d["x_train"].min() and d["x_train"].max() <= 1.0
    assert sorted(set(d["y_test"].tolist())) == list(range(10))
    fresh = make_digits.load_digits_split()
    for k in d:
        np.testing.assert_array_equal(d[k], fresh[k])


# ---------------------------------------------------------------------------
# manifest
# ---------------------------------------------------------------------------

def variables():
    flat, _ = ef.read_safetensors(str(BUNDLE / "variables.safetensors"))
    tree: dict = {}
    for name, x in flat.items():
        *path, last = name.split("/")
        d = tree
        for p in path:
            d = d.setdefault(p, {})
        d[last] = x
    return tree


def test_train_manifest():
    m = manifest()
    t = m["train"]
    assert m["version"] == 1
    assert (t["method"], t["loss"], t["optimizer"], t["batch_size"]) == (
        "__call__", "softmax_cross_entropy", "adam(learning_rate=0.001)", 32)
    assert t["batch"] == [{"name": "x", "dtype": "float32", "shape": [32, 64]},
                          {"name": "y", "dtype": "int32", "shape": [32]}]
    assert (t["metrics"], t["eval_metrics"]) == (["accuracy", "loss"], ["correct", "count", "loss_sum"])
    v = variables()
    opt = optax.adam(1e-3).init(v["params"])
    want = [{"name": "opt_state/" + n, "dtype": x.dtype.name, "shape": list(x.shape)}
            for n, x in ef.named_leaves(dict(ef.named_leaves(opt, "0")), "0")]
    assert t["opt_state"] == want
    assert t["opt_state"][0]["name"] == "opt_state/0/count"
    files = {m["init"]["file"]} | {e["file"] for mode in ("inference", "training")
                                   for e in m["methods"]["__call__"][mode]}
    files |= {t[c]["file"] for c in ("init_opt_state", "train_step", "eval_step")}
    assert files == {p.name for p in BUNDLE.glob("*.jaxexport")}


def _roles(entry):
    return [(s["role"], s.get("name")) for s in entry]


def test_train_roles_match_exported():
    m, t = manifest(), manifest()["train"]
    params = [("param", v["name"]) for v in m["variables"] if v["collection"] == "params"]
    state = [("state", v["name"]) for v in m["variables"] if v["collection"] != "params"]
    opt = [("opt_state", o["name"]) for o in t["opt_state"]]
    key = [("key", None)]
    metrics = [("metric", n) for n in t["metrics"]]
    assert _roles(t["init_opt_state"]["args"]) == params
    assert _roles(t["init_opt_state"]["results"]) == opt
    assert _roles(t["train_step"]["args"]) == params + state + opt + key + [("input", "x"), ("input", "y")]
    assert _roles(t["train_step"]["results"]) == params + state + opt + key + metrics
    assert _roles(t["eval_step"]["args"]) == params + state + [("input", "w"), ("input", "x"), ("input", "y")]
    assert _roles(t["eval_step"]["results"]) == [("metric", n) for n in t["eval_metrics"]]
    for c in ("init_opt_state", "train_step", "eval_step"):
        e = t[c]
        exp = exported(e["file"])
        assert exp.fun_name == c
        assert len(exp.in_avals) == len(e["args"]) and len(exp.out_avals) == len(e["results"])
        for s, a in list(zip(e["args"], exp.in_avals)) + list(zip(e["results"], exp.out_avals)):
            assert (s["dtype"], s["shape"]) == (np.dtype(a.dtype).name, list(a.shape)), (c, s)
        text = exp.mlir_module()
        assert 'loc("' not in text and "custom_call" not in text
    # train_step donates params, state, opt_state and key: each aliases its result
    text = exported(t["train_step"]["file"]).mlir_module()
    main = text[text.index("func.func public @main"):]
    main = main[:main.index("->")]
    n_donated = len(params) + len(state) + len(opt) + 1
    for i in range(n_donated):
        assert re.search(rf"%arg{i}: tensor<[^>]*> {{tf.aliasing_output = {i} : i32}}", main), i
    assert "aliasing_output" not in main.split(f"%arg{n_donated}:")[1]


# ---------------------------------------------------------------------------
# numerics: exported train_step vs an independent optax loop
# ---------------------------------------------------------------------------

def oracle_loop(params, state, steps):
    """Plain optax + module.apply, batches in the documented order (seed 0)."""
    module = ee.TRAIN_EXAMPLES[NAME].make_module()
    opt = optax.adam(1e-3)
    opt_state = opt.init(params)
    K = jax.random.key(0, impl=KEY_IMPL)

    @jax.jit
    def step(params, state, opt_state, k, x, y):
        def loss_fn(p):
            logits, mut = module.apply({"params": p, **state}, x, training=True, rngs={"dropout": k},
                                       mutable=DenyList(["params"]))
            logp = jax.nn.log_softmax(logits)
            loss = -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))
            return loss, (mut, jnp.mean(jnp.argmax(logits, -1) == y))
        (loss, (mut, acc)), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
        upd, opt_state = opt.update(g, opt_state, params)
        return optax.apply_updates(params, upd), flax.core.unfreeze(mut), opt_state, loss, acc

    x, y = data()["x_train"], data()["y_train"]
    n = len(y)
    perm = documented_permutation(0, 0, n)
    losses, accs = [], []
    for i in range(steps):
        K, k = jax.random.split(K)
        idx = perm[i * 32:(i + 1) * 32]
        params, state, opt_state, loss, acc = step(params, state, opt_state, k, x[idx], y[idx])
        losses.append(float(loss))
        accs.append(float(acc))
    return params, state, opt_state, np.asarray(losses, np.float32), np.asarray(accs, np.float32), K


def test_exported_train_step_reproduces_jax():
    t = manifest()["train"]
    v = variables()
    params, state = v["params"], {c: x for c, x in v.items() if c != "params"}
    init_opt = exported(t["init_opt_state"]["file"])
    step = exported(t["train_step"]["file"])
    opt_state = init_opt.call(params)
    key = np.asarray(jax.random.key_data(jax.random.key(0, impl=KEY_IMPL)))
    x, y = data()["x_train"], data()["y_train"]
    losses, accs = [], []
    p, s = params, state
    for i in range(et.GOLDEN_STEPS):
        idx = et.epoch_batches(0, 0, len(y), 32)[i]
        p, s, opt_state, key, m = step.call(p, s, opt_state, key, {"x": x[idx], "y": y[idx]})
        losses.append(np.float32(m["loss"]))
        accs.append(np.float32(m["accuracy"]))
    g = golden()
    # exported == golden (the exporter's jitted Python step): bit for bit on the CPU that
    # exported it, within ulps on another (bundlecmp's cross-CPU tolerance)
    assert_cross_cpu(np.asarray(losses), g["train/loss"], "loss")
    np.testing.assert_array_equal(np.asarray(accs), g["train/accuracy"])
    for n, a in ef.named_leaves({"params": p, **s}, "variables"):
        assert_cross_cpu(np.asarray(a), g[f"train/after/{n}"], n)
    np.testing.assert_array_equal(np.asarray(key), g["train/key_after"])
    for n, a in opt_state.items():
        assert_cross_cpu(np.asarray(a), g[f"train/after/opt_state/{n}"], n)
    # and an independent optax loop agrees
    op, os_, oopt, olosses, oaccs, K = oracle_loop(params, state, et.GOLDEN_STEPS)
    np.testing.assert_allclose(olosses, g["train/loss"], rtol=1e-5)
    np.testing.assert_array_equal(oaccs, g["train/accuracy"])
    np.testing.assert_array_equal(np.asarray(jax.random.key_data(K)), g["train/key_after"])
    for n, a in ef.named_leaves({"params": op, **os_}, "variables"):
        np.testing.assert_allclose(np.asarray(a), g[f"train/after/{n}"], rtol=1e-5, atol=1e-6, err_msg=n)
    flat_opt = dict(ef.named_leaves(oopt, "0"))
    for n, a in opt_state.items():
        np.testing.assert_allclose(np.asarray(a), np.asarray(flat_opt[n]), rtol=1e-5, atol=1e-7, err_msg=n)


def test_eval_step_pads_exactly():
    t = manifest()["train"]
    ev = exported(t["eval_step"]["file"])
    v = variables()
    params, state = v["params"], {c: x for c, x in v.items() if c != "params"}
    module = ee.TRAIN_EXAMPLES[NAME].make_module()
    xt, yt = data()["x_test"], data()["y_test"]
    logits = module.apply(v, xt, training=False)
    ce = -np.take_along_axis(np.asarray(jax.nn.log_softmax(logits)), yt[:, None], axis=1)[:, 0]
    want_loss = float(np.mean(ce.astype(np.float64)))
    want_acc = float(np.mean(np.argmax(np.asarray(logits), -1) == yt))
    sums = {"loss_sum": 0.0, "correct": 0.0, "count": 0.0}
    for start in range(0, len(yt), 32):
        xb, yb = xt[start:start + 32], yt[start:start + 32]
        real = len(yb)
        w = np.zeros(32, np.float32)
        w[:real] = 1
        # pad with garbage, not zeros: weight 0 must cancel anything
        xb = np.concatenate([xb, np.full((32 - real, 64), 7.0, np.float32)])
        yb = np.concatenate([yb, np.full(32 - real, 3, np.int32)])
        m = ev.call(params, state, {"w": w, "x": xb, "y": yb})
        for k in sums:
            sums[k] += float(m[k])
    assert sums["count"] == 360
    assert abs(sums["loss_sum"] / sums["count"] - want_loss) < 1e-5
    assert sums["correct"] / sums["count"] == want_acc
    g = golden()
    assert float(g["train/eval/count"]) == 360.0


def test_flax_layer_part_matches_flax():
    """The bundle is also a normal FlaxLayer bundle at batch 32."""
    m = manifest()
    module = ee.TRAIN_EXAMPLES[NAME].make_module()
    x = data()["x_train"][:32]
    assert m["methods"]["__call__"]["takes_training"] is True
    assert [e["batch_size"] for e in m["methods"]["__call__"]["inference"]] == [32]
    init = exported(m["init"]["file"])
    got = init.call(np.asarray(jax.random.key_data(jax.random.key(0, impl=KEY_IMPL))), x)
    for n, a in ef.named_leaves(got, "variables"):
        np.testing.assert_array_equal(np.asarray(a), ef.read_safetensors(
            str(BUNDLE / "variables.safetensors"))[0][n], err_msg=n)
    v = variables()
    inf = exported(m["methods"]["__call__"]["inference"][0]["file"])
    out, _ = inf.call(v["params"], {"batch_stats": v["batch_stats"]}, x)
    np.testing.assert_allclose(out, module.apply(v, x, training=False), rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------
# determinism, other losses, errors
# ---------------------------------------------------------------------------

def test_reexport_matches_the_committed_bundles(tmp_path):
    names = ("digits", NAME, "lstm_train")
    ee.main(["--out-root", str(tmp_path / "a"), *names])
    fresh = tree_bytes(tmp_path / "a")
    committed = {f"{n}/{k}": v for n in names for k, v in tree_bytes(HLO / n).items()}
    bad = drift(fresh, committed)
    assert not bad, f"committed hlo/ differs from a fresh export: {bad} (run scripts/export_examples.py)"


class Regressor(nn.Module):
    @nn.compact
    def __call__(self, inputs):
        return nn.Dense(2)(nn.tanh(nn.Dense(8)(inputs)))


def test_mse_stateless_export(tmp_path):
    """mse, no state, no RNG streams, sgd: exported step == plain optax step."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 3)).astype(np.float32)
    y = rng.standard_normal((8, 2)).astype(np.float32)
    module = Regressor()
    m = et.export_train_step(module, {"x": x, "y": y}, str(tmp_path), loss="mse",
                             optimizer=optax.sgd(0.1, momentum=0.9), optimizer_name="sgd(0.1, momentum=0.9)",
                             rng_streams=())
    t = m["train"]
    assert (t["loss"], t["optimizer"], t["metrics"], t["eval_metrics"]) == (
        "mse", "sgd(0.1, momentum=0.9)", ["loss"], ["count", "loss_sum"])
    assert [o["name"] for o in t["opt_state"]][:1] == ["opt_state/0/trace/Dense_0/bias"]
    ld = lambda f: jax_export.deserialize(bytearray((tmp_path / f).read_bytes()))
    v = {k: x for k, x in ef.read_safetensors(str(tmp_path / "variables.safetensors"))[0].items()}
    params = variables_tree(v)["params"]
    opt_state = ld(t["init_opt_state"]["file"]).call(params)
    key = np.zeros(2, np.uint32)
    step = ld(t["train_step"]["file"])
    opt = optax.sgd(0.1, momentum=0.9)
    o_state = opt.init(params)
    p = params
    for _ in range(3):
        p_new, s, opt_state, key, mets = step.call(p, {}, opt_state, key, {"x": x, "y": y})
        loss, g = jax.value_and_grad(lambda q: jnp.mean((module.apply({"params": q}, x) - y) ** 2))(p)
        upd, o_state = opt.update(g, o_state, p)
        want = optax.apply_updates(p, upd)
        assert abs(float(mets["loss"]) - float(loss)) <= 1e-6 * max(1.0, abs(float(loss)))
        for (n, a), (_, b) in zip(ef.named_leaves(p_new, "p"), ef.named_leaves(want, "p")):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=n)
        p = p_new
    assert s == {}


def variables_tree(flat):
    tree: dict = {}
    for name, x in flat.items():
        *path, last = name.split("/")
        d = tree
        for q in path:
            d = d.setdefault(q, {})
        d[last] = x
    return tree


def test_bad_batches_are_refused(tmp_path):
    x = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match="int32 labels"):
        et.export_train_step(Regressor(), {"x": x, "y": np.zeros(4, np.float32)}, str(tmp_path))
    with pytest.raises(ValueError, match="int32 labels"):
        et.export_train_step(Regressor(), {"x": x, "y": np.zeros((4, 1), np.int32)}, str(tmp_path))
    with pytest.raises(ValueError, match="float targets"):
        et.export_train_step(Regressor(), {"x": x, "y": np.zeros((4, 2), np.int32)}, str(tmp_path), loss="mse")
    with pytest.raises(ValueError, match="loss must be one of"):
        et.export_train_step(Regressor(), {"x": x, "y": np.zeros(4, np.int32)}, str(tmp_path), loss="hinge")
    with pytest.raises(ValueError, match="same leading"):
        et.export_train_step(Regressor(), {"x": x, "y": np.zeros(5, np.int32)}, str(tmp_path))
    with pytest.raises(ValueError, match='"x"'):
        et.export_train_step(Regressor(), {"inputs": x, "y": np.zeros(4, np.int32)}, str(tmp_path))


def test_int64_labels_are_canonicalised(tmp_path):
    """numpy's default int64 labels become int32, as jax.jit would pass them."""
    x = np.random.default_rng(0).standard_normal((4, 3))
    m = et.export_train_step(Regressor(), {"x": x, "y": np.array([0, 1, 1, 0])}, str(tmp_path / "b"),
                             rng_streams=())
    assert m["train"]["batch"] == [{"name": "x", "dtype": "float32", "shape": [4, 3]},
                                   {"name": "y", "dtype": "int32", "shape": [4]}]


# ---------------------------------------------------------------------------
# hlo/lstm_train: an LSTM + GRU classifier (LAPACK custom calls in init)
# ---------------------------------------------------------------------------

LSTM = HLO / "lstm_train"


def lstm_file(f):
    return jax_export.deserialize(bytearray((LSTM / f).read_bytes()))


def test_lstm_train_manifest_and_init():
    m = json.loads((LSTM / "manifest.json").read_text())
    t = m["train"]
    assert (t["loss"], t["optimizer"], t["batch_size"], t["metrics"]) == (
        "softmax_cross_entropy", "adam(learning_rate=0.01)", 8, ["accuracy", "loss"])
    assert t["batch"] == [{"name": "x", "dtype": "float32", "shape": [8, 6, 3]},
                          {"name": "y", "dtype": "int32", "shape": [8]}]
    assert m["init"]["custom_call_targets"] == ["lapack_sgeqrf_ffi", "lapack_sorgqr_ffi"]
    data = ee.sequence_data()
    got = lstm_file(m["init"]["file"]).call(np.asarray(jax.random.key_data(jax.random.key(0))),
                                            data["x_train"][:8])
    ref = flax.core.unfreeze(models.LSTMClassifier().init(
        {"params": jax.random.key(0), "dropout": jax.random.key(0)}, data["x_train"][:8], training=True))
    flat = ef.read_safetensors(str(LSTM / "variables.safetensors"))[0]
    # the exported init equals module.init here bit for bit; the committed variables came from
    # the exporting machine's LAPACK (QR), equal within ulps on another CPU
    ref_named = dict(ef.named_leaves(ref, "variables"))
    for n, a in ef.named_leaves(got, "variables"):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(ref_named[n]), err_msg=n)
    assert sorted(ref_named) == sorted(flat)
    for n, a in ref_named.items():
        assert_cross_cpu(np.asarray(a), flat[n], n)
    # the recurrent kernels are orthogonal (what the QR custom calls are for)
    hh = ref["params"]["OptimizedLSTMCell_0"]["hi"]["kernel"]
    np.testing.assert_allclose(hh.T @ hh, np.eye(hh.shape[1]), atol=1e-5)


def test_lstm_two_train_steps_equal_jax():
    """The exported train_step twice from the bundled variables == golden (bit for bit on the
    exporting CPU, within ulps on another) and == an independent optax loop within 1e-5."""
    m = json.loads((LSTM / "manifest.json").read_text())
    t = m["train"]
    g = ef.read_safetensors(str(LSTM / "golden.safetensors"))[0]
    v = variables_tree(ef.read_safetensors(str(LSTM / "variables.safetensors"))[0])
    params = v["params"]
    data = ee.sequence_data()
    x, y = data["x_train"], data["y_train"]
    step = lstm_file(t["train_step"]["file"])
    opt_state = lstm_file(t["init_opt_state"]["file"]).call(params)
    key = np.asarray(jax.random.key_data(jax.random.key(0)))
    perm = documented_permutation(0, 0, len(y))
    p, losses = params, []
    for i in range(2):
        idx = perm[i * 8:(i + 1) * 8]
        p, _, opt_state, key, mets = step.call(p, {}, opt_state, key, {"x": x[idx], "y": y[idx]})
        losses.append(np.float32(mets["loss"]))
    assert g["train/loss"].shape == (2,)
    # bit for bit on the exporting CPU, within ulps on another
    assert_cross_cpu(np.asarray(losses), g["train/loss"], "loss")
    for n, a in ef.named_leaves({"params": p}, "variables"):
        assert_cross_cpu(np.asarray(a), g[f"train/after/{n}"], n)
    for n, a in opt_state.items():
        assert_cross_cpu(np.asarray(a), g[f"train/after/opt_state/{n}"], n)
    np.testing.assert_array_equal(np.asarray(key), g["train/key_after"])

    # independent oracle: optax adam(0.01) on module.apply, dropout key from the RNG contract
    module = models.LSTMClassifier()
    opt = optax.adam(0.01)
    o_state = opt.init(params)
    K = jax.random.key(0, impl=KEY_IMPL)
    q = params
    for i in range(2):
        K, k = jax.random.split(K)
        idx = perm[i * 8:(i + 1) * 8]

        def loss_fn(q):
            logits = module.apply({"params": q}, x[idx], training=True, rngs={"dropout": k})
            return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[idx][:, None], axis=1))
        loss, grads = jax.value_and_grad(loss_fn)(q)
        np.testing.assert_allclose(float(loss), g["train/loss"][i], rtol=1e-5)
        upd, o_state = opt.update(grads, o_state, q)
        q = optax.apply_updates(q, upd)
    for n, a in ef.named_leaves({"params": q}, "variables"):
        np.testing.assert_allclose(np.asarray(a), g[f"train/after/{n}"], rtol=1e-5, atol=1e-5, err_msg=n)
    changed = [n for n, a in ef.named_leaves({"params": q}, "variables")
               if not np.array_equal(np.asarray(a), np.asarray(dict(ef.named_leaves({"params": params}, "variables"))[n]))]
    assert len(changed) == len(jax.tree_util.tree_leaves(params))
