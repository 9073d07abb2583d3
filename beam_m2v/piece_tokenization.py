r"""How text becomes token ids, fast: each distinct whitespace-separated piece of a batch is tokenized once.

For a tokenizer whose normalizer works character by character and whose pre-tokenizer splits
at whitespace and drops it (BERT-style WordPiece: the usual model2vec model), a text's ids are
exactly the ids of its pieces between ``" "``, ``"\t"``, ``"\n"`` and ``"\r"``, one piece after
the other. Text repeats its pieces: 50,000 paragraphs of the Linux docs hold 1.1 million pieces
but only 75,000 distinct ones. So the pieces are split and deduplicated in Arrow, each distinct
piece is tokenized once (as one word of pre-tokenized input, so alone, with every rule the
tokenizer applies to a word: normalizer, added tokens, pre-tokenizer, model), and numpy gathers
the ids back per occurrence. The result is the tokenizer's own output, at a fraction of its cost.

``splits_into_independent_pieces`` decides from the tokenizer's configuration whether this holds;
any other tokenizer goes through the tokenizer text by text. For BERT's own pre-tokenizer, which
cuts every ASCII punctuation character out as a piece of its own, new pieces are cut there too
before tokenizing (``punctuation_split_characters``): ``"driver's"``, ``"(see"`` and
``"drivers/net/foo.c"`` then share their smaller pieces, and the corpus's 172,000 distinct pieces
(1.9 million characters) become 70,000 smaller ones (0.46 million characters) for the tokenizer.

A ``PieceCache`` belongs to one tokenizer and remembers the ids of the pieces (and smaller pieces)
it has tokenized (half of a batch's distinct pieces were seen in an earlier batch of the same
corpus), up to a fixed number.
"""

from __future__ import annotations

import itertools
import json
import string
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tokenizers import Tokenizer

from beam_m2v.token_ids import TokenIds

#: Characters every eligible tokenizer treats as a piece boundary that yields no token.
PIECE_SEPARATORS = " \t\n\r"

#: Distinct pieces per tokenizer input (one pre-tokenized "sentence"): fewer, larger inputs are cheaper.
PIECES_PER_INPUT = 1024

#: Pieces a ``PieceCache`` keeps at most (~130 bytes each: about 35 MB when full).
CACHED_PIECES = 1 << 18

#: Normalizers that map each character on its own (no rule looks across a separator).
_CHARACTER_NORMALIZERS = frozenset({"BertNormalizer", "Lowercase", "NFC", "NFD", "NFKC", "NFKD", "StripAccents"})
#: Pre-tokenizers that split at every whitespace character and drop it.
_WHITESPACE_SPLITTERS = frozenset({"BertPreTokenizer", "Whitespace", "WhitespaceSplit"})
#: Character-wise normalizers that never compose characters (NFC/NFKC turn ``"=" + U+0338`` into ``"≠"``).
_NON_COMPOSING_NORMALIZERS = frozenset({"BertNormalizer", "Lowercase", "NFD", "NFKD", "StripAccents"})


def tokenizer_config(tokenizer: Tokenizer) -> dict[str, Any]:
    """The tokenizer's JSON configuration, parsed."""
    config: dict[str, Any] = json.loads(tokenizer.to_str())
    return config


def splits_into_independent_pieces(tokenizer: Tokenizer, config: dict[str, Any] | None = None) -> bool:
    """Whether ``tokenizer``'s ids of a text are the concatenated ids of its whitespace-separated pieces.

    True for: no truncation and no padding; a character-wise normalizer (or none); a
    pre-tokenizer that splits at whitespace and drops it, optionally in a sequence with digit
    and isolated-punctuation splits; no added token containing a separator character.
    ``config`` is ``tokenizer_config(tokenizer)`` if the caller has it already.
    """
    config = tokenizer_config(tokenizer) if config is None else config
    if config.get("truncation") or config.get("padding"):
        return False
    if not _normalizer_is_character_wise(config.get("normalizer")):
        return False
    if not _pre_tokenizer_splits_at_whitespace(config.get("pre_tokenizer")):
        return False
    separators = set(PIECE_SEPARATORS)
    return not any(separators & set(token.get("content", "")) for token in config.get("added_tokens") or [])


