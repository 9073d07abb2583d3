"""The text hash every snapshot row carries: BLAKE2b-128 of the text's UTF-8 bytes, null for unusable text."""

from __future__ import annotations

import hashlib

import pyarrow as pa
import pytest

from pipelines.content_hash import HASH_TYPE, text_hashes


def expected(values):
    return [None if v is None else hashlib.blake2b(v.encode("utf-8"), digest_size=16).digest() for v in values]


TEXTS = pa.array(["a", None, "ü naïve", "", None, "x" * 5000, "日本語"])


@pytest.mark.parametrize(
    "texts",
    [
        TEXTS,
        TEXTS.cast(pa.large_string()),
        TEXTS.slice(1, 4),
        TEXTS.slice(3),
        pa.chunked_array([TEXTS.slice(0, 2), TEXTS.slice(2)]),
        pa.array([], pa.string()),
    ],
    ids=["string", "large_string", "slice_from_null", "slice_tail", "chunked", "empty"],
)
def test_hashes_are_blake2b_128_of_utf8_with_nulls_kept(texts):
    hashes = text_hashes(texts)
    assert hashes.type == HASH_TYPE
    assert hashes.to_pylist() == expected(texts.to_pylist())


def test_invalid_utf8_and_non_string_columns_hash_to_null():
    raw = pa.array([b"ok", b"\xff\xfe", None], pa.binary()).cast(pa.string(), safe=False)
    assert text_hashes(raw).to_pylist() == [*expected(["ok"]), None, None]
    assert text_hashes(pa.array([1, 2])).to_pylist() == [None, None]


def test_many_texts_hash_across_rounds_including_a_slice():
    """Several thousand texts (hashed in rounds of 1,024), nulls among them, and a slice starting mid-round."""
    values = [None if i % 97 == 5 else f"text {i} " * (i % 13) for i in range(5000)]
    texts = pa.array(values)
    assert text_hashes(texts).to_pylist() == expected(values)
    assert text_hashes(texts.slice(1500, 2100)).to_pylist() == expected(values[1500:3600])
