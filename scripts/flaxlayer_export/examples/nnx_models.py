"""Example Flax NNX modules of the committed NNX bundles under hlo/nnx_* (registry.py says
which). Each keeps its variables, its mode attributes and its RNG streams in itself."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx


class NnxMLPBNDropout(nnx.Module):
    """Linear(12, 32), BatchNorm (momentum 0.9), relu, Dropout(0.3), Linear(32, 3)
    (hlo/nnx_mlp_bn_dropout), the NNX twin of DenseBNDropout. Exported as the class, a
    factory of `rngs`, so the bundle has an init."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.linear1 = nnx.Linear(12, 32, rngs=rngs)
        self.bn = nnx.BatchNorm(32, momentum=0.9, rngs=rngs)
        self.dropout = nnx.Dropout(0.3, rngs=rngs)
        self.linear2 = nnx.Linear(32, 3, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.bn(self.linear1(x)))
        return self.linear2(self.dropout(x))


class NnxAttention(nnx.Module):
    """A pre-norm causal self-attention block on [B, T, 8] -> [B, T, 4] (hlo/nnx_attention):
    LayerNorm, nnx.MultiHeadAttention (2 heads, dropout 0.1 on the attention weights),
    Dropout(0.1), residual, LayerNorm, Linear."""

    def __init__(self, features: int = 8, heads: int = 2, out: int = 4, *, rngs: nnx.Rngs):
        self.norm1 = nnx.LayerNorm(features, rngs=rngs)
        self.attention = nnx.MultiHeadAttention(heads, features, dropout_rate=0.1, decode=False,
                                                rngs=rngs)
        self.dropout = nnx.Dropout(0.1, rngs=rngs)
        self.norm2 = nnx.LayerNorm(features, rngs=rngs)
        self.head = nnx.Linear(features, out, rngs=rngs)

    def __call__(self, x):
        h = self.attention(self.norm1(x), mask=nnx.make_causal_mask(x[..., 0]))
        x = x + self.dropout(h)
        return self.head(self.norm2(x))


class Count(nnx.Variable):
    """A count of calls: neither a param nor a batch statistic (collection `count`)."""


class NnxCounter(nnx.Module):
    """Linear(3, 2) plus how many times the module has been called (hlo/nnx_counter): the
    count is a custom nnx.Variable, increased by every call, by 1 at inference and by 2 in
    training (the method takes `training`, Keras' convention)."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.linear = nnx.Linear(3, 2, rngs=rngs)
        self.calls = Count(jnp.zeros((), jnp.int32))

    def __call__(self, x, training: bool):
        self.calls[...] += 2 if training else 1
        return self.linear(x) + self.calls[...].astype(x.dtype)


class NnxDigitsMLP(nnx.Module):
    """The NNX twin of DigitsMLP (hlo/nnx_digits_train, a training bundle): Linear(64, 128, no
    bias), BatchNorm (momentum 0.9), relu, Dropout(0.2), Linear(128, 10) -> logits."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.linear1 = nnx.Linear(64, 128, use_bias=False, rngs=rngs)
        self.bn = nnx.BatchNorm(128, momentum=0.9, rngs=rngs)
        self.dropout = nnx.Dropout(0.2, rngs=rngs)
        self.linear2 = nnx.Linear(128, 10, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.bn(self.linear1(x)))
        return self.linear2(self.dropout(x))
