"""GPT-2 small (124M, random weights), batch 1: flaxlayer generate against Hugging Face's Flax
`generate` under jax.jit, greedy, a 128-token prompt; and the floor of a decode step (the
weight bytes it reads / this machine's memory bandwidth). BENCHMARKS.md, "Text generation".

Run: .venv/bin/python scripts/bench_generate.py [--rounds 3]
(needs `cargo build --release`; exports target/bench/gpt2_small once)
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROMPT = 128
NEW = 65  # the first token comes from the prefill; 64 decode steps
MAX_LEN = PROMPT + NEW - 1


def bandwidth_gbs(nbytes: int = 1 << 30, reps: int = 5) -> float:
    """Bytes moved (read + written) per second by a large copy, best of `reps`."""
    src = np.ones(nbytes // 4, np.float32)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t)
    return 2 * nbytes / best / 1e9


def serve_throughput(exe, bundle, prompt, clients=(1, 2), new=9) -> dict:
    """`flaxlayer serve` on the bundle: total new tokens per second (prefill included) with
    1 and 2 clients posting /generate at once (each client 2 requests)."""
    import shutil
    import tempfile
    import threading
    import urllib.request
    repo = pathlib.Path(tempfile.mkdtemp())
    (repo / "gpt2").mkdir()
    os.symlink(bundle, repo / "gpt2" / "1")
    proc = subprocess.Popen([str(exe), "serve", "--models", str(repo), "--port", "0"], stdout=subprocess.PIPE, text=True)
    try:
        url = None
        for line in proc.stdout:
            if line.startswith("listening on "):
                url = line.split()[-1]
                break
        threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
        body = json.dumps({"input_ids": prompt, "parameters": {"max_new_tokens": new}}).encode()

        def post():
            req = urllib.request.Request(f"{url}/v2/models/gpt2/generate", data=body, method="POST")
            with urllib.request.urlopen(req, timeout=600) as r:
                assert len(json.loads(r.read())["output_ids"]) == new
        post()  # warm
        out = {}
        for c in clients:
            t = time.perf_counter()
            threads = [threading.Thread(target=lambda: [post() for _ in range(2)]) for _ in range(c)]
            [th.start() for th in threads]
            [th.join() for th in threads]
            out[f"{c}_clients_tok_s"] = c * 2 * new / (time.perf_counter() - t)
        return out
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(repo, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    from transformers import FlaxGPT2LMHeadModel, GPT2Config
    from flaxlayer_export import export_causal_lm

    model = FlaxGPT2LMHeadModel(GPT2Config(), seed=0)
    params = jax.tree_util.tree_leaves(model.params)
    n_params = sum(int(np.prod(p.shape)) for p in params)
    weight_bytes = sum(p.nbytes for p in params)
    wpe = model.params["transformer"]["wpe"]["embedding"].nbytes
    bundle = ROOT / "target" / "bench" / "gpt2_small"
    if not (bundle / "manifest.json").is_file():
        export_causal_lm(model, str(bundle), max_len=MAX_LEN, prefill_lens=(PROMPT,))
    prompt = [(7 * i + 3) % 50257 for i in range(PROMPT)]
    ids = jnp.array([prompt], jnp.int32)

    gen = {n: jax.jit(lambda x, n=n: model.generate(x, max_new_tokens=n, do_sample=False).sequences) for n in (1, NEW)}
    for f in gen.values():
        f(ids).block_until_ready()

    def hf(n):
        t = time.perf_counter()
        out = gen[n](ids).block_until_ready()
        return time.perf_counter() - t, np.asarray(out[0, PROMPT:]).tolist()

    exe = ROOT / "target" / "release" / "flaxlayer"
    cmd = [str(exe), "generate", str(bundle), "--prompt-ids", ",".join(map(str, prompt)),
           "--max-new-tokens", str(NEW), "--ignore-eos", "--json"]
    rows = {"fl_prefill_ms": [], "fl_tok_s": [], "hf_prefill_ms": [], "hf_tok_s": []}
    same = True
    for _ in range(args.rounds):
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        j = json.loads(out.stdout.strip().splitlines()[-1])
        rows["fl_prefill_ms"].append(j["prefill_ms"])
        rows["fl_tok_s"].append(j["decode_tokens_per_s"])
        t1, _ = hf(1)
        tn, toks = hf(NEW)
        same &= toks == j["output_ids"]
        rows["hf_prefill_ms"].append(t1 * 1e3)
        rows["hf_tok_s"].append((NEW - 1) / (tn - t1))
    server = serve_throughput(exe, bundle, prompt)
    bw = bandwidth_gbs()
    read = weight_bytes - wpe  # every weight but the position table (one row of it) per token
    med = {k: statistics.median(v) for k, v in rows.items()}
    print(json.dumps({"params": n_params, "weight_bytes": weight_bytes, "bandwidth_gb_s": bw,
                      "floor_ms_per_token": read / (bw * 1e9) * 1e3, "floor_tok_s": bw * 1e9 / read,
                      "same_tokens_as_hf": same, "rounds": rows, "median": med, "server": server,
                      "jax": jax.__version__, "cpu_count": os.cpu_count()}, indent=1))


if __name__ == "__main__":
    main()
