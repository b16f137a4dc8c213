#!/usr/bin/env bash
# Throughput and latency of `flaxlayer serve` (KServe v2, binary tensors, one row per request)
# for the MLP and CNN bundles at 1, 8 and 64 concurrent connections, with dynamic batching on
# and off, the server's CPU time per request, and an overload row per model: 4x the
# connections of the c=64 row against a queue of 32 requests (answered rate, p99, share shed).
# Load from wrk (scripts/bench_serve.lua) on this machine's loopback only.
# Writes the table into BENCHMARKS.md between the `serve` markers and prints it.
#
#   scripts/bench_serve.sh              # 5 s per run
#   DURATION=10 scripts/bench_serve.sh
# It first waits (up to WAIT_IDLE seconds, default 600) for the machine's 1-minute load average
# to fall below 0.5, as other work on the 2 cores would be measured too; the table records the
# load before and after.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/lib/apt.sh
need_command wrk wrk
scripts/setup.sh
cargo build --release --quiet --features serve --bin flaxlayer

export DURATION="${DURATION:-5}" WAIT_IDLE="${WAIT_IDLE:-600}"
exec .venv/bin/python - "$@" <<'PY'
"""Prepares the model repository and the request bodies, runs the server and wrk, writes the table."""
import datetime
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path.cwd()
DURATION = int(os.environ["DURATION"])
CONCURRENCY = [1, 8, 64]
MODELS = {"mlp": (1, 64), "cnn": (1, 28, 28, 1)}
# The overload rows: 4x the connections of the largest row, against a model whose queue holds
# OVERLOAD_QUEUE requests (wrk is closed-loop: overload is 4x the clients that saturate the
# server, each sending its next request as soon as it has an answer, 503s included).
OVERLOAD_CONC = 4 * CONCURRENCY[-1]
OVERLOAD_QUEUE = 32


def prepare(repo: Path) -> list[str]:
    """`NAME` (batching on) and `NAME_unbatched` (config: dynamic_batching false) for each model.

    A bundle whose manifest does not mark its method paddable is copied with the marks added:
    true of both models (MLP: Dense+relu; CNN: conv, relu, pooling and Dense per image; no
    batch statistics), and without the marks the server could not merge requests at all."""
    notes = []
    for name in MODELS:
        src = ROOT / "hlo" / name
        m = json.loads((src / "manifest.json").read_text())
        method = m["methods"][m["default_method"]]
        marked = method.get("batching", {}).get("paddable") and all(
            "batched" in r for c in method["inference"] for r in c["results"] if r["role"] == "output")
        for served in (name, f"{name}_unbatched"):
            dest = repo / served / "1"
            if marked:
                dest.parent.mkdir(parents=True)
                dest.symlink_to(src)
                continue
            shutil.copytree(src, dest)
            method["batching"] = {"paddable": True, "pad_value": 0.0}
            for c in method["inference"]:
                for r in c["results"]:
                    if r["role"] == "output":
                        r["batched"] = True
            (dest / "manifest.json").write_text(json.dumps(m, indent=1))
        (repo / f"{name}_unbatched" / "config.json").write_text('{"dynamic_batching": false}')
        (repo / f"{name}_overload").mkdir()
        (repo / f"{name}_overload" / "1").symlink_to(repo / name / "1")
        (repo / f"{name}_overload" / "config.json").write_text(json.dumps({"max_queue_requests": OVERLOAD_QUEUE}))
        if not marked:
            notes.append(f"hlo/{name} carries no paddable/batched marks: served from a copy with them added")
    return notes


def body(path: Path, shape) -> int:
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    head = json.dumps({"inputs": [{"name": "inputs", "shape": list(shape), "datatype": "FP32",
                                   "parameters": {"binary_data_size": x.nbytes}}],
                       "outputs": [{"name": "outputs", "parameters": {"binary_data": True}}]}).encode()
    path.write_bytes(head + x.tobytes())
    return len(head)


def batch_stats(port: int, model: str) -> tuple[float, float]:
    text = subprocess.run(["curl", "-s", f"http://127.0.0.1:{port}/metrics"], capture_output=True, text=True, check=True).stdout
    def value(metric):
        m = re.search(rf'flaxlayer_batch_requests_{metric}{{model="{model}",version="1"}} (\S+)', text)
        return float(m.group(1)) if m else 0.0
    return value("sum"), value("count")


