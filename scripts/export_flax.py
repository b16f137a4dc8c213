#!/usr/bin/env python3
"""Export a Flax linen module to a flaxlayer bundle (see docs/bundle-format.md).

Python API::

    from export_flax import export_flax
    export_flax(module, sample_inputs, "hlo/my_model")

CLI::

    python scripts/export_flax.py models.py:MyModule \\
        --input inputs=1,28,28,1:float32 --out hlo/my_model

See docs/exporter.md for the full description (RNG contract, CLI input rules).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import inspect
import json
import os
import re
import struct
import sys
from typing import Any, Callable, Sequence

import numpy as np
import ml_dtypes

import jax
import jax.numpy as jnp
from jax import export as jax_export

import flax
import flax.linen as nn
from flax.core import DenyList

# Private JAX pieces used to strip MLIR locations and re-serialize the module
# as a StableHLO portable artifact (the pinned jax version is in
# scripts/requirements.txt).
from jax._src.interpreters import mlir as _jax_mlir
from jax._src.lib import _jax as _jaxlib
from jax._src.lib.mlir import ir as _ir
from jax._src.lib.mlir import passmanager as _passmanager
from jax._src import xla_bridge as _xb

FORMAT = "flaxlayer.bundle"
FORMAT_VERSION = 1
KEY_IMPL = "threefry2x32"
BUNDLE_FILES = ("manifest.json", "variables.safetensors", "golden.safetensors")

__all__ = [
    "export_flax",
    "KEY_IMPL",
    "leaf_name",
    "named_leaves",
    "write_safetensors",
    "read_safetensors",
    "method_name_of",
    "takes_training",
    "resolve_method",
    "make_cli_inputs",
    "main",
]


# --------------------------------------------------------------------------
# PyTree names
# --------------------------------------------------------------------------

def _key_str(k) -> str:
    if isinstance(k, jax.tree_util.DictKey):
        return str(k.key)
    if isinstance(k, jax.tree_util.SequenceKey):
        return str(k.idx)
    if isinstance(k, jax.tree_util.GetAttrKey):
        return str(k.name)
    if isinstance(k, jax.tree_util.FlattenedIndexKey):
        return str(k.key)
    raise TypeError(f"unsupported pytree key {k!r}")


def leaf_name(path, bare: str) -> str:
    """Name of a leaf: path components joined by '/'; `bare` for a bare array."""
    if len(path) == 0:
        return bare
    return "/".join(_key_str(k) for k in path)


def named_leaves(tree, bare: str) -> list[tuple[str, Any]]:
    """[(name, leaf)] in jax.tree_util flatten order."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    out = [(leaf_name(p, bare), x) for p, x in leaves]
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate leaf names in pytree: {names}")
    return out


def _dtype_name(dt) -> str:
    return np.dtype(dt).name


def _spec(name: str, x, **extra) -> dict:
    d = dict(extra)
    if name is not None:
        d["name"] = name
    d["dtype"] = _dtype_name(x.dtype)
    d["shape"] = [int(s) for s in x.shape]
    return d


# --------------------------------------------------------------------------
# safetensors (own writer: deterministic bytes, bfloat16 support)
# --------------------------------------------------------------------------

_ST_DTYPES = {
    np.dtype(np.float64): "F64",
    np.dtype(np.float32): "F32",
    np.dtype(np.float16): "F16",
    np.dtype(ml_dtypes.bfloat16): "BF16",
    np.dtype(np.int64): "I64",
    np.dtype(np.int32): "I32",
    np.dtype(np.int16): "I16",
    np.dtype(np.int8): "I8",
    np.dtype(np.uint64): "U64",
    np.dtype(np.uint32): "U32",
    np.dtype(np.uint16): "U16",
    np.dtype(np.uint8): "U8",
    np.dtype(np.bool_): "BOOL",
}
_ST_DTYPES_INV = {v: k for k, v in _ST_DTYPES.items()}


