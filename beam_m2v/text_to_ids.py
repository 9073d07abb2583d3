"""How a text becomes the token ids pooled into its vector: ``TextToIds``, the one owner of that way.

A ``TextToIds`` joins a prepared tokenizer (``tokenization``) to one model's rules (semantics,
``max_length``, rows of the matrix). Its two entries, ``of_texts`` (a Python sequence) and
``of_array`` (an Arrow string array), take every text the same way:

1. model2vec semantics with ``max_length``: each text is cut to ``max_length`` times the median
   token length in characters (``cut_characters``), as model2vec does before tokenizing;
2. the tokenizer's ids, piece by piece (``piece_tokenization``) when the tokenizer allows it,
   else text by text;
3. ``apply_rules``: what the semantics drops (ids past the matrix for ``static_backend``; ids past
   ``max_length``, then unknown ids, for ``model2vec``).

It is immutable: any number of threads may call it at once.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc
from tokenizers import Tokenizer

from beam_m2v.arrow_strings import arrow_texts
from beam_m2v.errors import InvalidTextError
from beam_m2v.piece_tokenization import PieceTokenizingError, piece_token_ids
from beam_m2v.semantics import Semantics
from beam_m2v.thread_budget import process_budget
from beam_m2v.token_ids import TokenIds, flatten_ids, keep_ids, truncate_ids
from beam_m2v.tokenization import PreparedTokenizer

logger = logging.getLogger(__name__)


def cut_characters(texts: pa.Array, limit: int | None) -> pa.Array:
    """model2vec's character pre-truncation of an Arrow string array: each text's first ``limit`` characters."""
    # A text of at most ``limit`` bytes has at most ``limit`` characters: most batches skip the cut.
    if limit is None or len(texts) == 0 or pc.max(pc.binary_length(texts)).as_py() <= limit:
        return texts
    return pc.utf8_slice_codeunits(texts, 0, limit)


class TextToIds:
    """The token ids each text contributes to its vector, after every rule of one model's semantics."""

    def __init__(
        self, prepared: PreparedTokenizer, semantics: Semantics, max_length: int | None, matrix_rows: int
    ) -> None:
        """Join a prepared tokenizer (shared as is) to the rules of a model with ``matrix_rows`` rows."""
        self.prepared = prepared
        self.semantics = semantics
        self.max_length = max_length
        self.matrix_rows = matrix_rows
        self.char_limit: int | None = None
        """Characters each text is cut to before tokenizing (model2vec semantics with ``max_length``), or None."""
        if semantics is Semantics.MODEL2VEC and max_length is not None:
            self.char_limit = max_length * prepared.median_token_length

    @staticmethod
    def prepare(tokenizer: Tokenizer, semantics: Semantics) -> PreparedTokenizer:
        """A private copy of ``tokenizer`` configured for ``semantics`` (to share between ``TextToIds``)."""
        if semantics is Semantics.STATIC_BACKEND:
            return PreparedTokenizer.for_static_backend(tokenizer)
        return PreparedTokenizer.for_model2vec(tokenizer)

    @property
    def tokenizer(self) -> Tokenizer:
        """The configured tokenizer (do not mutate it)."""
        return self.prepared.tokenizer

    @property
    def by_piece(self) -> bool:
        """Whether texts are tokenized piece by piece (``piece_tokenization``) rather than text by text."""
        return self.prepared.by_piece

    def of_texts(self, texts: Sequence[object]) -> TokenIds:
        """The ids of each text; InvalidTextError (with the position) for a value that is not text."""
        process_budget()  # before the first tokenizer call: it sizes the tokenizer's pool
        if self.by_piece:
            return self.of_array(arrow_texts(texts))
        return self.apply_rules(self._ids_text_by_text(texts))

    def of_array(self, texts: pa.Array) -> TokenIds:
        """The ids of each text of an Arrow string or large_string array without nulls."""
        process_budget()  # before the first tokenizer call: it sizes the tokenizer's pool
        texts = cut_characters(texts, self.char_limit)
        cache = self.prepared.piece_cache
        if cache is None:
            return self.apply_rules(self._ids_text_by_text(texts.to_pylist()))
        try:
            raw = piece_token_ids(texts, cache)
        except PieceTokenizingError:
            if self.semantics is not Semantics.STATIC_BACKEND:
                raise
            # The StaticBackend gives a text the tokenizer fails on a zero vector: find which ones, text by text.
            logger.debug("the tokenizer failed on the pieces of a batch; tokenizing it text by text", exc_info=True)
            raw = self._ids_text_by_text(texts.to_pylist())
        return self.apply_rules(raw)

    def apply_rules(self, token_ids: TokenIds) -> TokenIds:
        """Drop what the semantics drops: ids past the matrix (static_backend); over max_length, then unknown."""
        if self.semantics is Semantics.STATIC_BACKEND:
            return keep_ids(token_ids, token_ids.ids < self.matrix_rows)
        if self.max_length is not None:
            token_ids = truncate_ids(token_ids, self.max_length)
        if self.prepared.unknown_id is not None:
            token_ids = keep_ids(token_ids, token_ids.ids != self.prepared.unknown_id)
        return token_ids

    def _ids_text_by_text(self, texts: Sequence[object]) -> TokenIds:
        """Every id the tokenizer gives each text (after model2vec's character cut), one text at a time."""
        if self.char_limit is not None:
            limit = self.char_limit
            texts = [text[:limit] if isinstance(text, str) and len(text) > limit else text for text in texts]
        try:
            id_lists = [encoding.ids for encoding in self.tokenizer.encode_batch_fast(texts, add_special_tokens=False)]
        except Exception:
            invalid = InvalidTextError.first_in(texts)
            if invalid is not None:
                raise invalid from None
            if self.semantics is not Semantics.STATIC_BACKEND:
                raise
            # The StaticBackend gives a text the tokenizer fails on a zero vector: find which ones, one by one.
            id_lists = [self._static_backend_ids(text) for text in texts]
        multiple = self.prepared.pad_to_multiple_of
        if self.semantics is Semantics.STATIC_BACKEND and multiple is not None:
            size, pad_id = multiple
            id_lists = [ids + [pad_id] * (-len(ids) % size) for ids in id_lists]
        return flatten_ids(id_lists)

    def _static_backend_ids(self, text: object) -> list[int]:
        """One text's ids, or none when the tokenizer fails on it (the StaticBackend's zero vector)."""
        try:
            return list(self.tokenizer.encode(text, add_special_tokens=False).ids)
        except Exception:
            return []
