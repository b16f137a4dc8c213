"""Comparing a fresh export with the committed hlo/ (used by test_export.py, test_train.py).

Every file must be byte-identical, except JAX's float results across machines: XLA's CPU code
differs by ulps between CPUs (AVX2 against AVX-512 kernels, LAPACK's blocking), and the
committed files may come from another machine. A golden.safetensors that differs in bytes must
still hold the same tensors (names, dtypes, shapes, metadata, integer values) with floats within
the cross-CPU tolerance below; so must a variables.safetensors whose init runs LAPACK (an
orthogonal initializer's QR), the one kind of init whose floats are computed rather than drawn.

On one machine, the tests compare exactly (a re-export is byte-identical, the exported program
equals the jitted one); `assert_cross_cpu` is only for JAX results held in committed files.
"""

from __future__ import annotations

import json
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


# Measured between an Intel AVX2 machine (the committed bundles) and an AMD EPYC with AVX-512:
# 2.1e-6 on an eigenvalue of 1.0, 9e-6 relative on a QR-initialised weight of 0.03, ulps of
# adam's amplification after two steps.
CROSS_CPU_RTOL = 1e-5
CROSS_CPU_ATOL = 1e-5


def _float(x) -> bool:
    return np.issubdtype(x.dtype, np.floating) or x.dtype == np.dtype(ml_dtypes.bfloat16)


def cross_cpu_close(x, y) -> bool:
    """Whether JAX results `x` (computed here) and `y` (committed, maybe from another CPU)
    agree: integers and keys exactly, floats within the cross-CPU tolerance."""
    x, y = np.asarray(x), np.asarray(y)
    if x.dtype != y.dtype or x.shape != y.shape:
        return False
    if not _float(x):
        return np.array_equal(x, y)
    tol = 1e-2 if x.dtype == np.dtype(ml_dtypes.bfloat16) else None
    rtol, atol = (tol, tol) if tol else (CROSS_CPU_RTOL, CROSS_CPU_ATOL)
    return bool(np.allclose(x.astype(np.float64), y.astype(np.float64), rtol=rtol, atol=atol))


def assert_cross_cpu(actual, committed, what=""):
    """Asserts `cross_cpu_close`, with numpy's report of what differs."""
    a, c = np.asarray(actual), np.asarray(committed)
    assert (a.dtype, a.shape) == (c.dtype, c.shape), f"{what}: {a.dtype}{list(a.shape)} vs {c.dtype}{list(c.shape)}"
    if not _float(a):
        np.testing.assert_array_equal(a, c, err_msg=what)
    elif not cross_cpu_close(a, c):
        np.testing.assert_allclose(a.astype(np.float64), c.astype(np.float64),
                                   rtol=CROSS_CPU_RTOL, atol=CROSS_CPU_ATOL, err_msg=what)


def golden_drift(fresh: bytes, committed: bytes) -> str | None:
    """None when the two safetensors files agree up to the cross-CPU tolerance, else what
    differs."""
    (a, ma), (b, mb) = _read(fresh), _read(committed)
    if ma != mb or sorted(a) != sorted(b):
        return f"metadata or tensor names differ: {sorted(set(a) ^ set(b))}"
    for k in a:
        x, y = a[k], b[k]
        if x.dtype != y.dtype or x.shape != y.shape:
            return f"{k}: {x.dtype}{list(x.shape)} vs {y.dtype}{list(y.shape)}"
        if not cross_cpu_close(x, y):
            return f"{k}: values differ" + (" beyond the cross-CPU tolerance" if _float(x) else "")
    return None


def _init_runs_lapack(files: dict[str, bytes], variables_key: str) -> bool:
    manifest = files.get(variables_key.rsplit("/", 1)[0] + "/manifest.json")
    if manifest is None:
        return False
    targets = (json.loads(manifest).get("init") or {}).get("custom_call_targets") or []
    return any(t.startswith("lapack_") for t in targets)


def drift(fresh: dict[str, bytes], committed: dict[str, bytes]) -> list[str]:
    """The files of `fresh` that do not match `committed` (see the module docstring)."""
    bad = sorted(set(fresh) ^ set(committed))
    for k in sorted(set(fresh) & set(committed)):
        if fresh[k] == committed[k]:
            continue
        floats = k.endswith("golden.safetensors") or (
            k.endswith("/variables.safetensors") and _init_runs_lapack(committed, k))
        why = golden_drift(fresh[k], committed[k]) if floats else "bytes differ"
        if why:
            bad.append(f"{k} ({why})")
    return bad
