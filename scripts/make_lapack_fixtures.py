"""Writes the fixtures of tests/lapack.rs under tests/fixtures/lapack/: small JAX programs
that call each `lapack_*_ffi` target JAX emits on CPU (and a few custom calls XLA handles
itself), exported with jax.export for the CPU and stripped of MLIR locations, with their
inputs and the outputs JAX computed (jaxlib's LAPACK is the oracle).

  <case>.mlirbc         the StableHLO module (`Exported.mlir_module_serialized`, no locations)
  golden.safetensors    <case>/in/<i> and <case>/out/<j> (row-major, logical shapes)
  index.json            {case: {"targets": [...custom-call targets...], "dtype": ...,
                                "error": substring of the compile error, for cases that
                                must not compile}}

Cases come in float32 and float64 (x64 on), unbatched and batched. Where LAPACK leaves a sign
or a basis free (eigenvectors, singular vectors, the complement in a full SVD), a case returns
what is unique instead: vectors with the sign of their largest-magnitude entry made positive,
reconstructions and Gram matrices. Singular, non-SPD and NaN inputs check JAX's handling of
LAPACK's `info` (NaN results, det = 0).

Also writes tests/fixtures/lstm_train_data.safetensors: the sequences hlo/lstm_train's golden
training loop ran on (flaxlayer_export.examples.registry.sequence_data).

Run: .venv/bin/python scripts/make_lapack_fixtures.py
"""
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax import export
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
from safetensors.numpy import save_file

from flaxlayer_export._jax_internals import custom_call_targets, stripped_module
from flaxlayer_export.examples.registry import sequence_data

jax.config.update("jax_enable_x64", True)

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "lapack"
# Targets outside JAX's export compatibility list (in jax's private export module) must be allowed
# explicitly; the runtime has no such list.
UNSTABLE = ["ormqr", "gesvd"]
DISABLED = [export.DisabledSafetyCheck.custom_call(f"lapack_{p}{op}_ffi") for p in "sd" for op in UNSTABLE]


# --- inputs -----------------------------------------------------------------------------

def orthonormal(rng, n):
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


def wellcond(rng, shape, dtype):
    """Matrices U diag(s) V^T with singular values in [1, 2]: condition number <= 2, so
    float32 results are accurate to ~1e-7 and pivoting still happens."""
    *batch, m, n = shape
    k = min(m, n)
    out = np.empty(shape)
    for idx in np.ndindex(*batch):
        u, v = orthonormal(rng, m)[:, :k], orthonormal(rng, n)[:, :k]
        out[idx] = (u * np.linspace(2.0, 1.0, k)) @ v.T
    return out.astype(dtype)


def spd(rng, shape, dtype):
    """Symmetric positive definite, eigenvalues spread evenly over [1, 3] (well separated)."""
    *batch, n, _ = shape
    out = np.empty(shape)
    for idx in np.ndindex(*batch):
        q = orthonormal(rng, n)
        a = (q * np.linspace(1.0, 3.0, n)) @ q.T
        out[idx] = (a + a.T) / 2
    return out.astype(dtype)


def triangular(rng, shape, dtype, lower):
    a = 0.3 * rng.standard_normal(shape)
    a = np.tril(a) if lower else np.triu(a)
    n = shape[-1]
    idx = np.arange(n)
    a[..., idx, idx] = np.linspace(1.0, 2.0, n) * np.where(rng.standard_normal(n) < 0, -1, 1)
    return a.astype(dtype)


