"""Piece-by-piece tokenization gives exactly the tokenizer's ids, and is only used where that holds."""

from __future__ import annotations

import dataclasses
import random
import string

import numpy as np
import pyarrow as pa
import pytest
from tiny_models import make_tokenizer
from tokenizers import AddedToken, Tokenizer, normalizers, pre_tokenizers

from beam_m2v import StaticEmbedder, load_model
from beam_m2v.piece_tokenization import (
    CACHED_PIECES,
    PieceCache,
    piece_token_ids,
    punctuation_split_characters,
    splits_into_independent_pieces,
)
from beam_m2v.token_ids import flatten_ids
from beam_m2v.tokenization import model2vec_tokenizer

#: Characters that stress the argument for splitting: the separators themselves, whitespace and
#: control characters that are NOT separators (\x0b and \x0c are removed by BERT's clean_text, so
#: they join words), Unicode spaces and line breaks, combining marks, CJK (padded with spaces by
#: the BERT normalizer), final sigma, punctuation, digits, U+FFFD and NUL (removed), emoji; for the
#: cut at punctuation: U+0338 (composes with "=" under NFC), runs of punctuation, non-ASCII
#: punctuation, characters NFKC turns into punctuation.
ALPHABET = [
    *"abcdefghijklmnopqrstuvwxyzABCXYZ0123456789",
    *[" ", " ", " ", "\t", "\n", "\r", "\r\n", "  "],
    *["\x0b", "\x0c", "\x1c", "\x1f", "\x85", "\u00a0", "\u2028", "\u3000", "\u200b", "\x00", "\ufffd"],
    *["\u0301", "\u0308", "é", "È", "ß", "Σ", "ς", "İ", "中", "文", "日本", "\U0001f600"],
    *".,;:!?'\"()[]{}-_/\\#@%^&*+=<>|~`",
    *["\u0338", "\u2260", "...", "\u2019", "\uff01", "\u2048", "::", "->", "c++", "(see", "a.b", "e.g."],
    *["[UNK]", "[MASK]", "[PAD]", "##", "the", "quick", "kernel", "documentation", "x" * 101],
]


def random_texts(count: int, seed: int) -> list[str]:
    """Texts made of random runs of ``ALPHABET``, most short, some long."""
    rng = random.Random(seed)
    texts = []
    for _ in range(count):
        length = rng.choice([0, 1, 2, 5, 20, 60, 300])
        texts.append("".join(rng.choice(ALPHABET) for _ in range(length)))
    return texts


def reference_ids(tokenizer: Tokenizer, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The tokenizer's own ids for every text, flat, with offsets."""
    token_ids = flatten_ids([e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False)])
    return token_ids.ids, token_ids.offsets


def assert_same_ids(tokenizer: Tokenizer, texts: list[str]) -> None:
    """Pieces at whitespace only, and also cut at the tokenizer's punctuation (if any), without and with a cache."""
    expected_ids, expected_offsets = reference_ids(tokenizer, texts)
    array = pa.array(texts, type=pa.large_string())
    punctuation = punctuation_split_characters(tokenizer)
    for cut_at, kept in [("", 0), (punctuation, 0), (punctuation, CACHED_PIECES)]:
        got = piece_token_ids(array, PieceCache(tokenizer, cut_at, max_pieces=kept))
        assert np.array_equal(got.offsets, expected_offsets), f"punctuation {cut_at!r}"
        assert np.array_equal(got.ids, expected_ids), f"punctuation {cut_at!r}"


def shared_tokenizer(model_path: object) -> Tokenizer:
    return model2vec_tokenizer(Tokenizer.from_file(str(model_path) + "/tokenizer.json"))


def test_shared_models_are_tokenized_by_piece(model_256_path, model_64_path):
    for path in (model_256_path, model_64_path):
        model = load_model(path)
        assert model.text_to_ids.by_piece, f"{path} should take the piece-by-piece path"


@pytest.mark.parametrize("seed", range(4))
def test_random_texts_match_the_tokenizer(model_256_path, seed):
    assert_same_ids(shared_tokenizer(model_256_path), random_texts(600, seed))


