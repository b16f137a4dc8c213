"""Hoisting: an inference computation split into a params-only prologue and a per-call body
(docs/bundle-format.md, "Hoisted inference"; docs/performance.md).

Work that depends only on the params (HF GPT-2's `Conv1D` computes `kernel.T`, casts,
dequantisation, weight-norm reparameterisation) runs in the prologue, once per param
write; the body takes its results (the residuals) with the params, state and inputs. Both
are exported with jax.export, so the arithmetic is JAX's: the split is JAX's own partial
evaluation of the jaxpr with the params known (_jax_internals.split_known).
"""

from __future__ import annotations

import hashlib
import warnings
from typing import Any, Callable

import jax
import numpy as np

from . import _jax_internals
from .names import named_leaves, spec

PROLOGUE_NAME = "prologue"


def _nbytes(aval) -> int:
    return int(np.prod(aval.shape, dtype=np.int64)) * np.dtype(aval.dtype).itemsize


def hoisted_entry(fn: Callable, params, state, x, *, stem: str, batch_size: int, args: list[dict],
                  results: list[dict], platforms, files: dict[str, bytes], example: tuple | None,
                  check: Callable, export_computation: Callable, check_exported: Callable) -> dict | None:
    """The manifest's `hoisted` entry of the inference `fn(params, state, inputs) -> (outputs,
    new_state)` at the avals `params, state, x`, its prologue and body added to `files`; None
    when the params need no work of their own (every residual is a param passed on).

    `example`: concrete (params, state, inputs) the split is checked on: body(prologue(params),
    ...) against `fn` under jax.jit, with `check(want, got, file)` (ValueError if they differ).
    Prologue files are named by their content, so methods whose params-only work is the same
    (a decoder's prefill and decode) share one prologue and its residuals."""
    p_leaves, p_tree = jax.tree_util.tree_flatten(params)
    s_leaves, s_tree = jax.tree_util.tree_flatten(state)
    x_leaves, x_tree = jax.tree_util.tree_flatten(x)
    n_p, n_s = len(p_leaves), len(s_leaves)
    out_shape = jax.eval_shape(fn, params, state, x)
    out_tree = jax.tree_util.tree_structure(out_shape)

    def flat(*leaves):
        p = jax.tree_util.tree_unflatten(p_tree, leaves[:n_p])
        s = jax.tree_util.tree_unflatten(s_tree, leaves[n_p:n_p + n_s])
        xs = jax.tree_util.tree_unflatten(x_tree, leaves[n_p + n_s:])
        return jax.tree_util.tree_leaves(fn(p, s, xs))

    try:
        split = _jax_internals.split_known(flat, n_p, [*p_leaves, *s_leaves, *x_leaves])
    except _jax_internals.UnsupportedJaxError:
        raise
    except Exception as e:  # noqa: BLE001 - a jaxpr partial evaluation cannot split: no hoisting
        warnings.warn(f"{stem}: inference not hoisted (JAX's partial evaluation failed: {e})", stacklevel=2)
        return None
    if not split.computed_avals:
        return None
    res_sds = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in split.computed_avals]

    def prologue(p, inputs):
        del inputs  # none: the runtime passes only params
        return split.prologue(*jax.tree_util.tree_leaves(p))

    def body(p, residuals, s, inputs):
        outs = split.body(*jax.tree_util.tree_leaves(p), *residuals, *jax.tree_util.tree_leaves(s),
                          *jax.tree_util.tree_leaves(inputs))
        return jax.tree_util.tree_unflatten(out_tree, outs)

    res_slots = [spec(f"residual/{k}", a, role="residual") for k, a in enumerate(res_sds)]
    param_slots = [a for a in args if a["role"] == "param"]
    pro = export_computation(prologue, PROLOGUE_NAME, (), (params, {}), platforms)
    check_exported(pro.exp, param_slots, res_slots)
    pro_file = f"prologue.{hashlib.sha256(pro.data).hexdigest()[:16]}.jaxexport"
    files.setdefault(pro_file, pro.data)
    body_args = param_slots + res_slots + [a for a in args if a["role"] != "param"]
    bod = export_computation(body, f"{stem}.inference.hoisted", (2,), (params, res_sds, state, x), platforms)
    check_exported(bod.exp, body_args, results)
    body_file = f"{stem}.inference.b{batch_size}.hoisted.jaxexport"
    files[body_file] = bod.data
    if example is not None:
        ep, es, ex = example
        want = jax.jit(fn)(ep, es, ex)
        got = bod.exp.call(ep, pro.exp.call(ep, {}), es, ex)
        check(want, got, body_file)
    kept = set(int(i) for i in pro.exp.module_kept_var_idx)
    names = [n for n, _ in named_leaves({"params": params}, "params")]
    read = [names[i] for i in range(len(names)) if i in kept]
    p_avals = {n: a for n, a in named_leaves({"params": params}, "params")}
    return {
        "prologue": {"file": pro_file, "args": param_slots, "results": res_slots,
                     "custom_call_targets": pro.custom_call_targets},
        "body": {"batch_size": batch_size, "file": body_file, "args": body_args, "results": results,
                 "custom_call_targets": bod.custom_call_targets},
        "params_read": read,
        "params_read_bytes": sum(_nbytes(p_avals[n]) for n in read),
        "residual_bytes": sum(_nbytes(a) for a in res_sds),
    }


def example_like(tree_sds, sample) -> Any:
    """Concrete arrays of `tree_sds`'s shapes from `sample`'s values (repeated or cut)."""
    return jax.tree_util.tree_map(lambda t, s: np.resize(np.asarray(s), t.shape).astype(t.dtype), tree_sds, sample)
