"""Everything the exporter does below `jax.export`'s documented surface, behind one version
check.

jax.export has no API to rewrite an Exported's module or to walk its ops. This module does
both with JAX's public MLIR bindings (`jax.extend.mlir`: `ir`, `passmanager`, `dialects`,
`(de)serialize_portable_artifact`) and `jax.extend.backend`; it imports nothing from
`jax._src`. What remains version-sensitive is how those pieces fit together, which was
checked for every release in `SUPPORTED_JAX` (the two ends are tested, scripts/matrix.sh):
- `strip_locations`: MLIR debug locations (source file paths of the exporting machine) are
  replaced by `loc(unknown)`, and the module is re-serialized as a StableHLO portable
  artifact with the same target version; the Exported (a frozen dataclass) is
  `dataclasses.replace`d with the new bytes;
- `custom_call_targets`: the `stablehlo.custom_call` targets of an Exported's module;
- `stripped_module`: an Exported's module without locations, as MLIR text and bytecode
  (the PJRT-level fixtures of scripts/export_pjrt_fixtures.py).

Another jax version gets `UnsupportedJaxError` at first use, which names the supported range,
instead of an obscure failure deep inside an export.
"""

from __future__ import annotations

import dataclasses
import functools
import re

import jax
from jax import export as jax_export

# [lowest, highest) jax versions whose use of the APIs below was checked.
SUPPORTED_JAX = ((0, 10, 2), (0, 13, 0))
SUPPORTED_JAX_TEXT = "jax>=0.10.2,<0.13"


class UnsupportedJaxError(RuntimeError):
    """The installed jax is outside the range the exporter was checked with."""


def _version_tuple(version: str) -> tuple[int, int, int]:
    m = re.match(r"^(\d+)\.(\d+)\.(\d+)", version)
    if not m:
        raise UnsupportedJaxError(f"cannot parse the jax version {version!r}; "
                                  f"flaxlayer_export supports {SUPPORTED_JAX_TEXT}")
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def check_jax_version(version: str | None = None) -> None:
    """Raise UnsupportedJaxError unless `version` (default: the installed jax) is supported."""
    version = jax.__version__ if version is None else version
    lo, hi = SUPPORTED_JAX
    if not lo <= _version_tuple(version) < hi:
        raise UnsupportedJaxError(
            f"flaxlayer_export rewrites jax.export artifacts in ways checked for "
            f"{SUPPORTED_JAX_TEXT} (jax 0.10.2 through 0.12.x), but jax {version} is installed; "
            f"install a supported version (pip install '{SUPPORTED_JAX_TEXT}')")


@functools.cache
def _mlir():
    """jax.extend's MLIR bindings, imported once after the version check."""
    check_jax_version()
    import types

    from jax.extend import backend
    from jax.extend import mlir
    from jax.extend.mlir import ir, passmanager
    from jax.extend.mlir.dialects import chlo, sdy, stablehlo
    return types.SimpleNamespace(mlir=mlir, ir=ir, passmanager=passmanager, backend=backend,
                                 dialects=(stablehlo, chlo, sdy), stablehlo=stablehlo)


def _context():
    """An MLIR context with the dialects a jax.export module may use (StableHLO, CHLO,
    Shardy; func and builtin are always there)."""
    p = _mlir()
    ctx = p.ir.Context()
    for d in p.dialects:
        d.register_dialect(ctx)
    return ctx


def disabled_custom_call_checks(targets) -> list:
    """`jax.export`'s `disabled_checks` that let it export calls to `targets` (custom calls
    outside JAX's compatibility list, e.g. test-only FFI targets)."""
    return [jax_export.DisabledSafetyCheck.custom_call(t) for t in targets]


def _artifact_target_version(serialized: bytes) -> str:
    """The StableHLO version string in the portable artifact's producer field."""
    m = re.match(rb"ML\xefR.StableHLO_v([0-9.]+)\x00", serialized, re.DOTALL)
    if not m:
        raise ValueError("mlir_module_serialized is not a StableHLO portable artifact")
    return m.group(1).decode()


def _serialize(module, target: str) -> bytes:
    p = _mlir()
    return p.mlir.serialize_portable_artifact(module, target, p.backend.get_backend().serialize_with_sdy)


def strip_locations(exp: jax_export.Exported) -> jax_export.Exported:
    """`exp` with all MLIR debug locations replaced by loc(unknown) (see
    `stripped_and_custom_calls`)."""
    return stripped_and_custom_calls(exp)[0]


