"""The base of every beam-m2v DoFn: the process-wide model, obtained in ``setup``, and metrics."""

from __future__ import annotations

import apache_beam as beam

from beam_m2v.encoder import StaticEmbedder
from beam_m2v.transforms.metrics import EmbeddingMetrics
from beam_m2v.transforms.model_cache import AcquiredModel, ModelSpec, acquire_model


class SharedModelDoFn(beam.DoFn):  # type: ignore[misc]
    """A DoFn holding the worker process's shared model for ``spec``.

    ``setup`` obtains it (loading it only if no other instance in the process has), and the
    first bundle reports the load in the ``model_loads`` / ``load_time_ms`` metrics, since
    Beam keeps no metrics recorded during ``setup``.
    """

    def __init__(self, spec: ModelSpec) -> None:
        self._spec = spec
        self._acquired: AcquiredModel | None = None
        self._model: StaticEmbedder | None = None

    def setup(self) -> None:
        """Obtain the process-wide model."""
        self.metrics = EmbeddingMetrics()
        self._acquired = acquire_model(self._spec)
        self._model = self._acquired.model

    def start_bundle(self) -> None:
        """Report this process's model load once, in the first bundle."""
        if self._acquired is not None:
            self.metrics.record_load(self._acquired.loaded_now, self._acquired.load_seconds)
            self._acquired = None

    def shared_model(self) -> StaticEmbedder:
        """The shared model (after ``setup``)."""
        if self._model is None:
            raise RuntimeError("setup() was not called")
        return self._model
