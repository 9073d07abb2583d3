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
any other tokenizer goes through the tokenizer text by text. A ``PieceCache`` remembers the ids
of the pieces already tokenized (half of a slice's distinct pieces were seen in an earlier slice
of the same corpus), up to a fixed number of pieces.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
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

#: Pieces a ``PieceCache`` keeps at most (~130 bytes each: about 35 MB when full).
CACHED_PIECES = 1 << 18

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


class PieceCache:
    """The token ids of pieces already tokenized, for one tokenizer; shared by every thread, bounded.

    Ids are kept as int32 bytes (compact, and joined in one call). Once ``max_pieces`` are
    kept no more are added: the frequent pieces of a corpus come early. Concurrent lookups
    are safe (dict operations are atomic); two threads may tokenize the same new piece.
    """

    def __init__(self, max_pieces: int = CACHED_PIECES) -> None:
        self.max_pieces = max_pieces
        self._ids: dict[str, bytes] = {}

    def __len__(self) -> int:
        return len(self._ids)

    def ids_of(self, tokenizer: Tokenizer, pieces: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Ids of each piece (flat, with offsets), tokenizing only those not seen before."""
        found: list[bytes | None] = list(map(self._ids.get, pieces))
        missing = [index for index, ids in enumerate(found) if ids is None]
        if missing:
            new_pieces = [pieces[index] for index in missing]
            ids, offsets = _distinct_piece_ids(tokenizer, new_pieces)
            raw = ids.astype("<i4").tobytes()
            bounds = (offsets * 4).tolist()
            new_ids = [raw[start:end] for start, end in itertools.pairwise(bounds)]
            for index, piece_ids in zip(missing, new_ids, strict=True):
                found[index] = piece_ids
            room = max(0, self.max_pieces - len(self._ids))
            self._ids.update(zip(new_pieces[:room], new_ids[:room], strict=True))
        chunks: list[bytes] = found  # type: ignore[assignment]  # every entry is filled now
        offsets = np.zeros(len(chunks) + 1, dtype=np.int64)
        np.cumsum(np.fromiter(map(len, chunks), dtype=np.int64, count=len(chunks)) // 4, out=offsets[1:])
        return np.frombuffer(b"".join(chunks), dtype="<i4").astype(np.int32), offsets


@dataclass(frozen=True)
class SplitTexts:
    """A batch of texts cut into pieces: each occurrence of a piece points at one distinct piece.

    Text ``i`` is the occurrences ``text_bounds[i]:text_bounds[i + 1]``, in order; occurrence ``k``
    is the piece ``distinct[occurrences[k]]``.
    """

    distinct: list[str]
    occurrences: np.ndarray
    text_bounds: np.ndarray


def split_texts(texts: pa.Array) -> SplitTexts:
    """Cut every text at the separators and deduplicate the pieces (all in Arrow)."""
    pieces = pc.split_pattern(pc.replace_substring_regex(texts, "[\t\n\r]", " "), " ")
    list_offsets = pieces.offsets.to_numpy()
    encoded = pc.dictionary_encode(pieces.flatten())
    return SplitTexts(
        encoded.dictionary.to_pylist(),
        encoded.indices.to_numpy().astype(np.int64, copy=False),
        list_offsets - list_offsets[0],
    )


def gather_piece_ids(split: SplitTexts, distinct_ids: np.ndarray, distinct_offsets: np.ndarray) -> TokenIds:
    """Every text's ids: the ids of its pieces' occurrences, one after the other."""
    occurrences = split.occurrences
    lengths = np.diff(distinct_offsets)[occurrences]
    ends = np.cumsum(lengths)
    starts = ends - lengths
    total = int(ends[-1]) if ends.size else 0
    source = np.arange(total, dtype=np.int64)
    source += np.repeat(distinct_offsets[occurrences] - starts, lengths)
    occurrence_bounds = np.concatenate(([0], ends))
    return TokenIds(distinct_ids[source], occurrence_bounds[split.text_bounds])


def piece_token_ids(tokenizer: Tokenizer, texts: pa.Array, cache: PieceCache | None = None) -> TokenIds:
    """The ids ``tokenizer.encode_batch(texts, add_special_tokens=False)`` gives, one flat array.

    ``texts`` is a string or large_string array without nulls; ``tokenizer`` must pass
    ``splits_into_independent_pieces``; ``cache`` (of this tokenizer) skips pieces seen before.
    """
    if len(texts) == 0:
        return TokenIds(np.zeros(0, dtype=np.int64), np.zeros(1, dtype=np.int64))
    split = split_texts(texts)
    if cache is None:
        distinct_ids, distinct_offsets = _distinct_piece_ids(tokenizer, split.distinct)
    else:
        distinct_ids, distinct_offsets = cache.ids_of(tokenizer, split.distinct)
    return gather_piece_ids(split, distinct_ids, distinct_offsets)


def _distinct_piece_ids(tokenizer: Tokenizer, pieces: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Tokenize each piece alone: flat ids and offsets, piece ``k`` owning ``ids[offsets[k]:offsets[k + 1]]``."""
    inputs = [pieces[start : start + PIECES_PER_INPUT] for start in range(0, len(pieces), PIECES_PER_INPUT)]
    encodings = tokenizer.encode_batch(inputs, is_pretokenized=True, add_special_tokens=False)
    id_parts = [np.asarray(encoding.ids, dtype=np.int32) for encoding in encodings]
    piece_parts = [
        np.asarray(encoding.word_ids, dtype=np.int64) + first
        for encoding, first in zip(encodings, range(0, len(pieces), PIECES_PER_INPUT), strict=True)
    ]
    ids = np.concatenate(id_parts) if id_parts else np.zeros(0, dtype=np.int32)
    owners = np.concatenate(piece_parts) if piece_parts else np.zeros(0, dtype=np.int64)
    if owners.size and np.any(np.diff(owners) < 0):
        raise RuntimeError("the tokenizer returned the tokens of pre-tokenized words out of order")
    offsets = np.zeros(len(pieces) + 1, dtype=np.int64)
    np.cumsum(np.bincount(owners, minlength=len(pieces)), out=offsets[1:])
    return ids, offsets
