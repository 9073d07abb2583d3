r"""How text becomes token ids, fast: each distinct whitespace-separated piece of a batch is tokenized once.

For a tokenizer whose normalizer works character by character and whose pre-tokenizer splits
at whitespace and drops it (BERT-style WordPiece: the usual model2vec model), a text's ids are
exactly the ids of its pieces between ``" "``, ``"\t"``, ``"\n"`` and ``"\r"``, one piece after
the other. Text repeats its words: 50,000 paragraphs of the Linux docs hold 1.1 million pieces
but only 75,000 distinct ones. So the pieces are split and deduplicated in Arrow, each distinct
piece is tokenized once (as one word of pre-tokenized input, so alone, with every rule the
tokenizer applies to a word: normalizer, added tokens, pre-tokenizer, model), and numpy gathers
the ids back per occurrence. The result is the tokenizer's own output, at a fraction of its cost.

``splits_into_independent_pieces`` decides from the tokenizer's configuration whether this holds;
any other tokenizer goes through the tokenizer text by text.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tokenizers import Tokenizer

from beam_m2v.token_ids import TokenIds

#: Characters every eligible tokenizer treats as a word boundary that yields no token.
PIECE_SEPARATORS = " \t\n\r"

#: Distinct pieces per tokenizer input (one pre-tokenized "sentence"): fewer, larger inputs are cheaper.
PIECES_PER_INPUT = 1024

#: Normalizers that map each character on its own (no rule looks across a separator).
_CHARACTER_NORMALIZERS = frozenset({"BertNormalizer", "Lowercase", "NFC", "NFD", "NFKC", "NFKD", "StripAccents"})
#: Pre-tokenizers that split at every whitespace character and drop it.
_WHITESPACE_SPLITTERS = frozenset({"BertPreTokenizer", "Whitespace", "WhitespaceSplit"})


def splits_into_independent_pieces(tokenizer: Tokenizer) -> bool:
    """Whether ``tokenizer``'s ids of a text are the concatenated ids of its whitespace-separated pieces.

    True for: no truncation and no padding; a character-wise normalizer (or none); a
    pre-tokenizer that splits at whitespace and drops it, optionally in a sequence with digit
    and isolated-punctuation splits; no added token containing a separator character.
    """
    config = json.loads(tokenizer.to_str())
    if config.get("truncation") or config.get("padding"):
        return False
    if not _normalizer_is_character_wise(config.get("normalizer")):
        return False
    if not _pre_tokenizer_splits_at_whitespace(config.get("pre_tokenizer")):
        return False
    separators = set(PIECE_SEPARATORS)
    return not any(separators & set(token.get("content", "")) for token in config.get("added_tokens") or [])


def _normalizer_is_character_wise(normalizer: dict[str, Any] | None) -> bool:
    """None, one character-wise normalizer, or a sequence of them."""
    if normalizer is None:
        return True
    if normalizer.get("type") == "Sequence":
        return all(_normalizer_is_character_wise(part) for part in normalizer.get("normalizers", []))
    return normalizer.get("type") in _CHARACTER_NORMALIZERS


def _pre_tokenizer_splits_at_whitespace(pre_tokenizer: dict[str, Any] | None) -> bool:
    """A whitespace splitter, alone or in a sequence with only within-word splits."""
    if pre_tokenizer is None:
        return False
    if pre_tokenizer.get("type") != "Sequence":
        return pre_tokenizer.get("type") in _WHITESPACE_SPLITTERS
    parts = pre_tokenizer.get("pretokenizers", [])
    within_word = all(
        part.get("type") in _WHITESPACE_SPLITTERS
        or part.get("type") == "Digits"
        or (part.get("type") == "Punctuation" and part.get("behavior", "Isolated") == "Isolated")
        for part in parts
    )
    return within_word and any(part.get("type") in _WHITESPACE_SPLITTERS for part in parts)


def piece_token_ids(tokenizer: Tokenizer, texts: pa.Array) -> TokenIds:
    """The ids ``tokenizer.encode_batch(texts, add_special_tokens=False)`` gives, one flat array.

    ``texts`` is a string or large_string array without nulls; ``tokenizer`` must pass
    ``splits_into_independent_pieces``.
    """
    if len(texts) == 0:
        return TokenIds(np.zeros(0, dtype=np.int64), np.zeros(1, dtype=np.int64))
    pieces = pc.split_pattern(pc.replace_substring_regex(texts, "[\t\n\r]", " "), " ")
    list_offsets = pieces.offsets.to_numpy()
    pieces_per_text_bounds = list_offsets - list_offsets[0]
    encoded = pc.dictionary_encode(pieces.flatten())
    distinct_ids, distinct_offsets = _distinct_piece_ids(tokenizer, encoded.dictionary.to_pylist())
    occurrences = encoded.indices.to_numpy().astype(np.int64, copy=False)

    lengths = np.diff(distinct_offsets)[occurrences]
    ends = np.cumsum(lengths)
    starts = ends - lengths
    total = int(ends[-1]) if ends.size else 0
    source = np.arange(total, dtype=np.int64)
    source += np.repeat(distinct_offsets[occurrences] - starts, lengths)
    ids = distinct_ids[source]
    occurrence_bounds = np.concatenate(([0], ends))
    return TokenIds(ids, occurrence_bounds[pieces_per_text_bounds])


def _distinct_piece_ids(tokenizer: Tokenizer, pieces: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Tokenize each piece alone: flat ids and offsets, piece ``k`` owning ``ids[offsets[k]:offsets[k + 1]]``."""
    inputs = [pieces[start : start + PIECES_PER_INPUT] for start in range(0, len(pieces), PIECES_PER_INPUT)]
    encodings = tokenizer.encode_batch(inputs, is_pretokenized=True, add_special_tokens=False)
    id_parts = [np.asarray(encoding.ids, dtype=np.int64) for encoding in encodings]
    piece_parts = [
        np.asarray(encoding.word_ids, dtype=np.int64) + first
        for encoding, first in zip(encodings, range(0, len(pieces), PIECES_PER_INPUT), strict=True)
    ]
    ids = np.concatenate(id_parts) if id_parts else np.zeros(0, dtype=np.int64)
    owners = np.concatenate(piece_parts) if piece_parts else np.zeros(0, dtype=np.int64)
    offsets = np.zeros(len(pieces) + 1, dtype=np.int64)
    np.cumsum(np.bincount(owners, minlength=len(pieces)), out=offsets[1:])
    return ids, offsets
