"""export_lm / export_causal_lm (docs/generation.md): the generation bundle's methods run in
JAX (the exported computations, through jax.export) and generate what the model generates."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export as jexp

from flaxlayer_export.examples.tiny_lm import TinyLM, export_tiny_lm, tiny_lm_variables
from flaxlayer_export.safetensors_io import read_safetensors

HF = os.path.join(os.path.dirname(__file__), "..", "..", "target", "hf-transformers")


class Bundle:
    """Runs a generation bundle's methods with jax.export, over one state (as Layer does)."""

    def __init__(self, d, hoisted=False):
        self.d = d
        self.m = json.load(open(os.path.join(d, "manifest.json")))
        self.state = read_safetensors(os.path.join(d, "variables.safetensors"))[0]
        self.hoisted, self.residuals = hoisted, {}

    def _load(self, f):
        return jexp.deserialize(bytearray(open(os.path.join(self.d, f), "rb").read()))

    def _residuals(self, prologue):
        """The prologue's results (params in), once per prologue file (as Layer keeps them)."""
        if prologue["file"] not in self.residuals:
            exp = self._load(prologue["file"])
            flat = [self.state[a["name"]] for a in prologue["args"]]
            args, kwargs = jax.tree_util.tree_unflatten(exp.in_tree, flat)
            self.residuals[prologue["file"]] = jax.tree_util.tree_leaves(exp.call(*args, **kwargs))
        return self.residuals[prologue["file"]]

    def call(self, method, inputs):
        e = self.m["methods"][method]["inference"][0]
        res = []
        if self.hoisted and "hoisted" in e:
            res = self._residuals(e["hoisted"]["prologue"])
            e = e["hoisted"]["body"]
        exp = self._load(e["file"])
        flat = [self.state[a["name"]] if a["role"] in ("param", "state")
                else res[int(a["name"].split("/")[1])] if a["role"] == "residual"
                else inputs[a["name"]] for a in e["args"]]
        args, kwargs = jax.tree_util.tree_unflatten(exp.in_tree, flat)
        out = {}
        for r, x in zip(e["results"], jax.tree_util.tree_leaves(exp.call(*args, **kwargs))):
            if r["role"] == "state":
                self.state[r["name"]] = x
            else:
                out[r["name"]] = np.asarray(x)
        return out

    def greedy(self, prompt, n):
        g = self.m["generation"]
        lens = [p["length"] for p in g["prefill"]]
        pos = 0
        while pos < len(prompt):
            rest = len(prompt) - pos
            L = min([l for l in lens if l >= rest], default=max(lens))
            take = min(rest, L)
            ids = np.zeros((1, L), np.int32)
            ids[0, :take] = prompt[pos:pos + take]
            logits = self.call(f"prefill_{L}", {"input_ids": ids, "length": np.array([take], np.int32)})["logits"]
            pos += take
        out = []
        for i in range(n):
            out.append(int(np.argmax(logits[0])))
            if i + 1 < n:
                logits = self.call("decode", {"input_ids": np.array([[out[-1]]], np.int32)})["logits"]
        return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """TinyLM exported with export_lm: (directory, manifest)."""
    d = tmp_path_factory.mktemp("tiny") / "lm"
    return d, export_tiny_lm(str(d))


def test_own_linen_lm_exported_with_export_lm_generates_what_the_module_does(tiny):
    model = TinyLM()
    tmp, manifest = tiny
    g = manifest["generation"]
    assert (g["max_len"], g["vocab_size"], g["counters"]) == (32, 64, ["cache/index"])
    assert [p["length"] for p in g["prefill"]] == [4, 8]
    assert sorted(manifest["methods"]) == ["decode", "prefill_4", "prefill_8", "sample"]
    # the module itself: the whole sequence from an empty cache at every step
    variables = tiny_lm_variables(model)

    def reference(prompt, n):
        seq = list(prompt)
        for _ in range(n):
            ids = jnp.array([seq], jnp.int32)
            logits, _ = model.apply(variables, ids, jnp.int32(0), jnp.int32(len(seq)), mutable=["cache"])
            seq.append(int(jnp.argmax(logits[0, -1])))
        return seq[len(prompt):]

    b = Bundle(str(tmp))
    for prompt in ([5, 9, 2], [7, 1, 3, 3, 8, 2, 11, 4, 60, 12, 13]):  # padded; two chunks
        b.state = read_safetensors(str(tmp / "variables.safetensors"))[0]
        assert b.greedy(prompt, 8) == reference(prompt, 8)


