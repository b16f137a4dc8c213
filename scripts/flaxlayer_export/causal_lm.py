"""Causal language models as generation bundles (docs/generation.md).

    from flaxlayer_export import export_causal_lm, export_lm

`export_causal_lm(model, out_dir, max_len=...)` exports a `transformers` Flax causal LM
(`FlaxPreTrainedModel`: GPT-2, Llama, Mistral, Gemma, ...); `export_lm(step, params, cache,
out_dir, ...)` exports any decoder given as a step function over its cache (a linen or NNX
module of your own). transformers is only needed when `export_causal_lm` is called.

The bundle has several methods over ONE state (the cache collection), each with its own
input shapes:
- `prefill_<L>` for each prompt length L: `{"input_ids": int32[B, L], "length": int32[B]}`
  -> `{"logits": [B, V]}`, the logits after the last of the first `length` tokens; the
  rest of the row is padding, which the cache forgets (the next call writes over it);
- `decode`: `{"input_ids": int32[B, 1]}` -> `{"logits": [B, V]}`;
- `sample` (batch 1): Hugging Face's Flax sampling step, JAX's own arithmetic:
  `{"logits": [1, V], "key": uint32[1, 2], "temperature": [1], "top_k": int32[1],
  "top_p": [1]}` -> `{"token": int32[1], "key": uint32[1, 2]}`;
and a `generation` section in the manifest saying which is which.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .bundle_dir import write_bundle
from .hoist import hoisted_entry
from .linen import (FORMAT, FORMAT_VERSION, KEY_IMPL, _meta, check_exported, check_same_outputs,
                    export_computation, frozen_sizes, sds, to_plain)
from .manifest_json import manifest_bytes
from .names import dtype_name, named_leaves, spec
from .safetensors_io import safetensors_bytes

GENERATION_VERSION = 1
DEFAULT_PREFILL_LENS = (16, 64, 256, 1024)

# step(params, cache, input_ids int32[B, L], start int32[], length int32[])
#   -> (logits [B, L, V], new_cache): runs the tokens at positions start..start+L-1 over the
#   cache, of which only the first `length` are real; the new cache holds start+length tokens.
Step = Callable[[Any, Any, jax.Array, jax.Array, jax.Array], tuple[jax.Array, Any]]


# --------------------------------------------------------------------------
# Hugging Face's conventions, hidden in a step function
# --------------------------------------------------------------------------

def _cache_index_paths(cache) -> list[tuple]:
    leaves, _ = jax.tree_util.tree_flatten_with_path(cache)
    return [p for p, _ in leaves if getattr(p[-1], "key", None) == "cache_index"]


def hf_step(model, max_len: int) -> Step:
    """The step of a transformers Flax causal LM over its `init_cache` cache: the model's
    own `__call__` with `past_key_values`, position ids `start + arange(L)` and the all-ones
    `[B, max_len]` attention mask that its `prepare_inputs_for_generation` passes (the cache
    masks the positions not written yet); afterwards every `cache_index` is `start + length`,
    so the padding is written over by the next call."""

    def step(params, cache, input_ids, start, length):
        b, n = input_ids.shape
        positions = jnp.broadcast_to(start + jnp.arange(n, dtype=jnp.int32), (b, n))
        mask = jnp.ones((b, max_len), dtype=jnp.int32)
        out = model(input_ids, attention_mask=mask, position_ids=positions, params=params,
                    past_key_values=cache)
        new_cache = flax.core.unfreeze(out.past_key_values)
        end = (start + length).astype(jnp.int32)
        new_cache = jax.tree_util.tree_map_with_path(
            lambda p, x: jnp.broadcast_to(end, x.shape).astype(x.dtype)
            if getattr(p[-1], "key", None) == "cache_index" else x, new_cache)
        return out.logits, new_cache

    return step


def hf_start(cache) -> Callable[[Any], jax.Array]:
    """How many tokens the cache holds: its first `cache_index`."""
    paths = _cache_index_paths(cache)
    if not paths:
        raise ValueError("the model's cache has no `cache_index` variable; is it a "
                         "transformers Flax causal LM?")
    first = paths[0]

    def start(c):
        x = c
        for k in first:
            x = x[k.key]
        return jnp.asarray(x, jnp.int32).reshape(())

    return start


def _eos_ids(value) -> list[int]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value]
    return [int(value)]


def export_causal_lm(model, out_dir: str, *, max_len: int, prefill_lens: Sequence[int] | None = None,
                     batch_sizes: Sequence[int] = (1,), frozen: bool = False,
                     frozen_batch_sizes: Sequence[int] | None = None,
                     frozen_methods: Sequence[str] | None = None,
                     params=None, platforms: Sequence[str] = ("cpu",), hoist: bool = True) -> dict:
    """Export a transformers Flax causal LM (`FlaxPreTrainedModel`: FlaxGPT2LMHeadModel,
    FlaxLlamaForCausalLM, FlaxMistralForCausalLM, FlaxGemmaForCausalLM, ...) for generation
    into the bundle directory `out_dir`; returns the manifest.

    Args:
      model: the model; its `params` are bundled unless `params` is given.
      max_len: the cache length: prompt plus new tokens of one generation, at most the
        config's `max_position_embeddings`.
      prefill_lens: the prompt lengths prefill is exported at (default: 16, 64, 256, 1024
        up to max_len, and max_len when smaller). A prompt runs at the smallest that holds
        it, padded; a longer one in chunks.
      batch_sizes: the batch sizes of every prefill and decode method; the cache is made at
        the largest (smaller batches are padded inside the computation).
      frozen: also export prefill and decode with the params compiled in (see export_flax).
      frozen_batch_sizes: with frozen, the batch sizes that get frozen copies (default all).
      frozen_methods: with frozen, the methods that get them (e.g. ["decode"]; default all:
        "decode" and every "prefill_<L>"). Each frozen copy holds the params once more.
      platforms: lowering platforms.
      hoist: also export prefill and decode split into a params-only prologue and a per-call
        body (GPT-2's `kernel.T` once per param write, not per token; see export_flax).
    """
    config = model.config
    max_pos = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if max_pos is not None and max_len > int(max_pos):
        raise ValueError(f"max_len {max_len} exceeds the model's max_position_embeddings {max_pos}")
    cache_batch = max(int(b) for b in batch_sizes) if batch_sizes else 1
    cache = to_plain(model.init_cache(cache_batch, max_len))
    params = to_plain(model.params if params is None else params)
    vocab = int(config.vocab_size)
    eos = _eos_ids(getattr(getattr(model, "generation_config", None), "eos_token_id", None)
                   or getattr(config, "eos_token_id", None))
    return export_lm(hf_step(model, max_len), params, cache, out_dir, max_len=max_len,
                     vocab_size=vocab, eos_token_id=eos, start=hf_start(cache),
                     prefill_lens=prefill_lens, batch_sizes=batch_sizes, frozen=frozen,
                     frozen_batch_sizes=frozen_batch_sizes, frozen_methods=frozen_methods,
                     platforms=platforms, module=type(model).__name__, hoist=hoist,
                     pad_token_id=getattr(config, "pad_token_id", None),
                     counters=[n for n, _ in named_leaves(cache, "cache")
                               if n.rsplit("/", 1)[-1] == "cache_index"])


# --------------------------------------------------------------------------
# Hugging Face's Flax sampling step (generation/flax_utils.py, flax_logits_process.py)
# --------------------------------------------------------------------------

def hf_sample(logits, key, temperature, top_k, top_p):
    """One step of HF's Flax `_sample`: `prng_key, prng_key_next = split(prng_key)`, the
    temperature, top-k and top-p warpers (in that order, each skipped as HF skips it:
    temperature 1, top_k 0, top_p >= 1), then `jax.random.categorical(prng_key, logits)`.
    Batch 1: one key, as HF has one key for the batch. The warpers take their settings as
    arrays, with HF's arithmetic: the same division, the same kept set as `lax.top_k` (rank
    in `lax.top_k`'s full order < k), and HF's top-p code line for line."""
    key, key_next = jax.random.split(key[0])
    t, k, p = temperature[:, None], top_k[:, None], top_p[:, None]
    b, v = logits.shape
    scores = jnp.where(t != 1.0, logits / t, logits)
    # top-k: HF's scatter of lax.top_k(scores, k) into -inf keeps exactly the first k of
    # lax.top_k's order (which breaks ties by index).
    _, order = lax.top_k(scores, v)
    rank = jnp.zeros((b, v), jnp.int32).at[jnp.arange(b)[:, None], order].set(
        jnp.broadcast_to(jnp.arange(v, dtype=jnp.int32), (b, v)))
    keep_k = rank < jnp.minimum(jnp.maximum(k, 1), v)
    scores = jnp.where((k != 0) & ~keep_k, jnp.array(-jnp.inf, scores.dtype), scores)
    # top-p, as FlaxTopPLogitsWarper.__call__ (min_tokens_to_keep 1)
    topk_scores, topk_indices = lax.top_k(scores, v)
    mask_scores = jnp.full_like(scores, -jnp.inf)
    cumulative_probs = jax.nn.softmax(topk_scores, axis=-1).cumsum(axis=-1)
    score_mask = cumulative_probs < p
    score_mask = jnp.roll(score_mask, 1)
    score_mask |= score_mask.at[:, 0].set(True)
    score_mask = score_mask.at[:, :1].set(True)
    topk_next_scores = jnp.where(score_mask, topk_scores, mask_scores)
    warped = lax.sort_key_val(topk_indices, topk_next_scores)[-1]
    scores = jnp.where(p < 1.0, warped, scores)
    token = jax.random.categorical(key, scores, axis=-1).astype(jnp.int32)
    return token, key_next[None]


# --------------------------------------------------------------------------
# the bundle
# --------------------------------------------------------------------------

def _prefill_lens(prefill_lens, max_len: int) -> list[int]:
    if prefill_lens is None:
        lens = [L for L in DEFAULT_PREFILL_LENS if L < max_len] + [min(max_len, DEFAULT_PREFILL_LENS[-1])]
    else:
        lens = [int(L) for L in prefill_lens]
    lens = sorted(set(lens))
    bad = [L for L in lens if not 1 < L <= max_len]
    if bad or not lens:
        raise ValueError(f"prefill_lens {list(prefill_lens or [])} must be in 2..max_len ({max_len})")
    return lens


def _slots(params, state, x, outputs, new_state):
    args = ([spec(n, a, role="param") for n, a in named_leaves({"params": params}, "params")]
            + [spec(n, a, role="state") for n, a in named_leaves(state, "state")]
            + [spec(n, a, role="input") for n, a in named_leaves(x, "inputs")])
    results = ([{**spec(n, a, role="output"), "batched": True} for n, a in named_leaves(outputs, "outputs")]
               + [spec(n, a, role="state") for n, a in named_leaves(new_state, "state")])
    return args, results


def export_lm(step: Step, params, cache, out_dir: str, *, max_len: int, vocab_size: int,
              eos_token_id=None, start: Callable[[Any], jax.Array], prefill_lens=None,
              batch_sizes: Sequence[int] = (1,), frozen: bool = False,
              frozen_batch_sizes: Sequence[int] | None = None,
              frozen_methods: Sequence[str] | None = None,
              platforms: Sequence[str] = ("cpu",), module: str = "CausalLM",
              pad_token_id=None, counters: Sequence[str] = (), hoist: bool = True) -> dict:
    """Export a decoder given as `step` over `cache` (docs/generation.md) into `out_dir`;
    returns the manifest.

    Args:
      step: `step(params, cache, input_ids, start, length) -> (logits [B, L, V], new_cache)`:
        runs tokens at positions `start..start+L-1` (the first `length` real, the rest
        padding) and returns a cache that holds `start + length` tokens.
      params, cache: the `params` and `cache` collections (the cache at the largest batch
        size and `max_len` positions, holding no tokens).
      start: `start(cache) -> int32[]`, how many tokens the cache holds.
      max_len, vocab_size, eos_token_id (an int, a list of ints, or None), pad_token_id:
        recorded in the manifest's `generation` section.
      counters: the cache leaves (names under the cache, `layers/0/index`) that count its
        tokens: a new generation sets them to zero; without them the runtime restores the
        whole cache.
      prefill_lens, batch_sizes, frozen, frozen_batch_sizes, frozen_methods, platforms, hoist:
        as for export_causal_lm.
    """
    lens = _prefill_lens(prefill_lens, max_len)
    sizes = sorted({int(b) for b in batch_sizes})
    if not sizes or sizes[0] < 1:
        raise ValueError(f"batch_sizes {list(batch_sizes)} must be positive")
    cache_batch = sizes[-1]
    frozen_at = frozen_sizes(frozen, frozen_batch_sizes, sizes)
    names = ["decode", *(f"prefill_{L}" for L in lens)]
    if frozen_methods is not None:
        if isinstance(frozen_methods, str) or not frozen:
            raise ValueError(f"frozen_methods={frozen_methods!r} needs frozen=True and a list of method names")
        unknown = sorted(set(frozen_methods) - set(names))
        if unknown:
            raise ValueError(f"frozen_methods {unknown} are not among the methods {names}")
    state = {"cache": cache}
    variables = {"params": params, **state}
    files: dict[str, bytes] = {}
    methods: dict[str, dict] = {}
    frozen_entries: list[dict] = []
    cc_version = None

    def method_fn(L: int, with_length: bool):
        def fn(p, s, inputs):
            ids = inputs["input_ids"].astype(jnp.int32)
            b = ids.shape[0]
            n = inputs["length"][0].astype(jnp.int32) if with_length else jnp.int32(1)
            c = s["cache"]
            if b < cache_batch:  # rows past the batch: padding, in rows of the cache no one reads
                ids = jnp.concatenate([ids, jnp.zeros((cache_batch - b, L), jnp.int32)])
            logits, new_cache = step(p, c, ids, start(c), n)
            last = lax.dynamic_index_in_dim(logits, n - 1, axis=1, keepdims=False)[:b]
            return {"logits": last}, {"cache": new_cache}
        return fn

    def add_method(name: str, L: int, with_length: bool):
        nonlocal cc_version
        fn = method_fn(L, with_length)
        entries = []
        for b in sizes:
            x = {"input_ids": jax.ShapeDtypeStruct((b, L), jnp.int32)}
            if with_length:
                x["length"] = jax.ShapeDtypeStruct((b,), jnp.int32)
            avals = (sds(params), sds(state), x)
            outputs, new_state = jax.eval_shape(fn, *avals)
            args, results = _slots(params, state, x, outputs, new_state)
            c = export_computation(fn, f"{name}.inference", (1,), avals, platforms)
            check_exported(c.exp, args, results)
            cc_version = int(c.exp.calling_convention_version)
            fname = f"{name}.inference.b{b}.jaxexport"
            files[fname] = c.data
            entry = {"batch_size": b, "file": fname, "args": args, "results": results,
                     "custom_call_targets": c.custom_call_targets}
            if hoist:
                ids = (np.arange(b * L, dtype=np.int32).reshape(b, L) * 7919) % vocab_size
                ex = {"input_ids": ids}
                if with_length:
                    ex["length"] = np.full((b,), L, np.int32)
                h = hoisted_entry(fn, params, state, x, stem=name, batch_size=b, args=args,
                                  results=results, platforms=platforms, files=files,
                                  example=(params, state, ex), check=check_same_outputs,
                                  export_computation=export_computation, check_exported=check_exported)
                if h is not None:
                    entry["hoisted"] = h
            if b in frozen_at and (frozen_methods is None or name in frozen_methods):
                consts = jax.tree_util.tree_map(np.asarray, params)
                fz = export_computation(lambda s, x_, fn=fn: fn(consts, s, x_), f"{name}.inference.frozen",
                                        (0,), (sds(state), x), platforms)
                f_args = [a for a in args if a["role"] != "param"]
                check_exported(fz.exp, f_args, results)
                ffile = fname.replace(".jaxexport", ".frozen.jaxexport")
                files[ffile] = fz.data
                entry["frozen"] = {"batch_size": b, "file": ffile, "args": f_args, "results": results,
                                   "custom_call_targets": fz.custom_call_targets}
                frozen_entries.append(entry["frozen"])
            entries.append(entry)
        x0 = {"input_ids": jax.ShapeDtypeStruct((sizes[0], L), jnp.int32)}
        if with_length:
            x0["length"] = jax.ShapeDtypeStruct((sizes[0],), jnp.int32)
        out0 = jax.eval_shape(fn, sds(params), sds(state), x0)[0]
        methods[name] = {
            "takes_training": False,
            "inputs": [spec(n, a) for n, a in named_leaves(x0, "inputs")],
            "outputs": [{**spec(n, a), "batched": True} for n, a in named_leaves(out0, "outputs")],
            "batching": {"paddable": False, "pad_value": 0,
                         "reason": "generation methods write the cache: the Generator runs them",
                         "stateful": True, "batched_state": []},
            "inference": entries,
            "training": [],
        }

    add_method("decode", 1, False)
    for L in lens:
        add_method(f"prefill_{L}", L, True)

    # the sampler, batch 1, no params or state
    logits_dtype = jax.eval_shape(method_fn(1, False), sds(params), sds(state),
                                  {"input_ids": jax.ShapeDtypeStruct((sizes[0], 1), jnp.int32)})[0]["logits"].dtype
    xs = {"logits": jax.ShapeDtypeStruct((1, vocab_size), logits_dtype),
          "key": jax.ShapeDtypeStruct((1, 2), jnp.uint32),
          "temperature": jax.ShapeDtypeStruct((1,), logits_dtype),
          "top_k": jax.ShapeDtypeStruct((1,), jnp.int32),
          "top_p": jax.ShapeDtypeStruct((1,), logits_dtype)}

    def sample(p, s, inputs):
        token, key = hf_sample(inputs["logits"], inputs["key"], inputs["temperature"],
                               inputs["top_k"], inputs["top_p"])
        return {"key": key, "token": token}, s

    avals = ({}, {}, xs)
    out = jax.eval_shape(sample, *avals)[0]
    args, results = _slots({}, {}, xs, out, {})
    c = export_computation(sample, "sample.inference", (), avals, platforms)
    check_exported(c.exp, args, results)
    files["sample.inference.b1.jaxexport"] = c.data
    methods["sample"] = {
        "takes_training": False,
        "inputs": [spec(n, a) for n, a in named_leaves(xs, "inputs")],
        "outputs": [{**spec(n, a), "batched": True} for n, a in named_leaves(out, "outputs")],
        "batching": {"paddable": False, "pad_value": 0,
                     "reason": "one key for the batch, as Hugging Face's sampling",
                     "stateful": False, "batched_state": []},
        "inference": [{"batch_size": 1, "file": "sample.inference.b1.jaxexport", "args": args,
                       "results": results, "custom_call_targets": c.custom_call_targets}],
        "training": [],
    }

    files["variables.safetensors"] = safetensors_bytes(
        dict(named_leaves(variables, "variables")), _meta("variables"))
    digest = hashlib.sha256(files["variables.safetensors"]).hexdigest() if frozen_entries else None
    for f in frozen_entries:  # one hash of the file, not one per frozen copy
        f["variables_sha256"] = digest
    eos = _eos_ids(eos_token_id)
    manifest = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "module": module,
        "seed": 0,
        "key": {"impl": KEY_IMPL, "dtype": "uint32", "shape": [2], "initial": [0, 0]},
        "rng_streams": [],
        "platforms": list(platforms),
        "default_method": "decode",
        "producer": {"jax": jax.__version__, "flax": flax.__version__,
                     "calling_convention_version": cc_version},
        "variables_origin": "given",
        "variables": [{"name": n, "collection": n.split("/", 1)[0], "dtype": dtype_name(a.dtype),
                       "shape": [int(s) for s in a.shape]} for n, a in named_leaves(variables, "variables")],
        "methods": methods,
        "generation": {
            "version": GENERATION_VERSION,
            "max_len": int(max_len),
            "vocab_size": int(vocab_size),
            "eos_token_id": eos,
            "pad_token_id": None if pad_token_id is None else int(pad_token_id),
            "batch_sizes": sizes,
            "decode": "decode",
            "prefill": [{"length": L, "method": f"prefill_{L}"} for L in lens],
            "sample": "sample",
            "counters": [f"cache/{n}" for n in counters],
        },
    }
    files["manifest.json"] = manifest_bytes(manifest)
    write_bundle(out_dir, files)
    return manifest
