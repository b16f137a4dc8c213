"""export_flax: a Flax linen module's init and method, in inference and training mode, as a
bundle directory (docs/bundle-format.md, docs/exporter.md)."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.core import DenyList
from jax import export as jax_export

from . import _jax_internals
from .batching import (batched_names, batched_state_names, padding_check, resolve_batch_sizes,
                       with_batch, written_state)
from .bundle_dir import write_bundle
from .manifest_json import manifest_bytes
from .methods import (check_signature, file_stem, input_error, method_name_of, method_title,
                      takes_training)
from .names import dtype_name, leaf_name, named_leaves, spec
from .safetensors_io import safetensors_bytes

FORMAT = "flaxlayer.bundle"
FORMAT_VERSION = 1
KEY_IMPL = "threefry2x32"
INIT_INPUTS_FILE = "init_inputs.safetensors"
DEFAULT_MAX_BATCH = 64


class StateError(ValueError):
    """apply created or restructured a state collection."""


@dataclasses.dataclass
class Computation:
    """One exported function: the Exported, its serialized bytes and its custom calls."""
    exp: jax_export.Exported
    data: bytes
    custom_call_targets: list[str]


@dataclasses.dataclass
class BuiltBundle:
    """A bundle in memory: its files by name, the manifest, and the bundled variables."""
    manifest: dict
    files: dict[str, bytes]
    variables: dict
    golden: dict[str, np.ndarray]

    def finish(self) -> None:
        """(Re)write manifest.json and golden.safetensors from `manifest` and `golden`."""
        self.files["manifest.json"] = manifest_bytes(self.manifest)
        self.files["golden.safetensors"] = safetensors_bytes(self.golden, _meta("golden"))


def _meta(content: str) -> dict[str, str]:
    return {"format": FORMAT, "version": str(FORMAT_VERSION), "content": content}


# --------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------

def canonical_arrays(tree, what: str, bare: str):
    """Leaves as numpy arrays in the dtypes jax.jit would use (`canonicalize_dtype`: int64 ->
    int32 and float64 -> float32 unless x64 is enabled)."""
    def f(path, x):
        a = np.asarray(x)
        if not (jnp.issubdtype(a.dtype, jnp.number) or jnp.issubdtype(a.dtype, jnp.bool_)):
            raise ValueError(f"{what} {leaf_name(path, bare)!r}: not an array of numbers ({a.dtype})")
        dt = np.dtype(jax.dtypes.canonicalize_dtype(a.dtype))
        return a if a.dtype == dt else a.astype(dt)
    return jax.tree_util.tree_map_with_path(f, tree)


def to_plain(tree):
    """FrozenDict -> dict, leaves -> numpy."""
    return jax.tree_util.tree_map(np.asarray, flax.core.unfreeze(tree))


def sds(tree):
    return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def split_variables(variables: dict):
    params = variables.get("params", {})
    state = {c: v for c, v in variables.items() if c != "params"}
    return params, state


def _avals_list(tree):
    return [(n, tuple(x.shape), np.dtype(x.dtype)) for n, x in named_leaves(tree, "tree")]


def check_exported(exp, args: list[dict], results: list[dict]) -> None:
    """The manifest slots agree with the Exported's flat in/out avals (ValueError otherwise)."""
    if len(exp.in_avals) != len(args) or len(exp.out_avals) != len(results):
        raise ValueError(
            f"{exp.fun_name}: the manifest has {len(args)} args / {len(results)} results, "
            f"jax.export traced {len(exp.in_avals)} / {len(exp.out_avals)}")
    for kind, pairs in (("argument", zip(args, exp.in_avals)), ("result", zip(results, exp.out_avals))):
        for s, aval in pairs:
            if s["shape"] != list(aval.shape) or s["dtype"] != dtype_name(aval.dtype):
                slot = f"{s['role']} {s['name']!r}" if "name" in s else s["role"]
                raise ValueError(
                    f"{exp.fun_name}: {kind} {slot} is {s['dtype']}{s['shape']} in the manifest "
                    f"but jax.export traced {dtype_name(aval.dtype)}{list(aval.shape)}")


