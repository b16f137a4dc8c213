"""`flaxlayer serve --grpc-port` (KServe v2 over gRPC) against `tritonclient[grpc]`, checked against JAX.

- Every committed inference bundle through tritonclient.grpc (raw tensor contents), and through
  the typed `contents` fields, against the bundles' golden data (JAX's outputs).
- Health, server and model metadata, model readiness.
- Concurrency: 32 gRPC clients of mixed batch sizes, each request's rows distinct, answers
  checked row by row against JAX's MLP; the batcher merges them (as over HTTP).
- Bad requests: each gets its own gRPC status code, and the server stays up.

One server (free HTTP and gRPC ports) serves every model of the module, as in test_serve.py,
whose helpers this reuses. Run: .venv/bin/python -m pytest tests/python/test_serve_grpc.py -q
"""

from __future__ import annotations

import threading

import grpc
import numpy as np
import pytest

import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from test_serve import (BUNDLES, HLO, TRITON_DTYPES, Server, assert_close, batch_requests_mean, golden,
                        marked_paddable, mlp_reference)

MAX_BODY = 4 << 20  # --max-body-bytes: also the largest gRPC message


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("models")
    for name in BUNDLES:
        (repo / name).mkdir()
        (repo / name / "1").symlink_to(HLO / name)
    (repo / "mlp_any").mkdir()
    marked_paddable(HLO / "mlp", repo / "mlp_any" / "1")
    (repo / "cnn_q1").mkdir()
    (repo / "cnn_q1" / "1").symlink_to(HLO / "cnn")
    (repo / "cnn_q1" / "config.json").write_text('{"max_queue_requests": 1, "warmup": false}')
    s = Server(repo, ("--max-body-bytes", str(MAX_BODY)))
    yield s
    assert s.stop() == 0, "SIGTERM stops both listeners and the server exits 0"
    assert any("stopped" in l for l in s.lines), s.lines


@pytest.fixture(scope="module")
def client(server):
    c = grpcclient.InferenceServerClient(url=server.grpc_address)
    yield c
    c.close()


@pytest.fixture(scope="module")
def stub(server):
    """The generated stub of tritonclient's own proto, for requests tritonclient can't build."""
    channel = grpc.insecure_channel(server.grpc_address, options=[("grpc.max_send_message_length", -1),
                                                                  ("grpc.max_receive_message_length", -1)])
    yield service_pb2_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


def grpc_inputs(ins: dict) -> list:
    inputs = []
    for k, v in ins.items():
        dt = TRITON_DTYPES[str(v.dtype)]
        i = grpcclient.InferInput(k, list(v.shape), dt)
        # tritonclient sends BF16 from float32 arrays.
        i.set_data_from_numpy(v.astype(np.float32) if dt == "BF16" else v)
        inputs.append(i)
    return inputs


# ---------------------------------------------------------------------------
# health and metadata
# ---------------------------------------------------------------------------

def test_health_metadata_and_readiness(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta.name == "flaxlayer" and meta.version
    for name in BUNDLES + ["mlp_any"]:
        assert client.is_model_ready(name)
        assert client.is_model_ready(name, model_version="1")
    for name, version in [("no_such_model", ""), ("mlp", "7")]:
        with pytest.raises(InferenceServerException) as e:
            client.is_model_ready(name, model_version=version)
        assert e.value.status() == "StatusCode.NOT_FOUND", e.value


@pytest.mark.parametrize("name", BUNDLES)
def test_model_metadata_names_the_bundle_leaves(client, name):
    ins, outs = golden(name)
    meta = client.get_model_metadata(name)
    assert meta.name == name and list(meta.versions) == ["1"] and meta.platform == "jax_stablehlo"
    assert {t.name: t.datatype for t in meta.inputs} == {k: TRITON_DTYPES[str(v.dtype)] for k, v in ins.items()}
    assert {t.name: t.datatype for t in meta.outputs} == {k: TRITON_DTYPES[str(v.dtype)] for k, v in outs.items()}
    for t in meta.inputs:
        shape = list(ins[t.name].shape)
        assert len(t.shape) == len(shape) and list(t.shape[1:]) == shape[1:], t
        assert t.shape[0] in (-1, shape[0]), t


def test_metadata_shows_any_batch_for_a_paddable_bundle(client):
    meta = client.get_model_metadata("mlp_any", as_json=True)
    assert meta["inputs"] == [{"name": "inputs", "datatype": "FP32", "shape": ["-1", "64"]}]
    assert meta["outputs"] == [{"name": "outputs", "datatype": "FP32", "shape": ["-1", "10"]}]


# ---------------------------------------------------------------------------
# inference
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", BUNDLES)
def test_raw_contents_match_jax(client, name):
    ins, outs = golden(name)
    requested = [grpcclient.InferRequestedOutput(k) for k in outs]
    result = client.infer(name, grpc_inputs(ins), outputs=requested, request_id=f"{name}-raw")
    response = result.get_response()
    assert response.model_name == name and response.model_version == "1" and response.id == f"{name}-raw"
    assert [o.name for o in response.outputs] == list(outs)
    assert len(response.raw_output_contents) == len(outs)
    for k, want in outs.items():
        assert_close(f"{name}/{k} (grpc raw)", result.as_numpy(k), want)


# The InferTensorContents field of each datatype that has one (FP16 and BF16 go raw).
TYPED_FIELD = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
               "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
               "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
               "FP64": "fp64_contents"}


