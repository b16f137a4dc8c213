"""The digits data set of the training example (hlo/digits/data.safetensors).

scikit-learn's bundled `load_digits` (1797 images of 8x8 pixels, values 0..16, labels 0..9,
shipped inside the scikit-learn package: no download), split with
`train_test_split(test_size=0.2, random_state=0, stratify=y)`:

| tensor    | dtype   | shape    | what                         |
|-----------|---------|----------|------------------------------|
| `x_train` | float32 | [1437, 64] | pixels / 16, row-major 8x8 |
| `y_train` | int32   | [1437]   | labels                       |
| `x_test`  | float32 | [360, 64] |                             |
| `y_test`  | int32   | [360]    |                              |

The file is the format `flaxlayer train --data` reads; writing it is deterministic
(byte-identical on re-run). Needs scikit-learn (`pip install 'flaxlayer-export[examples]'`).
"""

from __future__ import annotations

import os

import numpy as np

from ..safetensors_io import write_safetensors

TEST_SIZE = 0.2
SPLIT_SEED = 0


def load_digits_split() -> dict[str, np.ndarray]:
    """The documented split: {x_train, y_train, x_test, y_test}."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (np.asarray(d.data, dtype=np.float64) / 16.0).astype(np.float32)
    y = np.asarray(d.target, dtype=np.int32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=TEST_SIZE, random_state=SPLIT_SEED, stratify=y)
    return {
        "x_train": np.ascontiguousarray(x_train, dtype=np.float32),
        "y_train": np.ascontiguousarray(y_train, dtype=np.int32),
        "x_test": np.ascontiguousarray(x_test, dtype=np.float32),
        "y_test": np.ascontiguousarray(y_test, dtype=np.int32),
    }


def write_digits(path: str) -> dict[str, np.ndarray]:
    data = load_digits_split()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_safetensors(path, data, {"content": "dataset", "source": "sklearn.datasets.load_digits",
                                   "split": f"train_test_split(test_size={TEST_SIZE}, "
                                            f"random_state={SPLIT_SEED}, stratify=y)"})
    return data
