"""How a model's matrices are held in memory: read-only memory maps of the files on disk.

Nothing here copies a matrix. Every process that maps the same file shares the same
physical pages through the page cache, so N worker processes on one machine hold the
vocabulary matrix once.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any

import numpy as np

from beam_m2v.errors import ModelLoadError

#: safetensors dtype codes numpy can represent, mapped to little-endian numpy dtypes.
SAFETENSORS_DTYPES: dict[str, np.dtype[Any]] = {
    "F16": np.dtype("<f2"),
    "F32": np.dtype("<f4"),
    "F64": np.dtype("<f8"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "I16": np.dtype("<i2"),
    "I32": np.dtype("<i4"),
    "I64": np.dtype("<i8"),
}

_MAX_HEADER_BYTES = 100 * 1024 * 1024


def map_safetensors(path: str) -> dict[str, np.ndarray]:
    """Memory-map every tensor of a safetensors file, read-only, after checking the file is whole.

    Raises ModelLoadError naming ``path`` when the file is missing, truncated, has a broken
    header, an unknown dtype, or tensors whose byte ranges disagree with their shapes.
    """
    try:
        file_size = os.path.getsize(path)
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise ModelLoadError(path, f"truncated safetensors file: {file_size} bytes, no header length")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > min(_MAX_HEADER_BYTES, file_size - 8):
                raise ModelLoadError(
                    path,
                    f"truncated or corrupt safetensors file: header says {header_len} bytes, file has {file_size}",
                )
            header_bytes = handle.read(header_len)
    except FileNotFoundError:
        raise ModelLoadError(path, "file not found") from None
    except OSError as error:
        raise ModelLoadError(path, f"cannot read: {error}") from error
    try:
        header = json.loads(header_bytes)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelLoadError(path, f"corrupt safetensors header, not JSON: {error}") from None
    if not isinstance(header, dict):
        raise ModelLoadError(path, "corrupt safetensors header, not a JSON object")
    data_start = 8 + header_len
    data_size = file_size - data_start
    tensors: dict[str, np.ndarray] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        tensors[name] = _map_tensor(path, name, info, data_start, data_size)
    return tensors


def _map_tensor(path: str, name: str, info: Any, data_start: int, data_size: int) -> np.ndarray:
    """Check one safetensors header entry against the file and memory-map it."""
    try:
        dtype_code, shape, (begin, end) = info["dtype"], list(info["shape"]), info["data_offsets"]
    except (KeyError, TypeError, ValueError):
        raise ModelLoadError(path, f"corrupt safetensors header entry for tensor {name!r}: {info!r}") from None
    dtype = SAFETENSORS_DTYPES.get(dtype_code)
    if dtype is None:
        raise ModelLoadError(path, f"tensor {name!r} has dtype {dtype_code!r}, which beam-m2v cannot read")
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if end - begin != expected or begin < 0:
        raise ModelLoadError(
            path,
            f"inconsistent safetensors: tensor {name!r} of shape {shape} {dtype_code} needs {expected} "
            f"bytes, header gives {end - begin}",
        )
    if end > data_size:
        raise ModelLoadError(
            path,
            f"truncated safetensors file: tensor {name!r} ends at byte {data_start + end}, "
            f"file has {data_start + data_size}",
        )
    if expected == 0:
        return np.zeros(shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=data_start + begin, shape=tuple(shape))


def map_raw_matrix(path: str, dim: int) -> np.ndarray:
    """Memory-map a headerless little-endian float32 matrix of ``dim`` columns (a raw ``vocab_matrix.bin``)."""
    if dim <= 0:
        raise ModelLoadError(path, f"dimension must be positive, got {dim}")
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        raise ModelLoadError(path, "file not found") from None
    if size == 0:
        raise ModelLoadError(path, "matrix file is empty")
    if size % 4:
        raise ModelLoadError(
            path,
            f"matrix file has {size} bytes, not a multiple of 4 (float32), so not a float32 matrix of dimension {dim}",
        )
    if (size // 4) % dim:
        raise ModelLoadError(
            path,
            f"matrix file has {size // 4} float32 values ({size} bytes), not a multiple of dimension {dim}",
        )
    return np.memmap(path, dtype=np.dtype("<f4"), mode="r", shape=(size // 4 // dim, dim))