def test_the_sampler_is_hugging_faces_categorical_over_warped_logits(tiny):
    b = Bundle(str(tiny[0]))
    logits = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (1, 64)), np.float32)
    key = np.asarray(jax.random.PRNGKey(5), np.uint32)[None]

    def sample(t, k, p):
        return b.call("sample", {"logits": logits, "key": key, "temperature": np.array([t], np.float32),
                                 "top_k": np.array([k], np.int32), "top_p": np.array([p], np.float32)})

    use, nxt = jax.random.split(jnp.asarray(key[0]))
    out = sample(1.0, 0, 1.0)
    assert int(out["token"][0]) == int(jax.random.categorical(use, jnp.asarray(logits), axis=-1)[0])
    assert np.array_equal(out["key"][0], np.asarray(nxt))
    # top_k 1 and a tiny top_p both leave only the argmax
    assert int(sample(1.0, 1, 1.0)["token"][0]) == int(np.argmax(logits))
    assert int(sample(1.0, 0, 1e-6)["token"][0]) == int(np.argmax(logits))
    # top_k 3: always one of the 3 largest, whatever the key
    top3 = set(np.argsort(-logits[0])[:3].tolist())
    for s in range(20):
        key = np.asarray(jax.random.PRNGKey(s), np.uint32)[None]
        assert int(sample(0.5, 3, 1.0)["token"][0]) in top3


def test_export_causal_lm_imports_without_transformers():
    code = ("import sys; sys.modules['transformers'] = None\n"
            "import flaxlayer_export\n"
            "from flaxlayer_export import export_causal_lm, export_lm\n"
            "print(export_causal_lm.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "export_causal_lm"


def test_hf_gpt2_prefill_at_an_unexported_length_and_frozen_decode(tmp_path):
    if not os.path.isdir(os.path.join(HF, "transformers")):
        pytest.fail("transformers is not installed in target/hf-transformers: run scripts/setup.sh")
    # importable through the .pth file that scripts/setup.sh puts in .venv
    from transformers import FlaxGPT2LMHeadModel, GPT2Config

    from flaxlayer_export import export_causal_lm
    model = FlaxGPT2LMHeadModel(GPT2Config(vocab_size=97, n_positions=32, n_embd=16, n_layer=1, n_head=2,
                                           initializer_range=0.3), seed=0)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        export_causal_lm(model, str(tmp_path / "x"), max_len=33)
    with pytest.raises(ValueError, match=r"frozen_methods \['prefill_9'\] are not among the methods"):
        export_causal_lm(model, str(tmp_path / "x"), max_len=24, prefill_lens=(8,), frozen=True,
                         frozen_methods=["prefill_9"])
    m = export_causal_lm(model, str(tmp_path / "lm"), max_len=24, prefill_lens=(8,), frozen=True,
                         frozen_methods=["decode"])
    assert m["methods"]["decode"]["inference"][0]["frozen"]["variables_sha256"]
    assert "frozen" not in m["methods"]["prefill_8"]["inference"][0]  # frozen_methods: decode only
    prompt = [3, 1, 4, 1, 5]
    want = model.generate(jnp.array([prompt]), max_new_tokens=6, do_sample=False).sequences[0, 5:].tolist()
    assert Bundle(str(tmp_path / "lm")).greedy(prompt, 6) == want
    # hoisted (issue 25): the Conv1D kernels' and the tied LM head's transposes are the
    # prologue's, one prologue for prefill and decode; the split generates the same tokens
    hoisted = [m["methods"][n]["inference"][0]["hoisted"] for n in ("decode", "prefill_8")]
    assert hoisted[0]["prologue"] == hoisted[1]["prologue"]
    assert hoisted[0]["params_read"] == sorted(hoisted[0]["params_read"]) and len(hoisted[0]["params_read"]) == 5
    assert all(n.endswith("kernel") or n.endswith("wte/embedding") for n in hoisted[0]["params_read"])
    assert hoisted[0]["residual_bytes"] == hoisted[0]["params_read_bytes"]
    b = Bundle(str(tmp_path / "lm"), hoisted=True)
    assert b.greedy(prompt, 6) == want and len(b.residuals) == 1
