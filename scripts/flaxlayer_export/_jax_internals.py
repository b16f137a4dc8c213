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
