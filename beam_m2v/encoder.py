"""How text becomes a vector: tokenize a batch, drop what model2vec drops, pool the rows.

``StaticEmbedder`` is immutable once built: its tokenizer copy carries its own truncation,
so any number of threads may call ``encode`` at once, each embedder with its own settings,
while all of them share one memory-mapped matrix.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tokenizers import Tokenizer

from beam_m2v.arrow_strings import arrow_texts, plain_strings
from beam_m2v.errors import InvalidTextError
from beam_m2v.piece_tokenization import piece_token_ids
from beam_m2v.pooling import VocabularyMatrix, mean_pool, static_backend_pool
from beam_m2v.sources import ModelFiles, content_fingerprint
from beam_m2v.thread_budget import process_budget
from beam_m2v.token_ids import TokenIds, flatten_ids, keep_ids, truncate_ids
from beam_m2v.tokenization import PreparedTokenizer

#: Texts per tokenizer call; a batch this size keeps both cores busy and the ids small.
CHUNK_SIZE = 1024

#: Texts per slice on the piece-by-piece path: large enough that most of a slice's words repeat.
PIECE_SLICE = 8192


class Semantics(str, enum.Enum):
    """Which reference a model's vectors reproduce."""

    MODEL2VEC = "model2vec"
    """model2vec's ``StaticModel.encode``: pre-truncation, unknown ids dropped, mean, ``v / (norm + 1e-32)``."""
    STATIC_BACKEND = "static_backend"
    """The Rust ``StaticBackend``: tokenizer as configured by its file, ids past the matrix skipped,
    unknown ids kept, mean, ``v / max(norm, 1e-12)``."""
    SEED = "static_backend"
    """Old name of ``STATIC_BACKEND``, kept so that code written against it keeps working."""

    @classmethod
    def _missing_(cls, value: object) -> Semantics | None:
        """Accept ``"seed"``, the value older manifests and programs use for ``"static_backend"``."""
        if isinstance(value, str) and value.strip().lower().replace("-", "_") in {"seed", "static_backend"}:
            return cls.STATIC_BACKEND
        return None


