"""Writes tests/fixtures/fail_if/, the stateful bundle of tests/state_lost.rs: a Flax module
whose every call runs the test-only custom call `flaxlayer_test_fail_if(x: f32[]) -> f32[]`
on `x[0, 0]`. The call returns a copy of its input, or fails when it is positive, so a test
can make an execution fail on the device after the layer's state was donated to it.

flaxlayer registers that target only with its `fault-injection` cargo feature (which the
integration tests enable). For JAX to run the module here (golden data, the exporter's
batching checks), this script builds the same handler for jaxlib from a few lines of C++
against `jax.ffi.include_dir()` and registers it.

Run: .venv/bin/python scripts/make_fault_fixtures.py   (needs a C++ compiler, `c++`)
"""
import ctypes
import pathlib
import subprocess
import tempfile

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flaxlayer_export import export_flax

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "fail_if"
TARGET = "flaxlayer_test_fail_if"

HANDLER = r"""
#include "xla/ffi/api/ffi.h"
namespace ffi = xla::ffi;

static ffi::Error FailIf(ffi::Buffer<ffi::F32> x, ffi::ResultBuffer<ffi::F32> y) {
  float v = x.typed_data()[0];
  if (x.element_count() != 1 || y->element_count() != 1)
    return ffi::Error::InvalidArgument("flaxlayer_test_fail_if: f32 scalars only");
  if (v > 0) return ffi::Error::Internal("flaxlayer_test_fail_if: input > 0");
  y->typed_data()[0] = v;
  return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(FailIfHandler, FailIf,
                              ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>());
"""


def register_jax_handler(workdir: pathlib.Path):
    src, lib = workdir / "fail_if.cc", workdir / "libfail_if.so"
    src.write_text(HANDLER)
    subprocess.run(["c++", "-std=c++17", "-O2", "-w", "-shared", "-fPIC", f"-I{jax.ffi.include_dir()}", "-o", str(lib), str(src)],
                   check=True)
    handle = ctypes.cdll.LoadLibrary(str(lib))
    jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(handle.FailIfHandler), platform="cpu")
    return handle


class FailIf(nn.Module):
    """Dense(3) with dropout in training; a `counter` collection counts the calls and sums
    the custom call's copy of `x[0, 0]`, so every call writes state back (stateful
    inference) and depends on the custom call."""

    @nn.compact
    def __call__(self, x, training):
        calls = self.variable("counter", "calls", lambda: jnp.zeros((), jnp.int32))
        total = self.variable("counter", "total", lambda: jnp.zeros((), jnp.float32))
        first = jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct((), jnp.float32))(x[0, 0])
        if not self.is_initializing():
            calls.value = calls.value + 1
            total.value = total.value + first
        y = nn.Dense(3)(x)
        return nn.Dropout(0.5, deterministic=not training)(y)


def main():
    with tempfile.TemporaryDirectory() as tmp:
        _handle = register_jax_handler(pathlib.Path(tmp))
        x = np.random.default_rng(3).standard_normal((4, 5)).astype(np.float32)
        x[0, 0] = -1.5
        # jax.export refuses custom calls outside its compatibility list unless told.
        manifest = export_flax(FailIf(), x, str(OUT), seed=0, allow_custom_calls=[TARGET])
    calls = {e["file"]: e["custom_call_targets"] for m in manifest["methods"].values() for mode in ("inference", "training")
             for e in m[mode]}
    print(f"wrote {OUT.relative_to(ROOT)}: custom calls {calls}, stateful {manifest['methods']['__call__']['batching']}")


if __name__ == "__main__":
    main()