def test_corpus_matches_the_tokenizer(model_256_path, corpus_texts):
    assert_same_ids(shared_tokenizer(model_256_path), corpus_texts[:5000])


def test_added_tokens_with_strip_and_single_word_flags_match(model_256_path):
    tokenizer = shared_tokenizer(model_256_path)
    tokenizer.add_special_tokens([AddedToken("[MASK]", lstrip=True, rstrip=True)])
    tokenizer.add_tokens([AddedToken("foo.bar", single_word=True), AddedToken("kernel", normalized=True)])
    assert splits_into_independent_pieces(tokenizer)
    texts = ["a [MASK] b", "[MASK][MASK]  x", "foo.bar foo.barx xfoo.bar (foo.bar)", "KERNEL Kernel kernels"]
    assert_same_ids(tokenizer, texts + random_texts(300, 9))


@pytest.mark.parametrize("kind", ["wordpiece", "bpe", "wordlevel"])
def test_tiny_whitespace_tokenizers_match(kind):
    tokenizer = make_tokenizer(kind)
    assert splits_into_independent_pieces(tokenizer)
    assert_same_ids(tokenizer, random_texts(400, 3))


@pytest.mark.parametrize("kind", ["bytelevel_bpe", "unigram"])
def test_tokenizers_that_keep_whitespace_in_tokens_are_not_eligible(kind):
    # Byte-level BPE and Metaspace turn a space into part of the next token: pieces depend on each other.
    assert not splits_into_independent_pieces(make_tokenizer(kind))


def test_configurations_that_break_independence_are_not_eligible(model_256_path):
    def variant(edit):
        tokenizer = shared_tokenizer(model_256_path)
        edit(tokenizer)
        return tokenizer

    assert splits_into_independent_pieces(variant(lambda t: None))
    # As its file configures it, the shared tokenizer truncates at 512 tokens (the StaticBackend uses it so).
    assert not splits_into_independent_pieces(Tokenizer.from_file(str(model_256_path) + "/tokenizer.json"))
    assert not splits_into_independent_pieces(variant(lambda t: t.enable_padding(pad_to_multiple_of=8)))
    assert not splits_into_independent_pieces(variant(lambda t: t.add_tokens(["new york"])))
    assert not splits_into_independent_pieces(variant(lambda t: t.add_tokens([AddedToken("a\tb")])))

    def set_normalizer(normalizer):
        return lambda t: setattr(t, "normalizer", normalizer)

    def set_pre_tokenizer(pre_tokenizer):
        return lambda t: setattr(t, "pre_tokenizer", pre_tokenizer)

    assert not splits_into_independent_pieces(variant(set_normalizer(normalizers.Replace("  ", " "))))
    assert not splits_into_independent_pieces(variant(set_normalizer(normalizers.Prepend("▁"))))
    assert splits_into_independent_pieces(
        variant(set_normalizer(normalizers.Sequence([normalizers.NFD(), normalizers.Lowercase()])))
    )
    assert not splits_into_independent_pieces(variant(set_pre_tokenizer(pre_tokenizers.Punctuation())))
    assert not splits_into_independent_pieces(
        variant(
            set_pre_tokenizer(
                pre_tokenizers.Sequence(
                    [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(" ", "merged_with_next")]
                )
            )
        )
    )
    assert splits_into_independent_pieces(
        variant(
            set_pre_tokenizer(
                pre_tokenizers.Sequence(
                    [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Digits(individual_digits=True)]
                )
            )
        )
    )