def write_safetensors(path: str, tensors: dict[str, Any], metadata: dict[str, str] | None = None):
    """Write a safetensors file: tensors in sorted-name order, JSON header with
    sorted keys, padded with spaces to a multiple of 8 bytes."""
    header: dict[str, Any] = {}
    chunks = []
    offset = 0
    for name in sorted(tensors):
        a = np.asarray(tensors[name])
        dt = np.dtype(a.dtype)
        if dt not in _ST_DTYPES:
            raise TypeError(f"{name}: unsupported dtype {dt}")
        data = np.ascontiguousarray(a).astype(dt.newbyteorder("<"), copy=False).tobytes()
        header[name] = {
            "dtype": _ST_DTYPES[dt],
            "shape": [int(s) for s in a.shape],
            "data_offsets": [offset, offset + len(data)],
        }
        chunks.append(data)
        offset += len(data)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    hbytes = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    hbytes += b" " * ((-len(hbytes)) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hbytes)))
        f.write(hbytes)
        for c in chunks:
            f.write(c)


def read_safetensors(path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read a safetensors file into numpy arrays (bfloat16 via ml_dtypes)."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", {}) or {}
    base = 8 + n
    out = {}
    for name, info in header.items():
        dt = _ST_DTYPES_INV[info["dtype"]]
        b, e = info["data_offsets"]
        arr = np.frombuffer(raw[base + b:base + e], dtype=dt.newbyteorder("<"))
        out[name] = arr.astype(dt).reshape(info["shape"])
    return out, meta


# --------------------------------------------------------------------------
# Method handling (Keras FlaxLayer conventions)
# --------------------------------------------------------------------------

def resolve_method(module: nn.Module, method):
    """The callable whose signature decides `takes_training`."""
    if method is None:
        return type(module).__call__
    if isinstance(method, str):
        fn = getattr(type(module), method, None)
        if fn is None or not callable(fn):
            raise ValueError(f"{type(module).__name__} has no method {method!r}")
        return fn
    if callable(method):
        return method
    raise TypeError(f"method must be None, a str or a callable, got {method!r}")


def takes_training(module: nn.Module, method) -> bool:
    """Keras FlaxLayer passes `training` only if the method has such a parameter."""
    sig = inspect.signature(resolve_method(module, method))
    return "training" in sig.parameters


def method_name_of(method) -> str:
    if method is None:
        return "__call__"
    if isinstance(method, str):
        return method
    return getattr(method, "__name__", "method")


def _file_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


# --------------------------------------------------------------------------
# Location stripping
# --------------------------------------------------------------------------

def _artifact_target_version(serialized: bytes) -> str:
    """The StableHLO version string in the portable artifact's producer field."""
    m = re.match(rb"ML\xefR.StableHLO_v([0-9.]+)\x00", serialized, re.DOTALL)
    if not m:
        raise ValueError("mlir_module_serialized is not a StableHLO portable artifact")
    return m.group(1).decode()


def strip_locations(exp: jax_export.Exported) -> jax_export.Exported:
    """Return `exp` with all MLIR debug locations replaced by loc(unknown).

    The module is deserialized from its VHLO portable artifact, run through
    MLIR's `strip-debuginfo` pass and re-serialized as a portable artifact with
    the same StableHLO target version; the Exported is then
    `dataclasses.replace`d with the new bytes.
    """
    target = _artifact_target_version(exp.mlir_module_serialized)
    ctx = _jax_mlir.make_ir_context()
    with ctx, _ir.Location.unknown(ctx):
        module = _jaxlib.mlir.deserialize_portable_artifact(exp.mlir_module_serialized)
        pm = _passmanager.PassManager.parse("builtin.module(strip-debuginfo)")
        pm.run(module.operation)
        data = _jaxlib.mlir.serialize_portable_artifact(
            module, target, _xb.get_backend().serialize_with_sdy)
    assert _artifact_target_version(data) == target
    return dataclasses.replace(exp, mlir_module_serialized=data)


# --------------------------------------------------------------------------
# The exporter
# --------------------------------------------------------------------------

