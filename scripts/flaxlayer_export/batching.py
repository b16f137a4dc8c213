"""Batch sizes, the batch axis of outputs and state, and whether inference may be padded.

The batch axis is the leading axis of every input leaf. An output (or state) leaf is
*batched* when its leading dimension is the batch size at every exported batch size and at
one more probe size, so a per-model constant that happens to be as long as one batch size
is not taken for a batch axis.

A method is *paddable* when its inference treats batch rows independently: the exporter
runs inference in JAX on the sample inputs unpadded (n rows) and padded to a larger batch m
(once with zero rows, once with random rows) and compares the real rows of every batched
output (and every other output whole, and the new state). The runtime may then serve a call
at any batch size by padding it with zeros up to an exported size and dropping the extra
rows. Row independence is checked with a tolerance, not for equality: XLA compiles a batch
of n and one of m into different kernels (other tilings, vector remainders, reassociated
reductions), so the same row can differ by a few ulps (float32: ~1e-7 relative; we allow
1e-5, about 80 ulps), while a model that mixes rows (BatchNorm on batch statistics, a mean
over the batch, attention across the batch) changes them by orders of magnitude more.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import ml_dtypes
import numpy as np

from .names import named_leaves

# Relative and absolute tolerance per dtype for "the same row" (see the module docstring).
ROW_TOLERANCE = {
    np.dtype(np.float64): 1e-12,
    np.dtype(np.float32): 1e-5,
    np.dtype(np.float16): 1e-3,
    np.dtype(ml_dtypes.bfloat16): 1e-2,
}
PAD_VALUE = 0


def resolve_batch_sizes(batch_sizes, max_batch: int, sample_batch: int) -> list[int]:
    """The exported batch sizes, sorted: the sample batch when `batch_sizes` is None; the
    powers of two up to `max_batch` plus the sample batch for "auto"; else the given list,
    which must include the sample batch."""
    if batch_sizes is None:
        return [sample_batch]
    if isinstance(batch_sizes, str):
        if batch_sizes != "auto":
            raise ValueError(f'batch_sizes must be a list of ints, None or "auto", got {batch_sizes!r}')
        if int(max_batch) < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        sizes = {1 << k for k in range(int(max_batch).bit_length()) if (1 << k) <= int(max_batch)}
        return sorted(sizes | {sample_batch})
    sizes = set()
    for b in batch_sizes:
        if isinstance(b, bool) or int(b) != b or int(b) < 1:
            raise ValueError(f"batch sizes must be positive integers, got {b!r} in {list(batch_sizes)}")
        sizes.add(int(b))
    if sample_batch not in sizes:
        raise ValueError(f"batch_sizes {sorted(sizes)} must include the sample batch {sample_batch}")
    return sorted(sizes)


def with_batch(tree, b: int):
    """ShapeDtypeStructs of `tree` with the leading (batch) dimension replaced by `b`."""
    def f(x):
        if x.ndim == 0:
            raise ValueError("every input needs a leading (batch) dimension")
        return jax.ShapeDtypeStruct((b,) + tuple(x.shape[1:]), x.dtype)
    return jax.tree_util.tree_map(f, tree)


def batched_names(shapes_by_batch: dict[int, object], bare: str) -> dict[str, bool]:
    """{leaf name: batched} from the same tree's shapes at several batch sizes."""
    named = {b: named_leaves(t, bare) for b, t in shapes_by_batch.items()}
    names = [n for n, _ in next(iter(named.values()))]
    out = {}
    for i, n in enumerate(names):
        out[n] = all(len(leaves[i][1].shape) >= 1 and leaves[i][1].shape[0] == b
                     for b, leaves in named.items())
    return out


def batched_state_names(init_shapes_at: Callable[[int], object], init_batch: int | None,
                        state_names: Sequence[str]) -> list[str] | None:
    """State leaves whose leading axis follows init's batch, found by evaluating init's
    shapes at the init batch and at one more row. [] without state; None when init cannot be
    evaluated at another batch size (then the state's batch axis is unknown)."""
    if not state_names:
        return []
    if init_batch is None:
        return []
    try:
        at = {init_batch: init_shapes_at(init_batch), init_batch + 1: init_shapes_at(init_batch + 1)}
    except Exception:  # noqa: BLE001 - any failure means "unknown"
        return None
    marks = batched_names({b: {c: v for c, v in t.items() if c != "params"} for b, t in at.items()},
                          "state")
    return [n for n in state_names if marks.get(n, False)]


def written_state(jaxpr, n_params: int, n_state: int, n_outputs: int) -> list[bool]:
    """For each state leaf, whether inference writes it (its result is not the argument
    passed straight through), from the jaxpr of inference(params, state, inputs)."""
    invars = jaxpr.jaxpr.invars[n_params:n_params + n_state]
    outvars = jaxpr.jaxpr.outvars[n_outputs:n_outputs + n_state]
    return [o is not i for i, o in zip(invars, outvars)]


def _floating(dt) -> bool:
    return np.issubdtype(dt, np.floating) or np.dtype(dt) == np.dtype(ml_dtypes.bfloat16)


def _pad(x: np.ndarray, m: int, how: str, rng: np.random.Generator) -> np.ndarray:
    n = x.shape[0]
    shape = (m - n,) + x.shape[1:]
    if how == "zeros":
        rows = np.zeros(shape, x.dtype)
    elif _floating(x.dtype):
        rows = rng.standard_normal(shape).astype(np.float32).astype(x.dtype)
    elif x.dtype == np.bool_:
        rows = rng.integers(0, 2, size=shape).astype(np.bool_)
    else:
        lo, hi = (int(x.min()), int(x.max())) if x.size else (0, 0)
        rows = rng.integers(lo, hi + 1, size=shape).astype(x.dtype)
    return np.concatenate([x, rows])


