"""export_flax for Flax linen modules: init and the method, in inference and training mode, as a
bundle in memory (docs/bundle-format.md, docs/exporter.md); the steps of an export
(`_LinenExport`), which the NNX exporter reuses."""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import hashlib
import types
from typing import Any, Callable

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
from .init_golden import init_golden
from .manifest_json import manifest_bytes
from .methods import (check_signature, file_stem, input_error, method_name_of, method_title,
                      takes_training)
from .names import dtype_name, leaf_name, named_leaves, spec
from .nnx_state import StateError
from .outputs import OutputTypeError, plain_outputs
from .safetensors_io import safetensors_bytes

FORMAT = "flaxlayer.bundle"
FORMAT_VERSION = 1
KEY_IMPL = "threefry2x32"
INIT_INPUTS_FILE = "init_inputs.safetensors"
DEFAULT_MAX_BATCH = 64
DEFAULT_RNG_STREAMS = ("dropout",)  # linen; an NNX module's default is all of its streams


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
    plan: Any = None  # sharding.MeshPlan of a mesh export

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
    """FrozenDict -> dict, partitioning metadata (nn.Partitioned) unboxed, leaves -> numpy."""
    return jax.tree_util.tree_map(np.asarray, flax.core.meta.unbox(flax.core.unfreeze(tree)))


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


# Custom-call targets jax.export may export although they are not on JAX's compatibility list
# (export_flax's `allow_custom_calls`), for the export running in this context.
_ALLOWED_CUSTOM_CALLS: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar(
    "flaxlayer_allowed_custom_calls", default=())


@contextlib.contextmanager
def allowing_custom_calls(targets):
    """Within the block, exports may call `targets` (jax.export's
    DisabledSafetyCheck.custom_call for each, recorded in the Exported's disabled_checks)."""
    targets = tuple(targets or ())
    if any(not isinstance(t, str) or not t for t in targets):
        raise TypeError(f"allow_custom_calls must be custom-call target names, got {targets!r}")
    token = _ALLOWED_CUSTOM_CALLS.set(tuple(sorted(set(_ALLOWED_CUSTOM_CALLS.get()) | set(targets))))
    try:
        yield
    finally:
        _ALLOWED_CUSTOM_CALLS.reset(token)


def export_computation(fn, name: str, donate: tuple[int, ...], avals, platforms,
                       shardings: Callable | None = None) -> Computation:
    """jax.jit(fn) exported at `avals`, locations stripped, custom calls listed. `shardings`
    (mesh exports): fn -> (in_shardings, out_shardings) for jax.jit."""
    fn.__name__ = name
    fn.__qualname__ = name
    on_mesh = {} if shardings is None else dict(zip(("in_shardings", "out_shardings"), shardings(fn)))
    exp = jax_export.export(
        jax.jit(fn, donate_argnums=donate, **on_mesh), platforms=tuple(platforms),
        disabled_checks=_jax_internals.disabled_custom_call_checks(_ALLOWED_CUSTOM_CALLS.get()))(*avals)
    exp, targets = _jax_internals.stripped_and_custom_calls(exp)
    return Computation(exp, bytes(exp.serialize()), targets)


def check_frozen(frozen: bool, sharding) -> bool:
    """`frozen` for an export: refused on a mesh (each device would hold every constant)."""
    if frozen and sharding is not None:
        raise NotImplementedError("frozen=True is for single-device exports: on a mesh every "
                                  "device would hold all of the params as constants")
    return bool(frozen)


def frozen_sizes(frozen: bool, frozen_batch_sizes, batch_sizes) -> tuple[int, ...]:
    """The batch sizes that get a frozen inference: every exported size with frozen=True and
    no `frozen_batch_sizes`, else those (each an exported size); () without frozen."""
    if frozen_batch_sizes is None:
        return tuple(batch_sizes) if frozen else ()
    if isinstance(frozen_batch_sizes, (str, bytes)) or not all(
            isinstance(b, (int, np.integer)) and not isinstance(b, bool) for b in frozen_batch_sizes):
        raise TypeError(f"frozen_batch_sizes must be a list of batch sizes, got {frozen_batch_sizes!r}")
    want = sorted({int(b) for b in frozen_batch_sizes})
    if not frozen:
        raise ValueError(f"frozen_batch_sizes={want} needs frozen=True")
    if not want:
        raise ValueError("frozen_batch_sizes is empty: leave frozen=False for no frozen inference")
    missing = [b for b in want if b not in batch_sizes]
    if missing:
        raise ValueError(f"frozen_batch_sizes {missing} are not among the exported batch sizes "
                         f"{list(batch_sizes)}")
    return tuple(want)


