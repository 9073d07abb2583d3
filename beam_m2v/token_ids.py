"""Token ids of a batch of texts, held flat, and the rules that drop some of them (truncation, unknown ids)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TokenIds:
    """Token ids of a batch of texts, flat: text ``i`` owns ``ids[offsets[i]:offsets[i + 1]]``."""

    ids: np.ndarray
    offsets: np.ndarray

    @property
    def lengths(self) -> np.ndarray:
        """Number of ids of each text."""
        return np.diff(self.offsets)


def flatten_ids(id_lists: list[list[int]]) -> TokenIds:
    """Pack per-text id lists into one flat int64 array with offsets."""
    lengths = np.fromiter(map(len, id_lists), dtype=np.int64, count=len(id_lists))
    offsets = np.zeros(len(id_lists) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.fromiter(itertools.chain.from_iterable(id_lists), dtype=np.int64, count=int(offsets[-1]))
    return TokenIds(flat, offsets)


def truncate_ids(token_ids: TokenIds, max_length: int) -> TokenIds:
    """Keep at most the first ``max_length`` ids of each text."""
    lengths = token_ids.lengths
    if lengths.size == 0 or int(lengths.max()) <= max_length:
        return token_ids
    position = np.arange(token_ids.ids.size, dtype=np.int64) - np.repeat(token_ids.offsets[:-1], lengths)
    return keep_ids(token_ids, position < max_length)


def keep_ids(token_ids: TokenIds, keep: np.ndarray) -> TokenIds:
    """Drop the ids where the boolean mask ``keep`` is False, keeping each text's remaining ids in order."""
    if keep.all():
        return token_ids
    kept_before = np.zeros(keep.size + 1, dtype=np.int64)
    np.cumsum(keep, out=kept_before[1:])
    return TokenIds(token_ids.ids[keep], kept_before[token_ids.offsets])
