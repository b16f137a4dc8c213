"""The experiment behind BENCHMARKS.md's "params as constants" row: hlo/mlp's MLP with its
variables closed over as constants, exported as a bundle with no params (its init makes no
variables), so that an inference call passes PJRT one argument instead of seven.

    .venv/bin/python scripts/make_frozen_mlp.py target/frozen-mlp

Its outputs are checked against hlo/mlp's golden inference outputs before it is written.
"""

from __future__ import annotations

import os
import sys

import flax.linen as nn
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from flaxlayer_export import export_flax, read_safetensors  # noqa: E402
from flaxlayer_export.examples import MLP  # noqa: E402

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def nested(flat: dict[str, np.ndarray]) -> dict:
    """`params/Dense_0/kernel` -> {"params": {"Dense_0": {"kernel": ...}}}."""
    tree: dict = {}
    for name, value in flat.items():
        *path, leaf = name.split("/")
        node = tree
        for p in path:
            node = node.setdefault(p, {})
        node[leaf] = np.asarray(value)
    return tree


def main(out_dir: str) -> None:
    variables = nested(read_safetensors(os.path.join(HERE, "hlo/mlp/variables.safetensors"))[0])
    golden = read_safetensors(os.path.join(HERE, "hlo/mlp/golden.safetensors"))[0]
    x = np.asarray(golden["inputs/inputs"])

    class FrozenMLP(nn.Module):
        @nn.compact
        def __call__(self, inputs):
            return MLP().apply(variables, inputs)

    want = np.asarray(golden["inference/outputs"])
    got = np.asarray(FrozenMLP().apply({}, x))
    if not np.allclose(got, want, rtol=1e-6, atol=1e-6):
        raise SystemExit(f"the frozen MLP differs from hlo/mlp's golden outputs by {np.abs(got - want).max()}")
    export_flax(FrozenMLP(), x, out_dir, batch_sizes=[1, x.shape[0]])
    print(f"wrote {out_dir}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "target", "frozen-mlp"))
