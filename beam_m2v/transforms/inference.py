"""``Model2VecModelHandler``: Model2Vec models in Beam's RunInference."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from apache_beam.ml.inference.base import ModelHandler, PredictionResult

if TYPE_CHECKING:
    from typing_extensions import Unpack

from beam_m2v.encoder import StaticEmbedder
from beam_m2v.errors import InvalidTextError
from beam_m2v.transforms.metrics import NAMESPACE
from beam_m2v.transforms.model_cache import ModelOptions, ModelSpec, acquire_model


class Model2VecModelHandler(ModelHandler[str, PredictionResult, StaticEmbedder]):  # type: ignore[misc]
    """RunInference handler: each ``str`` becomes a ``PredictionResult(example=text, inference=float32 vector)``.

    Works inside ``KeyedModelHandler`` for keyed input. A batch with a non-str or invalid
    element raises ``InvalidTextError`` naming its position; use
    ``RunInference(...).with_exception_handling()`` to route such batches to a dead-letter
    output, or ``EmbedText`` for per-element dead letters. ``update_model_path`` swaps the
    model source (RunInference's side-input model updates in streaming pipelines).
    ``model_options`` are those of ``EmbedText`` (see ``ModelOptions``).
    """

    def __init__(
        self,
        model: ModelSpec | str | os.PathLike[str],
        *,
        min_batch_size: int = 1,
        max_batch_size: int = 1024,
        max_batch_duration_secs: int | None = None,
        **model_options: Unpack[ModelOptions],
    ) -> None:
        super().__init__()
        self.spec = ModelSpec.of(model, **model_options)
        self._batching: dict[str, Any] = {"min_batch_size": min_batch_size, "max_batch_size": max_batch_size}
        if max_batch_duration_secs is not None:
            self._batching["max_batch_duration_secs"] = max_batch_duration_secs

    def load_model(self) -> StaticEmbedder:
        """The process-wide memory-mapped model (loaded once per process, shared by all threads)."""
        return acquire_model(self.spec).model

    def run_inference(
        self,
        batch: Sequence[str],
        model: StaticEmbedder,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[PredictionResult]:
        """Embed a batch of texts."""
        invalid = InvalidTextError.first_in(batch)
        if invalid is not None:
            raise invalid
        vectors = model.encode(list(batch))
        return [
            PredictionResult(example=text, inference=vector, model_id=self.spec.source)
            for text, vector in zip(batch, vectors, strict=True)
        ]

    def get_num_bytes(self, batch: Sequence[str]) -> int:
        """Bytes of text in the batch (UTF-8)."""
        return sum(len(text.encode("utf-8", "surrogatepass")) for text in batch if isinstance(text, str))

    def get_metrics_namespace(self) -> str:
        """All beam-m2v metrics share one namespace."""
        return NAMESPACE

    def batch_elements_kwargs(self) -> Mapping[str, Any]:
        """Batches of up to ``max_batch_size`` texts (1024 by default): large enough to keep both cores busy."""
        return self._batching

    def update_model_path(self, model_path: str | None = None) -> None:
        """Point the handler at another model source (used by RunInference model updates)."""
        if model_path:
            self.spec = replace(self.spec, source=model_path)

    def share_model_across_processes(self) -> bool:
        """No: the matrix is memory-mapped, so processes already share its pages without RPC."""
        return False
