"""How a model's matrices are held in memory: read-only memory maps of the files on disk.

Nothing here copies a matrix. Every process that maps the same file shares the same
physical pages through the page cache, so N worker processes on one machine hold the
vocabulary matrix once.
"""

from __future__ import annotations

import json
import math
import os
import struct
from typing import Any

import numpy as np

from beam_m2v.errors import ModelLoadError
from beam_m2v.model_checks import is_integer

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
    except (ValueError, RecursionError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
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
    if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
        raise ModelLoadError(
            path,
            f"corrupt safetensors header entry for tensor {name!r}: needs dtype, shape and data_offsets, got {info!r}",
        )
    dtype_code, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    dtype = SAFETENSORS_DTYPES.get(dtype_code) if isinstance(dtype_code, str) else None
    if dtype is None:
        raise ModelLoadError(path, f"tensor {name!r} has dtype {dtype_code!r}, which beam-m2v cannot read")
    if not isinstance(shape, list) or not all(is_integer(size) and size >= 0 for size in shape):
        raise ModelLoadError(
            path, f"corrupt safetensors header: tensor {name!r} has shape {shape!r}, not a list of sizes >= 0"
        )
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(is_integer(offset) for offset in offsets)):
        raise ModelLoadError(
            path, f"corrupt safetensors header: tensor {name!r} has data_offsets {offsets!r}, not [begin, end]"
        )
    begin, end = (int(offset) for offset in offsets)
    if not 0 <= begin <= end:
        raise ModelLoadError(
            path,
            f"corrupt safetensors header: tensor {name!r} has data_offsets [{begin}, {end}]; "
            "they must satisfy 0 <= begin <= end",
        )
    expected = math.prod(shape) * dtype.itemsize  # Python integers: a huge shape cannot wrap around
    if end - begin != expected:
        raise ModelLoadError(
            path,
            f"inconsistent safetensors: tensor {name!r} of shape {shape} {dtype_code} needs {expected} "
            f"bytes, its data_offsets [{begin}, {end}] hold {end - begin}",
        )
    if end > data_size:
        raise ModelLoadError(
            path,
            f"truncated safetensors file: tensor {name!r} ends at byte {data_start + end}, "
            f"file has {data_start + data_size}",
        )
    if expected == 0:
        if max(shape, default=0) > data_size:
            raise ModelLoadError(path, f"corrupt safetensors header: empty tensor {name!r} has shape {shape}")
        return np.zeros(shape, dtype=dtype)
    return _memmap(path, dtype, data_start + begin, tuple(shape))


def _memmap(path: str, dtype: np.dtype[Any], offset: int, shape: tuple[int, ...]) -> np.ndarray:
    """A read-only memory map of part of ``path``; ModelLoadError naming the file when it cannot be mapped."""
    try:
        return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)
    except (OSError, ValueError) as error:
        raise ModelLoadError(path, f"cannot memory-map: {error}") from None


#: How files that are not raw float32 matrices begin, for a clear refusal instead of garbage vectors.
_FOREIGN_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"PK\x03\x04", "a zip archive (a PyTorch checkpoint?)"),
    (b"\x80\x02\x8a\x0a", "a PyTorch checkpoint (a pickle)"),
    (b"\x80\x04\x95", "a Python pickle"),
    (b"\x80\x05\x95", "a Python pickle"),
    (b"\x1f\x8b\x08", "gzip-compressed"),
    (b"\x93NUMPY", "a numpy .npy file (it has a header)"),
)


def _foreign_format(path: str, size: int) -> str | None:
    """What ``path`` (of ``size`` bytes) is when its first bytes show it is no headerless float32 matrix, else None."""
    with open(path, "rb") as handle:
        head = handle.read(16)
    for signature, what in _FOREIGN_SIGNATURES:
        if head.startswith(signature):
            return what
    if len(head) >= 9 and head[8:9] == b"{" and 8 + int.from_bytes(head[:8], "little") <= size:
        return "a safetensors file (name it .safetensors)"
    return None


def map_raw_matrix(path: str, dim: int) -> np.ndarray:
    """Memory-map a headerless little-endian float32 matrix of ``dim`` columns (a raw ``vocab_matrix.bin``)."""
    if not is_integer(dim) or dim <= 0:
        raise ModelLoadError(path, f"dimension must be a positive integer, got {dim!r}")
    try:
        size = os.path.getsize(path)
        foreign = _foreign_format(path, size) if size else None
    except FileNotFoundError:
        raise ModelLoadError(path, "file not found") from None
    except OSError as error:
        raise ModelLoadError(path, f"cannot read: {error}") from None
    if size == 0:
        raise ModelLoadError(path, "matrix file is empty")
    if foreign is not None:
        raise ModelLoadError(path, f"not a raw float32 matrix: the file is {foreign}")
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
    return _memmap(path, np.dtype("<f4"), 0, (size // 4 // dim, dim))
