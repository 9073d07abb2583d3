"""Beam metrics of beam-m2v: the namespace and the name of every counter and distribution, defined once.

Every metric beam-m2v reports is in ``NAMESPACE``; the programs read some of them back (the row
accounting of a run compares ``ROWS_READ`` with the rows written), so each name is a constant here
and is imported wherever a metric is reported or read.
"""

from __future__ import annotations

import numpy as np
from apache_beam.metrics.metric import Metrics

NAMESPACE = "beam_m2v"

# -- the embedding transforms (EmbeddingMetrics) ---------------------------------------------------
#: Texts that went through the model.
TEXTS_EMBEDDED = "texts_embedded"
#: Token ids the model pooled.
TOKENS = "tokens"
#: Texts without a single token (their vector is zero).
EMPTY_TEXTS = "empty_texts"
#: Rows or texts that became dead letters.
FAILURES = "failures"
#: Models a process loaded (a cache hit loads none).
MODEL_LOADS = "model_loads"
#: Distribution: texts per encoder call.
BATCH_SIZE = "batch_size"
#: Distribution: milliseconds a model load took.
LOAD_TIME_MS = "load_time_ms"

# -- the programs' readers -------------------------------------------------------------------------
#: Rows of the corpus read; every one ends as a vector or a dead letter.
ROWS_READ = "rows_read"
#: Rows of the previous snapshot read by ``reembed`` (ids and text hashes).
PREVIOUS_ROWS_READ = "previous_rows_read"
#: JSON Lines batches Arrow parsed in one call.
JSONL_BLOCKS_PARSED_IN_BULK = "jsonl_blocks_parsed_in_bulk"
#: JSON Lines batches parsed line by line (a line Arrow cannot read exactly).
JSONL_BLOCKS_PARSED_BY_LINE = "jsonl_blocks_parsed_by_line"

# -- reembed's join of current and previous rows ---------------------------------------------------
#: Rows whose id the previous snapshot does not hold.
REEMBED_NEW = "reembed_new"
#: Rows whose text changed since the previous snapshot.
REEMBED_CHANGED = "reembed_changed"
#: Rows whose previous vector is reused.
REEMBED_UNCHANGED = "reembed_unchanged"
#: Ids of the previous snapshot that are gone.
REEMBED_DELETED = "reembed_deleted"

# -- Lance writes ----------------------------------------------------------------------------------
#: Rows written into Lance fragments.
LANCE_ROWS_WRITTEN = "lance_rows_written"
#: Lance fragments written.
LANCE_FRAGMENTS_WRITTEN = "lance_fragments_written"


class EmbeddingMetrics:
    """Counters and distributions every beam-m2v DoFn reports."""

    def __init__(self) -> None:
        self.texts_embedded = Metrics.counter(NAMESPACE, TEXTS_EMBEDDED)
        self.tokens = Metrics.counter(NAMESPACE, TOKENS)
        self.empty_texts = Metrics.counter(NAMESPACE, EMPTY_TEXTS)
        self.failures = Metrics.counter(NAMESPACE, FAILURES)
        self.model_loads = Metrics.counter(NAMESPACE, MODEL_LOADS)
        self.batch_size = Metrics.distribution(NAMESPACE, BATCH_SIZE)
        self.load_time_ms = Metrics.distribution(NAMESPACE, LOAD_TIME_MS)

    def record_load(self, loaded_now: bool, seconds: float) -> None:
        """Count a model load done by this process (a cache hit counts nothing)."""
        if loaded_now:
            self.model_loads.inc()
            self.load_time_ms.update(int(seconds * 1000))

    def record_batch(self, vectors: np.ndarray, tokens: int) -> None:
        """Count one embedded batch; texts without tokens (zero vectors) count as empty."""
        self.batch_size.update(len(vectors))
        self.texts_embedded.inc(len(vectors))
        self.tokens.inc(tokens)
        empty = int(len(vectors) - np.count_nonzero(vectors.any(axis=1))) if len(vectors) else 0
        if empty:
            self.empty_texts.inc(empty)
