"""An NNX module's state as the bundle's named variables, and back (docs/bundle-format.md,
"NNX variables").

Every `nnx.Variable` leaf of `nnx.split(module)`'s state is named `<collection>/<state path>`,
the path's components joined with `/`:
- `params` for `nnx.Param` and its subclasses: the trainable params;
- `rngs` for the RNG state of `nnx.Rngs` streams (`nnx.RngKey`, `nnx.RngCount`);
- the registered Linen-style name of other registered types (`nnx.variable_name_from_type`:
  `batch_stats` for `nnx.BatchStat`, `cache` for `nnx.Cache`, ...);
- otherwise the Variable class name in snake_case (`Count` -> `count`).
So `params/linear1/kernel`, `batch_stats/bn/mean`, `rngs/dropout/rngs/key`, `count/calls`.
Dropping the first component gives back the state path, which is how `nnx.update` loads
`variables.safetensors` into the module again. Typed RNG keys (`key<fry>`) are stored as their
key data (`uint32[2]` for threefry) and wrapped again with their impl on the way in.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import jax
from flax import nnx

PARAMS = "params"
RNGS = "rngs"


class StateError(ValueError):
    """A call created, removed or retyped a variable, or wrote a param."""


def snake_case(name: str) -> str:
    """`BatchStat` -> `batch_stat`, `MyCounter2` -> `my_counter2`."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


def collection_of(var_type: type) -> str:
    """The collection (first name component) of a Variable type."""
    if issubclass(var_type, nnx.Param):
        return PARAMS
    if issubclass(var_type, nnx.RngState):
        return RNGS
    try:
        name = nnx.variable_name_from_type(var_type)
    except ValueError:  # not registered: the class name
        name = snake_case(var_type.__name__)
    if name == PARAMS:
        raise ValueError(f"variable type {var_type.__name__} would be named {PARAMS!r} but is not an "
                         "nnx.Param: rename it, or make it a subclass of nnx.Param if it is trainable")
    return name


def is_key(x) -> bool:
    """A typed PRNG key array (`key<fry>`)."""
    return jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def path_name(path) -> str:
    return "/".join(str(p) for p in path)


@dataclasses.dataclass(frozen=True)
class Leaf:
    """One Variable of the state: its state path, type and collection, and for a typed key
    its impl."""
    path: tuple
    type: type
    collection: str
    key_impl: str | None
    tag: str | None

    @property
    def name(self) -> str:
        return f"{self.collection}/{path_name(self.path)}"


@dataclasses.dataclass
class StateLayout:
    """The Variables of a module's state in `nnx.to_flat_state` order, and the conversions
    between an `nnx.State` and the variables dict `{collection: {path...: array}}` that the
    exported computations take (typed keys as key data)."""
    leaves: list[Leaf]
    template: Any  # the flat state the layout was read from (Variables to `replace`)

    @classmethod
    def of(cls, state) -> "StateLayout":
        flat = list(nnx.to_flat_state(state))
        leaves = []
        for path, var in flat:
            x = var.get_value()
            impl = str(jax.random.key_impl(x)) if is_key(x) else None
            tag = var.get_metadata().get("tag") if isinstance(var, nnx.RngState) else None
            leaves.append(Leaf(tuple(path), type(var), collection_of(type(var)), impl, tag))
        layout = cls(leaves, flat)
        names = [l.name for l in leaves]
        if len(set(names)) != len(names):
            raise ValueError(f"two variables have the same name in {names}")
        return layout

    @property
    def names(self) -> list[str]:
        return [l.name for l in self.leaves]

    def rng_tags(self) -> list[str]:
        """The tags of the module's RNG streams (`nnx.Rngs` stream names), sorted."""
        return sorted({l.tag for l in self.leaves if issubclass(l.type, nnx.RngKey) and l.tag})

    def key_leaves(self) -> list[Leaf]:
        return [l for l in self.leaves if l.key_impl is not None]

    # ---- state -> variables dict -----------------------------------------------
    def variables(self, state, *, raw: dict | None = None) -> dict:
        """The variables dict of `state` (an nnx.State of this layout). `raw` maps id() of a
        key array wrapped by `state_of` to (that array, its key data): a key that the call
        passed through comes out as that same key data, so the computation shows no write."""
        flat = list(nnx.to_flat_state(state))
        self.check(flat)
        out: dict = {}
        for leaf, (_, var) in zip(self.leaves, flat):
            x = var.get_value()
            if leaf.key_impl is not None:
                kept = raw.get(id(x)) if raw is not None else None
                x = kept[1] if kept is not None and kept[0] is x else jax.random.key_data(x)
            node = out.setdefault(leaf.collection, {})
            for p in leaf.path[:-1]:
                node = node.setdefault(str(p), {})
            node[str(leaf.path[-1])] = x
        return out

    def check(self, flat) -> None:
        """`flat` (a flat state) has exactly this layout's variables and types."""
        got = [(tuple(p), type(v)) for p, v in flat]
        want = [(l.path, l.type) for l in self.leaves]
        if got != want:
            added = sorted(path_name(p) + f" ({t.__name__})" for p, t in set(got) - set(want))
            gone = sorted(path_name(p) + f" ({t.__name__})" for p, t in set(want) - set(got))
            raise StateError(
                "the call changed the module's variables (NNX state must keep its structure "
                "between calls: no new Variables such as `sow` intermediates, none removed or "
                f"retyped); new: {added or 'none'}, gone: {gone or 'none'}")

    # ---- variables dict -> state -------------------------------------------------
    def state_of(self, variables: dict, *, raw: dict | None = None):
        """The nnx.State holding `variables`' values (typed keys wrapped again). When `raw` is
        a dict, it records id(wrapped key) -> (wrapped key, key data) for `variables`."""
        flat = []
        for leaf, (_, var) in zip(self.leaves, self.template):
            node = variables[leaf.collection]
            for p in leaf.path:
                node = node[str(p)]
            x = node
            if leaf.key_impl is not None:
                data = x
                x = jax.random.wrap_key_data(data, impl=leaf.key_impl)
                if raw is not None:
                    raw[id(x)] = (x, data)
            flat.append((leaf.path, var.replace(x)))
        return nnx.from_flat_state(flat)

    def sds(self) -> dict:
        """ShapeDtypeStructs of the variables dict (typed keys as key data)."""
        out: dict = {}
        for leaf, (_, var) in zip(self.leaves, self.template):
            x = var.get_value()
            if leaf.key_impl is not None:
                x = jax.eval_shape(jax.random.key_data, x)
            node = out.setdefault(leaf.collection, {})
            for p in leaf.path[:-1]:
                node = node.setdefault(str(p), {})
            node[str(leaf.path[-1])] = jax.ShapeDtypeStruct(x.shape, x.dtype)
        return out
