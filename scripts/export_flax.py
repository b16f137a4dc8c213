#!/usr/bin/env python3
"""The `flaxlayer-export` console script (flaxlayer_export.cli), for a checkout whose
package is installed (scripts/setup.sh installs it into .venv):

    .venv/bin/python scripts/export_flax.py PY_FILE:ATTR --input inputs=4,12:float32 --out DIR
"""

import sys

from flaxlayer_export.cli import main

if __name__ == "__main__":
    sys.exit(main())
