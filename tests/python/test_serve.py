"""`flaxlayer serve` against clients people already use, checked against JAX.

- KServe v2 through the real `tritonclient[http]` client, in JSON and in binary mode, for every
  committed inference bundle; outputs compared with the bundles' golden data (JAX's outputs).
- TF Serving's REST `predict` (row and columnar formats) over plain HTTP.
- Concurrency: 64 clients x 200 requests of mixed batch sizes, each request's rows distinct;
  every answer is checked row by row against JAX's MLP on the same rows.

Run: .venv/bin/python -m pytest tests/python/test_serve.py -q
The server binary is built with `cargo build --features serve` (debug), or taken from
$FLAXLAYER_BIN. It runs on a free port with a temporary model repository of symlinks to hlo/.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from cli_binary import flaxlayer_binary
from safetensors import safe_open

import tritonclient.http as httpclient

REPO = Path(__file__).resolve().parents[2]
HLO = REPO / "hlo"

# Every committed bundle with JAX's inference outputs (golden inputs/ and inference/), the
# multi-device ones included: the server runs with DEVICES CPU devices.
def _inference_bundles() -> list:
    names = []
    for d in sorted(HLO.iterdir()):
        if not (d / "golden.safetensors").is_file():
            continue
        with safe_open(str(d / "golden.safetensors"), framework="flax") as f:
            keys = list(f.keys())
        if any(k.startswith("inputs/") for k in keys) and any(k.startswith("inference/") for k in keys):
            names.append(d.name)
    return names


BUNDLES = _inference_bundles()
DEVICES = 8  # hlo/mesh2x4_mlp runs on a 2 x 4 mesh
ATOL = 2e-5  # XLA's CPU code may differ by an ulp between CPUs; the other tests use the same.
TRITON_DTYPES = {"float32": "FP32", "bfloat16": "BF16", "int32": "INT32", "float64": "FP64", "int64": "INT64",
                 "float16": "FP16", "bool": "BOOL", "uint8": "UINT8", "int8": "INT8"}


# ---------------------------------------------------------------------------
# the server
# ---------------------------------------------------------------------------

def server_binary() -> str:
    path = flaxlayer_binary()  # $FLAXLAYER_BIN (scripts/test.sh), else built with cargo
    assert path is not None, "no flaxlayer binary and no cargo to build it"
    return str(path)


def marked_paddable(src: Path, dest: Path) -> None:
    """A copy of a bundle whose manifest marks its method paddable and its outputs batched
    (the committed hlo/mlp already carries these marks: the copy is then the same)."""
    shutil.copytree(src, dest)
    m = json.loads((dest / "manifest.json").read_text())
    method = m["methods"][m["default_method"]]
    method.setdefault("batching", {})
    if not method["batching"].get("paddable"):
        method["batching"] = {"paddable": True, "pad_value": 0.0}
    for comp in method["inference"]:
        for r in comp["results"]:
            if r["role"] == "output":
                r.setdefault("batched", True)
    (dest / "manifest.json").write_text(json.dumps(m, indent=1))


def marked_not_paddable(src: Path, dest: Path) -> None:
    """A copy of a bundle whose manifest says its rows may not be padded or merged."""
    shutil.copytree(src, dest)
    m = json.loads((dest / "manifest.json").read_text())
    m["methods"][m["default_method"]]["batching"] = {"paddable": False, "reason": "test copy"}
    (dest / "manifest.json").write_text(json.dumps(m, indent=1))


class Server:
    """`flaxlayer serve` on free ports: `address` (HTTP) and `grpc_address` (gRPC)."""

    def __init__(self, repo: Path, extra_args: tuple = ()):
        self.proc = subprocess.Popen(
            [server_binary(), "serve", "--devices", str(DEVICES), "--models", str(repo), "--port", "0", "--grpc-port", "0",
             *extra_args],
            stdout=subprocess.PIPE, stderr=None, text=True)
        deadline = time.time() + 300
        self.lines = []
        self.address = self.grpc_address = None
        while self.address is None or self.grpc_address is None:
            line = self.proc.stdout.readline()
            assert line, f"the server exited before listening: {self.lines}"
            self.lines.append(line)
            m = re.match(r"listening on (http|grpc)://(\S+)", line)
            if m and m.group(1) == "http":
                self.address = m.group(2)
            elif m:
                self.grpc_address = m.group(2)
            assert time.time() < deadline, "the server did not start"
        host, port = self.address.rsplit(":", 1)
        self.host, self.port = host, int(port)
        threading.Thread(target=lambda: [self.lines.append(l) for l in self.proc.stdout], daemon=True).start()

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("models")
    for name in BUNDLES:
        (repo / name).mkdir()
        (repo / name / "1").symlink_to(HLO / name)
    (repo / "mlp_any").mkdir()
    marked_paddable(HLO / "mlp", repo / "mlp_any" / "1")
    marked_not_paddable(HLO / "mlp", repo / "mlp_unmarked" / "1")
    (repo / "mlp_off").mkdir()
    (repo / "mlp_off" / "1").symlink_to(HLO / "mlp")
    (repo / "mlp_off" / "config.json").write_text('{"dynamic_batching": false}')
    s = Server(repo)
    yield s
    assert s.stop() == 0, "SIGTERM stops the server cleanly"
    assert any("stopped" in l for l in s.lines), s.lines


@pytest.fixture(scope="module")
def client(server):
    c = httpclient.InferenceServerClient(url=server.address)
    yield c
    c.close()


# ---------------------------------------------------------------------------
# golden data
# ---------------------------------------------------------------------------

def golden(name: str) -> tuple[dict, dict]:
    """The bundle's golden inputs and inference outputs, by PyTree path (numpy; bf16 as ml_dtypes)."""
    ins, outs = {}, {}
    with safe_open(str(HLO / name / "golden.safetensors"), framework="flax") as f:
        for k in f.keys():
            if k.startswith("inputs/"):
                ins[k[len("inputs/"):]] = np.asarray(f.get_tensor(k))
            elif k.startswith("inference/"):
                outs[k[len("inference/"):]] = np.asarray(f.get_tensor(k))
    return ins, outs


