"""What makes a model and its load options acceptable: each check in one place, each failure named.

Every function here either returns quietly or raises ``ModelLoadError`` naming the file (or
the model source, for a bad option) and what is wrong, so that a damaged model is refused
at load instead of giving wrong vectors later.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from beam_m2v.errors import ModelLoadError
from beam_m2v.model_options import MODEL_DEFAULT, ModelOptions

#: Bytes of a matrix looked at per step of the finite check (a few MB: the mask stays in cache).
FINITE_CHUNK_BYTES = 1 << 22

_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_SEMANTICS = ("model2vec", "static_backend", "seed")  # "seed": the old name of "static_backend"


def is_integer(value: object) -> bool:
    """Whether ``value`` is an integer (Python or numpy), and not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _describe(value: object) -> str:
    """A short rendering of an option or config value for a message: its JSON-like text and type."""
    text = repr(value)
    if len(text) > 60:
        text = text[:60] + "..."
    return f"{text} ({type(value).__name__})" if value is not None else text


_JSON_KINDS = {str: "string", bool: "boolean", int: "integer", float: "number", list: "array", dict: "object"}


def _describe_json(value: object) -> str:
    """A config value as it reads in the JSON file, and its JSON type."""
    text = json.dumps(value)
    if len(text) > 60:
        text = text[:60] + "..."
    kind = _JSON_KINDS.get(type(value))
    return f"{text} ({kind})" if kind else text


def _token_budget(value: object) -> bool:
    """Whether ``value`` is a token budget: an integer >= 0 (bools excluded; 0 gives zero vectors, as in model2vec)."""
    return is_integer(value) and int(value) >= 0  # type: ignore[call-overload]


def check_load_options(source: str, options: ModelOptions) -> None:
    """Check the types and ranges of the model options; ModelLoadError naming ``source`` otherwise.

    ``dimensionality`` is only checked to be an integer here: its range, 1 to the matrix's
    width, is checked once the matrix is read. ``max_length`` None means no truncation. The
    hub token's value never appears in a message, only its type.
    """
    problems: list[str] = []
    tokenizer, dimensionality, normalize = options.tokenizer, options.dimensionality, options.normalize
    max_length = None if options.max_length is MODEL_DEFAULT else options.max_length
    if tokenizer is not None and not isinstance(tokenizer, (str, os.PathLike)):
        problems.append(f"tokenizer must be a path or hub id, got {_describe(tokenizer)}")
    if dimensionality is not None and not is_integer(dimensionality):
        problems.append(f"dimensionality must be an integer or None, got {_describe(dimensionality)}")
    if normalize is not None and not isinstance(normalize, (bool, np.bool_)):
        problems.append(f"normalize must be True, False or None (the model's own), got {_describe(normalize)}")
    if max_length is not None and not _token_budget(max_length):
        problems.append(f"max_length must be an integer >= 0 or None (no truncation), got {_describe(max_length)}")
    semantics = options.semantics
    if semantics is not None and str(getattr(semantics, "value", semantics)) not in _SEMANTICS:
        problems.append(f"semantics must be 'model2vec', 'static_backend' or None, got {_describe(semantics)}")
    if not (is_integer(options.raw_dim) and options.raw_dim >= 1):
        problems.append(
            f"raw_dim (columns of a raw matrix) must be a positive integer, got {_describe(options.raw_dim)}"
        )
    if options.revision is not None and not isinstance(options.revision, str):
        problems.append(f"revision must be a string or None, got {_describe(options.revision)}")
    if options.token is not None and not isinstance(options.token, str):
        problems.append(f"token must be a string or None, got a {type(options.token).__name__}")
    if options.cache_dir is not None and not isinstance(options.cache_dir, (str, os.PathLike)):
        problems.append(f"cache_dir must be a path or None, got {_describe(options.cache_dir)}")
    sha256 = options.sha256
    if sha256 is not None and not (isinstance(sha256, str) and _SHA256.fullmatch(sha256)):
        problems.append(f"sha256 must be 64 hexadecimal digits, got {_describe(sha256)}")
    if problems:
        raise ModelLoadError(source, "; ".join(problems))


def config_settings(path: str, config: Mapping[str, Any], default_max_length: int) -> tuple[bool, int | None]:
    """``(normalize, max_length)`` from a model config, each checked; absent keys take model2vec's defaults.

    ``normalize`` must be true or false; ``max_length`` a positive integer, or null for no truncation.
    """
    normalize = config.get("normalize", False)
    max_length = config.get("max_length", default_max_length)
    problems = []
    if not isinstance(normalize, bool):
        problems.append(f"config normalize must be true or false, got {_describe_json(normalize)}")
    if max_length is not None and not _token_budget(max_length):
        problems.append(
            f"config max_length must be an integer >= 0 or null (no truncation), got {_describe_json(max_length)}"
        )
    if problems:
        raise ModelLoadError(path, "; ".join(problems))
    return normalize, None if max_length is None else int(max_length)


def _row_chunks(array: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """``(first row, rows)`` slices of ``array`` of about ``FINITE_CHUNK_BYTES`` each (views, no copies)."""
    row_bytes = max(1, int(np.prod(array.shape[1:], dtype=np.int64)) * array.itemsize)
    step = max(1, FINITE_CHUNK_BYTES // row_bytes)
    for start in range(0, array.shape[0], step):
        yield start, array[start : start + step]


def check_finite(path: str, name: str, array: np.ndarray) -> None:
    """Refuse a float tensor holding NaN or infinity, naming the first such entry.

    Reads the (memory-mapped) array once, a few MB at a time: about 0.1 s per GB when the
    file is in the page cache (``bench/finite_check.py``). Integer tensors are always finite.
    """
    if array.dtype.kind not in "fc" or array.size == 0:
        return
    for start, chunk in _row_chunks(array):
        finite = np.isfinite(chunk)
        if finite.all():
            continue
        where = np.argwhere(~finite)[0]
        value = chunk[tuple(where)]
        position = f"row {start + int(where[0])}" + (f", column {int(where[1])}" if len(where) > 1 else "")
        raise ModelLoadError(
            path, f"tensor {name!r} holds a non-finite value ({value}) at {position}: the model is damaged"
        )
