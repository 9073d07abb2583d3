"""The content hash stored with every vector, so a later run can tell unchanged texts from changed ones."""

from __future__ import annotations

import collections
import hashlib
import itertools

import numpy as np
import pyarrow as pa

from pipelines.columns import HASH_COLUMN

HASH_TYPE = pa.binary(16)
_EMPTY_STATE = hashlib.blake2b(digest_size=16)
_BLAKE2B = type(_EMPTY_STATE)
#: Texts hashed per round: the hash states of a round are alive at once (about 300 bytes each).
_TEXTS_PER_ROUND = 1024


def text_hashes(texts: pa.Array | pa.ChunkedArray) -> pa.Array:
    """BLAKE2b-128 of each text's UTF-8 bytes; null where the text is null or not a string."""
    if not (pa.types.is_string(texts.type) or pa.types.is_large_string(texts.type)):
        return pa.nulls(len(texts), HASH_TYPE)
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    try:
        texts.validate(full=True)
    except pa.ArrowInvalid:
        return _hashes_of_decodable(texts)
    return _hashes_of_valid_utf8(texts)


def _hashes_of_valid_utf8(texts: pa.Array) -> pa.Array:
    """Hash every text straight from the Arrow data buffer (no Python strings are made)."""
    raw = texts.cast(pa.large_binary())
    offsets = np.frombuffer(raw.buffers()[1], dtype=np.int64)[raw.offset : raw.offset + len(raw) + 1].tolist()
    data = memoryview(raw.buffers()[2] or b"")
    digests = []
    for start in range(0, len(raw), _TEXTS_PER_ROUND):
        end = min(len(raw), start + _TEXTS_PER_ROUND)
        pieces = map(data.__getitem__, map(slice, offsets[start:end], offsets[start + 1 : end + 1]))
        # One empty BLAKE2b-128 state copied per text (twice as fast as constructing one), then every
        # update and digest of the round called from C (``map``): no Python bytecode runs per text.
        states = list(map(_BLAKE2B.copy, itertools.repeat(_EMPTY_STATE, end - start)))
        collections.deque(map(_BLAKE2B.update, states, pieces), maxlen=0)
        digests.append(b"".join(map(_BLAKE2B.digest, states)))
    validity = raw.buffers()[0]
    if validity is not None and raw.offset:
        validity = pa.array(raw.is_valid()).buffers()[1]
    return pa.FixedSizeBinaryArray.from_buffers(HASH_TYPE, len(raw), [validity, pa.py_buffer(b"".join(digests))])


def _hashes_of_decodable(texts: pa.Array) -> pa.Array:
    """Hashes where a text is valid UTF-8, null where it is not (slow path; such rows become dead letters)."""
    digests = [
        None if text is None else hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()
        for text in _python_strings(texts)
    ]
    return pa.array(digests, HASH_TYPE)


def _python_strings(texts: pa.Array | pa.ChunkedArray) -> list[str | None]:
    """The texts as Python strings; invalid UTF-8 entries become None (they are dead letters anyway)."""
    try:
        return list(texts.to_pylist())
    except UnicodeDecodeError:
        raw = texts.cast(pa.large_binary()).to_pylist()
        decoded: list[str | None] = []
        for value in raw:
            try:
                decoded.append(None if value is None else value.decode("utf-8"))
            except UnicodeDecodeError:
                decoded.append(None)
        return decoded


def with_text_hash(table: pa.Table, text_column: str) -> pa.Table:
    """``table`` plus the ``text_hash`` column of its text column."""
    return table.append_column(HASH_COLUMN, text_hashes(table.column(text_column)))
