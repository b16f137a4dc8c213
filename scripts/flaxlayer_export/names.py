"""PyTree leaf names and the manifest's slot entries (docs/bundle-format.md, "Names")."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np


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


def dtype_name(dt) -> str:
    return np.dtype(dt).name


def spec(name: str | None, x, **extra) -> dict:
    """A manifest slot: `extra` (e.g. role) first, then name, dtype and shape."""
    d = dict(extra)
    if name is not None:
        d["name"] = name
    d["dtype"] = dtype_name(x.dtype)
    d["shape"] = [int(s) for s in x.shape]
    return d


def role_specs(tree, role: str, bare: str) -> list[dict]:
    return [spec(n, x, role=role) for n, x in named_leaves(tree, bare)]


def describe(tree) -> str:
    """Short text of a PyTree of arrays for error messages: `{x: float32[2, 3]}`."""
    def leaf(x):
        return f"{dtype_name(x.dtype)}{list(x.shape)}"
    if isinstance(tree, dict):
        return "{" + ", ".join(f"{k}: {describe(v)}" for k, v in tree.items()) + "}"
    if isinstance(tree, (tuple, list)):
        o, c = ("(", ")") if isinstance(tree, tuple) else ("[", "]")
        return o + ", ".join(describe(v) for v in tree) + (",)" if isinstance(tree, tuple) and len(tree) == 1 else c)
    if hasattr(tree, "shape") and hasattr(tree, "dtype"):
        return leaf(tree)
    return type(tree).__name__
