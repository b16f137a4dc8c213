"""Writes tests/fixtures/linalg.safetensors, the oracle of the LAPACK kernels' tests (src/linalg/tests.rs).

Inputs are drawn from a fixed seed; references come from scipy.linalg.lapack / scipy.linalg.blas, which
is the LAPACK jaxlib calls on CPU, and, for Flax's orthogonal initializer, from JAX itself. Every
array is stored row-major with its logical shape (numpy's order); the Rust tests lay matrices out
column-major themselves. Pivots are stored 1-based (LAPACK's convention, which jaxlib passes on),
although scipy returns them 0-based.

Tensor names: `{s|d}/{routine}/{case}/{name}`, e.g. `d/getrf/singular/ipiv`.

Run: .venv/bin/python scripts/make_linalg_fixtures.py
"""
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg.blas as blas
import scipy.linalg.lapack as lapack
from safetensors.numpy import save_file

jax.config.update("jax_enable_x64", True)

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "linalg.safetensors"
DTYPES = {"s": np.float32, "d": np.float64}


def routine(prefix, name):
    return getattr(lapack, prefix + name)


def batched(fn, a, *rest):
    """Applies fn to every matrix of a (and the matching slices of rest), stacking each output."""
    a = np.asarray(a)
    if a.ndim == 2:
        return fn(a, *rest)
    outs = [fn(a[i], *(r[i] for r in rest)) for i in range(a.shape[0])]
    return tuple(np.stack(parts) for parts in zip(*outs))


def spd(rng, n, dtype, batch=()):
    x = rng.standard_normal((*batch, n, n))
    return (x @ np.swapaxes(x, -1, -2) + n * np.eye(n)).astype(dtype)


def add_geqrf(out, p, dtype, rng):
    cases = {
        "tall": rng.standard_normal((3, 9, 6)),
        "wide": rng.standard_normal((5, 8)),
        "square": rng.standard_normal((12, 12)),
        # A zero column: tau = 0 (H = I) and a zero on R's diagonal, exactly.
        "rankdef": np.column_stack([np.zeros(6), rng.standard_normal((6, 3))]),
    }
    geqrf = routine(p, "geqrf")
    orgqr = routine(p, "orgqr")
    for case, a in cases.items():
        a = a.astype(dtype)

        def one(x):
            qr, tau, _, info = geqrf(x)
            assert info == 0
            return qr, tau

        qr, tau = batched(one, a)
        out[f"{p}/geqrf/{case}/a"] = a
        out[f"{p}/geqrf/{case}/a_out"] = qr
        out[f"{p}/geqrf/{case}/tau"] = tau
        m, n = a.shape[-2:]
        k = min(m, n)

        # orgqr as jnp.linalg.qr calls it: reduced (the first k columns) ...
        def reduced(x, t):
            q, _, info = orgqr(x[:, :k], t)
            assert info == 0
            return (q,)

        (q,) = batched(reduced, qr, tau)
        out[f"{p}/orgqr/{case}/a"] = qr[..., :k]
        out[f"{p}/orgqr/{case}/tau"] = tau
        out[f"{p}/orgqr/{case}/q"] = q
    # ... and complete (mode="complete" pads R's storage to m x m).
    qr, tau = out[f"{p}/geqrf/tall/a_out"], out[f"{p}/geqrf/tall/tau"]
    padded = np.concatenate([qr, np.zeros((*qr.shape[:-1], qr.shape[-2] - qr.shape[-1]), dtype)], -1)

    def complete(x, t):
        q, _, info = orgqr(x, t)
        assert info == 0
        return (q,)

    out[f"{p}/orgqr/complete/a"] = padded
    out[f"{p}/orgqr/complete/tau"] = tau
    out[f"{p}/orgqr/complete/q"] = batched(complete, padded, tau)[0]
    # householder_product with k < n and arbitrary taus.
    a = rng.standard_normal((7, 5)).astype(dtype)
    t = rng.uniform(0.5, 1.5, 3).astype(dtype)
    q, _, info = orgqr(a, t)
    assert info == 0
    out[f"{p}/orgqr/fewer/a"] = a
    out[f"{p}/orgqr/fewer/tau"] = t
    out[f"{p}/orgqr/fewer/q"] = q


