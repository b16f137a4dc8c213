"""Several devices: a bundle exported on a mesh (docs/exporter.md, "Several devices").

    from jax.sharding import Mesh, PartitionSpec as P
    mesh = Mesh(np.array(jax.devices()[:4]).reshape(2, 2), ("data", "model"))
    export_flax(module, x, "bundles/m", mesh=mesh, input_sharding=P("data"),
                param_sharding=lambda name: P(None, "model") if name.endswith("kernel") else None)

Every computation is `jax.jit(fn, in_shardings=..., out_shardings=...)` with `NamedSharding`s
on the mesh, so its Exported runs on `mesh.size` devices (`nr_devices`) and records each
argument's and result's sharding, which the runtime reads. How each leaf is split:
- params: `param_sharding`, else Flax's partitioning metadata in the variables
  (`nn.with_partitioning` gives `nn.Partitioned`; `nn.with_logical_partitioning` gives
  `nn.LogicallyPartitioned`, mapped to mesh axes by `logical_rules`), else replicated;
- other collections (`batch_stats`, ...): `state_sharding`, else the metadata, else replicated;
- inputs: `input_sharding`, else replicated; outputs: `output_sharding`, else replicated;
- the RNG key, metrics: replicated; optimizer state (`export_train_step`): as the param it
  mirrors (`opt_state/0/mu/Dense_0/kernel` as `params/Dense_0/kernel`), else replicated.
A sharding is a `PartitionSpec` (every leaf alike), a PyTree of `PartitionSpec`s (or None,
replicated) matching the tree, or a function of the leaf's name in that tree (`Dense_0/kernel`
for params, `batch_stats/BatchNorm_0/mean` for state, `inputs` or `x` for inputs) returning a
`PartitionSpec` or None.

JAX sees as many devices as the process was started with: on CPU, set
`XLA_FLAGS=--xla_force_host_platform_device_count=8` before jax initializes (before the first
`import jax` that touches a backend) to export for up to 8 devices.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from .names import leaf_name, named_leaves

PARTITIONER = "shardy"
CPU_DEVICES_FLAG = "--xla_force_host_platform_device_count"


def _is_spec_leaf(x) -> bool:
    return x is None or isinstance(x, P)


def _as_spec(s, what: str) -> P:
    if s is None:
        return P()
    if isinstance(s, P):
        return s
    raise TypeError(f"{what}: a sharding must be a jax.sharding.PartitionSpec or None, got {s!r}")


def specs_by_name(given, tree, bare: str, what: str) -> dict[str, P]:
    """{leaf name: PartitionSpec} for every leaf of `tree` from a sharding in one of the three
    forms (see the module doc); None gives replicated leaves."""
    names = [n for n, _ in named_leaves(tree, bare)]
    if given is None:
        return {n: P() for n in names}
    if isinstance(given, P):
        return {n: given for n in names}
    if callable(given):
        return {n: _as_spec(given(n), f"{what} {n!r}") for n in names}
    flat, _ = jax.tree_util.tree_flatten_with_path(given, is_leaf=_is_spec_leaf)
    specs = {leaf_name(p, bare): _as_spec(s, f"{what} {leaf_name(p, bare)!r}") for p, s in flat}
    if sorted(specs) != sorted(names):
        raise ValueError(f"{what}: the partition specs are for leaves {sorted(specs)}, but the tree's "
                         f"leaves are {sorted(names)} (give a spec, or None, for each)")
    return specs


def spec_json(spec: P, rank: int) -> list:
    """A PartitionSpec as JSON, one entry per dimension: null (not split), an axis name, or a
    list of axis names (major first)."""
    entries = list(spec) + [None] * (rank - len(spec))
    return [list(e) if isinstance(e, tuple) else e for e in entries]


def check_divides(what: str, shape, spec: P, mesh: Mesh) -> None:
    """ValueError naming the leaf and the mesh axis when `spec` splits a dimension of `shape`
    unevenly (or names an axis the mesh lacks, or more dimensions than the leaf has)."""
    if len(spec) > len(shape):
        raise ValueError(f"{what} of shape {list(shape)}: partition spec {spec} splits {len(spec)} dimensions")
    for d, entry in enumerate(spec):
        axes = () if entry is None else entry if isinstance(entry, tuple) else (entry,)
        for a in axes:
            if a not in mesh.shape:
                raise ValueError(f"{what}: partition spec {spec} names mesh axis {a!r}, which is not in the "
                                 f"mesh {dict(mesh.shape)}")
        parts = int(np.prod([mesh.shape[a] for a in axes], dtype=np.int64))
        if shape[d] % parts:
            names = " x ".join(f"{a!r} (size {mesh.shape[a]})" for a in axes)
            raise ValueError(f"{what} of shape {list(shape)}: dimension {d} (size {shape[d]}) is split over "
                             f"mesh axis {names}, which does not divide it")


def batch_split(spec: P, mesh: Mesh) -> int:
    """Into how many parts `spec` splits the leading (batch) dimension."""
    if len(spec) == 0 or spec[0] is None:
        return 1
    axes = spec[0] if isinstance(spec[0], tuple) else (spec[0],)
    return int(np.prod([mesh.shape[a] for a in axes], dtype=np.int64))


def metadata_specs(module, method, init_inputs, rng_streams, train_kw, rules) -> dict[str, P]:
    """{variable name: PartitionSpec} from Flax's partitioning metadata in module.init's
    variables (`nn.Partitioned`: mesh axes; `nn.LogicallyPartitioned`: logical axes mapped by
    `rules`, else the box's rules, else the rules of flax's context); leaves without
    metadata are left out."""
    def init(x):
        k = jax.random.key(0)
        return module.init({"params": k, **{s: k for s in rng_streams}}, x, method=method, **train_kw)

    boxed = jax.eval_shape(init, init_inputs)
    flat, _ = jax.tree_util.tree_flatten_with_path(
        flax.core.unfreeze(boxed), is_leaf=lambda x: isinstance(x, flax.core.meta.AxisMetadata))
    out = {}
    for path, leaf in flat:
        if isinstance(leaf, nn.LogicallyPartitioned):
            out[leaf_name(path, "variables")] = nn.logical_to_mesh_axes(leaf.names, rules or leaf.rules) or P()
        elif isinstance(leaf, nn.Partitioned):
            out[leaf_name(path, "variables")] = P(*leaf.names)
    return out


@dataclasses.dataclass(frozen=True)
class MeshRequest:
    """What export_flax was asked for: the mesh and the shardings as given."""
    mesh: Mesh
    params: Any = None
    state: Any = None
    inputs: Any = None
    outputs: Any = None
    rules: Any = None

    def input_specs(self, sample_inputs) -> dict[str, P]:
        return specs_by_name(self.inputs, sample_inputs, "inputs", "input_sharding")

    def fit_batch_sizes(self, sizes: list[int], sample_inputs, auto: bool) -> list[int]:
        """With `auto` batch sizes, only those the inputs' batch split divides (the sample
        batch must be one); explicit sizes are kept (an uneven one is refused at export)."""
        parts = max([batch_split(s, self.mesh) for s in self.input_specs(sample_inputs).values()] + [1])
        return [b for b in sizes if b % parts == 0] if auto else sizes

    def resolve(self, ex, variables) -> "MeshPlan":
        """The plan for one export (`ex`: linen's _LinenExport) of `variables`."""
        params = variables.get("params", {})
        state = {c: v for c, v in variables.items() if c != "params"}
        train_kw = {"training": True} if ex.fns.takes_training else {}
        meta = metadata_specs(ex.module, ex.method, ex.init_inputs, ex.fns.rng_streams, train_kw, self.rules)
        specs = {f"params/{n}": s for n, s in specs_by_name(self.params, params, "params", "param_sharding").items()}
        specs.update(specs_by_name(self.state, state, "state", "state_sharding"))
        given = {"params": self.params, "state": self.state}
        for name in specs:
            if given["params" if name.startswith("params/") else "state"] is None and name in meta:
                specs[name] = meta[name]
        shapes = {n: tuple(x.shape) for n, x in named_leaves(variables, "variables")}
        for name, spec in specs.items():
            check_divides(f"variable {name!r}", shapes[name], spec, self.mesh)
        inputs = self.input_specs(ex.sample_inputs)
        outputs = self.outputs
        if not (outputs is None or isinstance(outputs, P) or callable(outputs)):
            sds = lambda t: jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), t)
            out_tree = jax.eval_shape(ex.fns.inference, sds(params), sds(state), sds(ex.sample_inputs))[0]
            outputs = specs_by_name(outputs, out_tree, "outputs", "output_sharding")
        return MeshPlan(mesh=self.mesh, variables={n: specs[n] for n in shapes}, shapes=shapes,
                        inputs=lambda n: inputs.get(n, P()),
                        outputs=lambda n: _by_name(outputs, n, "output_sharding"))


