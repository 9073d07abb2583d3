"""The tokenizer that turns text into token ids: a private copy, configured once and never mutated afterwards.

model2vec switches truncation on one shared tokenizer for every ``encode`` call, which is
unsafe when threads use different settings. Here each configuration gets its own tokenizer
copy, configured at construction; encoding only reads it, so any number of threads may
share one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
from tokenizers import Tokenizer

from beam_m2v.piece_tokenization import (
    PieceCache,
    punctuation_split_characters,
    splits_into_independent_pieces,
    tokenizer_config,
)


def unknown_token_id(tokenizer: Tokenizer) -> int | None:
    """The id of the tokenizer model's unknown token, found the way model2vec finds it, or None."""
    model = tokenizer.model
    if hasattr(model, "unk_token"):
        token = model.unk_token
        return None if token is None else tokenizer.token_to_id(token)
    unk_id = json.loads(tokenizer.to_str())["model"].get("unk_id")
    return None if unk_id is None else int(unk_id)


def median_token_length(tokenizer: Tokenizer) -> int:
    """``int(median(len(token)))`` over the vocabulary, added tokens included (model2vec's rule).

    model2vec takes the lengths in id order; a median does not depend on the order.
    """
    lengths = list(map(len, tokenizer.get_vocab()))
    return int(np.median(lengths)) if lengths else 1


def model2vec_tokenizer(tokenizer: Tokenizer) -> Tokenizer:
    """A private copy of ``tokenizer`` that neither pads nor truncates.

    model2vec truncates with the tokenizer (right side, no special tokens), which keeps the
    first ``max_length`` ids of each text; ``truncate_ids`` does exactly that on the flat ids,
    so one untouched tokenizer serves every ``max_length``.
    """
    copy = Tokenizer.from_str(tokenizer.to_str())
    copy.no_padding()
    copy.no_truncation()
    return copy


def static_backend_tokenizer(tokenizer: Tokenizer) -> tuple[Tokenizer, tuple[int, int] | None]:
    """A private copy of ``tokenizer`` as its file configures it, made safe to call on batches.

    The Rust ``StaticBackend`` encodes one text at a time, so batch-longest padding only pads a text up to a
    multiple of ``pad_to_multiple_of`` there. Batching would pad to the longest text instead,
    so that padding is switched off and returned as ``(multiple, pad_id)`` to apply per text.
    Fixed-length padding is kept as is.
    """
    copy = Tokenizer.from_str(tokenizer.to_str())
    padding = copy.padding
    if padding is None or padding.get("length") is not None:
        return copy, None
    copy.no_padding()
    multiple = padding.get("pad_to_multiple_of")
    return copy, (int(multiple), int(padding["pad_id"])) if multiple else None


def piece_cache_of(tokenizer: Tokenizer) -> PieceCache | None:
    """A new piece cache of ``tokenizer`` if it may be called piece by piece, else None."""
    config = tokenizer_config(tokenizer)
    if not splits_into_independent_pieces(tokenizer, config):
        return None
    return PieceCache(tokenizer, punctuation_split_characters(tokenizer, config))


@dataclass(frozen=True)
class PreparedTokenizer:
    """A private, configured tokenizer copy and the facts encoding needs about it.

    Built once per loaded model and shared, unmutated, by every embedder derived from it
    (``with_settings``), whatever their ``max_length``: one tokenizer per process.
    """

    tokenizer: Tokenizer
    unknown_id: int | None
    median_token_length: int
    pad_to_multiple_of: tuple[int, int] | None = None
    """``static_backend`` semantics: (multiple, pad id) to pad each text's ids to, as a single encode would."""
    piece_cache: PieceCache | None = field(default=None, compare=False, repr=False)
    """Ids of the pieces seen so far, shared by every embedder of this tokenizer; None when the tokenizer
    may not be called piece by piece (``piece_tokenization``)."""

    @property
    def by_piece(self) -> bool:
        """Whether ids are found piece by piece (``piece_tokenization``): same ids, much faster."""
        return self.piece_cache is not None

    @classmethod
    def for_model2vec(cls, tokenizer: Tokenizer) -> PreparedTokenizer:
        """No padding, no truncation (done on the ids), unknown id and median length as model2vec finds them."""
        copy = model2vec_tokenizer(tokenizer)
        return cls(copy, unknown_token_id(tokenizer), median_token_length(tokenizer), piece_cache=piece_cache_of(copy))

    @classmethod
    def for_static_backend(cls, tokenizer: Tokenizer) -> PreparedTokenizer:
        """The tokenizer as its file configures it (batch-safe); the StaticBackend drops no unknown ids."""
        copy, pad_to_multiple_of = static_backend_tokenizer(tokenizer)
        # Padding to a multiple is applied per text after tokenizing: it needs the text-by-text path.
        piece_cache = piece_cache_of(copy) if pad_to_multiple_of is None else None
        return cls(copy, None, 0, pad_to_multiple_of, piece_cache=piece_cache)