def add_ormqr(out, p, dtype, rng):
    a = rng.standard_normal((2, 7, 4)).astype(dtype)
    qr, tau, _, _ = zip(*(routine(p, "geqrf")(x) for x in a))
    qr, tau = np.stack(qr), np.stack(tau)
    out[f"{p}/ormqr/a"] = qr
    out[f"{p}/ormqr/tau"] = tau
    for left in (True, False):
        c = rng.standard_normal((2, 7, 3) if left else (2, 5, 7)).astype(dtype)
        out[f"{p}/ormqr/c_{'left' if left else 'right'}"] = c
        for transpose in (False, True):
            side, trans = ("L" if left else "R"), ("T" if transpose else "N")
            res = []
            for i in range(2):
                cq, _, info = routine(p, "ormqr")(side, trans, qr[i], tau[i], c[i], max(c.shape[1:]) * 64)
                assert info == 0
                res.append(cq)
            out[f"{p}/ormqr/{side}{trans}/c_out"] = np.stack(res)


def add_potrf(out, p, dtype, rng):
    potrf = routine(p, "potrf")
    nonspd = np.stack(
        [
            spd(rng, 5, np.float64),
            np.diag([4.0, 1.0, -1.0, 2.0, 3.0]),  # fails at the 3rd leading minor
            np.zeros((5, 5)),  # fails at the 1st
            np.ones((5, 5)),  # rank one: fails at the 2nd
        ]
    )
    cases = {
        "spd": spd(rng, 6, dtype, (3,)),
        "big": spd(rng, 40, dtype),
        "nonspd": nonspd.astype(dtype),
        # Not symmetric: only the uplo triangle may be read.
        "lopsided": (spd(rng, 7, np.float64) + np.triu(rng.standard_normal((7, 7)), 1)).astype(dtype),
    }
    for case, a in cases.items():
        out[f"{p}/potrf/{case}/a"] = a
        for lower in (1, 0):
            x = a if lower else np.swapaxes(a, -1, -2).copy()
            c, info = batched(lambda m: tuple(np.asarray(v) for v in potrf(m, lower=lower, clean=0)), x)
            uplo = "L" if lower else "U"
            out[f"{p}/potrf/{case}/{uplo}/a"] = x
            out[f"{p}/potrf/{case}/{uplo}/a_out"] = c
            out[f"{p}/potrf/{case}/{uplo}/info"] = np.asarray(info, np.int32)


def add_getrf(out, p, dtype, rng):
    getrf = routine(p, "getrf")
    singular = np.stack(
        [
            # Powers of two as pivots keep the elimination exact: info and pivots do not hang on
            # rounding. Rank 3; the 4th pivot is an exact zero, and column 1 has a tie.
            np.array([[1.0, 2, 3, 4, 5], [2, 4, 6, 8, 10], [1, 1, 1, 1, 1], [0, 1, 0, 1, 0], [4, 6, 8, 10, 12]]),
            np.zeros((5, 5)),
            np.column_stack([np.zeros(5), rng.standard_normal((5, 4))]),  # zero first column
            np.vstack([np.ones(5), np.ones(5), rng.standard_normal((3, 5))]),  # equal rows
        ]
    )
    cases = {
        "square": rng.standard_normal((3, 7, 7)),
        "tall": rng.standard_normal((9, 5)),
        "wide": rng.standard_normal((5, 9)),
        "big": rng.standard_normal((40, 40)),
        "singular": singular,
        # Equal magnitudes in the pivot column: the first one wins.
        "ties": np.array([[1.0, 2.0, 0.5], [-1.0, 2.0, 1.0], [1.0, -3.0, 2.0]]),
    }
    for case, a in cases.items():
        a = a.astype(dtype)
        lu, piv, info = batched(lambda m: tuple(np.asarray(v) for v in getrf(m)), a)
        out[f"{p}/getrf/{case}/a"] = a
        out[f"{p}/getrf/{case}/a_out"] = lu
        out[f"{p}/getrf/{case}/ipiv"] = (piv + 1).astype(np.int32)
        out[f"{p}/getrf/{case}/info"] = np.asarray(info, np.int32)


