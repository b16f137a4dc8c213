"""What golden.safetensors records of init's result, without a second copy of the weights.

When the bundled variables are not what init computes (given variables, an init-only bundle),
the golden data says what init must compute under the seed:
- a leaf of at most `WHOLE_MAX` elements: whole, `init/<name>`;
- a larger leaf: its values at `SAMPLES` evenly spaced flat indices (`init_sample/<name>`,
  the leaf's dtype, and `init_sample_index/<name>`, int64) and its moments
  (`init_moments/<name>`, float64 `[sum, sum of squares]`).
A BERT-base init then takes ~150 kB of golden data instead of 438 MB, and a wrong init (another
key, another initializer, a permuted leaf) still fails: the sampled values are the init's own
random numbers, and the moments cover every element. When the bundled variables are init's
result (`variables_origin: "init"`), variables.safetensors is the record and golden holds
nothing of init.
"""

from __future__ import annotations

import numpy as np

WHOLE_MAX = 1024
SAMPLES = 64
PREFIXES = ("init/", "init_sample/", "init_sample_index/", "init_moments/")


def sample_index(size: int) -> np.ndarray:
    """The flat indices sampled from a leaf of `size` elements (first and last included)."""
    return np.unique(np.linspace(0, size - 1, SAMPLES).round().astype(np.int64))


def _moments(a: np.ndarray) -> np.ndarray:
    f = np.asarray(a, dtype=np.float64).reshape(-1)
    return np.array([f.sum(), (f * f).sum()], dtype=np.float64)


def init_golden(named: list[tuple[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The golden entries for init's result, given as (variable name, array) pairs."""
    g: dict[str, np.ndarray] = {}
    for n, x in named:
        a = np.asarray(x)
        if a.size <= WHOLE_MAX:
            g[f"init/{n}"] = a
            continue
        idx = sample_index(a.size)
        g[f"init_sample/{n}"] = a.reshape(-1)[idx]
        g[f"init_sample_index/{n}"] = idx
        g[f"init_moments/{n}"] = _moments(a)
    return g


def init_mismatches(golden: dict[str, np.ndarray], named: dict[str, np.ndarray], *,
                    atol: float = 1e-6, rtol: float = 1e-5) -> list[str]:
    """How the variables `named` ({name: array}, e.g. what the bundle's init computed)
    disagree with the golden record of init; [] when they agree. Names must match exactly;
    whole leaves and samples within `atol` (integers exactly); moments within `rtol` of the
    sum of |x| (resp. of x²) plus `atol`."""
    whole = {k[len("init/"):] for k in golden if k.startswith("init/")}
    sampled = {k[len("init_sample/"):] for k in golden if k.startswith("init_sample/")}
    problems = []
    if whole | sampled != set(named):
        problems.append(f"names: golden has {sorted(whole | sampled)}, got {sorted(named)}")
    for n in sorted((whole | sampled) & set(named)):
        got = np.asarray(named[n])
        if n in whole:
            want = golden[f"init/{n}"]
            if got.shape != want.shape or got.dtype != want.dtype:
                problems.append(f"{n}: {got.dtype}{list(got.shape)}, golden {want.dtype}{list(want.shape)}")
            elif not _close(got, want, atol):
                problems.append(f"{n}: values differ (max {_maxdiff(got, want):.3g})")
            continue
        idx = golden[f"init_sample_index/{n}"]
        want = golden[f"init_sample/{n}"]
        if got.dtype != want.dtype or idx.size == 0 or int(idx.max()) >= got.size:
            problems.append(f"{n}: {got.dtype}{list(got.shape)} does not fit the golden sample "
                            f"({want.dtype}, indices up to {int(idx.max()) if idx.size else '-'})")
            continue
        if not np.array_equal(idx, sample_index(got.size)):
            problems.append(f"{n}: {got.size} elements, the golden sample was taken from another size")
            continue
        s = got.reshape(-1)[idx]
        if not _close(s, want, atol):
            problems.append(f"{n}: sampled values differ (max {_maxdiff(s, want):.3g})")
        f = np.asarray(got, np.float64).reshape(-1)
        m, wm = _moments(got), golden[f"init_moments/{n}"]
        scale = np.array([np.abs(f).sum(), (f * f).sum()])
        if not np.all(np.abs(m - wm) <= rtol * scale + atol):
            problems.append(f"{n}: moments [sum, sum of squares] {m.tolist()}, golden {wm.tolist()}")
    return problems


def _close(got, want, atol) -> bool:
    if not np.issubdtype(want.dtype, np.inexact):
        return bool(np.array_equal(got, want))
    return bool(np.allclose(np.asarray(got, np.float64), np.asarray(want, np.float64), rtol=0, atol=atol))


def _maxdiff(got, want) -> float:
    return float(np.max(np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64)))) if want.size else 0.0
