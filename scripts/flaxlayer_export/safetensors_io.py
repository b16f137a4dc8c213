"""safetensors files: an own writer (deterministic bytes, bfloat16) and reader."""

from __future__ import annotations

import json
import struct
from typing import Any

import ml_dtypes
import numpy as np

_ST_DTYPES = {
    np.dtype(np.float64): "F64",
    np.dtype(np.float32): "F32",
    np.dtype(np.float16): "F16",
    np.dtype(ml_dtypes.bfloat16): "BF16",
    np.dtype(np.int64): "I64",
    np.dtype(np.int32): "I32",
    np.dtype(np.int16): "I16",
    np.dtype(np.int8): "I8",
    np.dtype(np.uint64): "U64",
    np.dtype(np.uint32): "U32",
    np.dtype(np.uint16): "U16",
    np.dtype(np.uint8): "U8",
    np.dtype(np.bool_): "BOOL",
}
_ST_DTYPES_INV = {v: k for k, v in _ST_DTYPES.items()}


def safetensors_bytes(tensors: dict[str, Any], metadata: dict[str, str] | None = None) -> bytes:
    """A safetensors file's bytes: tensors in sorted-name order, JSON header with sorted keys,
    padded with spaces to a multiple of 8 bytes."""
    header: dict[str, Any] = {}
    chunks = []
    offset = 0
    for name in sorted(tensors):
        a = np.asarray(tensors[name])
        dt = np.dtype(a.dtype)
        if dt not in _ST_DTYPES:
            raise TypeError(f"{name}: unsupported dtype {dt}")
        data = np.ascontiguousarray(a).astype(dt.newbyteorder("<"), copy=False).tobytes()
        header[name] = {
            "dtype": _ST_DTYPES[dt],
            "shape": [int(s) for s in a.shape],
            "data_offsets": [offset, offset + len(data)],
        }
        chunks.append(data)
        offset += len(data)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    hbytes = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    hbytes += b" " * ((-len(hbytes)) % 8)
    return struct.pack("<Q", len(hbytes)) + hbytes + b"".join(chunks)


def write_safetensors(path: str, tensors: dict[str, Any], metadata: dict[str, str] | None = None):
    """Write `safetensors_bytes(tensors, metadata)` to `path`."""
    data = safetensors_bytes(tensors, metadata)
    with open(path, "wb") as f:
        f.write(data)


def read_safetensors(path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read a safetensors file into numpy arrays (bfloat16 via ml_dtypes)."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", {}) or {}
    base = 8 + n
    out = {}
    for name, info in header.items():
        dt = _ST_DTYPES_INV[info["dtype"]]
        b, e = info["data_offsets"]
        arr = np.frombuffer(raw[base + b:base + e], dtype=dt.newbyteorder("<"))
        out[name] = arr.astype(dt).reshape(info["shape"])
    return out, meta