def stripped_and_custom_calls(exp: jax_export.Exported) -> tuple[jax_export.Exported, list[str]]:
    """(`exp` with all MLIR debug locations replaced by loc(unknown), its custom-call targets),
    from one parse of the module: a frozen BERT-base module carries 438 MB of constants, and
    each parse of it took seconds.

    The module is deserialized from its portable artifact, run through MLIR's
    `strip-debuginfo` pass and re-serialized as a portable artifact with the same StableHLO
    target version; the Exported is then `dataclasses.replace`d with the new bytes. The
    targets: sorted unique `call_target_name`s of every `stablehlo.custom_call`, in every
    function and nested region (e.g. `lapack_sgeqrf_ffi`, `Sharding`)."""
    p = _mlir()
    target = _artifact_target_version(exp.mlir_module_serialized)
    ctx = _context()
    with ctx, p.ir.Location.unknown(ctx):
        module = p.mlir.deserialize_portable_artifact(exp.mlir_module_serialized)
        p.passmanager.PassManager.parse("builtin.module(strip-debuginfo)").run(module.operation)
        names = _custom_call_names(p, module)
        data = _serialize(module, target)
    if _artifact_target_version(data) != target:
        raise RuntimeError(f"re-serialized artifact changed StableHLO version from {target}")
    return dataclasses.replace(exp, mlir_module_serialized=data), names


def _custom_call_names(p, module) -> list[str]:
    names: set[str] = set()

    def visit(op):
        op = getattr(op, "operation", op)
        if op.name == "stablehlo.custom_call":
            names.add(p.ir.StringAttr(op.attributes["call_target_name"]).value)
        return p.ir.WalkResult.ADVANCE

    module.operation.walk(visit)
    return sorted(names)


def custom_call_targets(exp: jax_export.Exported) -> list[str]:
    """Sorted unique `call_target_name`s of every `stablehlo.custom_call` in `exp`'s module,
    in every function and nested region (e.g. `lapack_sgeqrf_ffi`, `Sharding`)."""
    p = _mlir()
    ctx = _context()
    with ctx, p.ir.Location.unknown(ctx):
        return _custom_call_names(p, p.mlir.deserialize_portable_artifact(exp.mlir_module_serialized))


def stripped_module(exp: jax_export.Exported) -> tuple[str, bytes]:
    """`exp`'s module without debug locations: (MLIR text, a StableHLO portable artifact
    targeting the version at least 4 weeks old, as jax.export writes it)."""
    p = _mlir()
    ctx = _context()
    with ctx, p.ir.Location.unknown(ctx):
        module = p.ir.Module.parse(exp.mlir_module())
        p.passmanager.PassManager.parse("builtin.module(strip-debuginfo)").run(module.operation)
        target = p.stablehlo.get_version_from_compatibility_requirement(
            p.stablehlo.StablehloCompatibilityRequirement.WEEK_4)
        return str(module), _serialize(module, target)


# --------------------------------------------------------------------------
# hoisting: a params-only prologue and a per-call body (partial evaluation)
# --------------------------------------------------------------------------

@functools.cache
def _pe():
    """JAX's partial evaluation of jaxprs (`jax._src.interpreters.partial_eval`: no public
    API splits a jaxpr by what its inputs are known), after the version check."""
    check_jax_version()
    from jax._src.interpreters import partial_eval as pe
    return pe


@dataclasses.dataclass
class Split:
    """A flat function f(*known, *unknown) split in two by partial evaluation:
    `prologue(*known) -> computed residuals` and `body(*known, *computed, *unknown) -> f's
    results`. `residuals[i]` is, for the body's i-th residual, `("param", j)` (the known
    argument j itself, passed unchanged: no copy), `("computed", k)` (the prologue's k-th
    result) or `("constant", k)` (made from constants alone, again in the body, where XLA
    folds it)."""
    prologue: object  # callable on the known args
    body: object  # callable on (*known, *computed, *unknown)
    residuals: list
    computed_avals: list  # jax.core.ShapedArray of each computed residual


def _out_avals(prim, avals, params):
    try:
        out = prim.abstract_eval(*avals, **params)
    except Exception:  # noqa: BLE001 - no abstract rule for these args: treat as unknown size
        return None
    out = out[0] if isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], (set, frozenset)) else out
    return list(out) if isinstance(out, (list, tuple)) else [out]


def _size(aval) -> int:
    n = 1
    for d in getattr(aval, "shape", ()):
        n *= int(d)
    return n


