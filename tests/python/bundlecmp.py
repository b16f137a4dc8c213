"""Comparing a fresh export with the committed hlo/ (used by test_export.py, test_train.py).

Every file must be byte-identical, except golden.safetensors across machines: its floats are
JAX's outputs, and XLA's CPU code can differ by an ulp between CPUs (the committed golden data
may come from another machine). A golden file that differs in bytes must still hold the same
tensors (names, dtypes, shapes, metadata, integer values) with floats within 1e-6.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import ml_dtypes
import numpy as np

from flaxlayer_export import read_safetensors


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _read(data: bytes):
    with tempfile.NamedTemporaryFile(suffix=".safetensors", delete=False) as f:
        f.write(data)
    try:
        return read_safetensors(f.name)
    finally:
        os.unlink(f.name)


def golden_drift(fresh: bytes, committed: bytes) -> str | None:
    """None when the two golden files agree up to float ulps, else what differs."""
    (a, ma), (b, mb) = _read(fresh), _read(committed)
    if ma != mb or sorted(a) != sorted(b):
        return f"metadata or tensor names differ: {sorted(set(a) ^ set(b))}"
    for k in a:
        x, y = a[k], b[k]
        if x.dtype != y.dtype or x.shape != y.shape:
            return f"{k}: {x.dtype}{list(x.shape)} vs {y.dtype}{list(y.shape)}"
        if np.issubdtype(x.dtype, np.floating) or x.dtype == np.dtype(ml_dtypes.bfloat16):
            tol = 1e-2 if x.dtype == np.dtype(ml_dtypes.bfloat16) else 1e-6
            if not np.allclose(x.astype(np.float64), y.astype(np.float64), rtol=tol, atol=tol):
                return f"{k}: values differ beyond {tol}"
        elif not np.array_equal(x, y):
            return f"{k}: values differ"
    return None


def drift(fresh: dict[str, bytes], committed: dict[str, bytes]) -> list[str]:
    """The files of `fresh` that do not match `committed` (see the module docstring)."""
    bad = sorted(set(fresh) ^ set(committed))
    for k in sorted(set(fresh) & set(committed)):
        if fresh[k] == committed[k]:
            continue
        why = golden_drift(fresh[k], committed[k]) if k.endswith("golden.safetensors") else "bytes differ"
        if why:
            bad.append(f"{k} ({why})")
    return bad
