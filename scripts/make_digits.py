#!/usr/bin/env python3
"""Write the digits data set of the training example: hlo/digits/data.safetensors
(flaxlayer_export.examples.digits documents it). Deterministic.

    .venv/bin/python scripts/make_digits.py [--out hlo/digits/data.safetensors]
"""

from __future__ import annotations

import argparse
import os
import sys

from flaxlayer_export.examples.digits import write_digits

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "hlo", "digits", "data.safetensors")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=DEFAULT_OUT)
    args = p.parse_args(argv)
    data = write_digits(args.out)
    print(f"wrote {args.out}: " + ", ".join(f"{k} {v.dtype}{list(v.shape)}" for k, v in data.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