def punctuation_split_characters(tokenizer: Tokenizer, config: dict[str, Any] | None = None) -> str:
    """ASCII punctuation characters at which a piece may be cut as well, without changing its ids; or "".

    ``BertPreTokenizer`` makes every ASCII punctuation character a piece of its own, so cutting
    a piece before and after one changes nothing, provided that: the pieces are independent
    (``splits_into_independent_pieces``); the pre-tokenizer is exactly ``BertPreTokenizer``
    (``Whitespace`` keeps ``"..."`` together); no normalizer composes characters (NFC and
    NFKC turn ``"=" + U+0338`` into ``"≠"``, which is not punctuation); no added token is
    ``single_word`` (its word-boundary test looks at the neighbouring characters). Characters
    that occur in an added token are left out, so a literal ``"[CLS]"`` reaches the tokenizer whole.
    """
    config = tokenizer_config(tokenizer) if config is None else config
    if not splits_into_independent_pieces(tokenizer, config):
        return ""
    if (config.get("pre_tokenizer") or {}).get("type") != "BertPreTokenizer":
        return ""
    if not _normalizer_is_character_wise(config.get("normalizer"), _NON_COMPOSING_NORMALIZERS):
        return ""
    added_tokens = config.get("added_tokens") or []
    if any(token.get("single_word") for token in added_tokens):
        return ""
    in_added_tokens = set("".join(token.get("content", "") for token in added_tokens))
    return "".join(character for character in string.punctuation if character not in in_added_tokens)


def _normalizer_is_character_wise(
    normalizer: dict[str, Any] | None, allowed: frozenset[str] = _CHARACTER_NORMALIZERS
) -> bool:
    """None, one character-wise normalizer (of ``allowed``), or a sequence of them."""
    if normalizer is None:
        return True
    if normalizer.get("type") == "Sequence":
        return all(_normalizer_is_character_wise(member, allowed) for member in normalizer.get("normalizers", []))
    return normalizer.get("type") in allowed


def _pre_tokenizer_splits_at_whitespace(pre_tokenizer: dict[str, Any] | None) -> bool:
    """A whitespace splitter, alone or in a sequence with only within-piece splits."""
    if pre_tokenizer is None:
        return False
    if pre_tokenizer.get("type") != "Sequence":
        return pre_tokenizer.get("type") in _WHITESPACE_SPLITTERS
    members = pre_tokenizer.get("pretokenizers", [])
    within_word = all(
        member.get("type") in _WHITESPACE_SPLITTERS
        or member.get("type") == "Digits"
        or (member.get("type") == "Punctuation" and member.get("behavior", "Isolated") == "Isolated")
        for member in members
    )
    return within_word and any(member.get("type") in _WHITESPACE_SPLITTERS for member in members)


class PieceTokenizingError(RuntimeError):
    """The tokenizer failed on the pieces of a batch, or returned their tokens out of order."""


