"""Every private JAX API the exporter uses, behind one version check.

jax.export has no public way to rewrite an Exported's module or to walk its ops, so this
module reaches into `jax._src`:
- `strip_locations`: MLIR debug locations (source file paths of the exporting machine) are
  replaced by `loc(unknown)`, and the module is re-serialized as a StableHLO portable
  artifact with the same target version;
- `custom_call_targets`: the `stablehlo.custom_call` targets of an Exported's module;
- `stripped_module`: an Exported's module without locations, as MLIR text and bytecode
  (the PJRT-level fixtures of scripts/export_pjrt_fixtures.py).

These APIs move between JAX releases; they were checked against the range in
`SUPPORTED_JAX`. Another jax version gets `UnsupportedJaxError` at first use, which names
the supported range, instead of an obscure failure deep inside an export.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import types

import jax
from jax import export as jax_export

# [lowest, highest) jax versions whose private APIs below were checked.
SUPPORTED_JAX = ((0, 10, 2), (0, 11, 0))
SUPPORTED_JAX_TEXT = "jax>=0.10.2,<0.11"


class UnsupportedJaxError(RuntimeError):
    """The installed jax is outside the range whose private APIs the exporter knows."""


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
            f"flaxlayer_export rewrites jax.export artifacts with private JAX APIs checked for "
            f"{SUPPORTED_JAX_TEXT}, but jax {version} is installed; install a supported "
            f"version (pip install '{SUPPORTED_JAX_TEXT}')")


@functools.cache
def _private():
    """The private modules, imported once after the version check."""
    check_jax_version()
    from jax._src import xla_bridge
    from jax._src.export import _export
    from jax._src.interpreters import mlir
    from jax._src.lib import _jax as jaxlib
    from jax._src.lib.mlir import ir, passmanager
    return types.SimpleNamespace(xla_bridge=xla_bridge, export=_export, mlir=mlir, jaxlib=jaxlib,
                                 ir=ir, passmanager=passmanager)


def allow_custom_call_target(target: str) -> None:
    """Lets `jax.export` export calls to `target` for the rest of the process, as if it were
    on JAX's export compatibility list (for test-only FFI targets; the runtime keeps no such
    list). Per export, `disabled_checks=[DisabledSafetyCheck.custom_call(target)]` does the
    same, but the exporter takes no such option."""
    _private().export._CUSTOM_CALL_TARGETS_GUARANTEED_STABLE.add(target)


def _artifact_target_version(serialized: bytes) -> str:
    """The StableHLO version string in the portable artifact's producer field."""
    m = re.match(rb"ML\xefR.StableHLO_v([0-9.]+)\x00", serialized, re.DOTALL)
    if not m:
        raise ValueError("mlir_module_serialized is not a StableHLO portable artifact")
    return m.group(1).decode()


def strip_locations(exp: jax_export.Exported) -> jax_export.Exported:
    """`exp` with all MLIR debug locations replaced by loc(unknown).

    The module is deserialized from its portable artifact, run through MLIR's
    `strip-debuginfo` pass and re-serialized as a portable artifact with the same StableHLO
    target version; the Exported is then `dataclasses.replace`d with the new bytes."""
    p = _private()
    target = _artifact_target_version(exp.mlir_module_serialized)
    ctx = p.mlir.make_ir_context()
    with ctx, p.ir.Location.unknown(ctx):
        module = p.jaxlib.mlir.deserialize_portable_artifact(exp.mlir_module_serialized)
        pm = p.passmanager.PassManager.parse("builtin.module(strip-debuginfo)")
        pm.run(module.operation)
        data = p.jaxlib.mlir.serialize_portable_artifact(
            module, target, p.xla_bridge.get_backend().serialize_with_sdy)
    if _artifact_target_version(data) != target:
        raise RuntimeError(f"re-serialized artifact changed StableHLO version from {target}")
    return dataclasses.replace(exp, mlir_module_serialized=data)


def custom_call_targets(exp: jax_export.Exported) -> list[str]:
    """Sorted unique `call_target_name`s of every `stablehlo.custom_call` in `exp`'s module,
    in every function and nested region (e.g. `lapack_sgeqrf_ffi`, `Sharding`)."""
    p = _private()
    ctx = p.mlir.make_ir_context()
    names: set[str] = set()
    with ctx, p.ir.Location.unknown(ctx):
        module = p.jaxlib.mlir.deserialize_portable_artifact(exp.mlir_module_serialized)

        def visit(op):
            op = getattr(op, "operation", op)
            if op.name == "stablehlo.custom_call":
                names.add(p.ir.StringAttr(op.attributes["call_target_name"]).value)
            return p.ir.WalkResult.ADVANCE

        module.operation.walk(visit)
    return sorted(names)


def stripped_module(exp: jax_export.Exported) -> tuple[str, bytes]:
    """`exp`'s module without debug locations: (MLIR text, MLIR bytecode as jax writes it)."""
    p = _private()
    with p.mlir.make_ir_context():
        module = p.ir.Module.parse(exp.mlir_module())
        p.passmanager.PassManager.parse("builtin.module(strip-debuginfo)").run(module.operation)
        return str(module), p.export._module_to_bytecode(module)