# Ops XLA does without a copy (bitcasts) or fuses into their consumer: a residual made by
# one would be a second copy of its input for nothing, so the body redoes them.
_FREE_IN_THE_BODY = frozenset({"reshape", "squeeze", "expand_dims", "broadcast_in_dim", "copy", "copy_p"})


def _growth_policy(prim, *avals, **params):
    """`partial_eval_jaxpr_custom`'s `saveable`: a known value may be a residual unless it
    has more elements than the op's inputs (broadcasts, iota, pads): those are recomputed
    in the body from their smaller inputs, so that residuals do not outgrow the params."""
    if getattr(prim, "name", "") in _FREE_IN_THE_BODY:
        return False
    outs = _out_avals(prim, avals, params)
    if outs is None:
        return True
    return sum(_size(o) for o in outs) <= max(1, sum(_size(a) for a in avals))


def split_known(fn, n_known: int, avals) -> Split:
    """Split the flat function `fn(*args)` (args: `avals`, the first `n_known` known) into
    a prologue over the known args and a body (see Split), by JAX's partial evaluation
    (`partial_eval_jaxpr_custom`, the one remat uses, with a policy that keeps residuals
    from growing past the values they are computed from). Every equation whose inputs are
    all known (and that has no effects) is in the prologue; the rest in the body."""
    pe = _pe()
    from jax.extend import core as jex_core
    closed = jax.make_jaxpr(fn)(*avals)
    jaxpr = pe.convert_constvars_jaxpr(closed.jaxpr)
    n_const = len(closed.consts)
    n = len(avals)
    unknowns = [False] * n_const + [False] * n_known + [True] * (n - n_known)
    inst = [True] * n_const + [False] * n_known + [True] * (n - n_known)
    known, staged, _, _, num_res = pe.partial_eval_jaxpr_custom(
        jaxpr, unknowns, inst, True, True, _growth_policy)[:5]
    # known: (*consts, *known args) -> residuals; staged: (*residuals, *consts, *unknown args) -> outs
    # Recomputed ops (see _growth_policy) make their inputs residuals even when the body does
    # not use them in the end: dead code in the body goes, and the residuals it alone used.
    n_rest = len(staged.invars) - num_res
    staged, used = pe.dce_jaxpr(staged, [True] * len(staged.outvars), instantiate=[False] * num_res + [True] * n_rest)
    known = pe.prune_jaxpr_outputs(known, list(used[:num_res]))
    num_res = sum(used[:num_res])
    fwd = pe._jaxpr_forwarding(known)  # noqa: SLF001 - which residuals are inputs passed on
    # Each residual is a known arg passed on ("param"), made from the known args
    # ("computed", by the prologue) or from constants alone ("constant": masks, iotas; the
    # body makes them again, XLA folds them).
    residuals, kinds = [], []
    for i in range(num_res):
        j = fwd[i] if i < len(fwd) else None
        if j is not None and j >= n_const:
            kinds.append(("param", j - n_const))
            continue
        _, used = pe.dce_jaxpr(known, [k == i for k in range(len(known.outvars))])
        kinds.append(("computed", None) if any(used[n_const:]) else ("constant", None))
    n_computed = n_constant = 0
    for kind, j in kinds:
        if kind == "computed":
            residuals.append((kind, n_computed))
            n_computed += 1
        elif kind == "constant":
            residuals.append((kind, n_constant))
            n_constant += 1
        else:
            residuals.append((kind, j))

    def part(kind):
        jp = pe.prune_jaxpr_outputs(known, [k == kind for k, _ in kinds])
        jp, _ = pe.dce_jaxpr(jp, [True] * len(jp.outvars), instantiate=True)
        return jp, jex_core.jaxpr_as_fun(jex_core.ClosedJaxpr(jp, []))

    consts = list(closed.consts)
    computed_jaxpr, known_fn = part("computed")
    _, constant_fn = part("constant")
    staged_fn = jex_core.jaxpr_as_fun(jex_core.ClosedJaxpr(staged, []))
    computed_avals = [v.aval for v in computed_jaxpr.outvars]

    def prologue(*known_args):
        return list(known_fn(*consts, *known_args))

    def body(*args):
        known_args, rest = args[:n_known], args[n_known:]
        computed, unknown_args = rest[:n_computed], rest[n_computed:]
        constant = list(constant_fn(*consts, *known_args)) if n_constant else []
        pick = {"param": known_args, "computed": computed, "constant": constant}
        res = [pick[kind][k] for kind, k in residuals]
        return list(staged_fn(*res, *consts, *unknown_args))

    return Split(prologue, body, residuals, computed_avals)
