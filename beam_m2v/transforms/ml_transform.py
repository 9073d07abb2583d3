"""``Model2VecEmbeddings``: Model2Vec in Beam's ``MLTransform`` and in Beam's RAG pipelines.

Only Beam's public ML API is used (``EmbeddingsManager``, ``EmbeddingTypeAdapter``,
``RunInference``, ``ModelHandler``); the embedding step is a small public handler here
rather than Beam's private ``_TextEmbeddingHandler``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import ModelHandler, RunInference
from apache_beam.ml.transforms.base import EmbeddingsManager, EmbeddingTypeAdapter

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from beam_m2v.model_options import ModelKeywords

from beam_m2v.encoder import StaticEmbedder
from beam_m2v.errors import InvalidTextError
from beam_m2v.transforms.inference import DEFAULT_MAX_BATCH_SIZE, Model2VecModelHandler
from beam_m2v.transforms.metrics import NAMESPACE
from beam_m2v.transforms.model_cache import ModelSpec


class Model2VecEmbeddings(EmbeddingsManager):  # type: ignore[misc]
    """Model2Vec embeddings for ``MLTransform`` (with ``columns=``) or RAG pipelines (without).

    * ``MLTransform(...).with_transform(Model2VecEmbeddings(model, columns=["text"]))`` replaces
      each listed column of dict elements with its vector as a list of floats, like Beam's
      ``SentenceTransformerEmbeddings``.
    * ``Model2VecEmbeddings(model)`` (no columns) works on Beam RAG ``Chunk``s / ``EmbeddableItem``s,
      like ``HuggingfaceTextEmbeddings``: use it with ``apache_beam.ml.transforms.base.MLTransform``
      or ``apache_beam.ml.rag`` ingestion; the output feeds Beam's vector-database writers.
    """

    def __init__(
        self,
        model: ModelSpec | str | os.PathLike[str],
        *,
        columns: list[str] | None = None,
        type_adapter: EmbeddingTypeAdapter[Any, Any] | None = None,
        load_model_args: Mapping[str, Any] | None = None,
        min_batch_size: int | None = None,
        max_batch_size: int | None = None,
        large_model: bool = False,
        inference_args: dict[str, Any] | None = None,
        **model_options: Unpack[ModelKeywords],
    ) -> None:
        """Name the model; the other arguments are ``EmbeddingsManager``'s, passed on.

        ``load_model_args`` and ``model_options`` are model options (``ModelKeywords``), the
        keywords winning; an unknown one is a ``TypeError``.
        """
        if columns is None and type_adapter is None:  # Beam's RAG adapter: item.content.text -> item.embedding
            from apache_beam.ml.rag.embeddings.base import create_text_adapter

            type_adapter = create_text_adapter()
        super().__init__(
            columns=columns,
            type_adapter=type_adapter,
            load_model_args=dict(load_model_args or {}),
            min_batch_size=min_batch_size,
            max_batch_size=max_batch_size,
            large_model=large_model,
            inference_args=inference_args or {},
        )
        given = {**self.load_model_args, **model_options}
        self.spec = ModelSpec.from_keywords(model, given, caller="Model2VecEmbeddings()")

    def get_model_handler(self) -> Model2VecModelHandler:
        """The RunInference handler embedding plain texts."""
        return Model2VecModelHandler(
            self.spec,
            min_batch_size=self.min_batch_size or 1,
            max_batch_size=self.max_batch_size or DEFAULT_MAX_BATCH_SIZE,
            large_model=self.large_model,
        )

    def get_ptransform_for_processing(self, **kwargs: Any) -> beam.PTransform[Any, Any]:
        """RunInference over whole elements, the adapter picking the texts and placing the vectors."""
        return RunInference(model_handler=AdaptedEmbeddingHandler(self), inference_args=self.inference_args)


class AdaptedEmbeddingHandler(ModelHandler[Any, Any, StaticEmbedder]):  # type: ignore[misc]
    """Runs ``Model2VecModelHandler`` on texts taken out of elements by an ``EmbeddingTypeAdapter``."""

    def __init__(self, manager: Model2VecEmbeddings) -> None:
        super().__init__()
        self._adapter = manager.type_adapter
        self._texts = manager.get_model_handler()

    def load_model(self) -> StaticEmbedder:
        """The process-wide model."""
        return self._texts.load_model()

    def run_inference(
        self, batch: Sequence[Any], model: StaticEmbedder, inference_args: dict[str, Any] | None = None
    ) -> Iterable[Any]:
        """Embed the texts the adapter extracts; hand back lists of floats as Beam's embedding handlers do."""
        texts = self._adapter.input_fn(batch)
        invalid = InvalidTextError.first_in(texts)
        if invalid is not None:
            raise invalid
        vectors = model.encode(texts) if texts else np.zeros((0, model.dim), dtype=np.float32)
        return self._adapter.output_fn(batch, vectors.tolist())

    def get_metrics_namespace(self) -> str:
        """All beam-m2v metrics share one namespace."""
        return NAMESPACE

    def batch_elements_kwargs(self) -> Mapping[str, Any]:
        """Same batching as the text handler."""
        return self._texts.batch_elements_kwargs()

    def share_model_across_processes(self) -> bool:
        """As the text handler (``large_model``)."""
        return self._texts.share_model_across_processes()

    def model_copies(self) -> int:
        """As the text handler."""
        return self._texts.model_copies()

    def validate_inference_args(self, inference_args: dict[str, Any] | None) -> None:
        """Model2Vec takes no inference arguments; extra ones are ignored."""

    def update_model_path(self, model_path: str | None = None) -> None:
        """Swap the model source."""
        self._texts.update_model_path(model_path)

    def __repr__(self) -> str:
        """``Model2VecEmbeddings(SOURCE)``, in ASCII: Beam stores it as an ASCII annotation of the pipeline."""
        return f"Model2VecEmbeddings({self._texts.spec.source!a})"