def test_punctuation_cut_only_where_it_is_exact(model_256_path):
    def variant(edit):
        tokenizer = shared_tokenizer(model_256_path)
        edit(tokenizer)
        return punctuation_split_characters(tokenizer)

    # The special tokens hold "[" and "]": a literal "[UNK]" must reach the tokenizer whole.
    assert variant(lambda t: None) == "".join(c for c in string.punctuation if c not in "[]")
    assert variant(lambda t: t.add_tokens(["foo.bar", AddedToken("<eos>", special=True)])) == "".join(
        c for c in string.punctuation if c not in "[].<>"
    )
    assert variant(lambda t: t.add_tokens([AddedToken("word", single_word=True)])) == ""
    assert variant(lambda t: setattr(t, "pre_tokenizer", pre_tokenizers.Whitespace())) == ""
    assert variant(lambda t: setattr(t, "normalizer", normalizers.NFKC())) == ""
    assert variant(lambda t: setattr(t, "normalizer", normalizers.Sequence([normalizers.NFC()]))) == ""
    assert variant(lambda t: t.enable_padding(pad_to_multiple_of=8)) == ""
    nfd_lower = normalizers.Sequence([normalizers.NFD(), normalizers.StripAccents(), normalizers.Lowercase()])
    assert variant(lambda t: setattr(t, "normalizer", nfd_lower)) != ""


def test_cutting_where_it_is_not_exact_would_change_ids(model_256_path):
    """Why the rules above: each excluded case gives other ids if pieces were cut at punctuation anyway."""
    composing = shared_tokenizer(model_256_path)
    composing.normalizer = normalizers.NFC()  # "=" + U+0338 becomes "≠", a symbol, not punctuation
    keeps_runs = shared_tokenizer(model_256_path)
    keeps_runs.pre_tokenizer = pre_tokenizers.Whitespace()  # "..." stays one word
    special = shared_tokenizer(model_256_path)  # "[UNK]" is one added token
    for tokenizer, text in [(composing, "a=\u0338b"), (keeps_runs, "wait... what"), (special, "x[UNK]y")]:
        expected, _ = reference_ids(tokenizer, [text])
        cut = piece_token_ids(pa.array([text]), PieceCache(tokenizer, string.punctuation))
        assert not np.array_equal(cut.ids, expected), text
        assert np.array_equal(piece_token_ids(pa.array([text]), PieceCache(tokenizer, "")).ids, expected)


def test_added_tokens_with_punctuation_match(model_256_path):
    tokenizer = shared_tokenizer(model_256_path)
    tokenizer.add_special_tokens([AddedToken("<eos>", lstrip=True, rstrip=True)])
    tokenizer.add_tokens([AddedToken("foo.bar"), AddedToken("c++", normalized=False), AddedToken("kernel-doc")])
    assert punctuation_split_characters(tokenizer) == "".join(c for c in string.punctuation if c not in "[].<>+-")
    texts = ["x<eos>y (foo.bar) foo.barfoo.bar", "c++/c++c, C++", "Kernel-Doc's kernel-doc: kernel--doc", "[CLS]."]
    assert_same_ids(tokenizer, texts + random_texts(300, 13))


@pytest.mark.parametrize(
    "pre_tokenizer",
    [
        pre_tokenizers.BertPreTokenizer(),
        pre_tokenizers.Whitespace(),
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Sequence([pre_tokenizers.Punctuation(), pre_tokenizers.WhitespaceSplit()]),
        pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Digits(individual_digits=True)]),
    ],
    ids=["bert", "whitespace", "whitespace_split", "punctuation_then_split", "split_then_digits"],
)
@pytest.mark.parametrize(
    "normalizer",
    [
        None,
        normalizers.NFKC(),
        normalizers.Sequence([normalizers.NFD(), normalizers.StripAccents(), normalizers.Lowercase()]),
    ],
    ids=["none", "nfkc", "nfd_strip_lower"],
)
def test_every_eligible_combination_matches(model_256_path, pre_tokenizer, normalizer):
    tokenizer = shared_tokenizer(model_256_path)
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.normalizer = normalizer
    assert splits_into_independent_pieces(tokenizer)
    assert_same_ids(tokenizer, random_texts(300, 11))


def test_encoder_gives_the_same_vectors_by_piece_and_text_by_text(model_64_path, corpus_texts):
    model = load_model(model_64_path)
    text_by_text = StaticEmbedder(
        model.matrix, dataclasses.replace(model.text_to_ids.prepared, piece_cache=None), model.settings
    )
    assert not text_by_text.text_to_ids.by_piece
    texts = corpus_texts[:3000] + random_texts(500, 5) + ["", " ", "x" * 20_000]
    assert np.array_equal(model.encode(texts), text_by_text.encode(texts))
    arrow = pa.array([*texts, None])
    assert model.encode_arrow(arrow).equals(text_by_text.encode_arrow(arrow))


