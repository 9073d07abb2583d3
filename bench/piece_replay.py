"""``encode``'s piece path replayed one stage at a time: the stage profiles of encode.py and pipeline.py.

Both benchmarks time the same steps ``StaticEmbedder`` takes for one batch of texts (its
``TextToIds``: character cut, split and deduplicate, ids of the distinct pieces, gather, truncation
and unknown ids; then pooling into the output rows), serially, so that stage times add up. The labels carry a group
prefix (``ids:``, ``tokenize:``, ``pool:``, ``other:``) that encode.py subtotals by.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pyarrow as pa

from beam_m2v.encoder import StaticEmbedder
from beam_m2v.piece_tokenization import PieceCache, SplitTexts, gather_piece_ids, split_texts
from beam_m2v.pooling import mean_pool
from beam_m2v.text_to_ids import cut_characters
from beam_m2v.token_ids import TokenIds


class Stages:
    """Wall and CPU seconds accumulated per stage (CPU is process-wide, so it counts rayon threads)."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Add the wall and CPU time of the ``with`` block to ``name``."""
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.wall[name] = self.wall.get(name, 0.0) + time.perf_counter() - wall
            self.cpu[name] = self.cpu.get(name, 0.0) + time.process_time() - cpu


def replay_batch(
    embedder: StaticEmbedder, texts: pa.Array, cache: PieceCache, stages: Stages, out: np.ndarray
) -> tuple[TokenIds, SplitTexts]:
    """Pool one batch of texts (model2vec semantics, piece path) into ``out``, timing each step in ``stages``.

    ``cache`` is a piece cache of the embedder's tokenizer (its own, or a new one for a cold start).
    """
    text_to_ids = embedder.text_to_ids
    with stages.stage("other: character cut (if a text is longer)"):
        texts = cut_characters(texts, text_to_ids.char_limit)
    with stages.stage("ids: split + dedup pieces (Arrow)"):
        split = split_texts(texts)
    with stages.stage("tokenize: distinct pieces (cache; new ones cut at punctuation, encode_batch)"):
        ids, offsets = cache.ids_of(split.distinct)
    with stages.stage("ids: gather per occurrence"):
        token_ids = gather_piece_ids(split, ids, offsets)
    with stages.stage("ids: truncate + drop unknown"):
        token_ids = text_to_ids.apply_rules(token_ids)
    with stages.stage("pool: mean_pool (into the output rows)"):
        mean_pool(embedder.matrix, token_ids, normalize=embedder.settings.normalize, out=out)
    return token_ids, split
