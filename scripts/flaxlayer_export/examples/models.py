"""Example Flax linen modules of the committed bundles under hlo/ (registry.py says which).

`LSTMClassifier` (orthogonal init: QR) and `LinalgModule` (Cholesky, LU solve, eigh) lower to
LAPACK custom calls on CPU; the others use plain StableHLO ops only.
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


class ImageMeta(nn.Module):
    """Two named inputs, an image and a feature vector -> one output (hlo/image_meta): the
    README's `inputs!{"image" => &img, "meta" => &meta}` example."""

    @nn.compact
    def __call__(self, inputs):
        x = nn.relu(nn.Conv(features=4, kernel_size=(3, 3))(inputs["image"]))  # f32[B, 8, 8, 4]
        x = x.mean(axis=(1, 2))  # f32[B, 4]
        h = jnp.concatenate([x, inputs["meta"]], axis=-1)  # f32[B, 7]
        return nn.Dense(2)(h)


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


class PartitionedMLP(nn.Module):
    """An MLP with relu (by default 256-256-10: `MLP`'s, with the same variables under the same
    seed) whose kernels and biases carry Flax's partitioning metadata, Megatron style: the
    first Dense split by columns, the second by rows, the third replicated (hlo/mesh2x2_mlp,
    hlo/mesh2x4_mlp). Physical mesh axes (`nn.with_partitioning`: `model`), or with `logical`
    logical axes (`nn.with_logical_partitioning`: `embed`, `mlp`, `vocab`) for the export's
    rules."""
    logical: bool = False
    features: tuple[int, int, int] = (256, 256, 10)

    def _dense(self, features, kernel_axes, bias_axes):
        physical = {"embed": None, "mlp": "model", "vocab": None}
        if self.logical:
            part = nn.with_logical_partitioning
        else:
            part = nn.with_partitioning
            kernel_axes = tuple(physical[a] for a in kernel_axes)
            bias_axes = tuple(physical[a] for a in bias_axes)
        return nn.Dense(features, kernel_init=part(nn.initializers.lecun_normal(), kernel_axes),
                        bias_init=part(nn.initializers.zeros_init(), bias_axes))

    @nn.compact
    def __call__(self, inputs):
        hidden, embed, out = self.features
        x = nn.relu(self._dense(hidden, ("embed", "mlp"), ("mlp",))(inputs))
        x = nn.relu(self._dense(embed, ("mlp", "embed"), ("embed",))(x))
        return self._dense(out, ("embed", "vocab"), ("vocab",))(x)


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


class ActNorm(nn.Module):
    """Glow's activation normalisation with data-dependent init: `loc` and `log_scale` are set
    so that the first batch (the init inputs) comes out with zero mean and unit variance per
    feature; afterwards they are ordinary params."""

    eps: float = 1e-6

    @nn.compact
    def __call__(self, inputs):
        loc = self.param("loc", lambda rng: -jnp.mean(inputs, axis=0))
        log_scale = self.param("log_scale", lambda rng: -jnp.log(jnp.std(inputs, axis=0) + self.eps))
        return (inputs + loc) * jnp.exp(log_scale)


class ActNormDense(nn.Module):
    """ActNorm then Dense (hlo/actnorm): init depends on the init inputs' values."""

    @nn.compact
    def __call__(self, inputs):
        return nn.Dense(4)(ActNorm()(inputs))


class SmallMLP(nn.Module):
    """MLP 8-16-3 (hlo/pretrained_mlp, exported with given variables)."""

    @nn.compact
    def __call__(self, inputs):
        return nn.Dense(3)(nn.relu(nn.Dense(16)(inputs)))


class Buckets(nn.Module):
    """Dict of two leaves -> (batched output [B, 2], a parameter-derived vector [4] with no
    batch axis) (hlo/buckets). The vector has as many entries as one of the exported batch
    sizes, so a reader that guesses the batch axis from one shape gets it wrong."""

    @nn.compact
    def __call__(self, inputs):
        h = nn.relu(nn.Dense(8)(inputs["a"])) + nn.Dense(8)(inputs["b"])
        y = nn.Dense(2)(h)
        scale = self.param("scale", nn.initializers.normal(1.0), (4,))
        return y, 2.0 * jnp.tanh(scale)


class BatchStatsBN(nn.Module):
    """Dense + BatchNorm on batch statistics even at inference (hlo/bn_batch_stats): every
    call normalises with the batch's own mean and variance (and updates the running
    averages), so rows depend on each other and padding would change the results."""

    @nn.compact
    def __call__(self, inputs):
        x = nn.Dense(6)(inputs)
        return nn.BatchNorm(use_running_average=False, momentum=0.9)(x)


class LSTMClassifier(nn.Module):
    """Sequence classifier [B, T, F] -> logits [B, classes] (hlo/lstm, hlo/lstm_train): an
    LSTM (nn.OptimizedLSTMCell) and a GRU over time, dropout on the last step, Dense. Both
    cells' recurrent kernels are initialised orthogonally (QR), which lowers to LAPACK custom
    calls (geqrf, orgqr) in init."""

    hidden: int = 8
    classes: int = 3

    @nn.compact
    def __call__(self, inputs, training):
        x = nn.RNN(nn.OptimizedLSTMCell(self.hidden))(inputs)
        x = nn.RNN(nn.GRUCell(self.hidden))(x)
        x = nn.Dropout(rate=0.2)(x[:, -1], deterministic=not training)
        return nn.Dense(self.classes, name="head")(x)


class LinalgModule(nn.Module):
    """Builds one SPD matrix per row, A = H H^T + I with H = Dense(x) reshaped [k, k], and
    returns its Cholesky factor, the solution of A s = rhs (rhs a param) and its eigenvalues
    and eigenvectors (each column's sign fixed so that its largest-magnitude entry is
    positive) (hlo/linalg). On CPU: LAPACK potrf, getrf/trsm, syevd custom calls."""

    k: int = 4

    @nn.compact
    def __call__(self, inputs):
        b, k = inputs.shape[0], self.k
        h = nn.Dense(k * k)(inputs).reshape(b, k, k)
        a = h @ jnp.swapaxes(h, -1, -2) + jnp.eye(k, dtype=h.dtype)
        rhs = self.param("rhs", nn.initializers.normal(1.0), (k,))
        solve = jnp.linalg.solve(a, jnp.broadcast_to(rhs, (b, k))[..., None])[..., 0]
        w, v = jnp.linalg.eigh(a)
        big = jnp.take_along_axis(v, jnp.argmax(jnp.abs(v), axis=-2)[..., None, :], axis=-2)
        v = v * jnp.sign(big)
        return {"cholesky": jnp.linalg.cholesky(a), "solve": solve, "eigvals": w, "eigvecs": v}