class PieceCache:
    """The token ids of pieces already tokenized by one tokenizer; shared by every thread, bounded.

    ``punctuation`` (``punctuation_split_characters`` of ``tokenizer``, or "" not to cut there):
    a new piece is cut at those characters into smaller pieces, which are looked up here, or
    tokenized, in turn. Ids are kept as int32 bytes (compact, and joined in one call). Once
    ``max_pieces`` are kept no more are added: the frequent pieces of a corpus come early
    (``max_pieces=0`` keeps none). Concurrent lookups are safe (dict operations are atomic); two
    threads may tokenize the same new piece.
    """

    def __init__(self, tokenizer: Tokenizer, punctuation: str = "", max_pieces: int = CACHED_PIECES) -> None:
        self.tokenizer = tokenizer
        self.punctuation = punctuation
        self.max_pieces = max_pieces
        self._ids: dict[str, bytes] = {}

    def __len__(self) -> int:
        return len(self._ids)

    def ids_of(self, pieces: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Ids of each piece (flat, with offsets), tokenizing only those not seen before."""
        return self._ids_of(pieces, self._new_piece_ids)

    def _ids_of(
        self, pieces: list[str], tokenize: Callable[[list[str]], tuple[np.ndarray, np.ndarray]]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Ids of each piece, from the cache or from ``tokenize`` (of the pieces not seen before)."""
        found: list[bytes | None] = list(map(self._ids.get, pieces))
        missing = [index for index, ids in enumerate(found) if ids is None]
        if missing:
            new_pieces = [pieces[index] for index in missing]
            ids, offsets = tokenize(new_pieces)
            raw = ids.astype("<i4").tobytes()
            bounds = (offsets * 4).tolist()
            new_ids = [raw[start:end] for start, end in itertools.pairwise(bounds)]
            for index, piece_ids in zip(missing, new_ids, strict=True):
                found[index] = piece_ids
            room = max(0, self.max_pieces - len(self._ids))
            self._ids.update(zip(new_pieces[:room], new_ids[:room], strict=True))
        id_bytes: list[bytes] = found  # type: ignore[assignment]  # every entry is filled now
        offsets = np.zeros(len(id_bytes) + 1, dtype=np.int64)
        np.cumsum(np.fromiter(map(len, id_bytes), dtype=np.int64, count=len(id_bytes)) // 4, out=offsets[1:])
        return np.frombuffer(b"".join(id_bytes), dtype="<i4").astype(np.int32), offsets

    def _new_piece_ids(self, pieces: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Ids of pieces not in the cache: tokenized alone, or as the smaller pieces between ``punctuation``."""
        if not self.punctuation:
            return self._tokenize(pieces)
        smaller = split_at_punctuation(pieces, self.punctuation)
        smaller_ids, smaller_offsets = self._ids_of(smaller.distinct, self._tokenize)
        piece_ids = gather_piece_ids(smaller, smaller_ids, smaller_offsets)
        return piece_ids.ids.astype(np.int32, copy=False), piece_ids.offsets

    def _tokenize(self, pieces: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Ids of pieces tokenized alone (not cut at punctuation)."""
        return _distinct_piece_ids(self.tokenizer, pieces)


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


def split_at_punctuation(pieces: list[str], punctuation: str) -> SplitTexts:
    """Cut every piece before and after each character of ``punctuation``; deduplicate the smaller pieces."""
    spaced = pc.replace_substring_regex(
        pa.array(pieces, pa.string()), "([" + "".join("\\" + character for character in punctuation) + "])", r" \1 "
    )
    smaller = pc.split_pattern(spaced, " ")  # pieces hold no spaces: every space here is a cut
    list_offsets = smaller.offsets.to_numpy()
    flat = smaller.flatten()
    non_empty = pc.not_equal(pc.binary_length(flat), 0)
    kept_before = np.zeros(len(flat) + 1, dtype=np.int64)
    np.cumsum(non_empty.to_numpy(zero_copy_only=False), out=kept_before[1:])
    encoded = pc.dictionary_encode(flat.filter(non_empty))
    return SplitTexts(
        encoded.dictionary.to_pylist(),
        encoded.indices.to_numpy().astype(np.int64, copy=False),
        kept_before[list_offsets - list_offsets[0]],
    )


def piece_token_ids(texts: pa.Array, cache: PieceCache) -> TokenIds:
    """The ids ``cache.tokenizer.encode_batch(texts, add_special_tokens=False)`` gives, one flat array.

    ``texts`` is a string or large_string array without nulls; the cache's tokenizer must pass
    ``splits_into_independent_pieces``. PieceTokenizingError if the tokenizer fails on a piece.
    """
    if len(texts) == 0:
        return TokenIds(np.zeros(0, dtype=np.int64), np.zeros(1, dtype=np.int64))
    split = split_texts(texts)
    distinct_ids, distinct_offsets = cache.ids_of(split.distinct)
    return gather_piece_ids(split, distinct_ids, distinct_offsets)


def _distinct_piece_ids(tokenizer: Tokenizer, pieces: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Tokenize each piece alone: flat ids and offsets, piece ``k`` owning ``ids[offsets[k]:offsets[k + 1]]``.

    PieceTokenizingError (with the tokenizer's own error as its cause) if the tokenizer fails.
    """
    inputs = [pieces[start : start + PIECES_PER_INPUT] for start in range(0, len(pieces), PIECES_PER_INPUT)]
    try:
        encodings = tokenizer.encode_batch(inputs, is_pretokenized=True, add_special_tokens=False)
    except Exception as error:  # the tokenizer's own errors are plain Exceptions
        raise PieceTokenizingError(f"the tokenizer failed on the pieces of a batch: {error}") from error
    id_arrays = [np.asarray(encoding.ids, dtype=np.int32) for encoding in encodings]
    owner_arrays = [
        np.asarray(encoding.word_ids, dtype=np.int64) + first
        for encoding, first in zip(encodings, range(0, len(pieces), PIECES_PER_INPUT), strict=True)
    ]
    ids = np.concatenate(id_arrays) if id_arrays else np.zeros(0, dtype=np.int32)
    owners = np.concatenate(owner_arrays) if owner_arrays else np.zeros(0, dtype=np.int64)
    if owners.size and np.any(np.diff(owners) < 0):
        raise PieceTokenizingError("the tokenizer returned the tokens of pre-tokenized words out of order")
    offsets = np.zeros(len(pieces) + 1, dtype=np.int64)
    np.cumsum(np.bincount(owners, minlength=len(pieces)), out=offsets[1:])
    return ids, offsets
