"""Pooling: left-to-right sums, and the same vectors whether or not they are written into a given array."""

from __future__ import annotations

import numpy as np
import pytest

from beam_m2v.pooling import SUM_BLOCK, VocabularyMatrix, accumulator_dtype, mean_pool, static_backend_pool, sum_rows
from beam_m2v.token_ids import TokenIds


def random_matrix(dtype: str, quantized: bool = False) -> VocabularyMatrix:
    """A 50 x 16 matrix of ``dtype`` (optionally vocabulary-quantized: 80 token ids mapped onto its rows)."""
    rng = np.random.default_rng(7)
    if np.dtype(dtype).kind == "i":
        embeddings = rng.integers(-128, 127, size=(50, 16)).astype(dtype)
    else:
        embeddings = rng.standard_normal((50, 16)).astype(dtype)
    if not quantized:
        return VocabularyMatrix(embeddings)
    mapping = rng.integers(0, 50, size=80)
    weights = rng.random(80).astype(np.float32)
    return VocabularyMatrix(embeddings, mapping, weights)


def random_token_ids(matrix: VocabularyMatrix, texts: int = 1300) -> TokenIds:
    """Texts of 0 to 40 ids, several ``SUM_BLOCK``s of them, a whole block's worth of them empty."""
    rng = np.random.default_rng(11)
    lengths = rng.integers(0, 41, size=texts)
    lengths[rng.permutation(texts)[: min(texts // 2, SUM_BLOCK + 100)]] = 0
    offsets = np.concatenate(([0], np.cumsum(lengths)))
    return TokenIds(rng.integers(0, matrix.rows, size=int(offsets[-1])), offsets)


MATRICES = [("float32", False), ("float16", False), ("float64", False), ("int8", False), ("float32", True)]


@pytest.mark.parametrize(("dtype", "quantized"), MATRICES)
def test_sums_are_left_to_right_in_the_accumulator(dtype: str, quantized: bool) -> None:
    matrix = random_matrix(dtype, quantized)
    token_ids = random_token_ids(matrix)
    sums, counts = sum_rows(matrix, token_ids)
    assert sums.dtype == accumulator_dtype(matrix)
    for text in (0, 1, 2, 517, 1299):
        rows = matrix.gather(token_ids.ids[token_ids.offsets[text] : token_ids.offsets[text + 1]])
        expected = np.zeros(matrix.dim, dtype=sums.dtype)
        for row in rows:
            expected = expected + row.astype(sums.dtype)
        assert counts[text] == len(rows)
        assert np.array_equal(sums[text], expected)


@pytest.mark.parametrize(("dtype", "quantized"), MATRICES)
@pytest.mark.parametrize("pool", [mean_pool, static_backend_pool])
@pytest.mark.parametrize("normalize", [True, False])
def test_writing_into_out_gives_the_same_vectors(dtype: str, quantized: bool, pool: object, normalize: bool) -> None:
    matrix = random_matrix(dtype, quantized)
    token_ids = random_token_ids(matrix)
    expected = pool(matrix, token_ids, normalize=normalize)  # type: ignore[operator]
    out = np.full((token_ids.lengths.size, matrix.dim), np.nan, dtype=np.float32)
    got = pool(matrix, token_ids, normalize=normalize, out=out)  # type: ignore[operator]
    assert got is out
    assert np.array_equal(out, expected)
    assert not np.isnan(out).any()  # empty texts are zero vectors, not whatever was in out


def test_out_of_the_wrong_shape_or_dtype_is_refused() -> None:
    matrix = random_matrix("float32")
    token_ids = random_token_ids(matrix, texts=10)
    with pytest.raises(ValueError, match="out must be"):
        sum_rows(matrix, token_ids, out=np.zeros((9, matrix.dim), dtype=np.float32))
    with pytest.raises(ValueError, match="out must be"):
        sum_rows(matrix, token_ids, out=np.zeros((10, matrix.dim), dtype=np.float64))
