"""Tiny models for the exporter CLI tests (tests/python/test_export.py)."""

import flax.linen as nn
import jax.numpy as jnp


class TinyModel(nn.Module):
    """Bare array in, bare array out; Dropout and BatchNorm (state + RNG)."""

    @nn.compact
    def __call__(self, inputs, training):
        x = nn.Dense(8)(inputs)
        x = nn.BatchNorm(use_running_average=not training)(x)
        x = nn.Dropout(0.5)(x, deterministic=not training)
        return nn.Dense(2)(x)


def make_model():
    return TinyModel()


class PairModel(nn.Module):
    """Two inputs via a `combine` method; no training argument."""

    @nn.compact
    def combine(self, a, b):
        return nn.Dense(3)(a) * b.sum(axis=-1, keepdims=True).astype(jnp.float32)


def pair_fn(module, inputs):
    a, b = inputs
    return module.combine(a, b)


pair_model = PairModel()


class TwoArgs(nn.Module):
    """A method taking two arrays: the exporter passes one `inputs`, so it needs a wrapper."""

    @nn.compact
    def __call__(self, a, b):
        return nn.Dense(2)(a) + b
