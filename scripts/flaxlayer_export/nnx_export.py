"""export_flax for Flax NNX modules (docs/exporter.md, "NNX modules").

An NNX module keeps its variables, its mode and its RNG streams in itself. The exporter
turns it into the same pure computations as a linen module's:
- `graphdef, state = nnx.split(view)` once per mode, the view made as `model.eval()` /
  `model.train()` make it (`deterministic` and `use_running_average` set through `nnx.view`
  and `set_attributes`), so the mode is fixed in each computation's graph;
- each computation merges the graph with its `(params, state)` arguments, calls the method,
  splits the module again and returns the outputs and the new non-param state;
- `nnx.Param` leaves are the params; every other Variable (batch stats, caches, counters, the
  `RngKey` / `RngCount` of `nnx.Rngs` streams) is state, written back after every call;
- a training call splits the layer key (`K, k = split(K)`) and reseeds the module's streams
  named in `rng_streams` from `k` with `nnx.reseed`, so the layer's seed and key drive the
  random draws as for linen; streams not named advance through their own state.
"""

from __future__ import annotations

import dataclasses
import types
from typing import Any, Callable

import jax
import numpy as np
from flax import nnx

from .batching import resolve_batch_sizes
from .kinds import NNX_FACTORY, module_kind
from .linen import DEFAULT_MAX_BATCH, KEY_IMPL, _LinenExport, frozen_sizes, prepare_inputs
from .methods import check_signature, takes_training
from .names import named_leaves
from .nnx_state import PARAMS, StateError, StateLayout
from .outputs import plain_outputs

MODES = ("inference", "training")


def _mode_attributes(training: bool) -> dict[str, bool]:
    return {"deterministic": not training, "use_running_average": not training}


def mode_view(module: nnx.Module, training: bool) -> nnx.Module:
    """A view of `module` in one mode, as `module.train()` / `module.eval()` would set it,
    without changing `module`: `nnx.view` (each submodule's `set_view` hook) and then
    `set_attributes` on the view (submodules that only have the attributes). The view shares
    the module's Variables."""
    attrs = _mode_attributes(training)
    view = nnx.view(module, **attrs, raise_if_not_found=False)
    view.set_attributes(**attrs, raise_if_not_found=False)
    return view


@dataclasses.dataclass
class NnxModel:
    """An NNX module ready to export: the instance whose state is bundled, the factory when
    given (then init is exported), where the state came from, its layout, and one graph per
    mode."""
    module: nnx.Module
    make: Callable | None
    origin: str
    layout: StateLayout
    graphdefs: dict[str, Any]

    def variables(self) -> dict:
        """The bundled variables dict (numpy leaves, typed keys as key data)."""
        return jax.tree_util.tree_map(np.asarray, self.layout.variables(nnx.state(self.module)))


def _factory_init(make: Callable):
    """init(key, inputs) -> variables: builds the module as make(rngs=nnx.Rngs(key))."""
    def init(key, inputs):
        del inputs  # NNX builds variables from the constructor's arguments, not from inputs
        model = make(rngs=nnx.Rngs(jax.random.wrap_key_data(key, impl=KEY_IMPL)))
        if not isinstance(model, nnx.Module):
            raise TypeError(f"make(rngs) must return an nnx.Module, got {type(model).__name__}")
        return StateLayout.of(nnx.state(model)).variables(nnx.state(model))
    return init


def _flat_values(state) -> dict:
    """{path joined by '/': value} of an nnx.State's Variables."""
    out = {}
    for path, v in nnx.to_flat_state(state):
        value = v.get_value() if hasattr(v, "get_value") else getattr(v, "value", v)
        out["/".join(str(p) for p in path)] = value
    return out


def given_state_difference(module: nnx.Module, variables, *, first: int = 5) -> str:
    """What in the given nnx.State does not fit `module` (a few lines; "" when it fits):
    leaves the module does not have, and leaves whose shape or dtype differ. Leaves left out
    keep the module's values (nnx.update takes a part of the state)."""
    try:
        given = _flat_values(variables)
    except Exception:  # noqa: BLE001 - not an nnx.State: nnx.update says what it takes
        return ""
    have = _flat_values(nnx.state(module))
    lines = []
    extra = sorted(n for n in given if n not in have)
    if extra:
        more = f" (and {len(extra) - first} more)" if len(extra) > first else ""
        lines.append(f"{len(extra)} leaves the module does not have: {', '.join(extra[:first])}{more}")
    def aval(x):  # typed keys (RNG state) have a dtype numpy cannot hold: keep JAX's
        return tuple(getattr(x, "shape", np.shape(x))), str(getattr(x, "dtype", type(x).__name__))

    wrong = []
    for n in sorted(set(given) & set(have)):
        (gs, gd), (hs, hd) = aval(given[n]), aval(have[n])
        if (gs, gd) != (hs, hd):
            wrong.append(f"{n}: given {gd}{list(gs)}, the module has {hd}{list(hs)}")
    if wrong:
        more = f"\n  (and {len(wrong) - first} more)" if len(wrong) > first else ""
        lines.append(f"{len(wrong)} leaves differ in shape or dtype:\n  " + "\n  ".join(wrong[:first]) + more)
    return "\n".join(lines)