FROZEN_TOLERANCE = 1e-5


def check_frozen_outputs(want, got, fname: str) -> None:
    """check_same_outputs for a frozen inference (its refusal says: export without frozen)."""
    check_same_outputs(want, got, fname, what="frozen", fix="export without frozen=True")


def check_same_outputs(want, got, fname: str, *, what: str = "hoisted",
                       fix: str = "export with hoist=False") -> None:
    """The frozen inference agrees with the inference it was made from (ValueError otherwise).

    Constant folding reassociates float arithmetic, so the two differ by rounding that grows
    with the values: the tolerance is relative to each output's scale (its largest magnitude,
    at least 1), as the test zoos' tolerances are. ResNet-50's logits reach |174|, where an
    absolute 1e-5 refused a difference of 9.5e-5 (5e-7 of the scale)."""
    for i, (w, g) in enumerate(zip(jax.tree_util.tree_leaves(want), jax.tree_util.tree_leaves(got))):
        w, g = np.asarray(w), np.asarray(g)
        if w.shape != g.shape or w.dtype != g.dtype:
            raise ValueError(f"{fname}: output {i} of the {what} inference is {g.dtype}{list(g.shape)}, "
                             f"the inference with params as arguments gives {w.dtype}{list(w.shape)}")
        if not np.issubdtype(w.dtype, np.inexact):
            if not np.array_equal(g, w):
                raise ValueError(f"{fname}: output {i} ({w.dtype}) of the {what} inference differs "
                                 f"from the inference with params as arguments; {fix}")
            continue
        w64, g64 = w.astype(np.float64), g.astype(np.float64)
        finite = np.isfinite(w64)
        scale = max(1.0, float(np.abs(w64[finite]).max(initial=0.0)))
        if not np.allclose(g64, w64, rtol=FROZEN_TOLERANCE, atol=FROZEN_TOLERANCE * scale, equal_nan=True):
            diff = float(np.nanmax(np.abs(g64 - w64))) if w.size else 0.0
            raise ValueError(f"{fname}: output {i} of the {what} inference differs from the inference "
                             f"with params as arguments by {diff:.3g}, more than {FROZEN_TOLERANCE:g} of "
                             f"its scale {scale:.3g}; {fix}")


def variables_difference(given, want, *, first: int = 5) -> str:
    """What differs between the variables `given` and the ones `want`ed (module.init's
    shapes), a few lines: missing and extra collections, the first `first` missing and extra
    leaves, shape/dtype mismatches; "" when they agree."""
    def by_name(tree):
        return {n: x for n, x in named_leaves(tree, "variables")}

    def few(names):
        names = sorted(names)
        more = f" (and {len(names) - first} more)" if len(names) > first else ""
        return ", ".join(names[:first]) + more

    g, w = by_name(given), by_name(want)
    top = lambda tree: set(tree) if isinstance(tree, dict) else set()
    lines = []
    missing_c, extra_c = sorted(top(want) - top(given)), sorted(top(given) - top(want))
    if missing_c:
        lines.append(f"missing collections: {', '.join(missing_c)} (init makes them; pass them too, "
                     "e.g. the result of module.init for the collections you do not have)")
    if extra_c:
        lines.append(f"extra collections: {', '.join(extra_c)} (init does not make them)")
    in_missing_c = lambda n: n.split("/", 1)[0] in missing_c
    in_extra_c = lambda n: n.split("/", 1)[0] in extra_c
    missing = [n for n in w if n not in g and not in_missing_c(n)]
    extra = [n for n in g if n not in w and not in_extra_c(n)]
    if missing:
        lines.append(f"missing {len(missing)} leaves: {few(missing)}")
    if extra:
        lines.append(f"extra {len(extra)} leaves: {few(extra)}")
    wrong = [f"{n}: given {g[n].dtype}{list(g[n].shape)}, init makes {w[n].dtype}{list(w[n].shape)}"
             for n in sorted(set(g) & set(w))
             if tuple(g[n].shape) != tuple(w[n].shape) or np.dtype(g[n].dtype) != np.dtype(w[n].dtype)]
    if wrong:
        more = f"\n  (and {len(wrong) - first} more)" if len(wrong) > first else ""
        lines.append(f"{len(wrong)} leaves differ in shape or dtype:\n  " + "\n  ".join(wrong[:first]) + more)
    if not lines and jax.tree_util.tree_structure(given) != jax.tree_util.tree_structure(want):
        lines.append("the leaves have the same names but the trees differ in structure (e.g. a "
                     "list where init makes a dict)")
    return "\n".join(lines)


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

