"""export_train_step: a Flax module's training loop (optax) in a bundle (linen or NNX).

    from flaxlayer_export import export_train_step
    export_train_step(module, {"x": x[:32], "y": y[:32]}, "bundles/my_model",
                      loss="softmax_cross_entropy", optimizer=optax.adam(1e-3))

The bundle is a normal FlaxLayer bundle (export_flax's, for the model's inputs at the
training batch size) plus the computations `init_opt_state`, `train_step` and `eval_step`
and a `train` section in manifest.json (docs/bundle-format.md, docs/training.md). Golden
data of the same loop run in plain JAX goes into golden.safetensors under `train/` when
`golden_data` is given. Needs optax (`pip install flaxlayer-export[train]`).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

try:
    import optax
except ImportError as e:  # pragma: no cover - depends on the installation
    raise ImportError("export_train_step needs optax: pip install 'flaxlayer-export[train]'") from e

from .batch_order import epoch_batches, epoch_permutation
from .bundle_dir import write_bundle
from .export import exporter
from .linen import (KEY_IMPL, canonical_arrays, check_exported,
                    export_computation, sds, split_variables)
from .methods import method_name_of
from .names import named_leaves, role_specs, spec
from .sharding import mesh_request, spec_json, specs_by_name

__all__ = ["export_train_step", "make_step_functions", "run_golden", "evaluate",
           "epoch_permutation", "epoch_batches", "LOSSES", "GOLDEN_STEPS"]

LOSSES = ("softmax_cross_entropy", "mse")
GOLDEN_STEPS = 20
DEFAULT_OPTIMIZER_NAME = "adam(learning_rate=0.001)"


# --------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------

def _per_example(loss: str, out, y):
    """(per-example loss f32[B], per-example correct f32[B] or None)."""
    if loss == "softmax_cross_entropy":
        l = optax.softmax_cross_entropy_with_integer_labels(out.astype(jnp.float32), y)
        correct = (jnp.argmax(out, axis=-1) == y).astype(jnp.float32)
        return l, correct
    if loss == "mse":
        d = (out.astype(jnp.float32) - y.astype(jnp.float32)) ** 2
        return d.reshape(d.shape[0], -1).mean(axis=1), None
    raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")


def _check_batch(loss: str, batch: dict) -> int:
    if not isinstance(batch, dict) or set(batch) != {"x", "y"}:
        raise ValueError('sample_batch must be a dict {"x": inputs, "y": targets}')
    y = np.asarray(batch["y"])
    if loss == "softmax_cross_entropy":
        if y.dtype != np.int32 or y.ndim != 1:
            raise ValueError(f"softmax_cross_entropy needs int32 labels of shape [B], got {y.dtype}{list(y.shape)}")
    elif loss == "mse":
        if not np.issubdtype(y.dtype, np.floating):
            raise ValueError(f"mse needs float targets, got {y.dtype}")
    else:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    bs = {int(np.shape(a)[0]) for a in jax.tree_util.tree_leaves(batch) if np.ndim(a) > 0}
    if len(bs) != 1 or any(np.ndim(a) == 0 for a in jax.tree_util.tree_leaves(batch)):
        raise ValueError("every leaf of sample_batch needs the same leading (batch) dimension")
    return bs.pop()


# --------------------------------------------------------------------------
# The step functions
# --------------------------------------------------------------------------

def make_step_functions(fns, *, loss, optimizer):
    """(init_opt_state, train_step, eval_step) as plain Python functions of raw key data, on
    the functions an export exports (`fns`: linen or NNX, `exporter(...).fns`).

    The optimizer state crosses the functions' boundary as a flat dict {path: array}, the
    path `/`-joined from the optax state pytree (`0/mu/Dense_0/kernel`): jax.export and the
    runtime only take tuples, lists and dicts, not optax's NamedTuples."""

    def to_flat(opt_state):
        return dict(named_leaves(opt_state, "0"))

    def from_flat(flat, params):
        like = jax.eval_shape(optimizer.init, params)
        names = [n for n, _ in named_leaves(like, "0")]
        return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(like), [flat[n] for n in names])

    def init_opt_state(params):
        return to_flat(optimizer.init(params))

    def train_step(params, state, opt_state, key, batch):
        K = jax.random.wrap_key_data(key, impl=KEY_IMPL)
        K, k = jax.random.split(K)

        def loss_fn(p):
            out, new_state = fns.apply_training(p, state, batch["x"], k)
            if not isinstance(out, jax.Array):
                raise ValueError("training needs a method returning one array")
            per, correct = _per_example(loss, out, batch["y"])
            return per.mean(), (new_state, correct)

        (l, (new_state, correct)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, new_opt_state = optimizer.update(grads, from_flat(opt_state, params), params)
        new_params = optax.apply_updates(params, updates)
        metrics = {"loss": l}
        if correct is not None:
            metrics["accuracy"] = correct.mean()
        return new_params, new_state, to_flat(new_opt_state), jax.random.key_data(K), metrics

    def eval_step(params, state, batch):
        out, _ = fns.apply_inference(params, state, batch["x"])
        per, correct = _per_example(loss, out, batch["y"])
        w = batch["w"]
        metrics = {"loss_sum": jnp.sum(w * per), "count": jnp.sum(w)}
        if correct is not None:
            metrics["correct"] = jnp.sum(w * correct)
        return metrics

    return init_opt_state, train_step, eval_step


def run_golden(train_step, eval_step, init_opt_state, variables, data, *, seed, batch_size,
               steps=GOLDEN_STEPS, jit=None) -> dict[str, np.ndarray]:
    """The loop in plain JAX (jitted Python functions): `steps` train steps in the documented
    batch order from `variables`, K0 = key(seed) and a fresh opt state, then eval on the
    test split (padded last batch, w = 0). Returns golden tensors named `train/...`.
    `jit(fn)` jits each function (default jax.jit; on a mesh, with the export's shardings)."""
    jit = jit or jax.jit
    x_train, y_train = np.asarray(data["x_train"]), np.asarray(data["y_train"])
    n = len(y_train)
    params, state = split_variables(variables)
    opt_state = jit(init_opt_state)(params)
    key = jax.random.key_data(jax.random.key(seed, impl=KEY_IMPL))
    step = jit(train_step)
    per_epoch = n // batch_size
    if per_epoch == 0:
        raise ValueError(f"{n} training examples do not fill a batch of {batch_size}")
    metrics: dict[str, list] = {}
    for i in range(steps):
        idx = epoch_batches(seed, i // per_epoch, n, batch_size)[i % per_epoch]
        params, state, opt_state, key, m = step(params, state, opt_state, key,
                                                {"x": x_train[idx], "y": y_train[idx]})
        for k, v in m.items():
            metrics.setdefault(k, []).append(np.float32(v))
    g = {f"train/{k}": np.asarray(v, np.float32) for k, v in metrics.items()}
    for nm, x in named_leaves({"params": params, **state}, "variables"):
        g[f"train/after/{nm}"] = np.asarray(x)
    for nm, x in named_leaves({"opt_state": dict(opt_state)}, "opt_state"):
        g[f"train/after/{nm}"] = np.asarray(x)
    g["train/key_after"] = np.asarray(key)
    if "x_test" in data:
        sums = evaluate(eval_step, params, state, data["x_test"], data["y_test"], batch_size, jit=jit)
        count = sums["count"]
        g["train/eval/count"] = np.float64(count)
        g["train/eval/loss"] = np.float64(sums["loss_sum"] / count)
        if "correct" in sums:
            g["train/eval/accuracy"] = np.float64(sums["correct"] / count)
    return g


def evaluate(eval_step, params, state, x, y, batch_size, jit=None) -> dict[str, float]:
    """Sums of eval_step's metrics over the data set in order, the last batch padded with
    zeros and weight 0; per-batch float32 sums added up in float64 (as the runtime does)."""
    x, y = np.asarray(x), np.asarray(y)
    fn = (jit or jax.jit)(eval_step)
    sums: dict[str, float] = {}
    for start in range(0, len(y), batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        real = len(yb)
        pad = batch_size - real
        if pad:
            xb = np.concatenate([xb, np.zeros((pad,) + xb.shape[1:], xb.dtype)])
            yb = np.concatenate([yb, np.zeros((pad,) + yb.shape[1:], yb.dtype)])
        w = np.concatenate([np.ones(real, np.float32), np.zeros(pad, np.float32)])
        m = fn(params, state, {"w": w, "x": xb, "y": yb})
        for k, v in m.items():
            sums[k] = sums.get(k, 0.0) + float(np.float32(v))
    return sums


# --------------------------------------------------------------------------
# The exporter
# --------------------------------------------------------------------------

def _input_specs(batch_specs: dict) -> dict:
    """The FlaxLayer part's input_sharding from the batch's: `x` is the bare input `inputs`,
    `x/<path>` the input `<path>`."""
    table = {("inputs" if n == "x" else n[2:]): s for n, s in batch_specs.items() if n == "x" or n.startswith("x/")}
    return lambda name: table.get(name)


def export_train_step(
    module,
    sample_batch: dict,
    out_dir: str,
    *,
    loss: str = "softmax_cross_entropy",
    optimizer: "optax.GradientTransformation | None" = None,
    optimizer_name: str | None = None,
    method=None,
    variables=None,
    seed: int = 0,
    rng_streams: Sequence[str] | None = None,
    platforms: Sequence[str] = ("cpu",),
    golden_data: dict[str, Any] | None = None,
    golden_steps: int = GOLDEN_STEPS,
    extra_golden: dict[str, Any] | Callable[[dict], dict] | None = None,
    mesh=None,
    param_sharding=None,
    state_sharding=None,
    batch_sharding=None,
    logical_rules=None,
    hoist: bool = True,
) -> dict:
    """Export `module` with its training step to the bundle directory `out_dir`; returns the
    manifest.

    Args:
      module: a flax.linen.Module, an nnx.Module or a function make(rngs) returning one (as
        for export_flax); its method returns logits [B, C] (softmax_cross_entropy) or
        predictions shaped like the targets (mse).
      sample_batch: {"x": inputs (array or PyTree), "y": targets}: int32 labels [B] for
        softmax_cross_entropy, floats for mse. B is the training batch size. int64/float64
        leaves become int32/float32, as under jax.jit.
      loss: "softmax_cross_entropy" or "mse".
      optimizer: an optax GradientTransformation; default optax.adam(1e-3).
      optimizer_name: a human description for the manifest (default: the adam default's,
        else "custom").
      method, variables, seed, rng_streams, platforms: as for export_flax (the FlaxLayer part
        of the bundle is exported at the batch size B).
      golden_data: {"x_train", "y_train"[, "x_test", "y_test"]}: record the plain-JAX loop's
        first `golden_steps` steps (docs/training.md) in golden.safetensors.
      extra_golden: more golden tensors, as for export_flax.
      mesh, param_sharding, state_sharding, logical_rules: as for export_flax (linen
        modules; an NNX module on a mesh is a NotImplementedError); every computation runs
        on the mesh's devices. batch_sharding splits the batch leaves (`x`,
        `y`, `x/...`, and eval's `w` as `y`'s leading axis): a PartitionSpec for all of
        them (`P("data")`: data parallel, XLA all-reduces the gradients), a tree matching
        sample_batch, or a function of the leaf's name. The optimizer state is split as the
        params it mirrors. The golden loop runs on the same mesh.
      hoist: as for export_flax (the inference computations only; the steps take the params).
    """
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if not isinstance(sample_batch, dict) or set(sample_batch) != {"x", "y"}:
        raise ValueError('sample_batch must be a dict {"x": inputs, "y": targets}')
    sample_batch = canonical_arrays(sample_batch, "sample batch leaf", "batch")
    batch_size = _check_batch(loss, sample_batch)
    if optimizer is None:
        optimizer = optax.adam(1e-3)
        optimizer_name = optimizer_name or DEFAULT_OPTIMIZER_NAME
    optimizer_name = optimizer_name or "custom"
    if mesh is None and batch_sharding is not None:
        raise ValueError("batch_sharding given without a mesh: pass mesh=jax.sharding.Mesh(...)")
    batch_specs = (None if mesh is None else
                   specs_by_name(batch_sharding, sample_batch, "batch", "batch_sharding"))
    request = mesh_request(mesh, param_sharding=param_sharding, state_sharding=state_sharding,
                           input_sharding=None if batch_specs is None else _input_specs(batch_specs),
                           logical_rules=logical_rules)
    ex = exporter(module, sample_batch["x"], method=method, variables=variables, seed=seed,
                  rng_streams=rng_streams, platforms=platforms, sharding=request, hoist=hoist)
    platforms = tuple(platforms)
    init_opt_state, train_step, eval_step = make_step_functions(ex.fns, loss=loss, optimizer=optimizer)
    built = ex.build()

    # ---- shapes ------------------------------------------------------------
    params, state = split_variables(built.variables)
    p_sds, s_sds = sds(params), sds(state)
    key_sds = jax.ShapeDtypeStruct((2,), jnp.uint32)
    batch_sds = sds(sample_batch)
    eval_sds = {**batch_sds, "w": jax.ShapeDtypeStruct((batch_size,), jnp.float32)}
    opt_sds = jax.eval_shape(init_opt_state, p_sds)
    opt_named = {"opt_state": opt_sds}
    plan = built.plan
    if plan is not None:
        batch_specs["w"] = P(*list(batch_specs["y"])[:1])
        plan = plan.with_train([(n, x.shape) for n, x in named_leaves(opt_named, "opt_state")], batch_specs)

    param_args = role_specs({"params": params}, "param", "params")
    state_args = role_specs(state, "state", "state")
    opt_specs = role_specs(opt_named, "opt_state", "opt_state")
    key_spec = spec(None, key_sds, role="key")
    entries: dict[str, dict] = {}

    slots = {}  # fn -> its avals and slots, for the golden loop on the mesh

    def add(name, fname, fn, donate, avals, args, results, batch=None):
        slots[fn] = (avals, args, results)
        shardings = None if plan is None else (lambda f: plan.jit_shardings(f, avals, args, results))
        c = export_computation(fn, name, donate, avals, platforms, shardings)
        check_exported(c.exp, args, results)
        built.files[fname] = c.data
        entries[name] = {**({"batch_size": batch} if batch is not None else {}), "file": fname,
                         "args": args, "results": results,
                         "custom_call_targets": c.custom_call_targets}

    # init_opt_state(params) -> opt_state
    add("init_opt_state", "init_opt_state.jaxexport", init_opt_state, (), (p_sds,), param_args, opt_specs)

    # train_step(params, state, opt_state, key, batch) -> (params, state, opt_state, key, metrics)
    out = jax.eval_shape(train_step, p_sds, s_sds, opt_sds, key_sds, batch_sds)
    if (jax.tree_util.tree_structure(out[0]) != jax.tree_util.tree_structure(p_sds)
            or jax.tree_util.tree_structure(out[2]) != jax.tree_util.tree_structure(opt_sds)):
        raise ValueError("train_step changed the structure of params or opt_state")
    add("train_step", f"train_step.b{batch_size}.jaxexport", train_step, (0, 1, 2, 3),
        (p_sds, s_sds, opt_sds, key_sds, batch_sds),
        param_args + state_args + opt_specs + [key_spec] + role_specs(batch_sds, "input", "batch"),
        param_args + state_args + opt_specs + [key_spec] + role_specs(out[4], "metric", "metrics"),
        batch=batch_size)
    metric_names = [n for n, _ in named_leaves(out[4], "metrics")]

    # eval_step(params, state, batch + w) -> metric sums
    ev = jax.eval_shape(eval_step, p_sds, s_sds, eval_sds)
    add("eval_step", f"eval_step.b{batch_size}.jaxexport", eval_step, (), (p_sds, s_sds, eval_sds),
        param_args + state_args + role_specs(eval_sds, "input", "batch"),
        role_specs(ev, "metric", "metrics"), batch=batch_size)

    built.manifest["train"] = {
        "method": method_name_of(method),
        "loss": loss,
        "optimizer": optimizer_name,
        "batch_size": batch_size,
        "batch": [spec(n, x) for n, x in named_leaves(batch_sds, "batch")],
        "metrics": metric_names,
        "eval_metrics": [n for n, _ in named_leaves(ev, "metrics")],
        "opt_state": [spec(n, x) for n, x in named_leaves(opt_named, "opt_state")],
        **entries,
    }
    if plan is not None:
        built.manifest["mesh"]["batch"] = {n: spec_json(batch_specs[n], len(x.shape))
                                           for n, x in named_leaves(eval_sds, "batch")}
        built.manifest["mesh"]["opt_state"] = {n: spec_json(plan.opt_state[n], len(x.shape))
                                               for n, x in named_leaves(opt_named, "opt_state")}
    train_golden = {}
    if golden_data is not None:
        jit = None if plan is None else (lambda f: jax.jit(f, **dict(zip(
            ("in_shardings", "out_shardings"), plan.jit_shardings(f, *slots[f])))))
        train_golden = run_golden(train_step, eval_step, init_opt_state, built.variables, golden_data,
                                  seed=seed, batch_size=batch_size, steps=golden_steps, jit=jit)
    extra = extra_golden(built.variables) if callable(extra_golden) else (extra_golden or {})
    for k in list(train_golden) + list(extra):
        if k in built.golden or (k in extra and k in train_golden):
            raise ValueError(f"golden name {k!r} clashes with another golden name")
    built.golden.update(train_golden)
    built.golden.update({k: np.asarray(v) for k, v in extra.items()})
    built.finish()
    write_bundle(out_dir, built.files)
    return built.manifest