def prepare(module, *, seed: int, variables=None) -> NnxModel:
    """The NnxModel of an instance or a factory (built under `seed` and its init values
    computed by the jitted init, so they equal what the exported init gives)."""
    make = None
    if module_kind(module) == NNX_FACTORY:
        make = module
        k0 = jax.random.key(seed, impl=KEY_IMPL)
        module = make(rngs=nnx.Rngs(k0))
        if not isinstance(module, nnx.Module):
            raise TypeError(f"make(rngs) must return an nnx.Module, got {type(module).__name__}")
        values = jax.jit(_factory_init(make))(jax.random.key_data(k0), None)
        layout = StateLayout.of(nnx.state(module))
        module = nnx.merge(nnx.graphdef(module), layout.state_of(jax.tree_util.tree_map(np.asarray, values)))
        origin = "init"
    else:
        module = nnx.clone(module)
        origin = "module"
    if variables is not None:
        problem = given_state_difference(module, variables)
        if problem:
            raise ValueError(f"the given variables do not fit the {type(module).__name__} module:\n{problem}")
        nnx.update(module, variables)
        origin = "given"
    layout = StateLayout.of(nnx.state(module))
    graphdefs = {}
    for mode in MODES:
        g, state = nnx.split(mode_view(module, mode == "training"))
        layout.check(list(nnx.to_flat_state(state)))  # a view has the module's variables
        graphdefs[mode] = g
    return NnxModel(module, make, origin, layout, graphdefs)


def resolve_streams(model: NnxModel, rng_streams) -> tuple[str, ...]:
    """The streams reseeded from the layer key: all of the module's stream tags by default;
    named ones must exist."""
    tags = model.layout.rng_tags()
    if rng_streams is None:
        return tuple(tags)
    rng_streams = tuple(rng_streams)
    missing = [s for s in rng_streams if s not in tags]
    if missing:
        raise ValueError(f"rng_streams {list(missing)} are not streams of the module (its nnx.Rngs "
                         f"streams: {tags}; a module built with nnx.Rngs(0) has only 'default')")
    return rng_streams


def nnx_functions(model: NnxModel, method, rng_streams: tuple[str, ...]):
    """The exported functions and their plain-NNX counterparts for the golden data (the same
    namespace as linen.module_functions)."""
    layout = model.layout
    training_arg = takes_training(model.module, method)

    def call(module, inputs, training: bool):
        kw = {"training": training} if training_arg else {}
        if method is None:
            out = module(inputs, **kw)
        elif isinstance(method, str):
            out = getattr(module, method)(inputs, **kw)
        else:
            out = method(module, inputs, **kw)
        return plain_outputs(out)

    def run(mode, params, state, inputs, k=None):
        raw: dict = {}
        module = nnx.merge(model.graphdefs[mode], layout.state_of({PARAMS: params, **state}, raw=raw))
        if k is not None and rng_streams:
            nnx.reseed(module, **{s: k for s in rng_streams})
        out = call(module, inputs, mode == "training")
        new = layout.variables(nnx.state(module), raw=raw)
        new_params = new.pop(PARAMS, {})
        written = [n for (n, a), (_, b) in zip(named_leaves(new_params, PARAMS),
                                                 named_leaves(params, PARAMS)) if a is not b]
        if written:
            raise StateError(f"the call wrote the nnx.Param {written[0]!r}; params are trainable "
                             "and a call may not write them (hold such a value in another "
                             "nnx.Variable type)")
        return out, {c: new.get(c, {}) for c in state}

    def inference(params, state, inputs):
        return run("inference", params, state, inputs)

    def apply_training(params, state, inputs, k):
        return run("training", params, state, inputs, k)

    def training(params, state, key, inputs):
        K = jax.random.wrap_key_data(key, impl=KEY_IMPL)
        K, k = jax.random.split(K)
        out, new_state = apply_training(params, state, inputs, k)
        return out, new_state, jax.random.key_data(K)

    # plain NNX: the module itself, called under nnx.jit
    jit_call = {mode: nnx.jit(lambda m, x, mode=mode: call(m, x, mode == "training")) for mode in MODES}

    def plain(mode, params, state, inputs, k=None):
        module = nnx.merge(model.graphdefs[mode], layout.state_of({PARAMS: params, **state}))
        if k is not None and rng_streams:
            nnx.reseed(module, **{s: k for s in rng_streams})
        out = jit_call[mode](module, inputs)
        new = layout.variables(nnx.state(module))
        new.pop(PARAMS, None)
        return out, {c: jax.tree_util.tree_map(np.asarray, new.get(c, {})) for c in state}

    return types.SimpleNamespace(
        init=_factory_init(model.make) if model.make is not None else None,
        inference=inference, training=training, apply_inference=inference,
        apply_training=apply_training, takes_training=training_arg, rng_streams=rng_streams,
        plain_inference=lambda p, s, x: plain("inference", p, s, x),
        plain_training=lambda p, s, x, k: plain("training", p, s, x, k),
        oracle_init=jax.jit(_factory_init(model.make)) if model.make is not None else None)