def _by_name(given, name: str, what: str) -> P:
    """One leaf's spec from a sharding given as None, a PartitionSpec, a function of the name
    or a {name: spec} table."""
    if given is None:
        return P()
    if isinstance(given, P):
        return given
    if callable(given):
        return _as_spec(given(name), f"{what} {name!r}")
    return _as_spec(given.get(name), f"{what} {name!r}")


@dataclasses.dataclass
class MeshPlan:
    """The partition spec of every argument and result slot of a bundle's computations."""
    mesh: Mesh
    variables: dict[str, P]
    shapes: dict[str, tuple]
    inputs: Callable[[str], P]
    outputs: Callable[[str], P]
    opt_state: dict[str, P] = dataclasses.field(default_factory=dict)

    def named(self, spec: P) -> NamedSharding:
        return NamedSharding(self.mesh, spec)

    def slot_spec(self, slot: dict, inputs: Callable[[str], P] | None = None) -> P:
        role, name = slot["role"], slot.get("name")
        if role in ("param", "state"):
            return self.variables[name]
        if role == "input":
            return (inputs or self.inputs)(name)
        if role == "output":
            return self.outputs(name)
        if role == "opt_state":
            return self.opt_state.get(name, P())
        return P()  # the key, metrics

    def jit_shardings(self, fn, avals, args: list[dict], results: list[dict], *,
                      inputs: Callable[[str], P] | None = None):
        """(in_shardings, out_shardings) for `jax.jit(fn)` at `avals` (a tuple of the
        positional arguments' trees), from the manifest slots of its flat arguments and
        results; each slot's split is checked against its shape."""
        def sharding(slot, what):
            spec = self.slot_spec(slot, inputs)
            name = f" {slot['name']!r}" if "name" in slot else ""
            check_divides(f"{fn.__name__}: {what} {slot['role']}{name}", slot["shape"], spec, self.mesh)
            return self.named(spec)

        out_tree = jax.tree_util.tree_structure(jax.eval_shape(fn, *avals))
        ins = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(avals),
                                           [sharding(s, "argument") for s in args])
        outs = jax.tree_util.tree_unflatten(out_tree, [sharding(s, "result") for s in results])
        return ins, outs

    def place(self, variables, inputs):
        """`variables` and `inputs` put on the mesh as the plan splits them (for the golden
        data: plain JAX on the same devices)."""
        v = jax.tree_util.tree_map_with_path(
            lambda p, x: jax.device_put(x, self.named(self.variables[leaf_name(p, "variables")])), variables)
        x = jax.tree_util.tree_map_with_path(
            lambda p, a: jax.device_put(a, self.named(self.inputs(leaf_name(p, "inputs")))), inputs)
        return v, x

    def with_train(self, opt_leaves: list[tuple[str, tuple]], batch: dict[str, P]) -> "MeshPlan":
        """The plan of export_train_step's computations: each optimizer-state leaf split as
        the param whose path ends its name (same shape), else replicated; batch leaves by
        name."""
        params = {n[len("params/"):]: (s, self.shapes[n]) for n, s in self.variables.items()
                  if n.startswith("params/")}
        opt = {}
        for name, shape in opt_leaves:
            match = [s for p, (s, sh) in params.items() if name.endswith("/" + p) and sh == tuple(shape)]
            opt[name] = match[0] if match else P()
        return dataclasses.replace(self, opt_state=opt, inputs=lambda n: batch.get(n, P()))

    def manifest_entry(self, manifest: dict, method: str) -> dict:
        """`manifest` with "partitioner" and "mesh" after "variables" (docs/bundle-format.md)."""
        mesh = {
            "axis_names": list(self.mesh.axis_names),
            "shape": [int(self.mesh.shape[a]) for a in self.mesh.axis_names],
            "variables": {n: spec_json(s, len(self.shapes[n])) for n, s in self.variables.items()},
        }
        m = manifest["methods"][method]
        mesh["inputs"] = {s["name"]: spec_json(self.inputs(s["name"]), len(s["shape"])) for s in m["inputs"]}
        mesh["outputs"] = {s["name"]: spec_json(self.outputs(s["name"]), len(s["shape"])) for s in m["outputs"]}
        out = {}
        for k, v in manifest.items():
            out[k] = v
            if k == "variables":
                out["partitioner"] = PARTITIONER
                out["mesh"] = mesh
        return out