def wrk(port: int, model: str, conc: int, seconds: int, body_file: Path, head_len: int) -> dict:
    env = dict(os.environ, BODY_FILE=str(body_file), HEADER_LENGTH=str(head_len))
    out = subprocess.run(
        ["wrk", "-t", str(min(conc, 2)), "-c", str(conc), "-d", f"{seconds}s", "--latency",
         "-s", str(ROOT / "scripts" / "bench_serve.lua"), f"http://127.0.0.1:{port}/v2/models/{model}/infer"],
        capture_output=True, text=True, env=env, check=True).stdout
    line = next(l for l in out.splitlines() if l.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def cpu_seconds(pid: int) -> float:
    """The process's user + system CPU time."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def wait_idle(limit: float) -> None:
    deadline = time.time() + limit
    while load() >= 0.5 and time.time() < deadline:
        print(f"waiting for an idle machine (load average {load():.2f})", flush=True)
        time.sleep(15)


def main():
    wait_idle(float(os.environ["WAIT_IDLE"]))
    load_before = load()
    work = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    repo = work / "models"
    repo.mkdir()
    notes = prepare(repo)
    heads = {m: body(work / f"{m}.body", shape) for m, shape in MODELS.items()}
    server = subprocess.Popen([str(ROOT / "target/release/flaxlayer"), "serve", "--models", str(repo), "--port", "0"],
                              stdout=subprocess.PIPE, text=True)
    started = time.time()
    try:
        port = None
        for line in server.stdout:
            m = re.match(r"listening on http://127\.0\.0\.1:(\d+)", line)
            if m:
                port = int(m.group(1))
                break
        assert port, "the server did not start"
        rows = []
        for model in MODELS:
            for served, batching in ((model, "on"), (f"{model}_unbatched", "off")):
                for conc in CONCURRENCY:
                    wrk(port, served, conc, 1, work / f"{model}.body", heads[model])  # warm-up
                    before, cpu0 = batch_stats(port, served), cpu_seconds(server.pid)
                    r = wrk(port, served, conc, DURATION, work / f"{model}.body", heads[model])
                    after, cpu1 = batch_stats(port, served), cpu_seconds(server.pid)
                    batches = after[1] - before[1]
                    r.update(model=model, batching=batching, conc=conc, rps=r["requests"] / (r["duration_us"] / 1e6),
                             per_batch=(after[0] - before[0]) / batches if batches else float("nan"),
                             cpu_us=(cpu1 - cpu0) * 1e6 / max(r["requests"], 1))
                    print(f"{model:4} batching {batching:3} c={conc:2}: {r['rps']:9.0f} req/s  p50 {r['p50_us']/1e3:6.2f} ms  "
                          f"p99 {r['p99_us']/1e3:6.2f} ms  {r['per_batch']:.1f} req/batch  {r['cpu_us']:.0f} µs CPU/req  "
                          f"errors {r['non_2xx'] + r['socket_errors']}", flush=True)
                    rows.append(r)
        overload = []
        for model in MODELS:
            served = f"{model}_overload"
            wrk(port, served, CONCURRENCY[-1], 1, work / f"{model}.body", heads[model])  # warm-up
            rss0 = rss_mib(server.pid)
            r = wrk(port, served, OVERLOAD_CONC, DURATION, work / f"{model}.body", heads[model])
            seconds = r["duration_us"] / 1e6
            answered = r["requests"] - r["non_2xx"]
            r.update(model=model, conc=OVERLOAD_CONC, rps=answered / seconds, sent=r["requests"] / seconds,
                     shed=r["non_2xx"] / max(r["requests"], 1), rss0=rss0, rss1=rss_mib(server.pid))
            print(f"{model:4} overload c={OVERLOAD_CONC}: {r['rps']:9.0f} answered/s of {r['sent']:9.0f} sent/s  "
                  f"p99 {r['p99_us']/1e3:6.2f} ms  shed {100 * r['shed']:.0f}%  RSS {r['rss0']:.0f} -> {r['rss1']:.0f} MiB", flush=True)
            overload.append(r)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
        shutil.rmtree(work, ignore_errors=True)
    write(rows, overload, notes, time.time() - started, (load_before, load()))


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def write(rows, overload, notes, seconds, loads):
    def find(model, batching, conc):
        return next(r for r in rows if (r["model"], r["batching"], r["conc"]) == (model, batching, conc))
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    lines = [
        "Reproduce: `scripts/bench_serve.sh` (builds `flaxlayer` with `--release --features serve`, installs wrk if absent).",
        "",
        f"- Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; {seconds:.0f} s total; git {commit}.",
        f"- Machine: {cpu}, {os.cpu_count()} logical cores; wrk and the server share them. "
        f"1-minute load average {loads[0]:.2f} before the runs, {loads[1]:.2f} after.",
        f"- Method: `wrk -t min(c,2) -c c -d {DURATION}s` (after a 1 s warm-up) POSTs one KServe v2 request of one row "
        "with binary tensor data (`binary_data_size`, binary output) to `/v2/models/M/infer`; one server process, "
        "default settings (HTTP threads = cores, 1 worker per model, max_queue_delay_us 500, max_batch_size = largest "
        "exported size, chunks planned from warm-up timings). \"off\" is the same bundle with "
        "`{\"dynamic_batching\": false}`: each request runs alone, padded to the smallest exported size. "
        "Requests per batch is from the server's `flaxlayer_batch_requests` histogram. "
        "Server CPU per request is the server process's user + system time over the run divided by the requests "
        "(wrk's own CPU is not in it).",
    ]
    lines += [f"- Note: {n}." for n in notes]
    lines += ["", "| model | batching | concurrency | requests/s | p50 latency | p99 latency | requests per batch | server CPU per request | errors |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['batching']} | {r['conc']} | {r['rps']:,.0f} | {r['p50_us']/1e3:.2f} ms | "
                     f"{r['p99_us']/1e3:.2f} ms | {r['per_batch']:.1f} | {r['cpu_us']:.0f} µs | {r['non_2xx'] + r['socket_errors']} |")
    lines += ["", f"Overload: {OVERLOAD_CONC} connections (4× the largest row above; wrk is closed-loop, so this is 4× the "
              f"clients that saturate the server rather than 4× an arrival rate) against the same bundle with "
              f"`{{\"max_queue_requests\": {OVERLOAD_QUEUE}}}`; batching on. Shed requests get 503 with `Retry-After` and "
              "their client sends the next one at once; p99 is over every answer, 503s included.", "",
              "| model | connections | answered/s | sent/s | p99 latency | shed | socket errors | RSS before → after |",
              "|---|---|---|---|---|---|---|---|"]
    for r in overload:
        lines.append(f"| {r['model']} | {r['conc']} | {r['rps']:,.0f} | {r['sent']:,.0f} | {r['p99_us']/1e3:.2f} ms | "
                     f"{100 * r['shed']:.0f}% | {r['socket_errors']} | {r['rss0']:.0f} → {r['rss1']:.0f} MiB |")
    lines.append("")
    for model in MODELS:
        on, off = find(model, "on", 64), find(model, "off", 64)
        ratio = on["rps"] / off["rps"]
        goal = " (goal: ≥ 3× with p99 < 5 ms)" if model == "mlp" else ""
        met = f" — {'met' if ratio >= 3 and on['p99_us'] < 5000 else 'NOT met'}" if model == "mlp" else ""
        lines.append(f"- {model} at concurrency 64: batching on gives {ratio:.2f}× the requests/s of batching off, "
                     f"p99 {on['p99_us']/1e3:.2f} ms{goal}{met}.")
    table = "\n".join(lines)
    print("\n" + table)
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text()
    block = f"<!-- serve:begin -->\n{table}\n<!-- serve:end -->"
    if "<!-- serve:begin -->" in text:
        text = re.sub(r"<!-- serve:begin -->.*?<!-- serve:end -->", lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n## Serving (`flaxlayer serve`)\n\nGenerated by `scripts/bench_serve.sh`; the part between the `serve` markers is rewritten on every run.\n\n" + block + "\n"
    path.write_text(text)


main()
PY
