"""Example Flax linen modules for the committed bundles under hlo/.

Only plain ops (no linalg / LAPACK custom calls).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp


class MyFlaxModule(nn.Module):
    """Keras FlaxLayer doc, first example (hlo/cnn)."""

    @nn.compact
    def __call__(self, inputs):
        x = inputs
        x = nn.Conv(features=32, kernel_size=(3, 3))(x)
        x = nn.relu(x)
        x = nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2))
        x = x.reshape((x.shape[0], -1))  # flatten
        x = nn.Dense(features=200)(x)
        x = nn.relu(x)
        x = nn.Dense(features=10)(x)
        x = nn.softmax(x)
        return x


class TwoInputModule(nn.Module):
    """Keras FlaxLayer doc, second example (hlo/wrapper): a `forward` method with
    several inputs and a `deterministic` flag, called through
    `my_flax_module_wrapper`."""

    @nn.compact
    def forward(self, input1, input2, deterministic):
        a = nn.Dense(16)(input1)
        b = nn.Dense(16)(input2)
        x = nn.relu(jnp.concatenate([a, b], axis=-1))
        x = nn.Dropout(rate=0.5)(x, deterministic=deterministic)
        return nn.Dense(4)(x)


def my_flax_module_wrapper(module, inputs, training):
    input1, input2 = inputs
    return module.forward(input1, input2, not training)


class DenseBNDropout(nn.Module):
    """Dense + BatchNorm + Dropout + Dense (hlo/dense_bn_dropout)."""

    @nn.compact
    def __call__(self, inputs, training):
        x = nn.Dense(32)(inputs)
        x = nn.BatchNorm(use_running_average=not training, momentum=0.9)(x)
        x = nn.relu(x)
        x = nn.Dropout(rate=0.3)(x, deterministic=not training)
        return nn.Dense(3)(x)


class MixedDtypes(nn.Module):
    """Dict inputs of mixed dtypes -> tuple outputs of mixed dtypes (hlo/mixed)."""

    vocab: int = 20

    @nn.compact
    def __call__(self, inputs):
        x = inputs["x"]  # f32[B, 8]
        scale = inputs["scale"]  # bf16[B, 8]
        ids = inputs["ids"]  # int32[B, 4]
        emb = nn.Embed(self.vocab, 8)(ids).mean(axis=1)
        h = x * scale.astype(jnp.float32) + emb
        h = nn.relu(nn.Dense(16)(h))
        logits = nn.Dense(5)(h)  # f32
        half = nn.Dense(3, dtype=jnp.bfloat16)(h)  # bf16
        pred = jnp.argmax(logits, axis=-1).astype(jnp.int32)  # int32
        return logits, half, pred


class DecoderLayer(nn.Module):
    d_model: int
    num_heads: int
    mlp_dim: int
    dropout_rate: float

    @nn.compact
    def __call__(self, x, deterministic):
        h = nn.LayerNorm()(x)
        h = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads, qkv_features=self.d_model, decode=True)(
                h, deterministic=deterministic)
        x = x + nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
        h = nn.LayerNorm()(x)
        h = nn.relu(nn.Dense(self.mlp_dim)(h))
        h = nn.Dense(self.d_model)(h)
        return x + nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)


class TinyDecoder(nn.Module):
    """Decoder-only transformer for autoregressive decoding with Flax's `cache`
    collection (hlo/decoder).

    `init` on ids int32[B, max_len] creates the caches (attention key/value
    caches and the position counter `cache/position`); after that every call
    takes one token per sequence, ids int32[B, 1] -> logits f32[B, 1, vocab],
    and advances the caches by one position. At most `max_len` calls fit.
    """

    vocab: int = 32
    d_model: int = 32
    num_layers: int = 2
    num_heads: int = 2
    max_len: int = 16
    mlp_dim: int = 64
    dropout_rate: float = 0.1

    @nn.compact
    def __call__(self, inputs, training):
        deterministic = not training
        length = inputs.shape[1]
        initialized = self.has_variable("cache", "position")
        position = self.variable("cache", "position", lambda: jnp.zeros((), jnp.int32))
        if initialized:
            positions = position.value + jnp.arange(length, dtype=jnp.int32)
            position.value = position.value + length
        else:
            positions = jnp.arange(length, dtype=jnp.int32)
        # std-1 embeddings keep the random-init greedy decode from collapsing
        # onto a single token (the golden sequence then depends on the caches).
        init = nn.initializers.normal(stddev=1.0)
        x = nn.Embed(self.vocab, self.d_model, embedding_init=init, name="tok_embed")(inputs)
        x = x + nn.Embed(self.max_len, self.d_model, embedding_init=init, name="pos_embed")(positions)[None]
        x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
        for i in range(self.num_layers):
            x = DecoderLayer(self.d_model, self.num_heads, self.mlp_dim, self.dropout_rate,
                             name=f"layer_{i}")(x, deterministic)
        x = nn.LayerNorm()(x)
        return nn.Dense(self.vocab, name="head")(x)


class MLP(nn.Module):
    """MLP 64-256-256-10 with relu; no state, no RNG (hlo/mlp)."""

    @nn.compact
    def __call__(self, inputs):
        x = nn.relu(nn.Dense(256)(inputs))
        x = nn.relu(nn.Dense(256)(x))
        return nn.Dense(10)(x)


class TinyDense(nn.Module):
    """One Dense layer (hlo/multi_platform)."""

    @nn.compact
    def __call__(self, inputs):
        return nn.Dense(4)(inputs)


class DigitsMLP(nn.Module):
    """MLP for 8x8 digits with BatchNorm and Dropout (hlo/digits_train, a training bundle):
    Dense(128, no bias: BatchNorm's bias replaces it), BatchNorm, relu, Dropout(0.2),
    Dense(10) -> logits."""

    @nn.compact
    def __call__(self, inputs, training):
        x = nn.Dense(128, use_bias=False)(inputs)
        x = nn.BatchNorm(use_running_average=not training, momentum=0.9)(x)
        x = nn.relu(x)
        x = nn.Dropout(rate=0.2)(x, deterministic=not training)
        return nn.Dense(10)(x)
