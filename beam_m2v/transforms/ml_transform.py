"""``Model2VecEmbeddings``: Model2Vec in Beam's ``MLTransform`` and in Beam's RAG pipelines.

Only Beam's public ML API is used (``EmbeddingsManager``, ``EmbeddingTypeAdapter``,
``RunInference``, ``ModelHandler``); the embedding step is a small public handler here
rather than Beam's private ``_TextEmbeddingHandler``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import ModelHandler, RunInference
from apache_beam.ml.transforms.base import EmbeddingsManager, EmbeddingTypeAdapter

from beam_m2v.encoder import StaticEmbedder
from beam_m2v.errors import InvalidTextError
from beam_m2v.transforms.inference import Model2VecModelHandler
from beam_m2v.transforms.metrics import NAMESPACE
from beam_m2v.transforms.model_cache import ModelOptions, ModelSpec


def rag_text_adapter() -> EmbeddingTypeAdapter[Any, Any]:
    """Beam's RAG adapter: embeds ``item.content.text`` and sets ``item.embedding.dense_embedding``."""
    from apache_beam.ml.rag.embeddings.base import create_text_adapter

    return create_text_adapter()


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
        **kwargs: Any,
    ) -> None:
        if columns is None and type_adapter is None:
            type_adapter = rag_text_adapter()
        model_options: dict[str, Any] = {key: kwargs.pop(key) for key in ModelOptions.__optional_keys__ & kwargs.keys()}
        super().__init__(columns=columns, type_adapter=type_adapter, **kwargs)
        self.spec = ModelSpec.of(model, **model_options)

    def get_model_handler(self) -> Model2VecModelHandler:
        """The RunInference handler embedding plain texts."""
        return Model2VecModelHandler(
            self.spec, min_batch_size=self.min_batch_size or 1, max_batch_size=self.max_batch_size or 1024
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

    def validate_inference_args(self, inference_args: dict[str, Any] | None) -> None:
        """Model2Vec takes no inference arguments; extra ones are ignored."""

    def update_model_path(self, model_path: str | None = None) -> None:
        """Swap the model source."""
        self._texts.update_model_path(model_path)

    def __repr__(self) -> str:
        return f"Model2VecEmbeddings({self._texts.spec.source!r})"
