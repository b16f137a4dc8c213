"""pytest configuration of the exporter tests (tests/python)."""

import os
from pathlib import Path

# JAX's persistent compilation cache under target/ (as FLAXLAYER_CACHE is for the Rust tests):
# the suite compiles the same programs in several tests and in the CLI subprocesses, which
# inherit the variable. Compiled programs are keyed by their HLO, jax version and flags, so a
# hit runs the executable a compile would have produced.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      str(Path(__file__).resolve().parents[2] / "target" / "jax-compile-cache"))


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "network: may download wheels from the package index (the first run fills "
        "target/pip-wheelhouse); deselect with -m 'not network' when offline")