def manifest_section(model: NnxModel, rng_streams) -> dict:
    """The manifest's `nnx` section: the mode attributes, how training draws random numbers
    ("layer_key": streams reseeded from the layer key; "module": the module's own streams;
    "none": no stream), and the typed-key variables with their impl and stream tag."""
    return {
        "modes": {mode: _mode_attributes(mode == "training") for mode in MODES},
        "rng": "layer_key" if rng_streams else "module" if model.layout.rng_tags() else "none",
        "rng_keys": [{"name": l.name, "impl": l.key_impl, "tag": l.tag} for l in model.layout.key_leaves()],
    }


def nnx_export(module, sample_inputs, *, method=None, variables=None, seed=0, rng_streams=None,
               init_inputs=None, platforms=("cpu",), batch_sizes=None,
               max_batch=DEFAULT_MAX_BATCH, frozen=False, frozen_batch_sizes=None, batching=True,
               bundle_variables=True, hoist=True) -> "_NnxExport":
    """The export of an NNX module (an instance or a factory), ready to `build`."""
    if init_inputs is not None:
        raise ValueError("init_inputs is for linen modules: an NNX module's init builds its "
                         "variables from the constructor's arguments, not from inputs")
    model = prepare(module, seed=int(seed), variables=variables)
    check_signature(model.module, method)
    sample_inputs, init_inputs, sample_batch = prepare_inputs(sample_inputs, None)
    streams = resolve_streams(model, rng_streams)
    sizes = resolve_batch_sizes(batch_sizes, max_batch, sample_batch)
    return _NnxExport(module=model.module, method=method, fns=nnx_functions(model, method, streams),
                      seed=int(seed), platforms=tuple(platforms), sample_inputs=sample_inputs,
                      init_inputs=init_inputs, sample_batch=sample_batch,
                      batch_sizes=sizes, model=model, frozen=bool(frozen),
                      frozen_sizes=frozen_sizes(frozen, frozen_batch_sizes, sizes),
                      check_batching=bool(batching), bundle_variables=bool(bundle_variables),
                      hoist=bool(hoist))


@dataclasses.dataclass
class _NnxExport(_LinenExport):
    """The linen export's steps, with the NNX module's variables, init and manifest section."""
    model: Any = None

    def init_shapes(self):
        return self.model.layout.sds()

    def state_batch_axis(self, init_shapes):
        return []  # the module built its state; calls at other batch sizes cannot change it

    def variables(self, given, init_shapes):
        return self.model.variables(), None

    def plain_init(self):
        values = self.fns.oracle_init(jax.random.key_data(self.K0), self.init_inputs)
        return jax.tree_util.tree_map(np.asarray, values)

    def origin(self, given) -> str:
        return self.model.origin if self.bundle_variables else "init-only"

    def check_init_only(self, given) -> None:
        if self.model.make is None or self.model.origin != "init":
            raise ValueError("bundle_variables=False needs variables that init builds again: "
                             "export a factory make(rngs) without variables=, not an instance")
        super().check_init_only(None)

    def golden_init(self, given, init_entry, init_variables):
        if self.model.make is not None and (self.model.origin != "init" or not self.bundle_variables):
            return self.plain_init()
        return None

    def export_init(self, init_shapes, files):
        if self.fns.init is None:
            return None  # an instance: nothing can build its variables again
        return super().export_init(init_shapes, files)

    def manifest_extra(self) -> dict:
        return {"nnx": manifest_section(self.model, self.fns.rng_streams)}