def typed_request(name: str, ins: dict) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=name, id=f"{name}-typed")
    for k, v in ins.items():
        dt = TRITON_DTYPES[str(v.dtype)]
        t = request.inputs.add(name=k, datatype=dt, shape=list(v.shape))
        getattr(t.contents, TYPED_FIELD[dt]).extend(v.ravel().tolist())
    return request


def typed_output(o, raw: bytes | None, want: np.ndarray) -> np.ndarray:
    if raw is not None:  # an output without a typed field: the whole answer is raw
        if o.datatype == "BF16":
            return np.frombuffer(raw, dtype=np.uint16).astype(np.uint32).__lshift__(16).view(np.float32).reshape(o.shape)
        return np.frombuffer(raw, dtype=want.dtype).reshape(o.shape)
    return np.array(getattr(o.contents, TYPED_FIELD[o.datatype])).reshape(o.shape)


TYPED_BUNDLES = [n for n in BUNDLES if all(TRITON_DTYPES[str(v.dtype)] in TYPED_FIELD for v in golden(n)[0].values())]


@pytest.mark.parametrize("name", TYPED_BUNDLES)
def test_typed_contents_match_jax(stub, name):
    ins, outs = golden(name)
    response = stub.ModelInfer(typed_request(name, ins), timeout=120)
    assert response.id == f"{name}-typed"
    raw = list(response.raw_output_contents)
    typed = all(TYPED_FIELD.get(o.datatype) for o in response.outputs)
    assert (not raw) == typed, "typed contents are answered typed when every output has a typed field"
    for i, o in enumerate(response.outputs):
        assert_close(f"{name}/{o.name} (grpc typed)", typed_output(o, raw[i] if raw else None, outs[o.name]), outs[o.name])


def test_a_chosen_subset_of_outputs_in_the_order_asked(client):
    ins, outs = golden("mixed")
    requested = [grpcclient.InferRequestedOutput("2"), grpcclient.InferRequestedOutput("0")]
    result = client.infer("mixed", grpc_inputs(ins), outputs=requested)
    assert [o.name for o in result.get_response().outputs] == ["2", "0"]
    assert_close("mixed/2", result.as_numpy("2"), outs["2"])
    assert_close("mixed/0", result.as_numpy("0"), outs["0"])
    # None asked: every output.
    result = client.infer("mixed", grpc_inputs(ins))
    assert [o.name for o in result.get_response().outputs] == list(outs)


