"""Export Flax modules (linen and NNX) to flaxlayer bundles (docs/exporter.md, docs/bundle-format.md).

    from flaxlayer_export import export_flax, export_train_step

`export_train_step` needs optax (`pip install 'flaxlayer-export[train]'`); it is imported on
first use, so `export_flax` works without it.
"""

from __future__ import annotations

from ._jax_internals import SUPPORTED_JAX_TEXT, UnsupportedJaxError, check_jax_version
from .batching import resolve_batch_sizes
from .bundle_dir import write_bundle
from .export import build_flax_bundle, export_flax
from .init_golden import init_golden, init_mismatches
from .linen import KEY_IMPL
from .methods import InputStructureError, method_name_of, takes_training
from .names import leaf_name, named_leaves
from .safetensors_io import read_safetensors, write_safetensors

__version__ = "0.1.0"

__all__ = [
    "export_flax",
    "export_train_step",
    "export_causal_lm",
    "export_lm",
    "build_flax_bundle",
    "write_bundle",
    "InputStructureError",
    "UnsupportedJaxError",
    "check_jax_version",
    "SUPPORTED_JAX_TEXT",
    "KEY_IMPL",
    "leaf_name",
    "named_leaves",
    "method_name_of",
    "takes_training",
    "resolve_batch_sizes",
    "read_safetensors",
    "write_safetensors",
    "init_golden",
    "init_mismatches",
]


def __getattr__(name):
    if name in ("export_causal_lm", "export_lm"):
        from . import causal_lm
        return getattr(causal_lm, name)
    if name == "export_train_step":
        from .train import export_train_step
        return export_train_step
    raise AttributeError(f"module 'flaxlayer_export' has no attribute {name!r}")
