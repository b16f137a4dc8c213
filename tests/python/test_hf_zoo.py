"""A test zoo of model code we did not write: Hugging Face transformers 4.57.6's Flax models.

Run by scripts/matrix.sh under jax 0.12 (.venv-jax012), with transformers and what it imports
on the module search path from their own --target folder (.venv-hf, scripts/requirements-hf.txt,
installed --no-deps: they cannot move jax). Skipped where transformers is not importable.

Every model is built from a small config with random weights (no download), and exported
as a user would: its linen module (`model.module`) with the pretrained-style weights given
(`variables={"params": model.params}`), through a wrapper `fn(module, inputs, training)`
that passes the inputs dict to the module's __call__ with `deterministic=not training`.
The bundle then runs in Rust (`flaxlayer run`), in inference and training mode, and must
match what JAX computed (golden.safetensors, from plain module.apply).

The set: an encoder that returns its ModelOutput (BERT, masked LM), a decoder-only model
with its cache (GPT-2: init makes the cache at the full length, each call decodes a token),
an encoder-decoder (BART; transformers' Flax T5 calls jnp.clip(a_max=...), which jax 0.12 no
longer takes), vision with batch_stats (ResNet), audio (Wav2Vec2) and CLIP (its
logits_per_image is [B, B]: not paddable, with the reason; nested ModelOutputs).
"""

from __future__ import annotations

import numpy as np
import pytest

transformers = pytest.importorskip("transformers")

import flaxlayer_export as ef  # noqa: E402

from test_jax_range import group, run_cli, rust_matches_jax  # noqa: E402

B = 2


def ints(shape, high, seed=0):
    return np.random.default_rng(seed).integers(0, high, size=shape).astype(np.int32)


def floats(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# ---------------------------------------------------------------------------
# the models: (model, wrapper, sample inputs, export_flax keywords)
# ---------------------------------------------------------------------------

def bert():
    from transformers import BertConfig, FlaxBertForMaskedLM
    cfg = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=16)
    model = FlaxBertForMaskedLM(cfg, seed=0)
    T = 6

    def fn(module, inputs, training):  # returns FlaxMaskedLMOutput (a ModelOutput)
        return module(inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"],
                      inputs["position_ids"], None, deterministic=not training)

    x = {"input_ids": ints((B, T), 40), "attention_mask": np.ones((B, T), np.int32),
         "token_type_ids": np.zeros((B, T), np.int32),
         "position_ids": np.broadcast_to(np.arange(T, dtype=np.int32), (B, T)).copy()}
    return model, fn, x, {}


GPT2_LEN = 8


def gpt2():
    from transformers import FlaxGPT2LMHeadModel, GPT2Config
    cfg = GPT2Config(vocab_size=40, n_positions=16, n_embd=16, n_layer=2, n_head=2)
    model = FlaxGPT2LMHeadModel(cfg, seed=0)

    def fn(module, inputs, training):
        # init_cache: init makes the cache at the init inputs' length; with a cache, each
        # call appends its tokens to it (HF's generate passes the same)
        return module(inputs["input_ids"], inputs["attention_mask"], inputs["position_ids"],
                      deterministic=not training, init_cache=True)

    # One decode step after a 3-token prompt: the mask covers the cache length.
    mask = np.zeros((B, GPT2_LEN), np.int32)
    mask[:, :4] = 1
    x = {"input_ids": ints((B, 1), 40), "attention_mask": mask,
         "position_ids": np.full((B, 1), 3, np.int32)}
    init = {"input_ids": np.zeros((B, GPT2_LEN), np.int32), "attention_mask": np.ones((B, GPT2_LEN), np.int32),
            "position_ids": np.broadcast_to(np.arange(GPT2_LEN, dtype=np.int32), (B, GPT2_LEN)).copy()}
    # The cache is a variable collection too: the given variables are the weights and the
    # empty cache HF's init_cache makes (the exporter's error says so when it is missing).
    variables = {"params": model.params, "cache": model.init_cache(B, GPT2_LEN)}
    return model, fn, x, {"init_inputs": init, "variables": variables}


def bart():
    from transformers import BartConfig, FlaxBartForConditionalGeneration
    cfg = BartConfig(vocab_size=40, d_model=16, encoder_layers=1, decoder_layers=1,
                     encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                     decoder_ffn_dim=32, max_position_embeddings=16)
    model = FlaxBartForConditionalGeneration(cfg, seed=0)

    def fn(module, inputs, training):
        return module(inputs["input_ids"], inputs["attention_mask"], inputs["decoder_input_ids"],
                      inputs["decoder_attention_mask"], inputs["position_ids"],
                      inputs["decoder_position_ids"], deterministic=not training)

    pos = lambda t: np.broadcast_to(np.arange(t, dtype=np.int32), (B, t)).copy()
    x = {"input_ids": ints((B, 7), 40), "attention_mask": np.ones((B, 7), np.int32),
         "decoder_input_ids": ints((B, 4), 40, seed=1), "decoder_attention_mask": np.ones((B, 4), np.int32),
         "position_ids": pos(7), "decoder_position_ids": pos(4)}
    return model, fn, x, {}


