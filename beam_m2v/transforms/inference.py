"""``Model2VecModelHandler``: Model2Vec models in Beam's RunInference."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from apache_beam.ml.inference.base import ModelHandler, PredictionResult

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from beam_m2v.model_options import ModelKeywords

from beam_m2v.encoder import StaticEmbedder
from beam_m2v.errors import InvalidTextError
from beam_m2v.transforms.metrics import NAMESPACE
from beam_m2v.transforms.model_cache import ModelSpec, acquire_model

#: Most texts per batch unless told otherwise: large enough to keep both cores of a worker busy.
DEFAULT_MAX_BATCH_SIZE = 1024


class Model2VecModelHandler(ModelHandler[str, PredictionResult, StaticEmbedder]):  # type: ignore[misc]
    """RunInference handler: each ``str`` becomes a ``PredictionResult(example=text, inference=float32 vector)``.

    Works inside ``KeyedModelHandler`` for keyed input. A batch with a non-str or invalid
    element raises ``InvalidTextError`` naming its position; use
    ``RunInference(...).with_exception_handling()`` to route such batches to a dead-letter
    output, or ``EmbedText`` for per-element dead letters. ``update_model_path`` swaps the
    model source (RunInference's side-input model updates in streaming pipelines).

    Args:
        model: the model source, or a ``ModelSpec``.
        min_batch_size, max_batch_size, max_batch_duration_secs, element_size_fn,
            batch_length_fn, batch_bucket_boundaries: Beam's batching of ``RunInference``, as in
            every Beam model handler (batches of 1 to 1,024 texts by default: large enough to
            keep both cores of a worker busy). With ``element_size_fn=len``, ``max_batch_size``
            bounds the characters of a batch. (``max_batch_weight`` is not offered: Beam 2.77's
            ``BatchElements`` does not take it, so ``RunInference`` would fail with it.)
        large_model, model_copies: share one model between processes through Beam's
            ``MultiProcessShared``. Not needed for memory: the matrix is memory-mapped, so the
            processes of a machine already share its pages.
        env_vars: environment variables set on the workers before the model loads.
        model_options: those of ``EmbedText`` (``ModelKeywords``); an unknown one is a ``TypeError``.

    """

    def __init__(
        self,
        model: ModelSpec | str | os.PathLike[str],
        *,
        min_batch_size: int | None = 1,
        max_batch_size: int | None = DEFAULT_MAX_BATCH_SIZE,
        max_batch_duration_secs: int | None = None,
        element_size_fn: Callable[[Any], int] | None = None,
        batch_length_fn: Callable[[Any], int] | None = None,
        batch_bucket_boundaries: list[int] | None = None,
        large_model: bool = False,
        model_copies: int | None = None,
        env_vars: dict[str, str] | None = None,
        **model_options: Unpack[ModelKeywords],
    ) -> None:
        super().__init__(
            min_batch_size=min_batch_size,
            max_batch_size=max_batch_size,
            max_batch_duration_secs=max_batch_duration_secs,
            element_size_fn=element_size_fn,
            batch_length_fn=batch_length_fn,
            batch_bucket_boundaries=batch_bucket_boundaries,
            large_model=large_model,
            model_copies=model_copies,
            env_vars=env_vars or {},
        )
        self.spec = ModelSpec.from_keywords(model, model_options, caller="Model2VecModelHandler()")

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

    def update_model_path(self, model_path: str | None = None) -> None:
        """Point the handler at another model source (used by RunInference model updates)."""
        if model_path:
            self.spec = replace(self.spec, source=model_path)