def _to_plain(tree):
    """FrozenDict -> dict, leaves -> numpy."""
    tree = flax.core.unfreeze(tree)
    return jax.tree_util.tree_map(np.asarray, tree)


def _with_batch(tree, b: int):
    def f(x):
        if x.ndim == 0:
            raise ValueError("batch_sizes needs every input to have a leading (batch) dimension")
        return jax.ShapeDtypeStruct((b,) + tuple(x.shape[1:]), x.dtype)
    return jax.tree_util.tree_map(f, tree)


def _sds(tree):
    return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def _avals_list(tree):
    return [(n, tuple(x.shape), np.dtype(x.dtype)) for n, x in named_leaves(tree, "tree")]


def _split_variables(variables: dict):
    params = variables.get("params", {})
    state = {c: v for c, v in variables.items() if c != "params"}
    return params, state


def _arg_specs(params, state, inputs, with_key: bool) -> list[dict]:
    specs = [_spec(n, x, role="param") for n, x in named_leaves({"params": params}, "params")]
    specs += [_spec(n, x, role="state") for n, x in named_leaves(state, "state")]
    if with_key:
        specs.append(_spec(None, jax.ShapeDtypeStruct((2,), jnp.uint32), role="key"))
    specs += [_spec(n, x, role="input") for n, x in named_leaves(inputs, "inputs")]
    return specs


def _result_specs(outputs, state, with_key: bool) -> list[dict]:
    specs = [_spec(n, x, role="output") for n, x in named_leaves(outputs, "outputs")]
    specs += [_spec(n, x, role="state") for n, x in named_leaves(state, "state")]
    if with_key:
        specs.append(_spec(None, jax.ShapeDtypeStruct((2,), jnp.uint32), role="key"))
    return specs


def _check_exported(exp, args, results):
    if len(exp.in_avals) != len(args) or len(exp.out_avals) != len(results):
        raise AssertionError(
            f"{exp.fun_name}: manifest has {len(args)} args / {len(results)} results, "
            f"Exported has {len(exp.in_avals)} / {len(exp.out_avals)}")
    for spec, aval in list(zip(args, exp.in_avals)) + list(zip(results, exp.out_avals)):
        if spec["shape"] != list(aval.shape) or spec["dtype"] != _dtype_name(aval.dtype):
            raise AssertionError(f"{exp.fun_name}: {spec} does not match aval {aval}")


def _export_one(fn, name: str, donate: tuple[int, ...], avals, platforms):
    fn.__name__ = name
    fn.__qualname__ = name
    jitted = jax.jit(fn, donate_argnums=donate)
    exp = jax_export.export(jitted, platforms=tuple(platforms))(*avals)
    return strip_locations(exp)


