"""Writes hlo/lm_gpt2, hlo/lm_llama, hlo/lm_mistral, hlo/lm_gemma (tiny transformers Flax
causal LMs, random weights, exported with `export_causal_lm`) and hlo/lm_expected.json:
the tokens Hugging Face's Flax `generate` gives on each, greedy and sampled, which the Rust
tests (tests/it/generate.rs) must reproduce from the CLI, the Rust API and the server.

Run: .venv/bin/python scripts/make_lm_fixtures.py
(scripts/setup.sh installs transformers 4.57.6 into target/hf-transformers, without touching
JAX, and puts that folder on .venv's path after its own packages with a .pth file.)
"""
from __future__ import annotations

import json
import pathlib
import sys

import jax
import jax.numpy as jnp

from flaxlayer_export import export_causal_lm

ROOT = pathlib.Path(__file__).resolve().parent.parent
MAX_LEN = 48
PREFILL_LENS = (8, 16)
NEW = 10
VOCAB = 211
EOS = 210
# (name, prompt) greedy: 8 is an exported prompt length, 5 is not, 21 takes two chunks.
GREEDY = [list(range(3, 11)), [5, 17, 42, 7, 99], [(7 * i + 3) % VOCAB for i in range(21)]]
# (prompt, seed, temperature, top_k, top_p); HF's GenerationConfig defaults top_k to 50, so
# it is always given.
SAMPLED = [([5, 17, 42, 7, 99, 1, 2], 0, 1.0, 0, 1.0), ([5, 17, 42, 7, 99, 1, 2], 3, 0.8, 20, 0.9),
           (list(range(3, 11)), 7, 1.3, 0, 0.8), ([9, 8, 7], 11, 0.7, 5, 1.0)]


def models():
    from transformers import (FlaxGemmaForCausalLM, FlaxGPT2LMHeadModel, FlaxLlamaForCausalLM,
                              FlaxMistralForCausalLM, GemmaConfig, GPT2Config, LlamaConfig,
                              MistralConfig)
    common = dict(vocab_size=VOCAB, bos_token_id=0, eos_token_id=EOS, initializer_range=0.3)
    decoder = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=64, **common)
    return {
        "gpt2": FlaxGPT2LMHeadModel(GPT2Config(n_positions=64, n_embd=32, n_layer=2, n_head=4, **common), seed=0),
        "llama": FlaxLlamaForCausalLM(LlamaConfig(**decoder), seed=1),
        "mistral": FlaxMistralForCausalLM(MistralConfig(sliding_window=None, **decoder), seed=2),
        "gemma": FlaxGemmaForCausalLM(GemmaConfig(head_dim=8, **decoder), seed=3),
    }


def hf_generate(model, prompt, sampled=None) -> list[int]:
    ids = jnp.array([prompt], jnp.int32)
    if sampled is None:
        out = model.generate(ids, max_new_tokens=NEW, do_sample=False, pad_token_id=EOS)
    else:
        seed, t, k, p = sampled
        out = model.generate(ids, max_new_tokens=NEW, do_sample=True, prng_key=jax.random.PRNGKey(seed),
                             temperature=t, top_k=k, top_p=p, pad_token_id=EOS)
    return [int(x) for x in out.sequences[0, len(prompt):]]


def main(out: pathlib.Path) -> None:
    expected = {"max_new_tokens": NEW, "models": {}}
    for name, model in models().items():
        export_causal_lm(model, str(out / f"lm_{name}"), max_len=MAX_LEN, prefill_lens=PREFILL_LENS)
        cases = [{"prompt": p, "output_ids": hf_generate(model, p)} for p in GREEDY]
        cases += [{"prompt": p, "seed": s, "temperature": t, "top_k": k, "top_p": tp,
                   "output_ids": hf_generate(model, p, (s, t, k, tp))} for p, s, t, k, tp in SAMPLED]
        expected["models"][f"lm_{name}"] = cases
        print(name, [c["output_ids"] for c in cases], file=sys.stderr)
    (out / "lm_expected.json").write_text(json.dumps(expected, indent=1) + "\n")


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "hlo")