def export_computation(fn, name: str, donate: tuple[int, ...], avals, platforms) -> Computation:
    """jax.jit(fn) exported at `avals`, locations stripped, custom calls listed."""
    fn.__name__ = name
    fn.__qualname__ = name
    exp = jax_export.export(jax.jit(fn, donate_argnums=donate), platforms=tuple(platforms))(*avals)
    exp = _jax_internals.strip_locations(exp)
    return Computation(exp, bytes(exp.serialize()), _jax_internals.custom_call_targets(exp))


def _leading(tree) -> int | None:
    """The common leading dimension of every leaf, or None."""
    dims = {int(x.shape[0]) if np.ndim(x) else None for x in jax.tree_util.tree_leaves(tree)}
    return dims.pop() if len(dims) == 1 else None


def _mark(specs: list[dict], batched: dict[str, bool]) -> list[dict]:
    return [{**s, "batched": batched[s["name"]]} if s.get("role", "output") == "output" else s
            for s in specs]


# --------------------------------------------------------------------------
# the exporter
# --------------------------------------------------------------------------

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
    batch_sizes: Sequence[int] | str | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    extra_golden: dict[str, Any] | Callable[[dict], dict] | None = None,
) -> dict:
    """Export `module` to a bundle directory `out_dir`; returns the manifest.

    Args:
      module: a flax.linen.Module instance.
      sample_inputs: an array or PyTree of arrays (tuple/list/dict) with a common leading
        batch dimension; the exported shapes and the golden data use them. int64/float64
        leaves become int32/float32, as under jax.jit.
      method: None (`__call__`), a method name, or a function
        `fn(module, inputs[, training])` (Keras FlaxLayer conventions).
      variables: variables to bundle instead of `module.init` under `seed`
        (manifest `variables_origin`: "given" instead of "init").
      seed: `K0 = jax.random.key(seed)` (threefry) for init and the layer key.
      rng_streams: RNG streams fed by the key (besides "params" at init).
      init_inputs: inputs for `init` when they differ from `sample_inputs`. When the exported
        init reads them (data-dependent init), they are bundled as init_inputs.safetensors.
      platforms: lowering platforms; more than one adds JAX's platform-index argument to
        every computation.
      batch_sizes: one inference/training computation per batch size (leading dim of every
        input replaced): a list that includes the sample batch, "auto" (powers of two up to
        `max_batch`, plus the sample batch), or None (the sample batch only).
      max_batch: the largest power of two for batch_sizes="auto".
      extra_golden: extra tensors for golden.safetensors (e.g. decoder `greedy/...`), a dict
        or a function of the bundled variables returning one; names must not clash with the
        standard ones.
    """
    built = build_flax_bundle(
        module, sample_inputs, method=method, variables=variables, seed=seed,
        rng_streams=rng_streams, init_inputs=init_inputs, platforms=platforms,
        batch_sizes=batch_sizes, max_batch=max_batch, extra_golden=extra_golden)
    write_bundle(out_dir, built.files)
    return built.manifest


