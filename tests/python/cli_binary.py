"""The Rust CLI that the tests run: `flaxlayer_binary()`.

scripts/test.sh builds it while the Python suites already run: it names the file the build
will write in $FLAXLAYER_BIN and gives $FLAXLAYER_BIN_WAIT seconds for it to appear, so only
the tests that run the CLI wait for the build. Without $FLAXLAYER_BIN, target/debug/flaxlayer
is built here with cargo.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def flaxlayer_binary() -> Path | None:
    """The CLI's path, or None when there is none and no cargo to build it."""
    if os.environ.get("FLAXLAYER_BIN"):
        path = Path(os.environ["FLAXLAYER_BIN"])
        deadline = time.monotonic() + float(os.environ.get("FLAXLAYER_BIN_WAIT", "0"))
        while not path.is_file() and time.monotonic() < deadline:
            time.sleep(1)
        assert path.is_file(), f"FLAXLAYER_BIN={path} is not a file"
        return path
    path = REPO / "target" / "debug" / "flaxlayer"
    if shutil.which("cargo"):
        subprocess.run(["cargo", "build", "--quiet", "--bin", "flaxlayer"], cwd=REPO, check=True,
                       timeout=3600)
    return path if path.is_file() else None
