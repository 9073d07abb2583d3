"""The embedder: texts in batches on a shared thread pool, each batch's ids (``TextToIds``) pooled into vectors.

``StaticEmbedder`` is immutable once built: its tokenizer copy carries its own configuration,
so any number of threads may call ``encode`` at once, each embedder with its own settings,
while all of them share one memory-mapped matrix.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from functools import cached_property

import numpy as np
import pyarrow as pa
from tokenizers import Tokenizer

from beam_m2v.arrow_strings import arrow_texts, plain_strings
from beam_m2v.errors import InvalidTextError
from beam_m2v.pooling import VocabularyMatrix, mean_pool, static_backend_pool
from beam_m2v.semantics import EncodingSettings as EncodingSettings
from beam_m2v.semantics import Semantics as Semantics
from beam_m2v.sources import ModelFiles, content_fingerprint
from beam_m2v.text_to_ids import TextToIds
from beam_m2v.thread_budget import process_budget
from beam_m2v.token_ids import TokenIds
from beam_m2v.tokenization import PreparedTokenizer

#: Texts per batch on the text-by-text path (one tokenizer call); keeps both cores busy and the ids small.
TEXT_BATCH = 1024

#: Texts per batch on the piece-by-piece path: large enough that most of a batch's pieces repeat.
PIECE_BATCH = 8192


class StaticEmbedder:
    """A loaded static model: ``encode`` texts to float32 vectors exactly as the reference does."""

    def __init__(
        self,
        matrix: VocabularyMatrix,
        tokenizer: Tokenizer | PreparedTokenizer,
        settings: EncodingSettings,
        *,
        files: ModelFiles | None = None,
    ) -> None:
        """Build an embedder; a raw tokenizer is copied and configured once, the matrix is shared as is."""
        self.matrix = matrix
        self.settings = settings
        self.files = files
        if not isinstance(tokenizer, PreparedTokenizer):
            tokenizer = TextToIds.prepare(tokenizer, settings.semantics)
        self.text_to_ids = TextToIds(tokenizer, settings.semantics, settings.max_length, matrix.rows)
        """How this embedder's texts become the ids it pools."""

    @property
    def source(self) -> str:
        """What the model was loaded from, as the user named it."""
        return self.files.source if self.files is not None else ""

    @cached_property
    def fingerprint(self) -> str:
        """SHA-256 of the model's files (computed on first use); empty for an in-memory model."""
        return content_fingerprint(self.files) if self.files is not None else ""

    @property
    def dim(self) -> int:
        """Length of every vector this model returns."""
        return self.matrix.dim

    @property
    def tokenizer(self) -> Tokenizer:
        """The embedder's own configured tokenizer (do not mutate it)."""
        return self.text_to_ids.tokenizer

    def with_settings(
        self,
        *,
        normalize: bool | None = None,
        max_length: int | object | None = ...,
        dimensionality: int | None = None,
    ) -> StaticEmbedder:
        """Another embedder on the same shared matrix with some settings changed."""
        settings = self.settings
        if normalize is not None:
            settings = replace(settings, normalize=normalize)
        if max_length is not ...:
            settings = replace(settings, max_length=max_length)  # type: ignore[arg-type]
        matrix = self.matrix
        if dimensionality is not None:
            if not 0 < dimensionality <= matrix.dim:
                raise ValueError(f"dimensionality {dimensionality} is not in 1..{matrix.dim}")
            matrix = matrix.truncated(dimensionality)
        return StaticEmbedder(matrix, self.text_to_ids.prepared, settings, files=self.files)

    # -- encoding -----------------------------------------------------------------------------

    def _pool(self, token_ids: TokenIds, out: np.ndarray | None = None) -> tuple[np.ndarray, int]:
        """Vectors of pooled ids (written into ``out`` if given) and the number of tokens pooled."""
        if self.settings.semantics is Semantics.STATIC_BACKEND:
            vectors = static_backend_pool(self.matrix, token_ids, normalize=self.settings.normalize, out=out)
        else:
            vectors = mean_pool(self.matrix, token_ids, normalize=self.settings.normalize, out=out)
        return vectors, int(token_ids.ids.size)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts``: a (len(texts), dim) float32 array, row ``i`` for ``texts[i]``.

        Raises InvalidTextError (with the position) for an element that is not a valid str.
        Large inputs are split into batches tokenized on a shared thread pool.
        """
        return self.encode_with_stats(texts)[0]

    def encode_with_stats(self, texts: Sequence[str]) -> tuple[np.ndarray, int]:
        """Like ``encode``, also returning how many tokens were pooled (for metrics)."""
        if isinstance(texts, str):
            raise TypeError("encode takes a sequence of texts, not one str")
        process_budget()  # before the first tokenizer call: it sizes the tokenizer's pool
        if self.text_to_ids.by_piece:
            return self._encode_array(arrow_texts(texts))
        n = len(texts)
        if n <= TEXT_BATCH:
            if n == 0:
                return np.zeros((0, self.dim), dtype=np.float32), 0
            return self._pool(self.text_to_ids.of_texts(texts))
        vectors = np.empty((n, self.dim), dtype=np.float32)
        tokens = _executor().map(lambda start: self._encode_text_batch(texts, start, vectors), range(0, n, TEXT_BATCH))
        return vectors, sum(tokens)

    def _encode_text_batch(self, texts: Sequence[str], start: int, out: np.ndarray) -> int:
        """Encode ``texts[start:start + TEXT_BATCH]`` into ``out``; invalid positions are relative to ``texts``."""
        try:
            vectors, tokens = self._pool(self.text_to_ids.of_texts(texts[start : start + TEXT_BATCH]))
        except InvalidTextError as error:
            raise InvalidTextError(start + error.index, error.reason) from None
        out[start : start + len(vectors)] = vectors
        return tokens

    def _encode_array(self, texts: pa.Array) -> tuple[np.ndarray, int]:
        """Vectors of an Arrow string array without nulls, batches of ``PIECE_BATCH`` texts on the shared pool."""
        n = len(texts)
        if n <= PIECE_BATCH:
            if n == 0:
                return np.zeros((0, self.dim), dtype=np.float32), 0
            return self._pool(self.text_to_ids.of_array(texts))
        vectors = np.empty((n, self.dim), dtype=np.float32)

        def encode_batch(start: int) -> int:
            token_ids = self.text_to_ids.of_array(texts.slice(start, PIECE_BATCH))
            return self._pool(token_ids, out=vectors[start : start + token_ids.lengths.size])[1]

        return vectors, sum(_executor().map(encode_batch, range(0, n, PIECE_BATCH)))

    def encode_arrow(self, texts: pa.Array | pa.ChunkedArray) -> pa.FixedSizeListArray:
        """Embed an Arrow string / large_string array (or chunked array) to ``fixed_size_list<float32>[dim]``.

        Null entries stay null. No Python list of floats is ever built.
        """
        return self.encode_arrow_with_stats(texts)[0]

    def encode_arrow_with_stats(self, texts: pa.Array | pa.ChunkedArray) -> tuple[pa.FixedSizeListArray, int]:
        """Like ``encode_arrow``, also returning how many tokens were pooled."""
        process_budget()  # before the first tokenizer call: it sizes the tokenizer's pool
        texts = plain_strings(texts)
        if isinstance(texts, pa.ChunkedArray):
            texts = texts.combine_chunks() if texts.num_chunks != 1 else texts.chunk(0)
        if not (pa.types.is_string(texts.type) or pa.types.is_large_string(texts.type)):
            raise TypeError(f"encode_arrow takes a string or large_string array, got {texts.type}")
        valid = texts.is_valid().to_numpy(zero_copy_only=False)
        present_texts = texts.drop_null() if texts.null_count else texts
        if self.text_to_ids.by_piece:
            present, tokens = self._encode_array(present_texts)
        else:
            present, tokens = self.encode_with_stats(present_texts.to_pylist())
        if texts.null_count:
            vectors = np.zeros((len(texts), self.dim), dtype=np.float32)
            vectors[valid] = present
            mask: pa.Array | None = pa.array(~valid)
        else:
            vectors, mask = present, None
        return vector_array(vectors, mask), tokens


def vector_array(vectors: np.ndarray, mask: pa.Array | None = None) -> pa.FixedSizeListArray:
    """Wrap a (n, dim) float32 array as ``fixed_size_list<float32>[dim]`` without copying."""
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1], mask=mask)


#: Name prefix of the encode pool's threads.
ENCODE_THREAD_PREFIX = "beam-m2v-encode"

_executor_lock = threading.Lock()
_shared_executor: ThreadPoolExecutor | None = None


def _executor() -> ThreadPoolExecutor:
    """One thread pool per process, sized to the process's thread budget, shared by every embedder."""
    global _shared_executor
    with _executor_lock:
        if _shared_executor is None:
            _shared_executor = ThreadPoolExecutor(
                max_workers=process_budget().encode_threads, thread_name_prefix=ENCODE_THREAD_PREFIX
            )
        return _shared_executor