def _difference(got, want) -> tuple[float, float] | None:
    """(max abs difference, tolerance) when `got` and `want` are not the same values."""
    got, want = np.asarray(got), np.asarray(want)
    if _floating(want.dtype):
        tol = ROW_TOLERANCE.get(np.dtype(want.dtype), 1e-5)
        g, w = got.astype(np.float64), want.astype(np.float64)
        if np.allclose(g, w, rtol=tol, atol=tol, equal_nan=True):
            return None
        d = np.abs(g - w)
        return float(np.nanmax(np.where(np.isnan(d), np.inf, d))), tol
    if np.array_equal(got, want):
        return None
    return float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64)))), 0.0


def got_leaf(tree, name: str, bare: str):
    return dict(named_leaves(tree, bare))[name]


def _compare(ref, got, n: int, m: int, batched: dict[str, bool], bare: str, what: str) -> str | None:
    for (name, w), (_, g) in zip(named_leaves(ref, bare), named_leaves(got, bare)):
        w, g = np.asarray(w), np.asarray(g)
        if batched.get(name, False):
            g = g[:n]
            if w.shape != g.shape:  # e.g. [B, B] (CLIP's logits_per_image): not row by row
                return (f"{what} `{name}` has the batch in more than its leading axis "
                        f"({list(w.shape)} at batch {n}, {list(np.shape(got_leaf(got, name, bare)))} "
                        f"at batch {m}), so its rows cannot be compared one by one")
        elif w.shape != g.shape:
            return (f"{what} `{name}` has no leading batch axis but its shape changes with the "
                    f"batch ({list(w.shape)} at batch {n} vs {list(g.shape)} at batch {m})")
        diff = _difference(g, w)
        if diff is not None:
            rows = f"rows 0..{n - 1} of " if batched.get(name, False) else ""
            return f"{rows}{what} `{name}` change by up to {diff[0]:.3g} (tolerance {diff[1]:g})"
    return None


SKIPPED = "the padding check was skipped at export (export_flax(..., batching=False))"


def padding_check(infer: Callable, params, state: dict, inputs, *, sizes: Sequence[int],
                  batched_outputs: dict[str, bool], batched_state: list[str] | None,
                  stateful: bool, seed: int = 0, check: bool = True) -> dict:
    """The method's `batching` manifest entry, from running `infer(params, state, inputs)
    -> (outputs, new_state)` (plain JAX) unpadded and padded.

    Without batched state: n = the sample batch, m = the next exported size (n + 1 when n is
    the largest). With state that has a batch axis (decode caches made at the init batch B,
    so B is the only size): n = B - 1 real rows against the state's first n rows, padded to
    B against the whole state; the real rows of the batched state results are compared too."""
    def result(ok: bool, reason: str | None = None) -> dict:
        d = {"paddable": ok, "pad_value": PAD_VALUE}
        if not ok:
            d["reason"] = reason
        d["stateful"] = bool(stateful)
        d["batched_state"] = list(batched_state or [])
        return d

    if not check:
        return result(False, SKIPPED)
    if batched_state is None:
        return result(False, "the state's batch axis is unknown: init could not be evaluated at "
                             "another batch size")
    sample_b = int(jax.tree_util.tree_leaves(inputs)[0].shape[0])
    state_marks = {n: n in batched_state for n, _ in named_leaves(state, "state")}
    if batched_state:
        m, n = sample_b, sample_b - 1
        if n < 1:
            return result(False, f"the state ({batched_state[0]}, ...) has a batch axis of "
                                 "size 1 (the init batch): there is no smaller batch to pad")
        cut = lambda tree, k: jax.tree_util.tree_map(lambda a: np.asarray(a)[:k], tree)
        ref_state = jax.tree_util.tree_unflatten(
            jax.tree_util.tree_structure(state),
            [np.asarray(a)[:n] if state_marks[name] else a for name, a in named_leaves(state, "state")])
        real = cut(inputs, n)
    else:
        n = sample_b
        m = min([b for b in sizes if b > n], default=n + 1)
        ref_state, real = state, inputs
    try:
        ref_out, ref_new = infer(params, ref_state, real)
    except Exception as e:  # noqa: BLE001
        return result(False, f"inference at batch {n} failed: {type(e).__name__}: {e}".splitlines()[0])
    rng = np.random.default_rng(seed)
    for how in ("zeros", "random"):
        padded = jax.tree_util.tree_map(lambda a: _pad(np.asarray(a), m, how, rng), real)
        try:
            out, new = infer(params, state, padded)
        except Exception as e:  # noqa: BLE001
            return result(False, f"inference at batch {m} failed: {type(e).__name__}: {e}".splitlines()[0])
        if (jax.tree_util.tree_structure(ref_out) != jax.tree_util.tree_structure(out)
                or jax.tree_util.tree_structure(ref_new) != jax.tree_util.tree_structure(new)):
            return result(False, f"the structure of the outputs or state at batch {m} differs "
                                 f"from the one at batch {n}")
        try:
            problem = (_compare(ref_out, out, n, m, batched_outputs, "outputs", "output")
                       or _compare(ref_new, new, n, m, state_marks, "state", "state"))
        except Exception as e:  # noqa: BLE001 - whatever the outputs are, never crash the export
            return result(False, f"the outputs at batch {m} cannot be compared row by row with the "
                                 f"ones at batch {n}: {type(e).__name__}: {e}".splitlines()[0])
        if problem:
            rows = "zero" if how == "zeros" else "random"
            return result(False, f"{problem} when a batch of {n} is padded to {m} with {rows} "
                                 "rows: inference mixes rows across the batch")
    return result(True)