def export_flax(
    module: nn.Module,
    sample_inputs,
    out_dir: str,
    *,
    method=None,
    variables=None,
    seed: int = 0,
    rng_streams: Sequence[str] = ("dropout",),
    init_inputs=None,
    platforms: Sequence[str] = ("cpu",),
    batch_sizes: Sequence[int] | None = None,
    extra_golden: dict[str, Any] | Callable[[dict], dict] | None = None,
) -> dict:
    """Export `module` to a bundle directory `out_dir`; returns the manifest.

    Args:
      module: a flax.linen.Module instance.
      sample_inputs: an array or PyTree of arrays (tuple/list/dict); the
        exported shapes and the golden data use them.
      method: None (`__call__`), a method name, or a function
        `fn(module, inputs[, training])` (Keras FlaxLayer conventions).
      variables: variables to bundle instead of `module.init` under `seed`.
      seed: `K0 = jax.random.key(seed)` (threefry) for init and the layer key.
      rng_streams: RNG streams fed by the key (besides "params" at init).
      init_inputs: inputs for `init` when they differ from `sample_inputs`.
      platforms: lowering platforms; more than one adds JAX's platform-index
        argument to every computation.
      batch_sizes: export one inference/training computation per batch size
        (leading dim of every input replaced); default: the sample batch.
      extra_golden: extra tensors for golden.safetensors (e.g. decoder
        `greedy/...`), a dict or a function of the bundled variables returning
        one; names must not clash with the standard ones.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a flax.linen.Module, got {type(module)}")
    rng_streams = tuple(rng_streams)
    platforms = tuple(platforms)
    mname = method_name_of(method)
    training_arg = takes_training(module, method)
    apply_method = method  # flax accepts None, a name or a function

    sample_inputs = jax.tree_util.tree_map(np.asarray, sample_inputs)
    init_inputs = sample_inputs if init_inputs is None else jax.tree_util.tree_map(np.asarray, init_inputs)
    sample_leaves = jax.tree_util.tree_leaves(sample_inputs)
    if not sample_leaves:
        raise ValueError("sample_inputs has no arrays")
    sample_batch = int(sample_leaves[0].shape[0]) if sample_leaves[0].ndim else None
    if batch_sizes is None:
        if sample_batch is None:
            raise ValueError("sample inputs need a leading batch dimension")
        batch_sizes = [sample_batch]
    batch_sizes = sorted({int(b) for b in batch_sizes})
    if sample_batch not in batch_sizes:
        raise ValueError(f"batch_sizes {batch_sizes} must include the sample batch {sample_batch}")
    for x in sample_leaves:
        if x.ndim == 0 or x.shape[0] != sample_batch:
            raise ValueError("every sample input needs the same leading (batch) dimension")

    K0 = jax.random.key(seed, impl=KEY_IMPL)
    k0_data = np.asarray(jax.random.key_data(K0))
    train_kw = {"training": True} if training_arg else {}
    infer_kw = {"training": False} if training_arg else {}

    # ---- computations ------------------------------------------------------
    def init(key, inputs):
        k = jax.random.wrap_key_data(key, impl=KEY_IMPL)
        rngs = {"params": k, **{s: k for s in rng_streams}}
        v = module.init(rngs, inputs, method=apply_method, **train_kw)
        return flax.core.unfreeze(v)

    def _apply(params, state, inputs, rngs, kw):
        out, mutated = module.apply(
            {"params": params, **state}, inputs, method=apply_method, rngs=rngs,
            mutable=DenyList(["params"]), **kw)
        mutated = flax.core.unfreeze(mutated)
        extra = sorted(set(mutated) - set(state))
        if extra:
            raise ValueError(
                f"apply created collections {extra} that are not in the variables; "
                "only collections present after init can be state")
        new_state = {c: mutated.get(c, state[c]) for c in state}
        if jax.tree_util.tree_structure(new_state) != jax.tree_util.tree_structure(state):
            raise ValueError("apply changed the structure of the state collections")
        return out, new_state

    def inference(params, state, inputs):
        return _apply(params, state, inputs, None, infer_kw)

    def training(params, state, key, inputs):
        K = jax.random.wrap_key_data(key, impl=KEY_IMPL)
        K, k = jax.random.split(K)
        out, new_state = _apply(params, state, inputs, {s: k for s in rng_streams}, train_kw)
        return out, new_state, jax.random.key_data(K)

    # ---- variables ---------------------------------------------------------
    key_sds = jax.ShapeDtypeStruct((2,), jnp.uint32)
    init_exp = _export_one(init, "init", (), (key_sds, _sds(init_inputs)), platforms)
    init_shapes = jax.eval_shape(init, key_sds, _sds(init_inputs))
    if variables is None:
        variables = jax.jit(lambda k, x: module.init(
            {"params": k, **{s: k for s in rng_streams}}, x, method=apply_method, **train_kw)
        )(K0, init_inputs)
    variables = _to_plain(variables)
    if jax.tree_util.tree_structure(variables) != jax.tree_util.tree_structure(init_shapes):
        raise ValueError("given variables do not have the structure module.init produces")
    for (n, a), (_, b) in zip(named_leaves(variables, "variables"), named_leaves(init_shapes, "variables")):
        if a.shape != b.shape or a.dtype != b.dtype:
            raise ValueError(f"variable {n}: {a.dtype}{list(a.shape)} but init gives {b.dtype}{list(b.shape)}")
    params, state = _split_variables(variables)

    var_specs = []
    for n, x in named_leaves(variables, "variables"):
        coll = n.split("/", 1)[0]
        var_specs.append({"name": n, "collection": coll, "dtype": _dtype_name(x.dtype),
                          "shape": [int(s) for s in x.shape]})

    init_args = [_spec(None, key_sds, role="key")] + [
        _spec(n, x, role="input") for n, x in named_leaves(init_inputs, "inputs")]
    init_results = [
        _spec(n, x, role="param" if n.split("/", 1)[0] == "params" else "state")
        for n, x in named_leaves(init_shapes, "variables")]
    _check_exported(init_exp, init_args, init_results)

    files: dict[str, bytes] = {"init.jaxexport": bytes(init_exp.serialize())}
    stem = _file_stem(mname)
    inference_entries, training_entries = [], []
    p_sds, s_sds = _sds(params), _sds(state)
    for b in batch_sizes:
        x_sds = _with_batch(sample_inputs, b)
        for mode, fn, donate, avals in (
            ("inference", inference, (1,), (p_sds, s_sds, x_sds)),
            ("training", training, (1, 2), (p_sds, s_sds, key_sds, x_sds)),
        ):
            with_key = mode == "training"
            out_shapes = jax.eval_shape(fn, *avals)
            outputs, new_state = out_shapes[0], out_shapes[1]
            if _avals_list(new_state) != _avals_list(state):
                raise ValueError(f"{mode}: the new state's shapes/dtypes differ from the state's")
            exp = _export_one(fn, f"{stem}.{mode}", donate, avals, platforms)
            args = _arg_specs(params, state, x_sds, with_key)
            results = _result_specs(outputs, new_state, with_key)
            _check_exported(exp, args, results)
            fname = f"{stem}.{mode}.b{b}.jaxexport"
            files[fname] = bytes(exp.serialize())
            entry = {"batch_size": b, "file": fname, "args": args, "results": results}
            (inference_entries if mode == "inference" else training_entries).append(entry)

    out_sample = jax.eval_shape(inference, p_sds, s_sds, _sds(sample_inputs))[0]

    # ---- golden (plain module.apply, independent of the code above) --------
    def oracle(variables, inputs, rngs, kw):
        return module.apply(variables, inputs, method=apply_method, rngs=rngs,
                            mutable=DenyList(["params"]), **kw)

    oracle_infer = jax.jit(lambda v, x: oracle(v, x, None, infer_kw))
    oracle_train = jax.jit(lambda v, x, k: oracle(v, x, {s: k for s in rng_streams}, train_kw))

    golden: dict[str, np.ndarray] = {}
    for n, x in named_leaves(sample_inputs, "inputs"):
        golden[f"inputs/{n}"] = np.asarray(x)
    out, mut = oracle_infer(variables, sample_inputs)
    for n, x in named_leaves(out, "outputs"):
        golden[f"inference/{n}"] = np.asarray(x)
    inf_state = {**state, **flax.core.unfreeze(mut)}
    for n, x in named_leaves(inf_state, "state"):
        golden[f"inference_state/{n}"] = np.asarray(x)

    K = K0
    cur = dict(variables)
    for step in range(2):
        K, k = jax.random.split(K)
        out, mut = oracle_train(cur, sample_inputs, k)
        for n, x in named_leaves(out, "outputs"):
            golden[f"training/{step}/{n}"] = np.asarray(x)
        cur = {**cur, **flax.core.unfreeze(mut)}
    for n, x in named_leaves({c: v for c, v in cur.items() if c != "params"}, "state"):
        golden[f"after_training/{n}"] = np.asarray(x)
    golden["key/after_training"] = np.asarray(jax.random.key_data(K))
    if callable(extra_golden):
        extra_golden = extra_golden(variables)
    for n, x in (extra_golden or {}).items():
        if n in golden:
            raise ValueError(f"extra_golden name {n!r} clashes with a standard golden name")
        golden[n] = np.asarray(x)

    # ---- manifest ----------------------------------------------------------
    manifest = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "module": type(module).__name__,
        "seed": int(seed),
        "key": {"impl": "threefry2x32", "dtype": "uint32", "shape": [2],
                "initial": [int(v) for v in k0_data]},
        "rng_streams": list(rng_streams),
        "platforms": list(platforms),
        "default_method": mname,
        "producer": {"jax": jax.__version__, "flax": flax.__version__,
                     "calling_convention_version": int(init_exp.calling_convention_version)},
        "variables": var_specs,
        "init": {
            "file": "init.jaxexport",
            "inputs": [_spec(n, x) for n, x in named_leaves(init_inputs, "inputs")],
            "args": init_args,
            "results": init_results,
        },
        "methods": {
            mname: {
                "takes_training": training_arg,
                "inputs": [_spec(n, x) for n, x in named_leaves(sample_inputs, "inputs")],
                "outputs": [_spec(n, x) for n, x in named_leaves(out_sample, "outputs")],
                "inference": inference_entries,
                "training": training_entries,
            }
        },
    }

    # ---- write -------------------------------------------------------------
    os.makedirs(out_dir, exist_ok=True)
    for f in os.listdir(out_dir):
        if f.endswith(".jaxexport") or f in BUNDLE_FILES:
            os.remove(os.path.join(out_dir, f))
    for fname, data in files.items():
        with open(os.path.join(out_dir, fname), "wb") as f:
            f.write(data)
    meta = {"format": FORMAT, "version": str(FORMAT_VERSION)}
    write_safetensors(os.path.join(out_dir, "variables.safetensors"),
                      dict(named_leaves(variables, "variables")), {**meta, "content": "variables"})
    write_safetensors(os.path.join(out_dir, "golden.safetensors"), golden,
                      {**meta, "content": "golden"})
    with open(os.path.join(out_dir, "manifest.json"), "w", encoding="utf-8") as f:
        f.write(dumps_json(manifest) + "\n")
    return manifest


def _flat_container(obj) -> bool:
    scalar = lambda v: not isinstance(v, (dict, list))
    if isinstance(obj, list):
        return all(scalar(v) for v in obj)
    return all(scalar(v) or (isinstance(v, list) and all(scalar(w) for w in v)) for v in obj.values())


def dumps_json(obj, indent: int = 0) -> str:
    """Deterministic JSON: insertion-ordered keys; a dict/list holding only
    scalars (or lists of scalars) goes on one line, e.g. each arg entry."""
    if not isinstance(obj, (dict, list)) or not obj or _flat_container(obj):
        return json.dumps(obj, separators=(", ", ": "))
    pad = " " * (indent + 2)
    if isinstance(obj, dict):
        items = [f"{pad}{json.dumps(str(k))}: {dumps_json(v, indent + 2)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"
    items = [pad + dumps_json(v, indent + 2) for v in obj]
    return "[\n" + ",\n".join(items) + "\n" + " " * indent + "]"


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------

_INPUT_RE = re.compile(r"^([^=]+)=([0-9,\s]*):([A-Za-z0-9_]+)$")


def _parse_input(s: str):
    m = _INPUT_RE.match(s)
    if not m:
        raise argparse.ArgumentTypeError(f"bad --input {s!r}; expected NAME=D0,D1,...:DTYPE")
    name, shape, dtype = m.group(1), m.group(2), m.group(3)
    dims = tuple(int(d) for d in shape.split(",") if d.strip())
    try:
        dt = np.dtype(jnp.dtype(dtype))
    except TypeError as e:
        raise argparse.ArgumentTypeError(f"bad dtype {dtype!r}") from e
    return name, dims, dt


def make_cli_inputs(specs, seed: int = 0):
    """Random inputs for the CLI from [(name, shape, dtype)] (command-line order).

    Floats: standard normal; ints: uniform in [0, 10); bool: uniform; all from
    `numpy.random.default_rng(seed)` in the given order. Structure: a single
    input named `inputs` -> a bare array; names 0..n-1 (all of them) -> a
    tuple in index order; anything else -> a dict.
    """
    rng = np.random.default_rng(seed)
    arrays = {}
    for name, shape, dt in specs:
        if name in arrays:
            raise ValueError(f"input {name!r} given twice")
        if np.issubdtype(dt, np.floating) or dt == np.dtype(ml_dtypes.bfloat16):
            a = rng.standard_normal(shape).astype(np.float32).astype(dt)
        elif dt == np.bool_:
            a = rng.integers(0, 2, size=shape).astype(np.bool_)
        elif np.issubdtype(dt, np.integer):
            a = rng.integers(0, 10, size=shape).astype(dt)
        else:
            raise ValueError(f"unsupported input dtype {dt}")
        arrays[name] = a
    names = list(arrays)
    if names == ["inputs"]:
        return arrays["inputs"]
    if sorted(names) == [str(i) for i in range(len(names))]:
        return tuple(arrays[str(i)] for i in range(len(names)))
    return arrays


def _load_target(target: str):
    if ":" not in target:
        raise SystemExit("target must be PY_FILE:ATTR")
    path, attr = target.rsplit(":", 1)
    path = os.path.abspath(path)
    modname = "_flaxlayer_target_" + re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
    spec = importlib.util.spec_from_file_location(modname, path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    pymod = importlib.util.module_from_spec(spec)
    sys.modules[modname] = pymod
    sys.path.insert(0, os.path.dirname(path))
    spec.loader.exec_module(pymod)
    obj = getattr(pymod, attr)
    module = obj if isinstance(obj, nn.Module) else obj()
    if not isinstance(module, nn.Module):
        raise SystemExit(f"{attr} is not a flax.linen.Module nor returns one")
    return pymod, module


def main(argv=None):
    p = argparse.ArgumentParser(
        description="Export a Flax linen module to a flaxlayer bundle (docs/bundle-format.md).")
    p.add_argument("target", help="PY_FILE:ATTR, ATTR a Module instance or a zero-arg callable/class returning one")
    p.add_argument("--input", action="append", type=_parse_input, required=True, metavar="NAME=SHAPE:DTYPE",
                   help="a sample input, e.g. inputs=1,28,28,1:float32 (repeatable)")
    p.add_argument("--init-input", action="append", type=_parse_input, default=None, metavar="NAME=SHAPE:DTYPE",
                   help="inputs for init when they differ from --input (same structure rules)")
    p.add_argument("--out", required=True, help="bundle directory")
    p.add_argument("--method", default=None,
                   help="a method name of the module, or a function name in PY_FILE taking (module, inputs[, training])")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rng-streams", default="dropout", help="comma-separated RNG streams (default: dropout)")
    p.add_argument("--batch-sizes", default=None, help="comma-separated, e.g. 1,8 (default: the sample batch)")
    p.add_argument("--platforms", default="cpu", help="comma-separated, e.g. cpu,cuda")
    args = p.parse_args(argv)

    pymod, module = _load_target(args.target)
    method = args.method
    if method is not None and not hasattr(type(module), method):
        fn = getattr(pymod, method, None)
        if not callable(fn):
            raise SystemExit(f"--method {method!r} is neither a method of the module nor a function in the file")
        method = fn
    inputs = make_cli_inputs(args.input)
    init_inputs = make_cli_inputs(args.init_input) if args.init_input else None
    split = lambda s: [x.strip() for x in s.split(",") if x.strip()]
    manifest = export_flax(
        module, inputs, args.out, method=method, seed=args.seed,
        rng_streams=tuple(split(args.rng_streams)), init_inputs=init_inputs,
        platforms=tuple(split(args.platforms)),
        batch_sizes=[int(b) for b in split(args.batch_sizes)] if args.batch_sizes else None)
    m = manifest["methods"][manifest["default_method"]]
    print(f"wrote {args.out}: {manifest['module']}.{manifest['default_method']} "
          f"batch sizes {[e['batch_size'] for e in m['inference']]}, "
          f"{len(manifest['variables'])} variables")
    return 0


if __name__ == "__main__":
    sys.exit(main())
