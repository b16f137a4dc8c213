"""manifest.json text: deterministic, one line per flat entry (docs/bundle-format.md)."""

from __future__ import annotations

import json


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


def manifest_bytes(manifest: dict) -> bytes:
    return (dumps_json(manifest) + "\n").encode("utf-8")