def mesh_request(mesh, *, param_sharding=None, state_sharding=None, input_sharding=None,
                 output_sharding=None, logical_rules=None) -> MeshRequest | None:
    """The request of export_flax's mesh arguments, or None for a single-device export."""
    if mesh is None:
        given = {"param_sharding": param_sharding, "state_sharding": state_sharding,
                 "input_sharding": input_sharding, "output_sharding": output_sharding,
                 "logical_rules": logical_rules}
        named = [k for k, v in given.items() if v is not None]
        if named:
            raise ValueError(f"{', '.join(named)} given without a mesh: pass mesh=jax.sharding.Mesh(...)")
        return None
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh, got {type(mesh).__name__}")
    return MeshRequest(mesh=mesh, params=param_sharding, state=state_sharding, inputs=input_sharding,
                       outputs=output_sharding, rules=logical_rules)


def cpu_mesh(shape: tuple[int, ...], axis_names: tuple[str, ...]) -> Mesh:
    """A mesh of the first prod(shape) CPU devices; a clear error when JAX has fewer (the
    process must set XLA_FLAGS before jax initializes)."""
    n = int(np.prod(shape))
    devices = jax.devices("cpu")
    if len(devices) < n:
        raise RuntimeError(
            f"a {'x'.join(map(str, shape))} mesh needs {n} CPU devices but JAX has {len(devices)}: set "
            f"XLA_FLAGS={CPU_DEVICES_FLAG}={max(n, 8)} before jax initializes")
    return Mesh(np.array(devices[:n]).reshape(shape), axis_names)