def test_empty_batch_and_sliced_arrays(model_256_path):
    tokenizer = shared_tokenizer(model_256_path)
    empty = piece_token_ids(pa.array([], type=pa.string()), PieceCache(tokenizer))
    assert empty.ids.size == 0 and list(empty.offsets) == [0]
    texts = random_texts(50, 1)
    sliced = pa.array(texts, type=pa.string()).slice(7, 30)
    expected_ids, expected_offsets = reference_ids(tokenizer, texts[7:37])
    got = piece_token_ids(sliced, PieceCache(tokenizer))
    assert np.array_equal(got.ids, expected_ids) and np.array_equal(got.offsets, expected_offsets)


def test_cache_gives_the_same_ids_and_stays_bounded(model_256_path, corpus_texts):
    tokenizer = shared_tokenizer(model_256_path)
    texts = corpus_texts[:2000] + random_texts(300, 21)
    expected_ids, expected_offsets = reference_ids(tokenizer, texts)
    for limit in (0, 50, 1 << 18):
        cache = PieceCache(tokenizer, max_pieces=limit)
        for half in (texts[:1000], texts[1000:], texts):  # the last pass is served mostly from the cache
            got = piece_token_ids(pa.array(half), cache)
            want_ids, want_offsets = reference_ids(tokenizer, half)
            assert np.array_equal(got.ids, want_ids) and np.array_equal(got.offsets, want_offsets)
        assert len(cache) <= limit
        got = piece_token_ids(pa.array(texts), cache)
        assert np.array_equal(got.ids, expected_ids) and np.array_equal(got.offsets, expected_offsets)


def test_cache_is_shared_by_embedders_of_one_model(model_64_path, corpus_texts):
    model = load_model(model_64_path)
    shorter = model.with_settings(max_length=8)
    model.encode(corpus_texts[:500])
    cache = model.text_to_ids.prepared.piece_cache
    assert cache is not None and len(cache) > 0 and shorter.text_to_ids.prepared.piece_cache is cache
    # Cached ids are raw ids: truncation and unknown-dropping still apply per embedder.
    fresh = load_model(model_64_path, max_length=8)
    assert np.array_equal(shorter.encode(corpus_texts[:500]), fresh.encode(corpus_texts[:500]))


def test_character_cut_counts_characters_like_python_slicing():
    from beam_m2v.text_to_ids import cut_characters

    texts = ["héllo wörld", "😀" * 10, "abc", "", "日本語のテキスト" * 3]
    for limit in (0, 1, 3, 5, 100):
        assert cut_characters(pa.array(texts), limit).to_pylist() == [text[:limit] for text in texts]
    assert cut_characters(pa.array(texts), None).to_pylist() == texts


def test_text_to_ids_entries_agree_and_compose_from_public_steps(model_64_path, corpus_texts):
    """of_texts, of_array and the steps bench/piece_replay.py times one by one give the same ids."""
    from beam_m2v.text_to_ids import cut_characters

    text_to_ids = load_model(model_64_path, max_length=16).text_to_ids
    texts = corpus_texts[:500] + random_texts(100, 3)
    array = pa.array(texts, type=pa.large_string())
    from_list, from_array = text_to_ids.of_texts(texts), text_to_ids.of_array(array)
    assert np.array_equal(from_list.ids, from_array.ids) and np.array_equal(from_list.offsets, from_array.offsets)
    cache = text_to_ids.prepared.piece_cache
    assert cache is not None and text_to_ids.char_limit is not None
    cut = cut_characters(array, text_to_ids.char_limit)
    stepped = text_to_ids.apply_rules(piece_token_ids(cut, PieceCache(cache.tokenizer, cache.punctuation)))
    assert np.array_equal(stepped.ids, from_array.ids) and np.array_equal(stepped.offsets, from_array.offsets)
    assert int(from_array.lengths.max()) == 16  # the rules applied: truncated to max_length