def normal(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


# --- what cases return where LAPACK leaves a choice -----------------------------------------

def sign_fix(v, axis=-2):
    """Each vector (along `axis`) times the sign of its largest-magnitude entry."""
    big = jnp.take_along_axis(v, jnp.expand_dims(jnp.argmax(jnp.abs(v), axis=axis), axis), axis=axis)
    return v * jnp.sign(big)


def mT(x):
    return jnp.swapaxes(x, -1, -2)


def eigh_unique(a):
    w, v = jnp.linalg.eigh(a)
    return w, sign_fix(v), (v * w[..., None, :]) @ mT(v), mT(v) @ v


def svd_unique(u, s, vt):
    k = s.shape[-1]
    uk, vtk = u[..., :, :k], vt[..., :k, :]
    big = jnp.take_along_axis(uk, jnp.argmax(jnp.abs(uk), axis=-2)[..., None, :], axis=-2)
    sign = jnp.sign(big)
    return s, uk * sign, vtk * mT(sign), (uk * s[..., None, :]) @ vtk, mT(u) @ u, vt @ mT(vt)


def svd_full(a):
    return svd_unique(*jnp.linalg.svd(a, full_matrices=True))


def svd_thin(a):
    return svd_unique(*jnp.linalg.svd(a, full_matrices=False))


def svd_qr(full):
    def f(a):
        u, s, vt = jax.lax.linalg.svd(a, full_matrices=full, algorithm=jax.lax.linalg.SvdAlgorithm.QR)
        return svd_unique(u, s, vt)
    return f


def over_batch(f):
    """`f` of one matrix, vmapped over any leading batch dims (one batched custom call)."""
    def g(a):
        return f(a) if a.ndim == 2 else jax.vmap(g)(a)
    return g


def ormqr(a, c, left, transpose):
    """`op(Q) C` or `C op(Q)` for the Q of `a`'s QR, without forming Q (LAPACK's ormqr)."""
    h, taus = jnp.linalg.qr(a, mode="raw")
    return jax.lax.linalg.ormqr(mT(h), taus, c, left=left, transpose=transpose)


def orthogonal(shape):
    init = nn.initializers.orthogonal()

    def f(keys):
        return jax.vmap(lambda k: init(jax.random.wrap_key_data(k), shape, jnp.float32))(keys)
    return f


# --- the cases --------------------------------------------------------------------------

def cases(dt):
    """(name, function, inputs) for one dtype; each op unbatched (`_u`) and batched (`_b`)."""
    r = np.random.default_rng(1 if dt == np.float32 else 2)
    out = []

    def both(name, fn, make):
        for tag, batch in (("u", ()), ("b", (2, 3))):
            out.append((f"{name}_{tag}", fn, make(batch)))

    wc = lambda *s: (lambda b: [wellcond(r, b + s, dt)])
    both("qr_reduced", jnp.linalg.qr, wc(5, 3))
    both("qr_wide", jnp.linalg.qr, wc(3, 5))
    both("qr_complete", lambda a: jnp.linalg.qr(a, mode="complete"), wc(5, 3))
    both("qr_r", lambda a: jnp.linalg.qr(a, mode="r"), wc(4, 6))
    out.append(("qr_multiply_right_u", jax.scipy.linalg.qr_multiply, [wellcond(r, (5, 3), dt), normal(r, (4, 5), dt)]))
    out.append(("qr_multiply_left_u", lambda a, c: jax.scipy.linalg.qr_multiply(a, c, mode="left"),
                [wellcond(r, (5, 3), dt), normal(r, (3, 4), dt)]))
    for left in (True, False):
        for transpose in (False, True):
            c_shape = (5, 2) if left else (2, 5)
            both(f"ormqr_{'left' if left else 'right'}{'_t' if transpose else ''}",
                 lambda a, c, left=left, transpose=transpose: ormqr(a, c, left, transpose),
                 lambda b, c_shape=c_shape: [wellcond(r, b + (5, 3), dt), normal(r, b + c_shape, dt)])
    both("householder_product", lambda a, t: jax.lax.linalg.householder_product(a, t),
         lambda b: [normal(r, b + (5, 4), dt), normal(r, b + (3,), dt)])
    both("cholesky", jnp.linalg.cholesky, lambda b: [spd(r, b + (4, 4), dt)])
    # One matrix of the batch is not positive definite: JAX returns NaN for it (info > 0).
    not_spd = spd(r, (3, 4, 4), dt)
    not_spd[1, 2, 2] = -1.0
    out.append(("cholesky_not_spd_b", jnp.linalg.cholesky, [not_spd]))
    out.append(("cholesky_not_spd_u", jnp.linalg.cholesky, [not_spd[1]]))
    both("cho_solve", lambda a, b: jax.scipy.linalg.cho_solve((jnp.linalg.cholesky(a), True), b),
         lambda b: [spd(r, b + (4, 4), dt), normal(r, b + (4, 2), dt)])
    both("solve", jnp.linalg.solve, lambda b: [wellcond(r, b + (4, 4), dt), normal(r, b + (4, 2), dt)])
    out.append(("solve_vector_u", jnp.linalg.solve, [wellcond(r, (4, 4), dt), normal(r, (4,), dt)]))
    both("inv", jnp.linalg.inv, wc(4, 4))
    # A singular matrix (two equal rows) in the batch: det exactly 0, slogdet (0, -inf).
    sing = wellcond(r, (3, 4, 4), dt)
    sing[2, 3] = sing[2, 1]
    both("det", jnp.linalg.det, wc(4, 4))
    out.append(("det_singular_b", jnp.linalg.det, [sing]))
    out.append(("slogdet_singular_b", lambda a: tuple(jnp.linalg.slogdet(a)), [sing]))
    both("lu", over_batch(jax.scipy.linalg.lu), wc(4, 4))
    both("lu_wide", over_batch(jax.scipy.linalg.lu), wc(3, 5))
    out.append(("lu_singular_u", jax.scipy.linalg.lu, [sing[2]]))
    both("lu_factor", over_batch(jax.scipy.linalg.lu_factor), wc(4, 4))
    tri = lambda lower, *s: (lambda b: [triangular(r, b + (4, 4), dt, lower), normal(r, b + s, dt)])
    both("solve_triangular_lower", lambda a, b: jax.scipy.linalg.solve_triangular(a, b, lower=True), tri(True, 4, 2))
    both("solve_triangular_upper_trans_unit",
         lambda a, b: jax.scipy.linalg.solve_triangular(a, b, lower=False, trans=1, unit_diagonal=True), tri(False, 4, 3))
    both("solve_triangular_lower_conj", lambda a, b: jax.scipy.linalg.solve_triangular(a, b, lower=True, trans="C"),
         tri(True, 4, 1))
    out.append(("solve_triangular_vector_u", lambda a, b: jax.scipy.linalg.solve_triangular(a, b, lower=False),
                tri(False, 4)(())))
    both("triangular_solve_right",
         lambda a, b: jax.lax.linalg.triangular_solve(a, b, left_side=False, lower=False, transpose_a=True),
         tri(False, 3, 4))
    both("eigh", eigh_unique, lambda b: [spd(r, b + (4, 4), dt)])
    both("eigh_symmetric", eigh_unique, lambda b: [(lambda x: (x + np.swapaxes(x, -1, -2)) / 2)(wellcond(r, b + (5, 5), dt))])
    both("eigvalsh", jnp.linalg.eigvalsh, lambda b: [spd(r, b + (4, 4), dt)])
    nan_sym = spd(r, (3, 4, 4), dt)
    nan_sym[0, 1, 2] = nan_sym[0, 2, 1] = np.nan
    out.append(("eigh_nan_b", eigh_unique, [nan_sym]))
    both("svd_full", svd_full, wc(5, 3))
    both("svd_full_wide", svd_full, wc(3, 5))
    both("svd_thin", svd_thin, wc(5, 3))
    both("svd_no_uv", lambda a: jnp.linalg.svd(a, compute_uv=False), wc(3, 5))
    both("svd_qr_full", svd_qr(True), wc(5, 3))
    both("svd_qr_thin", svd_qr(False), wc(3, 5))
    nan_a = wellcond(r, (3, 4, 3), dt)
    nan_a[1, 0, 0] = np.nan
    out.append(("svd_nan_b", svd_thin, [nan_a]))
    both("pinv", jnp.linalg.pinv, wc(5, 3))
    both("lstsq", jnp.vectorize(lambda a, b: jnp.linalg.lstsq(a, b)[0], signature="(m,n),(m,k)->(n,k)"), lambda b: [wellcond(r, b + (5, 3), dt), normal(r, b + (5, 2), dt)])
    both("norm_2", lambda a: jnp.linalg.norm(a, ord=2, axis=(-2, -1)), wc(4, 3))
    return out


def fixed_cases():
    """Cases in one dtype: Flax's orthogonal initializer, and custom calls XLA's CPU compiler
    handles itself (flaxlayer.layer::BUILTIN_CUSTOM_CALL_TARGETS)."""
    r = np.random.default_rng(7)
    keys = np.stack([np.asarray(jax.random.key_data(jax.random.key(s))) for s in (0, 1, 2)])
    out = [
        ("orthogonal_8x8", orthogonal((8, 8)), [keys]),
        ("orthogonal_6x4", orthogonal((6, 4)), [keys[:2]]),
        ("orthogonal_3x5", orthogonal((3, 5)), [keys[:1]]),
        ("builtin_approx_top_k", lambda x: jax.lax.approx_max_k(x, 2), [normal(r, (4, 6), np.float32)]),
    ]
    return out


def gspmd_cases():
    """Programs with GSPMD's `Sharding` custom call (Shardy off) and with
    `annotate_device_placement` (an output in pinned host memory)."""
    mesh = jax.make_mesh((1,), ("x",), axis_types=(AxisType.Auto,))
    sharded = NamedSharding(mesh, P("x"))
    x = np.random.default_rng(8).standard_normal((4, 4)).astype(np.float32)
    return [
        ("builtin_sharding", lambda a: jax.lax.with_sharding_constraint(a * 2, sharded), [x], {"out_shardings": sharded}),
        ("builtin_annotate_device_placement", lambda a: a * 2 + 1, [x],
         {"out_shardings": NamedSharding(mesh, P("x"), memory_kind="pinned_host")}),
    ]


def unknown_case():
    """A custom call no one provides: compiling it fails (what the runtime's check prevents)."""
    def f(x):
        return jax.ffi.ffi_call("flaxlayer_no_such_target", jax.ShapeDtypeStruct(x.shape, x.dtype))(x)
    return ("unknown_target", f, [np.zeros((2,), np.float32)])


def export_case(name, fn, inputs, jit_kw=None, run=True):
    avals = [jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype) for a in inputs]
    exp = export.export(jax.jit(fn, **(jit_kw or {})), platforms=("cpu",), disabled_checks=DISABLED
                        + [export.DisabledSafetyCheck.custom_call("flaxlayer_no_such_target")])(*avals)
    if exp.module_kept_var_idx != tuple(range(len(inputs))):
        raise RuntimeError(f"{name}: the module drops arguments {exp.module_kept_var_idx}")
    _, bytecode = stripped_module(exp)
    (OUT / f"{name}.mlirbc").write_bytes(bytecode)
    tensors = {f"{name}/in/{i}": np.asarray(a) for i, a in enumerate(inputs)}
    if run:
        # `exp.call` runs exactly the exported module; GSPMD programs (Shardy off) cannot be
        # called back that way, so those run as the jitted function they were exported from.
        call = jax.jit(fn, **jit_kw) if jit_kw is not None else exp.call
        outs = jax.tree_util.tree_leaves(call(*[jnp.asarray(a) for a in inputs]))
        tensors.update({f"{name}/out/{j}": np.asarray(o) for j, o in enumerate(outs)})
    return tensors, custom_call_targets(exp)


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.glob("*.mlirbc"):
        old.unlink()
    tensors, index = {}, {}

    def add(name, fn, inputs, jit_kw=None, dtype=None, run=True, error=None):
        t, targets = export_case(name, fn, inputs, jit_kw, run)
        tensors.update(t)
        index[name] = {"targets": targets, "dtype": dtype or str(np.asarray(inputs[0]).dtype)}
        if error:
            index[name]["error"] = error

    for dt, tag in ((np.float32, "f32"), (np.float64, "f64")):
        for name, fn, inputs in cases(dt):
            add(f"{name.rsplit('_', 1)[0]}_{tag}_{name.rsplit('_', 1)[1]}", fn, inputs)
    for name, fn, inputs in fixed_cases():
        add(name, fn, inputs, dtype="float32")
    jax.config.update("jax_use_shardy_partitioner", False)
    for name, fn, inputs, kw in gspmd_cases():
        add(name, fn, inputs, kw)
    jax.config.update("jax_use_shardy_partitioner", True)
    name, fn, inputs = unknown_case()
    add(name, fn, inputs, run=False, error="flaxlayer_no_such_target")

    save_file(tensors, OUT / "golden.safetensors")
    (OUT / "index.json").write_text(json.dumps(index, indent=1, sort_keys=True) + "\n")
    data = sequence_data()
    save_file({k: np.asarray(v) for k, v in data.items()}, ROOT / "tests" / "fixtures" / "lstm_train_data.safetensors")
    size = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"{len(index)} cases, {size / 1024:.0f} KiB in {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
