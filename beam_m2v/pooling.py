"""How token ids become one vector per text: the mean of their rows, then (optionally) L2 normalisation.

The arithmetic follows model2vec 0.10.0 step by step so that results are bit-identical:
rows are summed left to right in the accumulator numpy's ``mean`` would use (float32 for
float16/float32 matrices, float64 for integer and float64 ones), divided by the count,
cast back to the matrix's output dtype, and normalised in float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from beam_m2v.token_ids import TokenIds


@dataclass(frozen=True)
class VocabularyMatrix:
    """The vectors of a model: one row per token id, optionally through a vocabulary-quantization map.

    ``embeddings`` may be a read-only memory map; nothing here writes to it or copies it whole.
    With ``mapping``/``weights`` (vocabulary-quantized models) the row of token ``t`` is
    ``embeddings[mapping[t]] * weights[t]``.
    """

    embeddings: np.ndarray
    mapping: np.ndarray | None = None
    weights: np.ndarray | None = None

    @property
    def dim(self) -> int:
        """Number of columns of every vector."""
        return int(self.embeddings.shape[1])

    @property
    def rows(self) -> int:
        """How many token ids have a row."""
        return int(self.mapping.shape[0] if self.mapping is not None else self.embeddings.shape[0])

    @property
    def output_dtype(self) -> np.dtype[np.floating]:
        """The dtype model2vec returns vectors in for this matrix (int8 matrices give float32)."""
        dtype = self.embeddings.dtype
        return np.dtype(np.float32) if dtype.kind in "iu" else np.dtype(dtype)

    def truncated(self, dimensionality: int) -> VocabularyMatrix:
        """The same matrix keeping only its first ``dimensionality`` columns (a view, no copy)."""
        return VocabularyMatrix(self.embeddings[:, :dimensionality], self.mapping, self.weights)

    def gather(self, ids: np.ndarray) -> np.ndarray:
        """The rows of ``ids``, weighted as the model requires."""
        if self.mapping is None:
            rows = self.embeddings.take(ids, axis=0)
        else:
            rows = self.embeddings.take(self.mapping.take(ids), axis=0)
        if self.weights is not None:
            rows = rows * self.weights.take(ids)[:, None]
        return rows

    def gather_into(self, ids: np.ndarray, out: np.ndarray) -> np.ndarray:
        """``gather(ids)``, written into ``out`` (len(ids) x dim, the rows' dtype) when no weights apply.

        ``ids`` must be valid row ids: they are not bounds-checked here.
        """
        if self.weights is not None:
            return self.gather(ids)
        if self.mapping is not None:
            ids = self.mapping.take(ids)
        return np.take(self.embeddings, ids, axis=0, out=out, mode="clip")


def _accumulator(dtype: np.dtype[Any]) -> np.dtype[Any]:
    """The dtype numpy's ``mean`` accumulates ``dtype`` values in."""
    if dtype.kind in "iub":
        return np.dtype(np.float64)
    if dtype == np.float16:
        return np.dtype(np.float32)
    return np.dtype(dtype)


#: Texts summed together: their running sums (512 x dim floats) stay in the CPU cache between steps.
SUM_BLOCK = 512


def accumulator_dtype(matrix: VocabularyMatrix) -> np.dtype[Any]:
    """The dtype ``sum_rows`` adds ``matrix``'s rows in (numpy ``mean``'s accumulator for the rows' dtype)."""
    return _accumulator(matrix.gather(np.zeros(0, dtype=np.int64)).dtype)


def sum_rows(
    matrix: VocabularyMatrix, token_ids: TokenIds, out: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Sum each text's rows strictly left to right; returns (sums, counts), empty texts summing to zero.

    numpy's pairwise summation (``reduceat``, ``sum`` along a contiguous axis) would round
    differently from model2vec. Instead texts are ordered by length and taken in blocks of
    ``SUM_BLOCK``; in a block the ``j``-th row of every text still that long is added in one
    vectorised step, for ``j = 0, 1, ...``: each text's sum is built in token order, as in the
    reference, while the block's sums stay in cache. ``out`` (n x dim, ``accumulator_dtype``)
    receives the sums instead of a new array.
    """
    counts = token_ids.lengths
    n = counts.size
    row_dtype = matrix.gather(token_ids.ids[:0]).dtype
    accumulator = _accumulator(row_dtype)
    if out is None:
        sums = np.zeros((n, matrix.dim), dtype=accumulator)
    else:
        if out.shape != (n, matrix.dim) or out.dtype != accumulator:
            raise ValueError(f"out must be {(n, matrix.dim)} {accumulator}, got {out.shape} {out.dtype}")
        sums = out
        sums.fill(0)
    if n == 0 or token_ids.ids.size == 0:
        return sums, counts
    if int(token_ids.ids.max()) >= matrix.rows or int(token_ids.ids.min()) < 0:
        raise IndexError(f"token id outside the matrix's {matrix.rows} rows")
    order = np.argsort(-counts, kind="stable")
    sorted_counts = counts[order]
    starts = token_ids.offsets[:-1][order]
    block_sums = np.empty((min(SUM_BLOCK, n), matrix.dim), dtype=sums.dtype)
    rows = np.empty((min(SUM_BLOCK, n), matrix.dim), dtype=row_dtype)
    for first in range(0, n, SUM_BLOCK):
        block_counts = sorted_counts[first : first + SUM_BLOCK]
        if block_counts[0] == 0:
            break
        block_starts = starts[first : first + SUM_BLOCK]
        block = block_sums[: block_counts.size]
        block.fill(0)
        # still_active[j]: how many texts of the block (a prefix, by length) have more than j ids.
        still_active = np.searchsorted(-block_counts, -np.arange(int(block_counts[0])), side="left")
        for position, active in enumerate(still_active.tolist()):
            ids = token_ids.ids[block_starts[:active] + position]
            np.add(block[:active], matrix.gather_into(ids, rows[:active]), out=block[:active], casting="unsafe")
        sums[order[first : first + block_counts.size]] = block
    return sums, counts


def mean_pool(
    matrix: VocabularyMatrix, token_ids: TokenIds, *, normalize: bool, out: np.ndarray | None = None
) -> np.ndarray:
    """model2vec's pooled vectors, as float32 (values exactly those model2vec returns in its own dtype).

    ``out`` (n x dim float32) receives them. For float32 matrices, the usual case, every step
    then works in ``out`` itself: no array of the batch's size is allocated.
    """
    in_place = out is not None and matrix.output_dtype == np.float32 and accumulator_dtype(matrix) == np.float32
    sums, counts = sum_rows(matrix, token_ids, out=out if in_place else None)
    out_dtype = matrix.output_dtype
    non_empty = counts > 0
    means = sums if in_place else np.zeros(sums.shape, dtype=out_dtype)
    np.divide(sums, counts[:, None].astype(sums.dtype), out=means, where=non_empty[:, None], casting="unsafe")
    vectors = means.astype(np.float32, copy=False)
    if normalize:
        norms = np.linalg.norm(vectors, axis=1, keepdims=True) + np.float32(1e-32)
        np.divide(vectors, norms, out=vectors)
        if out_dtype != np.float32:
            vectors = vectors.astype(out_dtype).astype(np.float32)
    return _into(vectors, out)


def static_backend_pool(
    matrix: VocabularyMatrix, token_ids: TokenIds, *, normalize: bool = True, out: np.ndarray | None = None
) -> np.ndarray:
    """The Rust ``StaticBackend``'s vectors: float32 mean of the rows, divided by ``max(norm, 1e-12)``.

    A text without tokens gets a zero vector. ``out`` (n x dim float32) receives them (in place for float32 and
    float16 matrices).
    """
    in_place = out is not None and accumulator_dtype(matrix) == np.float32
    sums, counts = sum_rows(matrix, token_ids, out=out if in_place else None)
    vectors = sums if in_place else np.zeros(sums.shape, dtype=np.float32)
    np.divide(sums, counts[:, None].astype(np.float32), out=vectors, where=(counts > 0)[:, None], casting="unsafe")
    if normalize:
        norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors, dtype=np.float32))[:, None]
        np.divide(vectors, np.maximum(norms, np.float32(1e-12)), out=vectors)
    return _into(vectors, out)


def _into(vectors: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    """``vectors``, copied into ``out`` if given and not already there."""
    if out is None or vectors is out:
        return vectors
    out[...] = vectors
    return out
