"""Beam metrics of beam-m2v, all under one namespace."""

from __future__ import annotations

import numpy as np
from apache_beam.metrics.metric import Metrics

NAMESPACE = "beam_m2v"


class EmbeddingMetrics:
    """Counters and distributions every beam-m2v DoFn reports."""

    def __init__(self) -> None:
        self.texts_embedded = Metrics.counter(NAMESPACE, "texts_embedded")
        self.tokens = Metrics.counter(NAMESPACE, "tokens")
        self.empty_texts = Metrics.counter(NAMESPACE, "empty_texts")
        self.failures = Metrics.counter(NAMESPACE, "failures")
        self.model_loads = Metrics.counter(NAMESPACE, "model_loads")
        self.batch_size = Metrics.distribution(NAMESPACE, "batch_size")
        self.load_time_ms = Metrics.distribution(NAMESPACE, "load_time_ms")

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
