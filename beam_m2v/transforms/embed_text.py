"""``EmbedText``: embed a PCollection of texts, dicts, Rows or NamedTuples, with a dead-letter output."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import apache_beam as beam
import numpy as np
from apache_beam.pvalue import PCollection

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from beam_m2v.model_options import ModelKeywords

from beam_m2v.encoder import StaticEmbedder
from beam_m2v.errors import InvalidTextError
from beam_m2v.text_checks import TextProblem
from beam_m2v.transforms.dead_letters import EMBEDDED_TAG, FAILED_TAG, FailedElement, error_text
from beam_m2v.transforms.elements import ElementAccess, OutputFormat
from beam_m2v.transforms.model_cache import ModelSpec
from beam_m2v.transforms.model_dofn import SharedModelDoFn

DEFAULT_BATCH_SIZE = 1024


class EmbedResult(NamedTuple):
    """The two outputs of ``EmbedText``: ``embedded, failed = pcoll | EmbedText(...)``."""

    embedded: PCollection[Any]
    failed: PCollection[FailedElement]


def encode_isolating_failures(model: StaticEmbedder, texts: list[str]) -> tuple[np.ndarray, int, dict[int, Exception]]:
    """Encode ``texts``; an element the encoder rejects is set aside instead of failing the batch.

    Returns the vectors of all texts (rows of rejected ones are zero), the token count and
    the rejected positions with their errors.
    """
    rejected: dict[int, Exception] = {}
    remaining = list(range(len(texts)))
    while True:
        try:
            vectors, tokens = model.encode_with_stats([texts[i] for i in remaining])
        except InvalidTextError as error:
            rejected[remaining.pop(error.index)] = error
            continue
        except Exception:  # not expected from valid text: find out which texts fail, one by one
            return _encode_one_by_one(model, texts, rejected)
        break
    full = np.zeros((len(texts), model.dim), dtype=np.float32)
    full[remaining] = vectors
    return full, tokens, rejected


def _encode_one_by_one(
    model: StaticEmbedder, texts: list[str], rejected: dict[int, Exception]
) -> tuple[np.ndarray, int, dict[int, Exception]]:
    """Slow path after an unexpected batch error: find exactly which texts fail."""
    full = np.zeros((len(texts), model.dim), dtype=np.float32)
    tokens = 0
    for index, text in enumerate(texts):
        if index in rejected:
            continue
        try:
            vector, count = model.encode_with_stats([text])
        except Exception as error:
            rejected[index] = error
            continue
        full[index], tokens = vector[0], tokens + count
    return full, tokens, rejected


class EmbedBatchesDoFn(SharedModelDoFn):
    """Embeds lists of elements with a model loaded once per worker process."""

    def __init__(self, spec: ModelSpec, access: ElementAccess) -> None:
        super().__init__(spec)
        self._access = access

    def process(self, batch: Sequence[Any]) -> Iterator[Any]:
        """Embed one batch; yield embedded elements and tagged dead letters."""
        model = self.shared_model()
        texts: list[str] = []
        positions: list[int] = []
        for position, element in enumerate(batch):
            text = self._access.text_of(element)
            if isinstance(text, TextProblem):
                self.metrics.failures.inc()
                yield beam.pvalue.TaggedOutput(FAILED_TAG, FailedElement(element, text.kind, text.reason))
                continue
            texts.append(text)
            positions.append(position)
        if not texts:
            return
        vectors, tokens, rejected = encode_isolating_failures(model, texts)
        for index, error in rejected.items():
            self.metrics.failures.inc()
            yield beam.pvalue.TaggedOutput(
                FAILED_TAG,
                FailedElement(batch[positions[index]], type(error).__name__, error_text(error, with_type=False)),
            )
        kept: list[int] = []
        outputs: list[Any] = []
        for index in range(len(texts)):
            if index in rejected:
                continue
            element = batch[positions[index]]
            try:
                outputs.append(self._access.with_vector(element, texts[index], vectors[index]))
            except Exception as error:  # an element whose fields cannot be copied into the output
                self.metrics.failures.inc()
                reason = f"cannot attach the vector: {error_text(error)}"
                yield beam.pvalue.TaggedOutput(FAILED_TAG, FailedElement(element, "UnsupportedElement", reason))
                continue
            kept.append(index)
        self.metrics.record_batch(vectors[kept], tokens)
        yield from outputs


class EmbedText(beam.PTransform[PCollection[Any], EmbedResult]):
    """Embed a PCollection with a Model2Vec model; returns ``EmbedResult(embedded, failed)``.

    Elements are bare ``str`` (output ``(text, vector)``), or, with ``text_field``, dicts,
    ``beam.Row``s or NamedTuples (output: the same fields plus ``output_field``; Rows and
    NamedTuples come out as ``beam.Row``). Vectors are float32 numpy arrays, or lists of
    floats with ``output_format="list"``. Anything that cannot be embedded (null or non-str
    text, a missing field, a lone surrogate) goes to ``failed`` as a ``FailedElement``.

    The model is named, not loaded, at construction: each worker process loads it once.
    ``model_options`` (``dimensionality``, ``normalize``, ``max_length``, ``semantics``,
    ``tokenizer``, ``raw_dim``, ``revision``, ``token``, ``cache_dir``, ``sha256``: ``ModelKeywords``)
    go to ``load_model``; an unknown keyword is a ``TypeError``.
    """

    def __init__(
        self,
        model: ModelSpec | str | os.PathLike[str],
        *,
        text_field: str | None = None,
        output_field: str = "embedding",
        output_format: OutputFormat = "numpy",
        batch_size: int = DEFAULT_BATCH_SIZE,
        min_batch_size: int = 1,
        **model_options: Unpack[ModelKeywords],
    ) -> None:
        super().__init__()
        self.spec = ModelSpec.from_keywords(model, model_options, caller="EmbedText()")
        self.access = ElementAccess(text_field, output_field, output_format)
        if batch_size < 1 or not 1 <= min_batch_size <= batch_size:
            raise ValueError(f"need 1 <= min_batch_size <= batch_size, got {min_batch_size}, {batch_size}")
        self.batch_size = batch_size
        self.min_batch_size = min_batch_size

    def expand(self, pcoll: PCollection[Any]) -> EmbedResult:
        """Batch the elements and embed each batch."""
        outputs = (
            pcoll
            | "Batch" >> beam.BatchElements(min_batch_size=self.min_batch_size, max_batch_size=self.batch_size)
            | "Embed"
            >> beam.ParDo(EmbedBatchesDoFn(self.spec, self.access)).with_outputs(FAILED_TAG, main=EMBEDDED_TAG)
        )
        return EmbedResult(outputs[EMBEDDED_TAG], outputs[FAILED_TAG])