def add_trsm(out, p, dtype, rng):
    trsm = getattr(blas, p + "trsm")
    # Full matrices: the other triangle (and the diagonal, for diag='U') must be ignored.
    a = (rng.standard_normal((2, 5, 5)) + 4 * np.eye(5)).astype(dtype)
    b_left = rng.standard_normal((2, 5, 3)).astype(dtype)
    b_right = rng.standard_normal((2, 4, 5)).astype(dtype)
    out[f"{p}/trsm/a"] = a
    out[f"{p}/trsm/b_L"] = b_left
    out[f"{p}/trsm/b_R"] = b_right
    for side in "LR":
        b = b_left if side == "L" else b_right
        for uplo in "LU":
            for trans in "NT":
                for diag in "NU":
                    x = np.stack(
                        [
                            trsm(1.0, a[i], b[i], side=int(side == "R"), lower=int(uplo == "L"),
                                 trans_a=int(trans == "T"), diag=int(diag == "U"))
                            for i in range(2)
                        ]
                    )
                    out[f"{p}/trsm/{side}{uplo}{trans}{diag}/b_out"] = x


def add_syevd(out, p, dtype, rng):
    syevd = routine(p, "syevd")
    repeated = np.diag([2.0, 2.0, 2.0, -1.0, 5.0])
    cases = {
        "batch": rng.standard_normal((3, 6, 6)),
        "big": rng.standard_normal((40, 40)),
        "repeated": repeated,
        "nan": np.array([[1.0, np.nan], [np.nan, 1.0]]),
    }
    for case, a in cases.items():
        a = a.astype(dtype)  # not symmetric: the uplo triangle defines the matrix
        out[f"{p}/syevd/{case}/a"] = a
        for lower in (1, 0):
            w, v, info = batched(lambda m: tuple(np.asarray(x) for x in syevd(m, compute_v=1, lower=lower)), a)
            uplo = "L" if lower else "U"
            out[f"{p}/syevd/{case}/{uplo}/w"] = w
            out[f"{p}/syevd/{case}/{uplo}/info"] = np.asarray(info, np.int32)


def add_gesdd(out, p, dtype, rng):
    rankdef = rng.standard_normal((6, 2)) @ rng.standard_normal((2, 5))
    cases = {
        "tall": rng.standard_normal((2, 7, 4)),
        "wide": rng.standard_normal((4, 7)),
        "square": rng.standard_normal((6, 6)),
        "big": rng.standard_normal((40, 30)),
        "rankdef": rankdef,
        "nan": np.array([[1.0, np.nan], [0.0, 1.0]]),
        "inf": np.array([[1.0, np.inf], [0.0, 1.0]]),
    }
    for name in ("gesdd", "gesvd"):
        fn = routine(p, name)
        for case, a in cases.items():
            a = a.astype(dtype)
            out[f"{p}/{name}/{case}/a"] = a
            u, s, vt, info = batched(lambda m: tuple(np.asarray(x) for x in fn(m, compute_uv=1, full_matrices=0)), a)
            out[f"{p}/{name}/{case}/s"] = s
            out[f"{p}/{name}/{case}/info"] = np.asarray(info, np.int32)


def add_orthogonal(out, p, dtype):
    """Flax's orthogonal initializer (LSTM/GRU recurrent kernels): its normal draw and its output."""
    init = jax.nn.initializers.orthogonal()
    for i, shape in enumerate([(8, 4), (4, 8), (5, 5)]):
        key = jax.random.key(i)
        n_rows, n_cols = shape
        matrix_shape = (n_cols, n_rows) if n_rows < n_cols else (n_rows, n_cols)
        z = jax.random.normal(key, matrix_shape, dtype)
        out[f"{p}/orthogonal/{i}/z"] = np.asarray(z)
        out[f"{p}/orthogonal/{i}/out"] = np.asarray(init(key, shape, dtype))


def main():
    out = {}
    for p, dtype in DTYPES.items():
        rng = np.random.default_rng(20240613 + (p == "d"))
        add_geqrf(out, p, dtype, rng)
        add_ormqr(out, p, dtype, rng)
        add_potrf(out, p, dtype, rng)
        add_getrf(out, p, dtype, rng)
        add_trsm(out, p, dtype, rng)
        add_syevd(out, p, dtype, rng)
        add_gesdd(out, p, dtype, rng)
        add_orthogonal(out, p, dtype)
    out = {k: np.array(v, order="C") for k, v in sorted(out.items())}
    for k, v in out.items():
        assert v.dtype in (np.float32, np.float64, np.int32), (k, v.dtype)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    save_file(out, str(OUT), metadata={"generator": "scripts/make_linalg_fixtures.py"})
    print(f"wrote {len(out)} tensors, {OUT.stat().st_size} bytes to {OUT.relative_to(OUT.parent.parent.parent)}")


if __name__ == "__main__":
    main()
