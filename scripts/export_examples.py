#!/usr/bin/env python3
"""Regenerate the committed example bundles under hlo/<name>/ (deterministic); the examples
are flaxlayer_export.examples.registry.

    .venv/bin/python scripts/export_examples.py            # all bundles into hlo/
    .venv/bin/python scripts/export_examples.py mlp cnn    # some of them
    .venv/bin/python scripts/export_examples.py --out-root target/x
"""

from __future__ import annotations

import os
import sys

# The mesh examples run on up to 8 devices: JAX's CPU backend must be told before it starts.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

from flaxlayer_export.examples.registry import main  # noqa: E402

HLO = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "hlo")

if __name__ == "__main__":
    sys.exit(main(default_out_root=HLO))
