"""The content hash stored with every vector, so a later run can tell unchanged texts from changed ones."""

from __future__ import annotations

import hashlib

import pyarrow as pa

HASH_COLUMN = "text_hash"
HASH_TYPE = pa.binary(16)


def text_hashes(texts: pa.Array | pa.ChunkedArray) -> pa.Array:
    """BLAKE2b-128 of each text's UTF-8 bytes; null where the text is null or not a string."""
    if not (pa.types.is_string(texts.type) or pa.types.is_large_string(texts.type)):
        return pa.nulls(len(texts), HASH_TYPE)
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