def test_concurrent_grpc_clients_get_their_own_rows_in_merged_batches(server):
    clients, per_client, sizes = 32, 40, [1, 2, 3, 5, 8]
    rng = np.random.default_rng(23)
    plan = [[int(rng.choice(sizes)) for _ in range(per_client)] for _ in range(clients)]
    offsets = np.cumsum([0] + [n for p in plan for n in p])
    rows = rng.standard_normal((int(offsets[-1]), 64)).astype(np.float32)
    want = mlp_reference(rows)
    failures, answered, lock = [], [0], threading.Lock()

    def run(c: int):
        cl = grpcclient.InferenceServerClient(url=server.grpc_address)
        try:
            for i, n in enumerate(plan[c]):
                start = int(offsets[c * per_client + i])
                x = grpcclient.InferInput("inputs", [n, 64], "FP32")
                x.set_data_from_numpy(rows[start:start + n])
                r = cl.infer("mlp_any", [x], request_id=f"{c}-{i}")
                assert r.get_response().id == f"{c}-{i}"
                got = r.as_numpy("outputs")
                assert got.shape == (n, 10), got.shape
                err = float(np.max(np.abs(got - want[start:start + n])))
                assert err <= 2e-5, f"request {c}-{i}: max error {err}"
                with lock:
                    answered[0] += 1
        except Exception as e:  # noqa: BLE001 - collected and reported below
            failures.append(f"client {c}: {e!r}")
        finally:
            cl.close()

    threads = [threading.Thread(target=run, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures[:5]
    assert answered[0] == clients * per_client
    mean = batch_requests_mean(server, "mlp_any")
    print(f"\n{clients} x {per_client} gRPC requests on mlp_any; {mean:.1f} requests per batch on average")
    assert mean > 1.5, "concurrent gRPC requests were merged into batches"


# ---------------------------------------------------------------------------
# bad requests: each a status code, and the server stays up
# ---------------------------------------------------------------------------

def mlp_request(shape, raw: bytes | None = None, datatype="FP32", name="inputs", model="mlp") -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=model)
    request.inputs.add(name=name, datatype=datatype, shape=shape)
    if raw is not None:
        request.raw_input_contents.append(raw)
    return request


def refused(stub, request, code: grpc.StatusCode, *parts: str, timeout=60):
    with pytest.raises(grpc.RpcError) as e:
        stub.ModelInfer(request, timeout=timeout)
    assert e.value.code() == code, (e.value.code(), e.value.details())
    for p in parts:
        assert p in e.value.details(), (p, e.value.details())


ROW = np.zeros((1, 64), np.float32).tobytes()


def test_bad_requests_get_their_status_codes(server, stub, client):
    ok = mlp_request([1, 64], ROW)
    assert stub.ModelInfer(ok, timeout=60).outputs[0].shape == [1, 10]
    S = grpc.StatusCode
    # Unknown model or version.
    refused(stub, mlp_request([1, 64], ROW, model="nope"), S.NOT_FOUND, 'unknown model "nope"')
    bad_version = mlp_request([1, 64], ROW)
    bad_version.model_version = "7"
    refused(stub, bad_version, S.NOT_FOUND, "has no version")
    # Names, datatypes, shapes.
    refused(stub, mlp_request([1, 64], ROW, name="x"), S.INVALID_ARGUMENT, 'unknown input "x"')
    refused(stub, mlp_request([1, 32], np.zeros((1, 32), np.float64).tobytes(), datatype="FP64"), S.INVALID_ARGUMENT,
            "expected datatype FP32, got FP64")
    refused(stub, mlp_request([1, 64], ROW, datatype="BYTES"), S.INVALID_ARGUMENT, "a datatype among")
    refused(stub, mlp_request([1, 63], ROW[:63 * 4]), S.INVALID_ARGUMENT, "expected shape")
    refused(stub, mlp_request([64], ROW), S.INVALID_ARGUMENT, "expected shape [N, 64]", "got [64]")
    refused(stub, mlp_request([-1, 64], ROW), S.INVALID_ARGUMENT, "sizes >= 0")
    # Sizes that don't match the bytes sent, or overflow: refused before anything is allocated.
    refused(stub, mlp_request([2, 64], ROW), S.INVALID_ARGUMENT, "expected 512 bytes", "got 256 bytes")
    # 2^39 bytes declared: more than the model's queue ever holds (--max-queue-bytes).
    refused(stub, mlp_request([1 << 31, 64], ROW), S.INVALID_ARGUMENT, "queue limit", "549755813888 bytes declared")
    refused(stub, mlp_request([1 << 62, 1 << 62], ROW), S.INVALID_ARGUMENT, "expected shape [N, 64]")
    refused(stub, mlp_request([1 << 10, 64]), S.INVALID_ARGUMENT, "neither contents nor raw_input_contents")
    two_raw = mlp_request([1, 64], ROW)
    two_raw.raw_input_contents.append(ROW)
    refused(stub, two_raw, S.INVALID_ARGUMENT, "raw_input_contents has 2 entries for 1 inputs")
    both = mlp_request([1, 64], ROW)
    both.inputs[0].contents.fp32_contents.extend([0.0] * 64)
    refused(stub, both, S.INVALID_ARGUMENT, "both contents and raw_input_contents")
    short = mlp_request([1, 64])
    short.inputs[0].contents.fp32_contents.extend([0.0] * 63)
    refused(stub, short, S.INVALID_ARGUMENT, "expected 64 elements in contents.fp32_contents, got 63")
    wrong_field = mlp_request([1, 64])
    wrong_field.inputs[0].contents.int_contents.extend([0] * 64)
    refused(stub, wrong_field, S.INVALID_ARGUMENT, "got contents.int_contents")
    unknown_out = mlp_request([1, 64], ROW)
    unknown_out.outputs.add(name="nope")
    refused(stub, unknown_out, S.INVALID_ARGUMENT, 'unknown output "nope"')
    # A message over --max-body-bytes.
    big = MAX_BODY // 4 // 64 + 1
    refused(stub, mlp_request([big, 64], bytes(big * 256)), S.RESOURCE_EXHAUSTED, "too large", str(MAX_BODY))
    # Protocol features not served.
    seq = mlp_request([1, 64], ROW)
    seq.parameters["sequence_id"].int64_param = 5
    refused(stub, seq, S.UNIMPLEMENTED, "sequence")
    with pytest.raises(InferenceServerException) as e:
        client.get_model_repository_index()
    assert e.value.status() == "StatusCode.UNIMPLEMENTED"
    # The request's timeout parameter (microseconds): the CNN's 256 rows take far longer than 1 µs.
    cnn_ins, _ = golden("cnn")
    x = next(iter(cnn_ins.values()))
    rows = np.repeat(x, -(-256 // x.shape[0]), axis=0)[:256]
    slow = service_pb2.ModelInferRequest(model_name="cnn")
    slow.inputs.add(name=next(iter(cnn_ins)), datatype="FP32", shape=list(rows.shape))
    slow.raw_input_contents.append(rows.tobytes())
    slow.parameters["timeout"].int64_param = 1
    refused(stub, slow, S.DEADLINE_EXCEEDED, "deadline exceeded")
    bad_timeout = mlp_request([1, 64], ROW)
    bad_timeout.parameters["timeout"].string_param = "soon"
    refused(stub, bad_timeout, S.INVALID_ARGUMENT, "timeout")
    # Still serving, and the good request still gets its answer.
    assert client.is_server_live() and client.is_server_ready()
    assert stub.ModelInfer(ok, timeout=60).outputs[0].shape == [1, 10]


def test_garbage_and_silent_connections_do_not_wedge_the_server(server, client):
    import socket
    import time
    host, port = server.grpc_address.rsplit(":", 1)
    # Connections that never send the HTTP/2 preface, held open during the rest of the test.
    silent = [socket.create_connection((host, int(port)), timeout=10) for _ in range(20)]
    try:
        # Not HTTP/2: the server closes the connection (after at most a GOAWAY).
        g = socket.create_connection((host, int(port)), timeout=10)
        g.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n" + b"\x00" * 4096)
        started, got = time.time(), b""
        while time.time() - started < 10:
            try:
                chunk = g.recv(4096)
            except ConnectionResetError:  # closed with our bytes unread: a reset
                break
            if not chunk:
                break
            got += chunk
        else:
            pytest.fail("the server kept a connection that is not HTTP/2 open")
        g.close()
        assert len(got) < 4096, got[:200]
        # Other clients are served meanwhile.
        assert client.is_server_live() and client.is_server_ready()
        x = grpcclient.InferInput("inputs", [1, 64], "FP32")
        x.set_data_from_numpy(np.zeros((1, 64), np.float32))
        assert client.infer("mlp", [x]).as_numpy("outputs").shape == (1, 10)
    finally:
        # Left open on purpose: at SIGTERM the server closes them itself (the fixture checks it exits 0).
        pass


def test_a_full_queue_is_resource_exhausted(server):
    # cnn_q1 admits one request at a time; 8 clients send 256-row CNN requests at once.
    cnn_ins, cnn_outs = golden("cnn")
    name, x = next(iter(cnn_ins.items()))
    rows = np.repeat(x, -(-256 // x.shape[0]), axis=0)[:256]
    codes, lock = [], threading.Lock()

    def run():
        channel = grpc.insecure_channel(server.grpc_address, options=[("grpc.max_send_message_length", -1),
                                                                      ("grpc.max_receive_message_length", -1)])
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelInferRequest(model_name="cnn_q1")
        request.inputs.add(name=name, datatype="FP32", shape=list(rows.shape))
        request.raw_input_contents.append(rows.tobytes())
        for _ in range(4):
            try:
                stub.ModelInfer(request, timeout=120)
                code, details = grpc.StatusCode.OK, ""
            except grpc.RpcError as e:
                code, details = e.code(), e.details()
            with lock:
                codes.append((code, details))
        channel.close()

    threads = [threading.Thread(target=run) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    kinds = {c for c, _ in codes}
    assert kinds <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
    assert grpc.StatusCode.OK in kinds and grpc.StatusCode.RESOURCE_EXHAUSTED in kinds, kinds
    shed = [d for c, d in codes if c == grpc.StatusCode.RESOURCE_EXHAUSTED]
    assert all("overloaded" in d for d in shed), shed[:2]
