"""A method's outputs as the PyTree kinds a bundle holds: arrays in tuples, lists, dicts.

A method may return a *dataclass-like* PyTree with named fields (a `flax.struct.dataclass`,
every Hugging Face `ModelOutput` such as `FlaxMaskedLMOutput`, a `jax.tree_util.
register_dataclass` type, a namedtuple): its fields become a dict by field name (fields that
are None, as ModelOutput leaves out, are dropped), so the outputs are named
`logits`, `hidden_states/0`, ... in the manifest and at the runtime. Any other custom PyTree
node (one registered without field names) cannot be exported: `OutputTypeError` names its
type and where it is, and says to return a dict.
"""

from __future__ import annotations

import jax


class OutputTypeError(TypeError):
    """A method's outputs hold a custom PyTree node without named fields."""


def _is_leaf(x) -> bool:
    return jax.tree_util.treedef_is_leaf(jax.tree_util.tree_structure(x))


def _children(x):
    """[(key, child)] of the PyTree node `x`, one level down."""
    flat, _ = jax.tree_util.tree_flatten_with_path(x, is_leaf=lambda y: y is not x)
    return [(path[0], child) for path, child in flat]


def plain_outputs(tree, where: str = "outputs"):
    """`tree` with every dataclass-like node replaced by a dict of its fields (see the
    module docstring); tuples, lists, dicts, None and arrays stay."""
    if tree is None or _is_leaf(tree):
        return tree
    t = type(tree)
    if t in (tuple, list):
        return t(plain_outputs(c, f"{where}/{i}") for i, c in enumerate(tree))
    if t is dict:
        return {k: plain_outputs(v, f"{where}/{k}") for k, v in tree.items()}
    kids = _children(tree)
    if all(isinstance(k, jax.tree_util.GetAttrKey) for k, _ in kids):
        return {k.name: plain_outputs(c, f"{where}/{k.name}") for k, c in kids if c is not None}
    if isinstance(tree, dict) and all(isinstance(k, jax.tree_util.DictKey) for k, _ in kids):
        return {str(k.key): plain_outputs(c, f"{where}/{k.key}") for k, c in kids if c is not None}
    name = f"{t.__module__}.{t.__qualname__}"
    raise OutputTypeError(
        f"{where} is a {name}, a custom PyTree node without named fields, which a bundle "
        "cannot hold: return a dict (or a tuple/list) of arrays instead, e.g. "
        "{'logits': ..., 'hidden': ...}; dataclass-like types (flax.struct.dataclass, "
        "jax.tree_util.register_dataclass, namedtuples) are exported as dicts by field name")