def linen_export(module: nn.Module, sample_inputs, *, method=None, variables=None, seed=0,
                 rng_streams=None, init_inputs=None, platforms=("cpu",), batch_sizes=None,
                 max_batch=DEFAULT_MAX_BATCH, sharding=None, frozen=False,
                 frozen_batch_sizes=None, batching=True, bundle_variables=True,
                 hoist=True) -> "_LinenExport":
    """The export of a linen module, ready to `build`; `sharding`: a sharding.MeshRequest
    for a mesh export (export.py makes it from export_flax's mesh arguments)."""
    check_signature(module, method)
    sample_inputs, init_inputs, sample_batch = prepare_inputs(sample_inputs, init_inputs)
    streams = DEFAULT_RNG_STREAMS if rng_streams is None else tuple(rng_streams)
    sizes = resolve_batch_sizes(batch_sizes, max_batch, sample_batch)
    if sharding is not None:
        sizes = sharding.fit_batch_sizes(sizes, sample_inputs, auto=batch_sizes == "auto")
    return _LinenExport(module=module, method=method, fns=module_functions(module, method, streams),
                        seed=int(seed), platforms=tuple(platforms), sample_inputs=sample_inputs,
                        init_inputs=init_inputs, sample_batch=sample_batch, batch_sizes=sizes,
                        given=variables, sharding=sharding, frozen=check_frozen(frozen, sharding),
                        frozen_sizes=frozen_sizes(frozen, frozen_batch_sizes, sizes),
                        check_batching=bool(batching), bundle_variables=bool(bundle_variables),
                        hoist=bool(hoist) and sharding is None)


def prepare_inputs(sample_inputs, init_inputs):
    """(sample inputs, init inputs, sample batch), leaves in jax.jit's dtypes."""
    sample_inputs = canonical_arrays(sample_inputs, "sample input", "inputs")
    init_inputs = (sample_inputs if init_inputs is None
                   else canonical_arrays(init_inputs, "init input", "inputs"))
    return sample_inputs, init_inputs, _sample_batch(sample_inputs)


def _sample_batch(sample_inputs) -> int:
    """The sample inputs' common leading (batch) dimension."""
    named = named_leaves(sample_inputs, "inputs")
    if not named:
        raise ValueError("sample_inputs has no arrays")
    for n, x in named:
        if x.ndim == 0:
            raise ValueError(f"sample input {n!r} is a scalar: every input needs a leading (batch) dimension")
    b = _leading(sample_inputs)
    if b is None:
        raise ValueError("every sample input needs the same leading (batch) dimension, got "
                         + ", ".join(f"{n}: {list(x.shape)}" for n, x in named))
    return b


