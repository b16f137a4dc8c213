"""A causal LM of your own, exported for generation with `export_lm` (docs/generation.md).

`TinyLM` is a one-layer linen decoder whose `cache` collection holds keys, values and the
token count `index`. Its `__call__(ids, start, length)` runs the tokens at positions
`start..start+L-1` (the first `length` real), which is all `export_lm`'s step needs:

    from flaxlayer_export import export_lm
    from flaxlayer_export.examples.tiny_lm import TinyLM, export_tiny_lm
    export_tiny_lm("tiny_lm_bundle")          # then: flaxlayer generate tiny_lm_bundle --prompt-ids 1,2,3
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax


class TinyLM(nn.Module):
    vocab: int = 64
    dim: int = 32
    max_len: int = 32

    @nn.compact
    def __call__(self, ids, start, length):
        b, n = ids.shape
        init = nn.initializers.normal(stddev=1.0)
        positions = start + jnp.arange(n, dtype=jnp.int32)
        x = nn.Embed(self.vocab, self.dim, embedding_init=init)(ids)
        x = x + nn.Embed(self.max_len, self.dim, embedding_init=init)(positions)[None]
        q, k, v = (nn.Dense(self.dim, name=name)(x) for name in ("q", "k", "v"))
        keys = self.variable("cache", "keys", jnp.zeros, (b, self.max_len, self.dim))
        values = self.variable("cache", "values", jnp.zeros, (b, self.max_len, self.dim))
        index = self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
        keys.value = lax.dynamic_update_slice(keys.value, k, (0, start, 0))
        values.value = lax.dynamic_update_slice(values.value, v, (0, start, 0))
        index.value = (start + length).astype(jnp.int32)
        # causal over the cache: position p sees positions <= p (padding after `length` is
        # never seen by a real token, and the next call writes over it)
        visible = jnp.arange(self.max_len)[None, :] <= positions[:, None]
        att = jnp.einsum("bld,bmd->blm", q, keys.value) / jnp.sqrt(self.dim)
        att = jax.nn.softmax(jnp.where(visible[None], att, -1e9), axis=-1)
        x = x + jnp.einsum("blm,bmd->bld", att, values.value)
        return nn.Dense(self.vocab, name="head")(nn.LayerNorm()(x))


def tiny_lm_variables(model: TinyLM, batch: int = 1, seed: int = 0):
    """Params, and an empty cache (init's call wrote a token into it)."""
    ids = jnp.zeros((batch, 1), jnp.int32)
    v = model.init(jax.random.PRNGKey(seed), ids, jnp.int32(0), jnp.int32(1))
    return {"params": v["params"], "cache": jax.tree_util.tree_map(jnp.zeros_like, v["cache"])}


def export_tiny_lm(out_dir: str, model: TinyLM | None = None, **kwargs) -> dict:
    """`export_lm` on TinyLM: the step applies the module with the cache mutable."""
    from flaxlayer_export import export_lm
    model = model or TinyLM()
    variables = tiny_lm_variables(model)

    def step(params, cache, ids, start, length):
        logits, mutated = model.apply({"params": params, "cache": cache}, ids, start, length,
                                      mutable=["cache"])
        return logits, mutated["cache"]

    return export_lm(step, variables["params"], variables["cache"], out_dir,
                     max_len=model.max_len, vocab_size=model.vocab, eos_token_id=None,
                     start=lambda cache: cache["index"], counters=["index"], module="TinyLM",
                     **{"prefill_lens": (4, 8), **kwargs})
