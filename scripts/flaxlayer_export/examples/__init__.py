"""The example modules and bundles committed under hlo/ (`registry.py` exports them).

    from flaxlayer_export.examples import MyFlaxModule, MLP
"""

from .models import (MLP, ActNorm, ActNormDense, BatchStatsBN, Buckets, DecoderLayer, DenseBNDropout,
                     DigitsMLP, LinalgModule, LSTMClassifier, MixedDtypes, MyFlaxModule, PartitionedMLP, SmallMLP,
                     TinyDecoder, TinyDense, TwoInputModule, my_flax_module_wrapper)

__all__ = ["MLP", "ActNorm", "ActNormDense", "BatchStatsBN", "Buckets", "DecoderLayer",
           "DenseBNDropout", "DigitsMLP", "LinalgModule", "LSTMClassifier", "MixedDtypes",
           "MyFlaxModule", "PartitionedMLP", "SmallMLP", "TinyDecoder", "TinyDense", "TwoInputModule",
           "my_flax_module_wrapper"]