@dataclass(frozen=True)
class EncodingSettings:
    """Everything besides the matrix that decides a vector."""

    semantics: Semantics
    normalize: bool
    max_length: int | None
    """Token budget (model2vec semantics); None means no truncation."""


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
        if isinstance(tokenizer, PreparedTokenizer):
            self._prepared = tokenizer
        elif settings.semantics is Semantics.STATIC_BACKEND:
            self._prepared = PreparedTokenizer.for_static_backend(tokenizer)
        else:
            self._prepared = PreparedTokenizer.for_model2vec(tokenizer)
        self._tokenizer = self._prepared.tokenizer
        self._unknown_id = self._prepared.unknown_id
        self._char_limit: int | None = None
        if settings.semantics is Semantics.MODEL2VEC and settings.max_length is not None:
            self._char_limit = settings.max_length * self._prepared.median_token_length

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
        return self._tokenizer

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
        return StaticEmbedder(matrix, self._prepared, settings, files=self.files)

    # -- encoding -----------------------------------------------------------------------------

    def token_ids(self, texts: Sequence[str]) -> TokenIds:
        """The ids each text contributes to its vector, after every rule of the semantics."""
        process_budget()  # before the first tokenizer call: it sizes the tokenizer's pool
        if self._prepared.by_piece:
            return self._array_token_ids(arrow_texts(texts))
        return self._apply_rules(self._ids_text_by_text(texts))

    def _array_token_ids(self, texts: pa.Array) -> TokenIds:
        """``token_ids`` of an Arrow string array without nulls, piece by piece (``by_piece`` tokenizers only)."""
        texts = cut_characters(texts, self._char_limit)
        try:
            raw = piece_token_ids(self._tokenizer, texts, self._prepared.piece_cache, self._prepared.piece_punctuation)
        except Exception:
            if self.settings.semantics is not Semantics.STATIC_BACKEND:
                raise
            raw = self._ids_text_by_text(texts.to_pylist())
        return self._apply_rules(raw)

    def _ids_text_by_text(self, texts: Sequence[str]) -> TokenIds:
        """Every id the tokenizer gives each text (after model2vec's character cut), one text at a time."""
        if self._char_limit is not None:
            limit = self._char_limit
            texts = [text[:limit] if isinstance(text, str) and len(text) > limit else text for text in texts]
        try:
            id_lists = [encoding.ids for encoding in self._tokenizer.encode_batch_fast(texts, add_special_tokens=False)]
        except Exception:
            invalid = InvalidTextError.first_in(texts)
            if invalid is not None:
                raise invalid from None
            if self.settings.semantics is not Semantics.STATIC_BACKEND:
                raise
            # The StaticBackend gives a text the tokenizer fails on a zero vector: find which ones, one by one.
            id_lists = [self._static_backend_ids_or_none(text) for text in texts]
        multiple = self._prepared.pad_to_multiple_of
        if self.settings.semantics is Semantics.STATIC_BACKEND and multiple is not None:
            size, pad_id = multiple
            id_lists = [ids + [pad_id] * (-len(ids) % size) for ids in id_lists]
        return flatten_ids(id_lists)

    def _apply_rules(self, token_ids: TokenIds) -> TokenIds:
        """Drop what the semantics drops: ids past the matrix (static_backend); over max_length, then unknown."""
        if self.settings.semantics is Semantics.STATIC_BACKEND:
            return keep_ids(token_ids, token_ids.ids < self.matrix.rows)
        if self.settings.max_length is not None:
            token_ids = truncate_ids(token_ids, self.settings.max_length)
        if self._unknown_id is not None:
            token_ids = keep_ids(token_ids, token_ids.ids != self._unknown_id)
        return token_ids

    def _static_backend_ids_or_none(self, text: str) -> list[int]:
        """One text's ids, or none when the tokenizer fails on it (the StaticBackend's zero vector)."""
        try:
            return list(self._tokenizer.encode(text, add_special_tokens=False).ids)
        except Exception:
            return []

    def _encode_chunk(self, texts: Sequence[str]) -> tuple[np.ndarray, int]:
        """Vectors of one chunk and the number of tokens pooled."""
        return self._pool(self.token_ids(texts))

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
        Large inputs are split into chunks tokenized on a shared thread pool.
        """
        return self.encode_with_stats(texts)[0]

    def encode_with_stats(self, texts: Sequence[str]) -> tuple[np.ndarray, int]:
        """Like ``encode``, also returning how many tokens were pooled (for metrics)."""
        if isinstance(texts, str):
            raise TypeError("encode takes a sequence of texts, not one str")
        process_budget()  # before the first tokenizer call: it sizes the tokenizer's pool
        if self._prepared.by_piece:
            return self._encode_array(arrow_texts(texts))
        n = len(texts)
        if n <= CHUNK_SIZE:
            if n == 0:
                return np.zeros((0, self.dim), dtype=np.float32), 0
            return self._encode_chunk(texts)
        vectors = np.empty((n, self.dim), dtype=np.float32)
        tokens = _executor().map(lambda start: self._encode_slice(texts, start, vectors), range(0, n, CHUNK_SIZE))
        return vectors, sum(tokens)

    def _encode_slice(self, texts: Sequence[str], start: int, out: np.ndarray) -> int:
        """Encode ``texts[start:start + CHUNK_SIZE]`` into ``out``; invalid positions are relative to ``texts``."""
        try:
            vectors, tokens = self._encode_chunk(texts[start : start + CHUNK_SIZE])
        except InvalidTextError as error:
            raise InvalidTextError(start + error.index, error.reason) from None
        out[start : start + len(vectors)] = vectors
        return tokens

    def _encode_array(self, texts: pa.Array) -> tuple[np.ndarray, int]:
        """Vectors of an Arrow string array without nulls, slices of ``PIECE_SLICE`` texts on the shared pool."""
        n = len(texts)
        if n <= PIECE_SLICE:
            if n == 0:
                return np.zeros((0, self.dim), dtype=np.float32), 0
            return self._pool(self._array_token_ids(texts))
        vectors = np.empty((n, self.dim), dtype=np.float32)

        def encode_slice(start: int) -> int:
            token_ids = self._array_token_ids(texts.slice(start, PIECE_SLICE))
            return self._pool(token_ids, out=vectors[start : start + token_ids.lengths.size])[1]

        return vectors, sum(_executor().map(encode_slice, range(0, n, PIECE_SLICE)))

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
        if self._prepared.by_piece:
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


def cut_characters(texts: pa.Array, limit: int | None) -> pa.Array:
    """model2vec's character pre-truncation of an Arrow string array: each text's first ``limit`` characters."""
    # A text of at most ``limit`` bytes has at most ``limit`` characters: most batches skip the cut.
    if limit is None or len(texts) == 0 or pc.max(pc.binary_length(texts)).as_py() <= limit:
        return texts
    return pc.utf8_slice_codeunits(texts, 0, limit)


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