def build_flax_bundle(module, sample_inputs, *, method=None, variables=None, seed=0,
                      rng_streams=("dropout",), init_inputs=None, platforms=("cpu",),
                      batch_sizes=None, max_batch=DEFAULT_MAX_BATCH,
                      extra_golden=None) -> BuiltBundle:
    """Everything export_flax writes, in memory (export_train_step adds to it)."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a flax.linen.Module, got {type(module)}")
    check_signature(module, method)
    rng_streams = tuple(rng_streams)
    platforms = tuple(platforms)
    mname = method_name_of(method)
    training_arg = takes_training(module, method)
    apply_method = method  # flax accepts None, a name or a function

    sample_inputs = canonical_arrays(sample_inputs, "sample input", "inputs")
    init_inputs = (sample_inputs if init_inputs is None
                   else canonical_arrays(init_inputs, "init input", "inputs"))
    sample_leaves = jax.tree_util.tree_leaves(sample_inputs)
    if not sample_leaves:
        raise ValueError("sample_inputs has no arrays")
    for n, x in named_leaves(sample_inputs, "inputs"):
        if x.ndim == 0:
            raise ValueError(f"sample input {n!r} is a scalar: every input needs a leading (batch) dimension")
    sample_batch = _leading(sample_inputs)
    if sample_batch is None:
        raise ValueError("every sample input needs the same leading (batch) dimension, got "
                         + ", ".join(f"{n}: {list(x.shape)}" for n, x in named_leaves(sample_inputs, "inputs")))
    batch_sizes = resolve_batch_sizes(batch_sizes, max_batch, sample_batch)

    K0 = jax.random.key(seed, impl=KEY_IMPL)
    k0_data = np.asarray(jax.random.key_data(K0))
    train_kw = {"training": True} if training_arg else {}
    infer_kw = {"training": False} if training_arg else {}

    # ---- the exported functions ---------------------------------------------
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
            raise StateError(
                f"apply created collections {extra} that are not in the variables; "
                "only collections present after init can be state")
        new_state = {c: mutated.get(c, state[c]) for c in state}
        if jax.tree_util.tree_structure(new_state) != jax.tree_util.tree_structure(state):
            raise StateError("apply changed the structure of the state collections")
        return out, new_state

    def inference(params, state, inputs):
        return _apply(params, state, inputs, None, infer_kw)

    def training(params, state, key, inputs):
        K = jax.random.wrap_key_data(key, impl=KEY_IMPL)
        K, k = jax.random.split(K)
        out, new_state = _apply(params, state, inputs, {s: k for s in rng_streams}, train_kw)
        return out, new_state, jax.random.key_data(K)

    # ---- init and the variables ---------------------------------------------
    key_sds = jax.ShapeDtypeStruct((2,), jnp.uint32)
    try:
        init_shapes = jax.eval_shape(init, key_sds, sds(init_inputs))
    except Exception as e:  # noqa: BLE001 - the user's method failed on the inputs
        raise input_error(module, method, init_inputs, e, what=f"module.init ({method_title(module, method)})") from e

    # ---- the state's batch axis (decode caches made at the init batch) ------------
    state_names = [n for n, _ in named_leaves(
        {c: v for c, v in init_shapes.items() if c != "params"}, "state")]
    init_batch = _leading(init_inputs)
    batched_state = batched_state_names(
        lambda b: jax.eval_shape(init, key_sds, with_batch(init_inputs, b)), init_batch, state_names)
    if batched_state:
        wrong = [b for b in batch_sizes if b != init_batch]
        if wrong:
            raise ValueError(
                f"state {batched_state[0]!r} (and {len(batched_state) - 1} more) has the init "
                f"batch {init_batch} as its leading axis, so every computation must run at batch "
                f"{init_batch}; batch sizes {wrong} cannot be exported (use batch_sizes=[{init_batch}] "
                f"and sample inputs of batch {init_batch})")

    def plain_init():
        return to_plain(jax.jit(lambda k, x: module.init(
            {"params": k, **{s: k for s in rng_streams}}, x, method=apply_method, **train_kw)
        )(K0, init_inputs))

    origin = "init" if variables is None else "given"
    init_variables = plain_init() if variables is None else None
    if variables is None:
        variables = init_variables
    else:
        variables = canonical_arrays(to_plain(variables), "variable", "variables")
    if jax.tree_util.tree_structure(variables) != jax.tree_util.tree_structure(init_shapes):
        raise ValueError("given variables do not have the structure module.init produces: "
                         f"{[n for n, _ in named_leaves(variables, 'variables')]} vs "
                         f"{[n for n, _ in named_leaves(init_shapes, 'variables')]}")
    for (n, a), (_, b) in zip(named_leaves(variables, "variables"), named_leaves(init_shapes, "variables")):
        if a.shape != b.shape or a.dtype != b.dtype:
            raise ValueError(f"variable {n}: {a.dtype}{list(a.shape)} but init gives {b.dtype}{list(b.shape)}")
    params, state = split_variables(variables)
    p_sds, s_sds = sds(params), sds(state)
    init_c = export_computation(init, "init", (), (key_sds, sds(init_inputs)), platforms)

    var_specs = [{"name": n, "collection": n.split("/", 1)[0], "dtype": dtype_name(x.dtype),
                  "shape": [int(s) for s in x.shape]} for n, x in named_leaves(variables, "variables")]
    init_args = [spec(None, key_sds, role="key")] + [
        spec(n, x, role="input") for n, x in named_leaves(init_inputs, "inputs")]
    init_results = [
        spec(n, x, role="param" if n.split("/", 1)[0] == "params" else "state")
        for n, x in named_leaves(init_shapes, "variables")]
    check_exported(init_c.exp, init_args, init_results)
    init_reads_inputs = any(i >= 1 for i in init_c.exp.module_kept_var_idx)

    # ---- inference and training per batch size -------------------------------
    files: dict[str, bytes] = {"init.jaxexport": init_c.data}
    stem = file_stem(mname)
    entries: dict[str, list[dict]] = {"inference": [], "training": []}
    shapes: dict[str, dict[int, Any]] = {"inference": {}, "training": {}}
    modes = (("inference", inference, (1,), False), ("training", training, (1, 2), True))
    try:
        jax.eval_shape(inference, p_sds, s_sds, sds(sample_inputs))
    except StateError:
        raise
    except Exception as e:  # noqa: BLE001
        raise input_error(module, method, sample_inputs, e, what=f"inference ({method_title(module, method)})") from e
    for b in batch_sizes:
        x_sds = with_batch(sample_inputs, b)
        for mode, fn, donate, with_key in modes:
            avals = (p_sds, s_sds, key_sds, x_sds) if with_key else (p_sds, s_sds, x_sds)
            out_shapes = jax.eval_shape(fn, *avals)
            outputs, new_state = out_shapes[0], out_shapes[1]
            if _avals_list(new_state) != _avals_list(state):
                raise ValueError(f"{mode}: the new state's shapes/dtypes differ from the state's")
            shapes[mode][b] = outputs
            c = export_computation(fn, f"{stem}.{mode}", donate, avals, platforms)
            args = [spec(n, x, role="param") for n, x in named_leaves({"params": params}, "params")]
            args += [spec(n, x, role="state") for n, x in named_leaves(state, "state")]
            if with_key:
                args.append(spec(None, key_sds, role="key"))
            args += [spec(n, x, role="input") for n, x in named_leaves(x_sds, "inputs")]
            results = [spec(n, x, role="output") for n, x in named_leaves(outputs, "outputs")]
            results += [spec(n, x, role="state") for n, x in named_leaves(new_state, "state")]
            if with_key:
                results.append(spec(None, key_sds, role="key"))
            check_exported(c.exp, args, results)
            fname = f"{stem}.{mode}.b{b}.jaxexport"
            files[fname] = c.data
            entries[mode].append({"batch_size": b, "file": fname, "args": args, "results": results,
                                  "custom_call_targets": c.custom_call_targets})

    # ---- batch axis of the outputs: exported sizes plus one probe size ---------
    probe = max(batch_sizes) + 1
    try:
        probe_state = s_sds
        if batched_state:
            probe_state = {c: v for c, v in jax.eval_shape(
                init, key_sds, with_batch(init_inputs, probe)).items() if c != "params"}
        for mode, fn, _, with_key in modes:
            x_sds = with_batch(sample_inputs, probe)
            avals = (p_sds, probe_state, key_sds, x_sds) if with_key else (p_sds, probe_state, x_sds)
            shapes[mode][probe] = jax.eval_shape(fn, *avals)[0]
    except Exception:  # noqa: BLE001 - a model fixed to its exported sizes: judge by those
        for mode in shapes:
            shapes[mode].pop(probe, None)
    batched = {mode: batched_names(shapes[mode], "outputs") for mode in shapes}
    for mode in entries:
        for e in entries[mode]:
            e["results"] = _mark(e["results"], batched[mode])

    # ---- batching: stateful? paddable? -----------------------------------------
    n_out = len(jax.tree_util.tree_leaves(shapes["inference"][sample_batch]))
    jaxpr = jax.make_jaxpr(inference)(p_sds, s_sds, sds(sample_inputs))
    writes = written_state(jaxpr, len(jax.tree_util.tree_leaves(params)), len(state_names), n_out)
    oracle_infer = jax.jit(lambda v, x: module.apply(
        v, x, method=apply_method, mutable=DenyList(["params"]), **infer_kw))

    def infer(p, s, x):
        out, mut = oracle_infer({"params": p, **s}, x)
        return out, {**s, **flax.core.unfreeze(mut)}

    batching = padding_check(infer, params, state, sample_inputs, sizes=batch_sizes,
                             batched_outputs=batched["inference"], batched_state=batched_state,
                             stateful=any(writes))

    # ---- golden (plain module.apply, independent of the functions above) -------
    oracle_train = jax.jit(lambda v, x, k: module.apply(
        v, x, method=apply_method, rngs={s: k for s in rng_streams},
        mutable=DenyList(["params"]), **train_kw))
    golden: dict[str, np.ndarray] = {}
    for n, x in named_leaves(sample_inputs, "inputs"):
        golden[f"inputs/{n}"] = np.asarray(x)
    out, mut = oracle_infer(variables, sample_inputs)
    for n, x in named_leaves(out, "outputs"):
        golden[f"inference/{n}"] = np.asarray(x)
    for n, x in named_leaves({**state, **flax.core.unfreeze(mut)}, "state"):
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
    if origin == "given" or init_reads_inputs:
        # variables.safetensors is not init's result, or init's result depends on its inputs
        for n, x in named_leaves(init_variables if init_variables is not None else plain_init(), "variables"):
            golden[f"init/{n}"] = np.asarray(x)
    if callable(extra_golden):
        extra_golden = extra_golden(variables)
    for n, x in (extra_golden or {}).items():
        if n in golden:
            raise ValueError(f"extra_golden name {n!r} clashes with a standard golden name")
        golden[n] = np.asarray(x)

    # ---- manifest ------------------------------------------------------------------
    init_entry = {
        "file": "init.jaxexport",
        "inputs": [spec(n, x) for n, x in named_leaves(init_inputs, "inputs")],
        "args": init_args,
        "results": init_results,
    }
    if init_reads_inputs:
        init_entry["inputs_file"] = INIT_INPUTS_FILE
        files[INIT_INPUTS_FILE] = safetensors_bytes(
            dict(named_leaves(init_inputs, "inputs")), _meta("init_inputs"))
    init_entry["custom_call_targets"] = init_c.custom_call_targets
    manifest = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "module": type(module).__name__,
        "seed": int(seed),
        "key": {"impl": KEY_IMPL, "dtype": "uint32", "shape": [2],
                "initial": [int(v) for v in k0_data]},
        "rng_streams": list(rng_streams),
        "platforms": list(platforms),
        "default_method": mname,
        "producer": {"jax": jax.__version__, "flax": flax.__version__,
                     "calling_convention_version": int(init_c.exp.calling_convention_version)},
        "variables_origin": origin,
        "variables": var_specs,
        "init": init_entry,
        "methods": {
            mname: {
                "takes_training": training_arg,
                "inputs": [spec(n, x) for n, x in named_leaves(sample_inputs, "inputs")],
                "outputs": _mark([spec(n, x) for n, x in named_leaves(shapes["inference"][sample_batch], "outputs")],
                                 batched["inference"]),
                "batching": batching,
                "inference": entries["inference"],
                "training": entries["training"],
            }
        },
    }
    files["variables.safetensors"] = safetensors_bytes(
        dict(named_leaves(variables, "variables")), _meta("variables"))
    built = BuiltBundle(manifest, files, variables, golden)
    built.finish()
    return built