def assert_close(what, got, want):
    got = np.asarray(got)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    if np.issubdtype(want.dtype, np.integer) or want.dtype == np.bool_:
        np.testing.assert_array_equal(got, want, err_msg=what)
    else:
        np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float32).astype(np.float64), rtol=0, atol=ATOL, err_msg=what)


# ---------------------------------------------------------------------------
# KServe v2 with tritonclient
# ---------------------------------------------------------------------------

def test_health_and_server_metadata(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "flaxlayer"
    assert "binary_tensor_data" in meta["extensions"]
    for name in BUNDLES + ["mlp_any"]:
        assert client.is_model_ready(name)
        assert client.is_model_ready(name, model_version="1")
    assert not client.is_model_ready("no_such_model")


@pytest.mark.parametrize("name", BUNDLES)
def test_model_metadata_names_the_bundle_leaves(client, name):
    ins, outs = golden(name)
    meta = client.get_model_metadata(name)
    assert meta["name"] == name and meta["versions"] == ["1"]
    assert {t["name"]: t["datatype"] for t in meta["inputs"]} == {k: TRITON_DTYPES[str(v.dtype)] for k, v in ins.items()}
    assert {t["name"]: t["datatype"] for t in meta["outputs"]} == {k: TRITON_DTYPES[str(v.dtype)] for k, v in outs.items()}
    for t in meta["inputs"]:
        shape = list(ins[t["name"]].shape)
        assert len(t["shape"]) == len(shape) and t["shape"][1:] == shape[1:], t
        assert t["shape"][0] in (-1, shape[0]), t


def test_metadata_shows_any_batch_for_a_paddable_bundle(client):
    meta = client.get_model_metadata("mlp_any")
    assert meta["inputs"] == [{"name": "inputs", "datatype": "FP32", "shape": [-1, 64]}]
    assert meta["outputs"] == [{"name": "outputs", "datatype": "FP32", "shape": [-1, 10]}]
    assert meta["parameters"]["dynamic_batching"] is True


def infer_inputs(ins: dict, binary: bool) -> list:
    inputs = []
    for k, v in ins.items():
        dt = TRITON_DTYPES[str(v.dtype)]
        i = httpclient.InferInput(k, list(v.shape), dt)
        if dt == "BF16":
            # tritonclient sends BF16 from float32 arrays, and only as binary data.
            i.set_data_from_numpy(v.astype(np.float32), binary_data=True)
        else:
            i.set_data_from_numpy(v, binary_data=binary)
        inputs.append(i)
    return inputs


@pytest.mark.parametrize("mode", ["json", "binary"])
@pytest.mark.parametrize("name", BUNDLES)
def test_kserve_infer_matches_jax(client, name, mode):
    ins, outs = golden(name)
    binary = mode == "binary"
    requested = [httpclient.InferRequestedOutput(k, binary_data=binary) for k in outs]
    result = client.infer(name, infer_inputs(ins, binary), outputs=requested, request_id=f"{name}-{mode}")
    response = result.get_response()
    assert response["model_name"] == name and response["model_version"] == "1" and response["id"] == f"{name}-{mode}"
    assert [o["name"] for o in response["outputs"]] == list(outs)
    for o in response["outputs"]:
        assert ("data" in o) == (not binary), o.keys()
    for k, want in outs.items():
        assert_close(f"{name}/{k} ({mode})", result.as_numpy(k), want)


def test_kserve_all_outputs_by_default_and_a_chosen_subset(client):
    ins, outs = golden("mixed")
    # No outputs listed: tritonclient asks for every output as binary (binary_data_output).
    result = client.infer("mixed", infer_inputs(ins, binary=True))
    assert [o["name"] for o in result.get_response()["outputs"]] == ["0", "1", "2"]
    for k, want in outs.items():
        assert_close(f"mixed/{k}", result.as_numpy(k), want)
    # Two outputs, in the order asked, one as JSON and one as binary data.
    requested = [httpclient.InferRequestedOutput("2", binary_data=False), httpclient.InferRequestedOutput("0", binary_data=True)]
    result = client.infer("mixed", infer_inputs(ins, binary=False), outputs=requested)
    response = result.get_response()
    assert [o["name"] for o in response["outputs"]] == ["2", "0"]
    assert "data" in response["outputs"][0] and "data" not in response["outputs"][1]
    assert_close("mixed/2", result.as_numpy("2"), outs["2"])
    assert_close("mixed/0", result.as_numpy("0"), outs["0"])


def test_kserve_errors_reach_the_client(client):
    ins, _ = golden("mlp")
    bad = httpclient.InferInput("inputs", [1, 64], "FP64")
    bad.set_data_from_numpy(ins["inputs"].astype(np.float64))
    with pytest.raises(Exception, match=r'input "inputs": expected datatype FP32, got FP64'):
        client.infer("mlp", [bad])
    with pytest.raises(Exception, match=r'unknown model "nope"'):
        client.infer("nope", infer_inputs(ins, binary=True))


# ---------------------------------------------------------------------------
# TF Serving REST over plain HTTP
# ---------------------------------------------------------------------------

def http_json(server, method, path, body=None):
    conn = http.client.HTTPConnection(server.host, server.port, timeout=60)
    data = None if body is None else json.dumps(body).encode()
    conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    payload = r.read()
    conn.close()
    return r.status, json.loads(payload) if payload else None


def as_json_values(v: np.ndarray):
    return v.astype(np.float32).tolist() if v.dtype.kind not in "iub" else v.tolist()


@pytest.mark.parametrize("name", BUNDLES)
def test_tf_serving_rows_and_columns_match_jax(server, name):
    ins, outs = golden(name)
    names_in, names_out = list(ins), list(outs)
    rows = next(iter(ins.values())).shape[0]
    if len(names_in) == 1:
        instances = as_json_values(ins[names_in[0]])
        columns = as_json_values(ins[names_in[0]])
    else:
        instances = [{k: as_json_values(v[r]) for k, v in ins.items()} for r in range(rows)]
        columns = {k: as_json_values(v) for k, v in ins.items()}

    status, body = http_json(server, "POST", f"/v1/models/{name}:predict", {"instances": instances})
    assert status == 200, body
    predictions = body["predictions"]
    assert len(predictions) == rows
    for k in names_out:
        got = [p for p in predictions] if len(names_out) == 1 else [p[k] for p in predictions]
        assert_close(f"{name}/{k} (rows)", np.array(got, dtype=np.float64 if outs[k].dtype.kind == "f" or str(outs[k].dtype) == "bfloat16" else outs[k].dtype), outs[k])

    status, body = http_json(server, "POST", f"/v1/models/{name}/versions/1:predict", {"signature_name": "serving_default", "inputs": columns})
    assert status == 200, body
    for k in names_out:
        got = body["outputs"] if len(names_out) == 1 else body["outputs"][k]
        assert_close(f"{name}/{k} (columns)", np.array(got, dtype=np.float64 if outs[k].dtype.kind == "f" or str(outs[k].dtype) == "bfloat16" else outs[k].dtype), outs[k])


def test_tf_serving_model_status(server):
    status, body = http_json(server, "GET", "/v1/models/mlp")
    assert status == 200
    assert body == {"model_version_status": [{"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}
    status, body = http_json(server, "GET", "/v1/models/nope")
    assert status == 404 and "unknown model" in body["error"]


# ---------------------------------------------------------------------------
# concurrency
# ---------------------------------------------------------------------------

def mlp_reference(rows: np.ndarray) -> np.ndarray:
    """JAX's MLP on `rows`, with the bundle's variables."""
    import jax
    from flax.traverse_util import unflatten_dict

    from flaxlayer_export.examples import models

    with safe_open(str(HLO / "mlp" / "variables.safetensors"), framework="flax") as f:
        variables = unflatten_dict({tuple(k.split("/")): f.get_tensor(k) for k in f.keys()})
    return np.asarray(jax.jit(models.MLP().apply)(variables, rows))


def kserve_request(rows: np.ndarray, request_id: str, binary: bool) -> tuple[bytes, dict]:
    if binary:
        head = {"id": request_id, "inputs": [{"name": "inputs", "shape": list(rows.shape), "datatype": "FP32",
                                            "parameters": {"binary_data_size": rows.nbytes}}],
                "outputs": [{"name": "outputs", "parameters": {"binary_data": True}}]}
        h = json.dumps(head).encode()
        return h + rows.tobytes(), {"Inference-Header-Content-Length": str(len(h))}
    body = {"id": request_id, "inputs": [{"name": "inputs", "shape": list(rows.shape), "datatype": "FP32",
                                          "data": rows.ravel().tolist()}]}
    return json.dumps(body).encode(), {"Content-Type": "application/json"}


def kserve_answer(resp: http.client.HTTPResponse) -> tuple[str, np.ndarray]:
    payload = resp.read()
    assert resp.status == 200, payload[:500]
    n = resp.getheader("Inference-Header-Content-Length")
    head = json.loads(payload[: int(n)] if n else payload)
    out = head["outputs"][0]
    if n:
        data = np.frombuffer(payload[int(n):], dtype=np.float32)
    else:
        data = np.array(out["data"], dtype=np.float32)
    return head["id"], data.reshape(out["shape"])


def run_clients(server, model: str, sizes: list, clients: int = 64, per_client: int = 200):
    """`clients` threads, each sending `per_client` requests of random sizes from `sizes` with
    rows no other request has; every answer checked against JAX row by row."""
    rng = np.random.default_rng(17)
    plan = [[int(rng.choice(sizes)) for _ in range(per_client)] for _ in range(clients)]
    total = sum(map(sum, plan))
    rows = rng.standard_normal((total, 64)).astype(np.float32)
    want = mlp_reference(rows)
    offsets = np.cumsum([0] + [n for p in plan for n in p])
    failures, answered = [], [0]
    lock = threading.Lock()

    def client(c: int):
        conn = http.client.HTTPConnection(server.host, server.port, timeout=60)
        try:
            for i, n in enumerate(plan[c]):
                k = c * per_client + i
                start = offsets[k]
                request_id = f"{c}-{i}"
                body, headers = kserve_request(rows[start:start + n], request_id, binary=(c % 2 == 1))
                conn.request("POST", f"/v2/models/{model}/infer", body=body, headers=headers)
                got_id, got = kserve_answer(conn.getresponse())
                assert got_id == request_id, (got_id, request_id)
                assert got.shape == (n, 10), got.shape
                err = float(np.max(np.abs(got - want[start:start + n])))
                assert err <= ATOL, f"request {request_id}: rows {start}..{start + n}: max error {err}"
                with lock:
                    answered[0] += 1
        except Exception as e:  # noqa: BLE001 - collected and reported below
            failures.append(f"client {c}: {e!r}")
        finally:
            conn.close()

    started = time.time()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures[:5]
    assert answered[0] == clients * per_client
    return time.time() - started


def batch_requests_mean(server, model: str) -> float:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=60)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    total = float(re.search(rf'flaxlayer_batch_requests_sum{{model="{model}",version="1"}} (\S+)', text).group(1))
    count = float(re.search(rf'flaxlayer_batch_requests_count{{model="{model}",version="1"}} (\S+)', text).group(1))
    return total / count


def test_64_concurrent_clients_with_dynamic_batching_get_their_own_rows(server):
    seconds = run_clients(server, "mlp_any", sizes=[1, 2, 3, 5, 8, 13])
    mean = batch_requests_mean(server, "mlp_any")
    print(f"\n64 x 200 requests on mlp_any in {seconds:.1f} s; {mean:.1f} requests per batch on average")
    assert mean > 1.5, "concurrent requests were merged into batches"


@pytest.mark.parametrize("model", ["mlp_unmarked", "mlp_off"])
def test_64_concurrent_clients_unbatched_on_exported_sizes(server, model):
    # mlp_unmarked: the bundle is not marked paddable; mlp_off: config.json turns batching off.
    seconds = run_clients(server, model, sizes=[1, 8], per_client=50)
    assert batch_requests_mean(server, model) == 1.0, f"{model} runs each request alone"
    print(f"\n64 x 50 requests on {model} (unbatched) in {seconds:.1f} s")