def resnet():
    from transformers import FlaxResNetForImageClassification, ResNetConfig
    cfg = ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                       layer_type="basic", num_labels=3)
    model = FlaxResNetForImageClassification(cfg, seed=0, input_shape=(1, 32, 32, 3))

    def fn(module, inputs, training):  # BatchNorm: batch statistics in training mode
        return module(inputs, deterministic=not training)

    # the module takes NHWC (FlaxResNetPreTrainedModel.__call__ transposes NCHW first)
    return model, fn, floats((B, 32, 32, 3)), {"variables": {"params": model.params["params"],
                                                              "batch_stats": model.params["batch_stats"]}}


def wav2vec2():
    from transformers import FlaxWav2Vec2Model, Wav2Vec2Config
    cfg = Wav2Vec2Config(vocab_size=12, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, conv_dim=(8, 8), conv_stride=(5, 2), conv_kernel=(10, 3),
                         num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2,
                         mask_time_prob=0.0, layerdrop=0.0, do_stable_layer_norm=True,
                         feat_extract_norm="layer")
    model = FlaxWav2Vec2Model(cfg, seed=0, input_shape=(1, 400))

    def fn(module, inputs, training):
        return module(inputs, deterministic=not training)

    return model, fn, floats((B, 400)), {}


def clip():
    from transformers import CLIPConfig, FlaxCLIPModel
    text = dict(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=8, projection_dim=8)
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                  image_size=16, patch_size=8, projection_dim=8)
    model = FlaxCLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=8), seed=0)

    def fn(module, inputs, training):  # FlaxCLIPOutput, with nested ModelOutputs
        return module(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"],
                      attention_mask=inputs["attention_mask"], position_ids=inputs["position_ids"],
                      deterministic=not training)

    x = {"input_ids": ints((B, 8), 40), "pixel_values": floats((B, 16, 16, 3)),  # NHWC, as the module takes it
         "attention_mask": np.ones((B, 8), np.int32),
         "position_ids": np.broadcast_to(np.arange(8, dtype=np.int32), (B, 8)).copy()}
    return model, fn, x, {}


ZOO = {"bert": bert, "gpt2": gpt2, "bart": bart, "resnet": resnet, "wav2vec2": wav2vec2, "clip": clip}


def export(name, tmp_path):
    model, fn, x, kw = ZOO[name]()
    kw.setdefault("variables", {"params": model.params})
    out = tmp_path / name
    m = ef.export_flax(model.module, x, str(out), method=fn, seed=0, **kw)
    return out, m


@pytest.mark.parametrize("name", list(ZOO))
def test_hf_model_runs_in_rust_and_matches_jax(tmp_path, flaxlayer_bin, name):
    out, m = export(name, tmp_path)
    assert m["variables_origin"] == "given"
    method = m["methods"][m["default_method"]]
    names = [o["name"] for o in method["outputs"]]
    rust_matches_jax(flaxlayer_bin, out, tmp_path)
    if name == "bert":  # FlaxMaskedLMOutput, exported by field name
        assert names == ["logits"]
    if name == "clip":
        assert {"logits_per_image", "logits_per_text", "text_embeds", "image_embeds",
                "text_model_output/last_hidden_state", "vision_model_output/pooler_output"} <= set(names)
        assert method["batching"]["paddable"] is False
        assert "logits_per_image" in method["batching"]["reason"] or "logits_per_text" in method["batching"]["reason"]
    if name == "resnet":
        assert any(v["collection"] == "batch_stats" for v in m["variables"])
    if name == "gpt2":
        # the cache is state made at the init length; after one call it holds the new token
        cache = [v for v in m["variables"] if v["collection"] == "cache"]
        assert cache and any(v["shape"][:2] == [B, GPT2_LEN] for v in cache), cache
        golden = ef.read_safetensors(str(out / "golden.safetensors"))[0]
        saved = tmp_path / "after.safetensors"
        run_cli(flaxlayer_bin, "run", out, "--input", tmp_path / f"{name}.in.safetensors", "--output",
                tmp_path / "o.safetensors", "--save-variables", saved)
        after = {k: v for k, v in ef.read_safetensors(str(saved))[0].items() if k.startswith("cache/")}
        want = group(golden, "inference_state")
        assert sorted(after) == sorted(want)
        for k in want:
            np.testing.assert_allclose(after[k], want[k], rtol=2e-5, atol=2e-5, err_msg=k)