def module_functions(module: nn.Module, method, rng_streams: tuple[str, ...]):
    """The exported functions (init, inference, training: raw key data in and out; and
    apply_inference / apply_training(..., k), which export_train_step's steps call) and the
    golden oracles (oracle_init, plain_inference, plain_training: plain jitted module.init /
    module.apply), per the RNG contract. nnx_export.nnx_functions gives the same namespace."""
    training_arg = takes_training(module, method)
    train_kw = {"training": True} if training_arg else {}
    infer_kw = {"training": False} if training_arg else {}

    def init(key, inputs):
        k = jax.random.wrap_key_data(key, impl=KEY_IMPL)
        rngs = {"params": k, **{s: k for s in rng_streams}}
        v = module.init(rngs, inputs, method=method, **train_kw)
        return flax.core.meta.unbox(flax.core.unfreeze(v))

    def _apply(params, state, inputs, rngs, kw):
        out, mutated = module.apply(
            {"params": params, **state}, inputs, method=method, rngs=rngs,
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
        return plain_outputs(out), new_state

    def inference(params, state, inputs):
        return _apply(params, state, inputs, None, infer_kw)

    def apply_training(params, state, inputs, k):
        return _apply(params, state, inputs, {s: k for s in rng_streams}, train_kw)

    def training(params, state, key, inputs):
        K = jax.random.wrap_key_data(key, impl=KEY_IMPL)
        K, k = jax.random.split(K)
        out, new_state = apply_training(params, state, inputs, k)
        return out, new_state, jax.random.key_data(K)

    oracle_init = jax.jit(lambda k, x: flax.core.meta.unbox(module.init(
        {"params": k, **{s: k for s in rng_streams}}, x, method=method, **train_kw)))
    oracle_infer = jax.jit(lambda v, x: module.apply(
        v, x, method=method, mutable=DenyList(["params"]), **infer_kw))
    oracle_train = jax.jit(lambda v, x, k: module.apply(
        v, x, method=method, rngs={s: k for s in rng_streams},
        mutable=DenyList(["params"]), **train_kw))

    def plain_inference(params, state, inputs):
        out, mut = oracle_infer({"params": params, **state}, inputs)
        return plain_outputs(out), {**state, **flax.core.unfreeze(mut)}

    def plain_training(params, state, inputs, k):
        out, mut = oracle_train({"params": params, **state}, inputs, k)
        return plain_outputs(out), {**state, **flax.core.unfreeze(mut)}

    return types.SimpleNamespace(
        init=init, inference=inference, training=training, apply_inference=inference,
        apply_training=apply_training, takes_training=training_arg, rng_streams=rng_streams,
        oracle_init=oracle_init, plain_inference=plain_inference, plain_training=plain_training)


KEY_SDS = jax.ShapeDtypeStruct((2,), jnp.uint32)


@dataclasses.dataclass
class _LinenExport:
    """One export_flax run (`fns`: the functions to export and their plain-Flax oracles);
    `build` calls the steps in order."""
    module: nn.Module
    method: Any
    fns: Any
    seed: int
    platforms: tuple[str, ...]
    sample_inputs: Any
    init_inputs: Any
    sample_batch: int
    batch_sizes: list[int]
    given: Any = None  # variables to bundle instead of init's (export_flax's `variables`)
    calling_convention_version: int = 0  # of the exported init (manifest producer)
    sharding: Any = None  # sharding.MeshRequest of a mesh export
    plan: Any = None  # its sharding.MeshPlan, once the variables are known
    frozen: bool = False  # also export inference with the params compiled in (export_flax's `frozen`)
    frozen_sizes: tuple[int, ...] = ()  # the batch sizes that get it (`frozen_batch_sizes`)
    check_batching: bool = True  # run the padding check (export_flax's `batching`)
    bundle_variables: bool = True  # write variables.safetensors (else "init-only")
    hoist: bool = True  # also export inference as prologue + body (export_flax's `hoist`)

    @property
    def K0(self):
        return jax.random.key(self.seed, impl=KEY_IMPL)

    @property
    def title(self) -> str:
        return method_title(self.module, self.method)

    def build(self, extra_golden=None) -> BuiltBundle:
        given_variables = self.given
        if not self.bundle_variables:
            self.check_init_only(given_variables)
        init_shapes = self.init_shapes()
        batched_state = self.state_batch_axis(init_shapes)
        variables, init_variables = self.variables(given_variables, init_shapes)
        params, state = split_variables(variables)
        if self.sharding is not None:
            self.plan = self.sharding.resolve(self, variables)
        files: dict[str, bytes] = {}
        init_entry = self.export_init(init_shapes, files)
        entries, shapes = self.export_modes(params, state, files)
        batched = self.output_batch_axes(params, state, shapes, batched_state)
        for mode in entries:
            for e in entries[mode]:
                e["results"] = _mark(e["results"], batched[mode])
                if "frozen" in e:
                    e["frozen"]["results"] = e["results"]
                if "hoisted" in e:
                    e["hoisted"]["body"]["results"] = e["results"]
        batching = self.batching(params, state, batched["inference"], batched_state)
        golden = self.golden(variables, self.golden_init(given_variables, init_entry, init_variables),
                             extra_golden)
        if init_entry is not None and "inputs_file" in init_entry:
            files[INIT_INPUTS_FILE] = safetensors_bytes(
                dict(named_leaves(self.init_inputs, "inputs")), _meta("init_inputs"))
        if self.bundle_variables:
            files["variables.safetensors"] = safetensors_bytes(
                dict(named_leaves(variables, "variables")), _meta("variables"))
        digest = None
        for e in entries["inference"]:
            if "frozen" in e:  # the file its constants came from (the runtime checks it)
                digest = digest or hashlib.sha256(files["variables.safetensors"]).hexdigest()
                e["frozen"]["variables_sha256"] = digest
        manifest = self.manifest(variables, self.origin(given_variables), init_entry,
                                 _mark([spec(n, x) for n, x in named_leaves(
                                     shapes["inference"][self.sample_batch], "outputs")], batched["inference"]),
                                 batching, entries)
        if self.plan is not None:
            manifest = self.plan.manifest_entry(manifest, method_name_of(self.method))
        built = BuiltBundle(manifest, files, variables, golden, self.plan)
        built.finish()
        return built

    # ---- init and the variables ---------------------------------------------------
    def init_shapes(self):
        try:
            return jax.eval_shape(self.fns.init, KEY_SDS, sds(self.init_inputs))
        except Exception as e:  # noqa: BLE001 - the user's method failed on the inputs
            raise input_error(self.module, self.method, self.init_inputs, e,
                              what=f"module.init ({self.title})") from e

    def state_batch_axis(self, init_shapes) -> list[str] | None:
        """The state leaves with the batch axis (decode caches made at the init batch); only
        the init batch can then be exported."""
        state_names = [n for n, _ in named_leaves(
            {c: v for c, v in init_shapes.items() if c != "params"}, "state")]
        init_batch = _leading(self.init_inputs)
        batched_state = batched_state_names(
            lambda b: jax.eval_shape(self.fns.init, KEY_SDS, with_batch(self.init_inputs, b)),
            init_batch, state_names)
        wrong = [b for b in self.batch_sizes if b != init_batch] if batched_state else []
        if wrong:
            raise ValueError(
                f"state {batched_state[0]!r} (and {len(batched_state) - 1} more) has the init "
                f"batch {init_batch} as its leading axis, so every computation must run at batch "
                f"{init_batch}; batch sizes {wrong} cannot be exported (use batch_sizes=[{init_batch}] "
                f"and sample inputs of batch {init_batch})")
        return batched_state

    def plain_init(self):
        return to_plain(self.fns.oracle_init(self.K0, self.init_inputs))

    def origin(self, given) -> str:
        """The manifest's variables_origin."""
        if not self.bundle_variables:
            return "init-only"
        return "init" if given is None else "given"

    def check_init_only(self, given) -> None:
        """bundle_variables=False needs variables that init builds again (ValueError)."""
        if given is not None:
            raise ValueError("bundle_variables=False with variables=...: given variables must be "
                             "bundled (nothing else can build them on the device)")
        if self.frozen:
            raise ValueError("bundle_variables=False with frozen=True: frozen inference compiles "
                             "the bundled variables in")

    def golden_init(self, given, init_entry, init_variables):
        """What init computes, for golden `init...` (init_golden.py) when variables.safetensors
        is not init's result (given variables, an init-only bundle); else None: an init that
        reads its inputs' values is checked against variables.safetensors, which is its
        result on the bundled init inputs."""
        if given is not None or not self.bundle_variables:
            return init_variables or self.plain_init()
        return None

    def variables(self, given, init_shapes):
        """(the variables to bundle, module.init's variables or None when given)."""
        if given is None:
            variables = init_variables = self.plain_init()
        else:
            variables, init_variables = canonical_arrays(to_plain(given), "variable", "variables"), None
        problem = variables_difference(variables, init_shapes)
        if problem:
            raise ValueError(f"the given variables do not match what module.init ({self.title}) "
                             f"produces:\n{problem}")
        return variables, init_variables

    def export_init(self, init_shapes, files) -> dict:
        """init.jaxexport and the manifest's init entry (with inputs_file when init reads its
        inputs' values: its module_kept_var_idx keeps an input)."""
        args = [spec(None, KEY_SDS, role="key")] + [
            spec(n, x, role="input") for n, x in named_leaves(self.init_inputs, "inputs")]
        results = [spec(n, x, role="param" if n.split("/", 1)[0] == "params" else "state")
                   for n, x in named_leaves(init_shapes, "variables")]
        avals = (KEY_SDS, sds(self.init_inputs))
        c = export_computation(self.fns.init, "init", (), avals, self.platforms,
                               self._shardings(avals, args, results, replicated_inputs=True))
        check_exported(c.exp, args, results)
        files["init.jaxexport"] = c.data
        self.calling_convention_version = int(c.exp.calling_convention_version)
        entry = {"file": "init.jaxexport",
                 "inputs": [spec(n, x) for n, x in named_leaves(self.init_inputs, "inputs")],
                 "args": args, "results": results}
        if any(i >= 1 for i in c.exp.module_kept_var_idx):
            entry["inputs_file"] = INIT_INPUTS_FILE
        entry["custom_call_targets"] = c.custom_call_targets
        return entry

    def _shardings(self, avals, args, results, replicated_inputs=False):
        """For export_computation on a mesh: fn -> (in_shardings, out_shardings); None on one
        device. Init's inputs are replicated (init mostly ignores them)."""
        if self.plan is None:
            return None
        inputs = (lambda n: jax.sharding.PartitionSpec()) if replicated_inputs else None
        return lambda fn: self.plan.jit_shardings(fn, avals, args, results, inputs=inputs)

    # ---- inference and training per batch size -------------------------------------
    def _modes(self):
        return (("inference", self.fns.inference, (1,), False),
                ("training", self.fns.training, (1, 2), True))

    def export_modes(self, params, state, files):
        """Each mode at each batch size: files, manifest entries, and the output shapes."""
        p_sds, s_sds = sds(params), sds(state)
        try:
            jax.eval_shape(self.fns.inference, p_sds, s_sds, sds(self.sample_inputs))
        except (StateError, OutputTypeError):
            raise
        except Exception as e:  # noqa: BLE001
            raise input_error(self.module, self.method, self.sample_inputs, e,
                              what=f"inference ({self.title})") from e
        stem = file_stem(method_name_of(self.method))
        entries: dict[str, list[dict]] = {"inference": [], "training": []}
        shapes: dict[str, dict[int, Any]] = {"inference": {}, "training": {}}
        for b in self.batch_sizes:
            x_sds = with_batch(self.sample_inputs, b)
            for mode, fn, donate, with_key in self._modes():
                avals = (p_sds, s_sds, KEY_SDS, x_sds) if with_key else (p_sds, s_sds, x_sds)
                outputs, new_state = jax.eval_shape(fn, *avals)[:2]
                if _avals_list(new_state) != _avals_list(state):
                    raise ValueError(f"{mode}: the new state's shapes/dtypes differ from the state's")
                shapes[mode][b] = outputs
                key = [spec(None, KEY_SDS, role="key")] if with_key else []
                args = ([spec(n, x, role="param") for n, x in named_leaves({"params": params}, "params")]
                        + [spec(n, x, role="state") for n, x in named_leaves(state, "state")] + key
                        + [spec(n, x, role="input") for n, x in named_leaves(x_sds, "inputs")])
                results = ([spec(n, x, role="output") for n, x in named_leaves(outputs, "outputs")]
                           + [spec(n, x, role="state") for n, x in named_leaves(new_state, "state")] + key)
                c = export_computation(fn, f"{stem}.{mode}", donate, avals, self.platforms,
                                       self._shardings(avals, args, results))
                check_exported(c.exp, args, results)
                fname = f"{stem}.{mode}.b{b}.jaxexport"
                files[fname] = c.data
                entry = {"batch_size": b, "file": fname, "args": args, "results": results,
                         "custom_call_targets": c.custom_call_targets}
                if self.hoist and self.plan is None and mode == "inference":
                    h = self.export_hoisted(params, state, x_sds, args, results, b, files)
                    if h is not None:
                        entry["hoisted"] = h
                if self.frozen and mode == "inference" and b in self.frozen_sizes:
                    entry["frozen"] = {"batch_size": b,
                                       **self.export_frozen(params, state, x_sds, args, results, fname, files)}
                entries[mode].append(entry)
        return entries, shapes

    def export_hoisted(self, params, state, x_sds, args, results, b, files) -> dict | None:
        """Inference split into a params-only prologue and a per-call body (hoist.py), checked
        on the sample inputs against the inference it was split from; None when there is no
        params-only work."""
        from .hoist import example_like, hoisted_entry
        return hoisted_entry(self.fns.inference, sds(params), sds(state), x_sds,
                             stem=file_stem(method_name_of(self.method)), batch_size=b, args=args,
                             results=results, platforms=self.platforms, files=files,
                             example=(params, state, example_like(x_sds, self.sample_inputs)),
                             check=check_same_outputs, export_computation=export_computation,
                             check_exported=check_exported)

    def export_frozen(self, params, state, x_sds, args, results, fname, files) -> dict:
        """Inference with the bundled params compiled in as constants: the same results from
        the state and inputs alone (an execution then passes PJRT no params; see
        docs/exporter.md). Checked against the inference with params as arguments."""
        frozen_params = jax.tree_util.tree_map(np.asarray, params)

        def frozen(state, inputs):
            return self.fns.inference(frozen_params, state, inputs)

        s_sds = sds(state)
        c = export_computation(frozen, f"{file_stem(method_name_of(self.method))}.inference.frozen",
                               (0,), (s_sds, x_sds), self.platforms)
        f_args = [a for a in args if a["role"] != "param"]
        check_exported(c.exp, f_args, results)
        x = jax.tree_util.tree_map(lambda t, s: np.resize(np.asarray(s), t.shape).astype(t.dtype),
                                   x_sds, self.sample_inputs)
        # against the plain-Flax oracle: its compile is shared with the golden data and the
        # padding check (a jit of fns.inference here compiled the model once more per size)
        check_frozen_outputs(self.fns.plain_inference(params, state, x), c.exp.call(state, x), fname)
        name = fname.replace(".jaxexport", ".frozen.jaxexport")
        files[name] = c.data
        return {"file": name, "args": f_args, "results": results, "custom_call_targets": c.custom_call_targets}

    def output_batch_axes(self, params, state, shapes, batched_state) -> dict[str, dict[str, bool]]:
        """{mode: {output name: batched}} from the shapes at every exported size plus one
        probe size (state at the probe size from init when the state has the batch axis)."""
        probe = max(self.batch_sizes) + 1
        try:
            probe_state = sds(state)
            if batched_state:
                probe_state = {c: v for c, v in jax.eval_shape(
                    self.fns.init, KEY_SDS, with_batch(self.init_inputs, probe)).items() if c != "params"}
            x_sds = with_batch(self.sample_inputs, probe)
            for mode, fn, _, with_key in self._modes():
                avals = (sds(params), probe_state, KEY_SDS, x_sds) if with_key else (sds(params), probe_state, x_sds)
                shapes[mode][probe] = jax.eval_shape(fn, *avals)[0]
        except Exception:  # noqa: BLE001 - a model fixed to its exported sizes: judge by those
            for mode in shapes:
                shapes[mode].pop(probe, None)
        return {mode: batched_names(shapes[mode], "outputs") for mode in shapes}

    def batching(self, params, state, batched_outputs, batched_state) -> dict:
        """The method's `batching` entry: stateful (from the jaxpr), paddable (run in JAX)."""
        p_sds, s_sds = sds(params), sds(state)
        jaxpr = jax.make_jaxpr(self.fns.inference)(p_sds, s_sds, sds(self.sample_inputs))
        n_out = len(jax.tree_util.tree_leaves(jax.eval_shape(
            self.fns.inference, p_sds, s_sds, sds(self.sample_inputs))[0]))
        writes = written_state(jaxpr, len(jax.tree_util.tree_leaves(params)),
                               len(jax.tree_util.tree_leaves(state)), n_out)

        return padding_check(self.fns.plain_inference, params, state, self.sample_inputs, sizes=self.batch_sizes,
                             batched_outputs=batched_outputs, batched_state=batched_state,
                             stateful=any(writes), check=self.check_batching)

    # ---- golden (plain module.init / module.apply, not the functions above) ------------
    def golden(self, variables, init_variables, extra_golden) -> dict[str, np.ndarray]:
        g: dict[str, np.ndarray] = {}
        for n, x in named_leaves(self.sample_inputs, "inputs"):
            g[f"inputs/{n}"] = np.asarray(x)
        on_mesh, inputs = variables, self.sample_inputs
        if self.plan is not None:  # plain JAX on the same mesh
            on_mesh, inputs = self.plan.place(variables, inputs)
        params, state = split_variables(on_mesh)
        out, new_state = self.fns.plain_inference(params, state, inputs)
        for n, x in named_leaves(out, "outputs"):
            g[f"inference/{n}"] = np.asarray(x)
        for n, x in named_leaves(new_state, "state"):
            g[f"inference_state/{n}"] = np.asarray(x)
        K = self.K0
        cur = state
        for step in range(2):
            K, k = jax.random.split(K)
            out, cur = self.fns.plain_training(params, cur, inputs, k)
            for n, x in named_leaves(out, "outputs"):
                g[f"training/{step}/{n}"] = np.asarray(x)
        for n, x in named_leaves(cur, "state"):
            g[f"after_training/{n}"] = np.asarray(x)
        g["key/after_training"] = np.asarray(jax.random.key_data(K))
        if init_variables is not None:  # variables.safetensors is not init's result
            g.update(init_golden(named_leaves(init_variables, "variables")))
        if callable(extra_golden):
            extra_golden = extra_golden(variables)
        for n, x in (extra_golden or {}).items():
            if n in g:
                raise ValueError(f"extra_golden name {n!r} clashes with a standard golden name")
            g[n] = np.asarray(x)
        return g

    # ---- manifest -----------------------------------------------------------------
    def manifest(self, variables, origin, init_entry, outputs, batching, entries) -> dict:
        mname = method_name_of(self.method)
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "module": type(self.module).__name__,
            "seed": self.seed,
            "key": {"impl": KEY_IMPL, "dtype": "uint32", "shape": [2],
                    "initial": [int(v) for v in np.asarray(jax.random.key_data(self.K0))]},
            "rng_streams": list(self.fns.rng_streams),
            "platforms": list(self.platforms),
            "default_method": mname,
            "producer": {"jax": jax.__version__, "flax": flax.__version__,
                         "calling_convention_version": self.calling_convention_version},
            "variables_origin": origin,
            "variables": [{"name": n, "collection": n.split("/", 1)[0], "dtype": dtype_name(x.dtype),
                           "shape": [int(s) for s in x.shape]} for n, x in named_leaves(variables, "variables")],
            **({"init": init_entry} if init_entry is not None else {}),
            "methods": {
                mname: {
                    "takes_training": self.fns.takes_training,
                    "inputs": [spec(n, x) for n, x in named_leaves(self.sample_inputs, "inputs")],
                    "outputs": outputs,
                    "batching": batching,
                    "inference": entries["inference"],
                    "training": entries["training"],
                }
            },
            **self.manifest_extra(),
        }

    def manifest_extra(self) -> dict:
        """More top-level manifest sections (NNX's `nnx`)."""
        return {}
