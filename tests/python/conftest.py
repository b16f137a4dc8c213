"""pytest configuration of the exporter tests (tests/python)."""

import os
from pathlib import Path

import pytest

from cli_binary import flaxlayer_binary

# The mesh bundles (flaxlayer_export.examples.registry.MESH_EXAMPLES) run on up to 8 devices:
# JAX's CPU backend must be told before it starts, i.e. before any test module imports jax.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

# JAX's persistent compilation cache under target/ (as FLAXLAYER_CACHE is for the Rust tests):
# the suite compiles the same programs in several tests and in the CLI subprocesses, which
# inherit the variable. Compiled programs are keyed by their HLO, jax version and flags, so a
# hit runs the executable a compile would have produced.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      str(Path(__file__).resolve().parents[2] / "target" / "jax-compile-cache"))


# The Rust CLI these tests start finds the CPU PJRT plugin in the repository's .venv (which
# scripts/setup.sh fills) as in an activated virtualenv: the library never searches the
# working directory (README, "PJRT plugins"); cargo commands get the same from .cargo/config.toml.
os.environ.setdefault("VIRTUAL_ENV", str(Path(__file__).resolve().parents[2] / ".venv"))

#: Set to 1 to run the tests marked `network` (they download wheels from the package index).
NETWORK_ENV = "FLAXLAYER_NETWORK_TESTS"


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "network: downloads wheels from the package index (the first run fills "
        f"target/pip-wheelhouse); opt-in: {NETWORK_ENV}=1")


def pytest_collection_modifyitems(config, items):
    import pytest
    if os.environ.get(NETWORK_ENV) == "1":
        return
    skip = pytest.mark.skip(reason=f"network test: set {NETWORK_ENV}=1 to run it")
    for item in items:
        if "network" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def flaxlayer_bin() -> Path:
    """The Rust CLI (cli_binary.py: $FLAXLAYER_BIN, which scripts/test.sh builds, else
    target/debug/flaxlayer built here with cargo)."""
    path = flaxlayer_binary()
    if path is None:
        pytest.skip("no Rust CLI at target/debug/flaxlayer and no cargo to build it")
    return path
