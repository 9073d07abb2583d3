"""The ``static_backend`` semantics (the Rust ``StaticBackend``'s vectors) and where it differs from model2vec's.

The StaticBackend embeds one text as: ``tokenizer.encode(text, add_special_tokens=False)`` with the tokenizer
exactly as its file configures it (truncation, padding), ids >= the matrix's rows skipped (an
in-vocabulary [UNK] is kept), float32 mean of the rows, divided by ``max(norm, 1e-12)``; a zero vector
when nothing is left. Expected vectors here are worked out by hand (or by a plain per-text loop
written in this file), never through beam_m2v.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

import apache_beam as beam
import huggingface_hub.constants
import numpy as np
import pyarrow as pa
import pytest
from apache_beam.testing.util import assert_that, equal_to
from model2vec import StaticModel
from safetensors.numpy import load_file
from tokenizers import Tokenizer, models, pre_tokenizers

import beam_m2v
from beam_m2v import ModelLoadError, Semantics, piece_tokenization
from beam_m2v.piece_tokenization import PieceCache, PieceTokenizingError, piece_token_ids
from tests.beam_helpers import assert_vectors, fn_api_pipeline
from tests.tiny_models import populate_hub_cache

ATOL = 1e-6


# -- helpers -------------------------------------------------------------------------------------


def word_tokenizer(vocab: dict[str, int], *, special: Sequence[str] = ()) -> Tokenizer:
    """A WordLevel tokenizer over ``vocab`` (unknown token [UNK]), splitting on whitespace and punctuation."""
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    if special:
        tokenizer.add_special_tokens(list(special))
    return tokenizer


def write_raw(folder: Path, tokenizer: Tokenizer, matrix: np.ndarray) -> Path:
    """Write the StaticBackend's raw format: ``vocab_matrix.bin`` (flat little-endian float32) + ``tokenizer.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    np.asarray(matrix, dtype="<f4").tofile(folder / "vocab_matrix.bin")
    tokenizer.save(str(folder / "tokenizer.json"), pretty=False)
    return folder


def unit(vector: Sequence[float]) -> np.ndarray:
    """``vector`` scaled to length 1 (float64, exact enough to be the expectation)."""
    array = np.asarray(vector, dtype=np.float64)
    return array / np.linalg.norm(array)


def assert_close(actual: np.ndarray, expected: Sequence[float] | np.ndarray) -> None:
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), np.asarray(expected), rtol=0, atol=ATOL)


# -- (a) the StaticBackend's own unit cases ----------------------------------------------------------------

IDENTITY_VOCAB = {"[UNK]": 0, "hello": 1, "world": 2, "foo": 3}


@pytest.fixture
def identity_model(tmp_path: Path) -> Path:
    """Four tokens, dim 4, row i is the i-th unit vector: every vector can be read off by eye."""
    return write_raw(tmp_path / "identity", word_tokenizer(IDENTITY_VOCAB), np.eye(4))


def test_raw_folder_defaults_to_static_backend_semantics(identity_model: Path) -> None:
    model = beam_m2v.load_model(identity_model, dim=4)
    assert model.settings.semantics is Semantics.STATIC_BACKEND
    assert model.settings.normalize is True and model.settings.max_length is None
    assert model.dim == 4 and model.matrix.rows == 4


def test_seed_is_an_old_name_of_static_backend(identity_model: Path) -> None:
    # Outputs and programs written before the rename say "seed": they keep working.
    assert Semantics("seed") is Semantics.STATIC_BACKEND is Semantics("static_backend")
    assert Semantics.STATIC_BACKEND.value == "static_backend" and list(Semantics) == [
        Semantics.MODEL2VEC,
        Semantics.STATIC_BACKEND,
    ]
    old = beam_m2v.load_model(identity_model, dim=4, semantics="seed")
    assert old.settings == beam_m2v.load_model(identity_model, dim=4, semantics="static_backend").settings
    with pytest.raises(ValueError, match="not a valid Semantics"):
        Semantics("rust")


def test_one_token_is_its_row(identity_model: Path) -> None:
    model = beam_m2v.load_model(identity_model, dim=4)
    vectors = model.encode(["hello", "world", "foo"])
    assert vectors.dtype == np.float32
    np.testing.assert_array_equal(vectors, [[0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])


def test_mean_then_l2_and_batch_order(identity_model: Path) -> None:
    model = beam_m2v.load_model(identity_model, dim=4)
    texts = ["hello world", "world", "hello hello world", "world hello", "hello"]
    expected = [
        [0, 1 / np.sqrt(2), 1 / np.sqrt(2), 0],  # mean (0, .5, .5, 0), norm 1/sqrt(2)
        [0, 0, 1, 0],
        [0, 2 / np.sqrt(5), 1 / np.sqrt(5), 0],  # mean (0, 2/3, 1/3, 0)
        [0, 1 / np.sqrt(2), 1 / np.sqrt(2), 0],  # the mean does not depend on token order
        [0, 1, 0, 0],
    ]
    assert_close(model.encode(texts), expected)
    # Order of the batch is kept, and a text's vector does not depend on its neighbours.
    assert_close(model.encode(texts[::-1]), expected[::-1])
    for text, vector in zip(texts, expected, strict=True):
        assert_close(model.encode([text])[0], vector)


def test_empty_and_blank_texts_give_zero_vectors(identity_model: Path) -> None:
    model = beam_m2v.load_model(identity_model, dim=4)
    vectors = model.encode(["", "   ", "\n\t", "hello"])
    assert not np.isnan(vectors).any()
    np.testing.assert_array_equal(vectors[:3], np.zeros((3, 4), dtype=np.float32))
    np.testing.assert_array_equal(vectors[3], [0, 1, 0, 0])


def test_empty_batch_gives_empty_result(identity_model: Path) -> None:
    vectors = beam_m2v.load_model(identity_model, dim=4).encode([])
    assert vectors.shape == (0, 4) and vectors.dtype == np.float32


def test_unknown_word_is_the_unk_row(identity_model: Path) -> None:
    # WordLevel maps an unknown word to [UNK] (id 0), which has a row: the StaticBackend keeps it.
    vectors = beam_m2v.load_model(identity_model, dim=4).encode(["zzz", "zzz hello"])
    assert_close(vectors, [[1, 0, 0, 0], [1 / np.sqrt(2), 1 / np.sqrt(2), 0, 0]])


def test_matrix_not_a_multiple_of_the_dimension(tmp_path: Path) -> None:
    folder = write_raw(tmp_path / "m", word_tokenizer(IDENTITY_VOCAB), np.ones(17))  # 17 floats, 68 bytes
    with pytest.raises(ModelLoadError) as caught:
        beam_m2v.load_model(folder, dim=4)
    error = caught.value
    assert error.path == str(folder / "vocab_matrix.bin")
    assert str(folder / "vocab_matrix.bin") in str(error)
    assert "68 bytes" in error.problem
    assert re.search(r"\bdimension 4\b", error.problem)


def _not_multiple_of_4_error(tmp_path: Path) -> tuple[Path, ModelLoadError]:
    folder = write_raw(tmp_path / "m", word_tokenizer(IDENTITY_VOCAB), np.eye(4))
    with open(folder / "vocab_matrix.bin", "ab") as handle:
        handle.write(b"\0\0")  # 66 bytes: not whole float32 values
    with pytest.raises(ModelLoadError) as caught:
        beam_m2v.load_model(folder, dim=4)
    return folder / "vocab_matrix.bin", caught.value


def test_matrix_not_a_multiple_of_4_bytes(tmp_path: Path) -> None:
    path, error = _not_multiple_of_4_error(tmp_path)
    assert error.path == str(path) and str(path) in str(error)
    assert "66 bytes" in error.problem and "multiple of 4" in error.problem


def test_matrix_not_a_multiple_of_4_bytes_names_the_dimension(tmp_path: Path) -> None:
    _, error = _not_multiple_of_4_error(tmp_path)
    assert re.search(r"\bdimension 4\b", error.problem)


# -- (b) where the two semantics differ: expectations by hand -------------------------------------

# Ids 0..4 have rows; [CLS] and [SEP] (5, 6) are special tokens of the tokenizer (matched when typed).
VOCAB = {"[UNK]": 0, "hello": 1, "world": 2, "a": 3, "b": 4, "[CLS]": 5, "[SEP]": 6}
SPECIAL = ("[UNK]", "[CLS]", "[SEP]")
UNK, HELLO, WORLD, A, B = ([2, 0, 0, 0], [0, 3, 4, 0], [1, 0, 2, 2], [0, 1, 0, 0], [0, 0, 1, 0])
ROWS = np.array([UNK, HELLO, WORLD, A, B, [7, 0, 0, 0], [0, 0, 0, 7]], dtype=np.float32)
# model2vec's median token length over the vocabulary sorted by id: lengths 5,5,5,1,1,5,5 -> 5,
# so with its default max_length 512 (the raw format has no config.json) it pre-truncates at 2560 chars.


def hand_model(tmp_path: Path, *, rows: int = 7, edit: object = None) -> Path:
    tokenizer = word_tokenizer(VOCAB, special=SPECIAL)
    if callable(edit):
        edit(tokenizer)
    return write_raw(tmp_path / "hand", tokenizer, ROWS[:rows])


def both(folder: Path, **model2vec_options: object) -> tuple[beam_m2v.StaticEmbedder, beam_m2v.StaticEmbedder]:
    backend = beam_m2v.load_model(folder, dim=4)
    model2vec = beam_m2v.load_model(folder, dim=4, semantics="model2vec", **model2vec_options)
    return backend, model2vec


def test_model2vec_semantics_of_a_raw_model_has_no_config_defaults(tmp_path: Path) -> None:
    # No config.json beside vocab_matrix.bin: model2vec's defaults apply (normalize False, max_length 512).
    _, model2vec = both(hand_model(tmp_path))
    assert model2vec.settings.semantics is Semantics.MODEL2VEC
    assert model2vec.settings.normalize is False and model2vec.settings.max_length == 512


def test_in_vocabulary_unk_is_kept_by_static_backend_dropped_by_model2vec(tmp_path: Path) -> None:
    backend, model2vec = both(hand_model(tmp_path))
    _, model2vec_unit = both(hand_model(tmp_path / "n"), normalize=True)
    texts = ["hello zzz", "zzz", "hello [UNK]"]
    # backend: ids [1, 0] -> mean (HELLO + UNK) / 2 = (1, 1.5, 2, 0), norm sqrt(7.25)
    #       ids [0]    -> UNK / |UNK| = (2, 0, 0, 0) / 2; "[UNK]" typed literally is the same id 0
    assert_close(backend.encode(texts), [np.array([1, 1.5, 2, 0]) / np.sqrt(7.25), [1, 0, 0, 0], unit([1, 1.5, 2, 0])])
    # model2vec: id 0 dropped -> HELLO (not normalised by default), nothing left -> zeros
    assert_close(model2vec.encode(texts), [HELLO, [0, 0, 0, 0], HELLO])
    assert_close(model2vec_unit.encode(texts), [[0, 0.6, 0.8, 0], [0, 0, 0, 0], [0, 0.6, 0.8, 0]])


def test_text_past_max_length_tokens(tmp_path: Path) -> None:
    backend, model2vec = both(hand_model(tmp_path))
    text = "a " * 512 + "b " * 88  # 600 tokens, 1200 chars (< 2560: no character cut)
    # model2vec keeps the first 512 tokens: all "a" -> A; the StaticBackend's tokenizer file has no truncation.
    assert_close(model2vec.encode([text])[0], A)
    assert_close(backend.encode([text])[0], unit([0, 512, 88, 0]))  # (512 A + 88 B) / 600, normalised


def test_text_past_the_character_limit(tmp_path: Path) -> None:
    backend, model2vec = both(hand_model(tmp_path))
    text = "hello " * 300 + "world " * 300  # 600 tokens, 3600 chars
    # model2vec cuts the text at 512 * 5 = 2560 chars: 300 "hello " (1800) + 126 "world " (756)
    # + "worl", which is [UNK] and dropped: mean (300 HELLO + 126 WORLD) / 426.
    expected_model2vec = (300 * np.array(HELLO) + 126 * np.array(WORLD)) / 426
    assert_close(expected_model2vec, np.array([126, 900, 1452, 252]) / 426)
    assert_close(model2vec.encode([text])[0], expected_model2vec)
    # backend: every token, (300 HELLO + 300 WORLD) / 600 = (0.5, 1.5, 3, 1), norm sqrt(12.5)
    assert_close(backend.encode([text])[0], np.array([0.5, 1.5, 3, 1]) / np.sqrt(12.5))


def test_truncation_in_the_tokenizer_file(tmp_path: Path) -> None:
    folder = hand_model(tmp_path, edit=lambda tokenizer: tokenizer.enable_truncation(max_length=3))
    backend, model2vec = both(folder)
    _, model2vec_2 = both(folder, max_length=2)
    text = "hello world a b"
    # backend honours the file: ids [1, 2, 3] -> (HELLO + WORLD + A) / 3 = (1, 4, 6, 2) / 3, norm sqrt(57) / 3
    assert_close(backend.encode([text])[0], np.array([1, 4, 6, 2]) / np.sqrt(57))
    # model2vec ignores it and uses its own max_length (512): all four, (1, 4, 7, 2) / 4, not normalised
    assert_close(model2vec.encode([text])[0], [0.25, 1, 1.75, 0.5])
    # ... and with max_length=2 it first cuts at 2 * 5 = 10 chars, "hello worl": [hello, UNK] -> HELLO
    assert_close(model2vec_2.encode([text])[0], HELLO)


def test_fixed_padding_in_the_tokenizer_file_is_pooled_by_static_backend(tmp_path: Path) -> None:
    # The StaticBackend's tokenizer pads every single encode to length 4 with "a" (id 3): pads are rows too.
    folder = hand_model(tmp_path, edit=lambda tokenizer: tokenizer.enable_padding(length=4, pad_id=3, pad_token="a"))
    backend, model2vec = both(folder)
    # backend: [hello, a, a, a] -> (0, 6, 4, 0) / 4, normalised; model2vec never pads: HELLO.
    assert_close(backend.encode(["hello", "hello world"]), [unit([0, 6, 4, 0]), unit([1, 5, 6, 2])])
    assert_close(model2vec.encode(["hello"])[0], HELLO)


def test_batch_longest_padding_never_pads_one_text(tmp_path: Path) -> None:
    # The StaticBackend encodes one text at a time: padding to the batch's longest text pads nothing there.
    folder = hand_model(tmp_path, edit=lambda tokenizer: tokenizer.enable_padding(pad_id=3, pad_token="a"))
    backend, _ = both(folder)
    assert_close(backend.encode(["hello", "hello world world world b"]), [[0, 0.6, 0.8, 0], unit([3, 3, 11, 6])])


def test_pad_to_multiple_of_in_the_tokenizer_file_is_pooled_by_static_backend(tmp_path: Path) -> None:
    def pad(tokenizer: Tokenizer) -> None:
        tokenizer.enable_padding(pad_id=3, pad_token="a", pad_to_multiple_of=4)

    folder = hand_model(tmp_path, edit=pad)
    as_loaded = Tokenizer.from_file(str(folder / "tokenizer.json"))
    assert as_loaded.encode("hello", add_special_tokens=False).ids == [1, 3, 3, 3]
    assert as_loaded.encode("hello world a b a", add_special_tokens=False).ids == [1, 2, 3, 4, 3, 3, 3, 3]
    backend, _ = both(folder)
    # [hello, a, a, a] -> (0, 6, 4, 0) / 4; 5 tokens padded to 8: HELLO + WORLD + B + 5 A = (1, 8, 7, 2)
    assert_close(backend.encode(["hello", "hello world a b a"]), [unit([0, 6, 4, 0]), unit([1, 8, 7, 2])])


def test_static_backend_normalize_false_is_honoured_or_refused(tmp_path: Path) -> None:
    folder = hand_model(tmp_path)
    try:
        model = beam_m2v.load_model(folder, dim=4, normalize=False)
    except ValueError:  # refusing the option would be fine too (ModelLoadError is a ValueError)
        return
    assert model.settings.normalize is False
    assert_close(model.encode(["hello world"])[0], [0.5, 1.5, 3, 1])  # the plain mean (HELLO + WORLD) / 2


def test_no_special_tokens_are_added(tmp_path: Path) -> None:
    from tokenizers import processors

    def add_template(tokenizer: Tokenizer) -> None:
        tokenizer.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 5), ("[SEP]", 6)]
        )

    backend, _ = both(hand_model(tmp_path, edit=add_template))
    assert_close(backend.encode(["hello"])[0], [0, 0.6, 0.8, 0])  # not (HELLO + CLS + SEP) / 3


def test_ids_past_the_matrix_are_skipped_by_static_backend(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = hand_model(tmp_path, rows=5)  # ids 5 ([CLS]) and 6 ([SEP]) have no row
    backend = beam_m2v.load_model(folder, dim=4)
    assert backend.matrix.rows == 5
    assert "ids up to 6" in caplog.text  # a warning, not an error
    # "hello [SEP]": ids [1, 6] -> 6 skipped -> HELLO alone (not a mean over 2); only skipped ids -> zeros
    texts = ["hello [SEP]", "[CLS] [SEP]", "[CLS] zzz b"]
    assert_close(backend.encode(texts), [[0, 0.6, 0.8, 0], [0, 0, 0, 0], unit([2, 0, 1, 0])])


def test_ids_past_the_matrix_refuse_model2vec_semantics(tmp_path: Path) -> None:
    folder = hand_model(tmp_path, rows=5)
    with pytest.raises(ModelLoadError) as caught:
        beam_m2v.load_model(folder, dim=4, semantics="model2vec")
    error = caught.value
    assert error.path == str(folder / "vocab_matrix.bin")
    assert "5 rows" in error.problem and "ids up to 6" in error.problem


def test_tokenizer_error_gives_a_zero_vector(tmp_path: Path) -> None:
    # A WordLevel tokenizer whose [UNK] is not in its vocabulary fails on an unknown word:
    # "WordLevel error: Missing [UNK] token from the vocabulary".
    tokenizer = Tokenizer(models.WordLevel({"hello": 0, "world": 1}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    with pytest.raises(Exception, match="Missing"):
        tokenizer.encode("hello zzz", add_special_tokens=False)
    folder = write_raw(tmp_path / "broken", tokenizer, np.eye(2, 4))
    backend = beam_m2v.load_model(folder, dim=4)
    assert_close(backend.encode(["hello zzz", "world"]), [[0, 0, 0, 0], [0, 1, 0, 0]])


def test_only_tokenizer_failures_fall_back_from_the_piece_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The text-by-text fallback is for the tokenizer's own errors (the StaticBackend's zero vector);
    # an error anywhere else on the piece path is a bug and must reach the caller, not be tokenized around.
    tokenizer = Tokenizer(models.WordLevel({"hello": 0, "world": 1}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    with pytest.raises(PieceTokenizingError, match="Missing") as caught:
        piece_token_ids(pa.array(["hello zzz"]), PieceCache(tokenizer))
    assert caught.value.__cause__ is not None  # the tokenizer's own error
    backend = beam_m2v.load_model(write_raw(tmp_path / "broken", tokenizer, np.eye(2, 4)), dim=4)
    assert backend.text_to_ids.by_piece
    with caplog.at_level(logging.DEBUG, logger="beam_m2v.text_to_ids"):
        assert_close(backend.encode(["hello zzz", "world"]), [[0, 0, 0, 0], [0, 1, 0, 0]])
    assert "the tokenizer failed on the pieces of a batch" in caplog.text

    def gather_with_a_bug(*args: object) -> None:
        raise IndexError("a bug on the piece path")

    monkeypatch.setattr(piece_tokenization, "gather_piece_ids", gather_with_a_bug)
    with pytest.raises(IndexError, match="a bug on the piece path"):
        backend.encode(["hello world"])


# -- (c) a raw model made from the 256-dim test model --------------------------------------------

SPECIAL_TEXTS = ["\u2603", "crab \U0001f980 rust", "hello [UNK] world", "", "\u2135 \u2318 snow"]


@pytest.fixture(scope="module")
def raw_minilm(tmp_path_factory: pytest.TempPathFactory, model_256_path: Path) -> Path:
    """m2v-minilm-256's ``embeddings`` written as ``vocab_matrix.bin`` next to its tokenizer.json."""
    folder = tmp_path_factory.mktemp("raw-minilm")
    load_file(str(model_256_path / "model.safetensors"))["embeddings"].astype("<f4").tofile(folder / "vocab_matrix.bin")
    shutil.copyfile(model_256_path / "tokenizer.json", folder / "tokenizer.json")
    return folder


@pytest.fixture(scope="module")
def minilm_matrix(raw_minilm: Path) -> np.ndarray:
    return np.fromfile(raw_minilm / "vocab_matrix.bin", dtype="<f4").reshape(-1, 256)


@pytest.fixture(scope="module")
def long_text(corpus_texts: list[str]) -> str:
    """One text of well over 512 tokens (the tokenizer file of the shared model truncates at 512)."""
    return " ".join(corpus_texts[:60])


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """HF_HUB_OFFLINE=1, for this process too (huggingface_hub reads the variable at import)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def per_text_static_backend(tokenizer_path: Path, matrix: np.ndarray, texts: Sequence[str]) -> np.ndarray:
    """The StaticBackend's rules, plainly, one text at a time."""
    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    out = np.zeros((len(texts), matrix.shape[1]), dtype=np.float32)
    for row, text in enumerate(texts):
        ids = [i for i in tokenizer.encode(text, add_special_tokens=False).ids if i < matrix.shape[0]]
        if not ids:
            continue
        mean = matrix[ids].mean(axis=0, dtype=np.float32)
        norm = np.sqrt(np.sum(mean * mean, dtype=np.float32))
        out[row] = mean / max(norm, np.float32(1e-12))
    return out


def test_every_source_kind_gives_the_same_vectors(
    raw_minilm: Path, tmp_path: Path, offline: None, corpus_texts: list[str], long_text: str
) -> None:
    # The matrix alone in another folder, so that only tokenizer= can supply the tokenizer.
    lone = tmp_path / "lone"
    lone.mkdir()
    os.link(raw_minilm / "vocab_matrix.bin", lone / "vocab_matrix.bin")
    tokenizer_dir = tmp_path / "tok"
    tokenizer_dir.mkdir()
    shutil.copyfile(raw_minilm / "tokenizer.json", tokenizer_dir / "tokenizer.json")
    cache = tmp_path / "hub"
    populate_hub_cache(cache, "owner/raw", {"vocab_matrix.bin": raw_minilm / "vocab_matrix.bin"})
    populate_hub_cache(cache, "owner2/tok", {"tokenizer.json": raw_minilm / "tokenizer.json"})

    sources = {
        "folder": (raw_minilm, {}),
        "folder as str": (str(raw_minilm), {}),
        "matrix file, tokenizer beside it": (str(raw_minilm / "vocab_matrix.bin"), {}),
        "matrix file + tokenizer file": (
            lone / "vocab_matrix.bin",
            {"tokenizer": str(tokenizer_dir / "tokenizer.json")},
        ),
        "matrix file + tokenizer folder": (str(lone / "vocab_matrix.bin"), {"tokenizer": str(tokenizer_dir)}),
        "file:// folder": (f"file://{raw_minilm}", {}),
        "file:// matrix file": (f"file://{raw_minilm / 'vocab_matrix.bin'}", {}),
        "hub cache": ("hf://owner/raw/vocab_matrix.bin", {"tokenizer": "owner2/tok", "cache_dir": str(cache)}),
    }
    texts = [*corpus_texts[:300], *SPECIAL_TEXTS, long_text]
    reference = None
    for name, (source, options) in sources.items():
        model = beam_m2v.load_model(source, **options)
        assert model.settings.semantics is Semantics.STATIC_BACKEND, name
        assert model.matrix.rows == 29525 and model.dim == 256, name
        vectors = model.encode(texts)
        if reference is None:
            reference = vectors
        else:
            np.testing.assert_array_equal(vectors, reference, err_msg=name)
    hub_model = beam_m2v.load_model("hf://owner/raw/vocab_matrix.bin", tokenizer="owner2/tok", cache_dir=str(cache))
    assert "models--owner2--tok" in hub_model.files.tokenizer
    assert "models--owner--raw" in hub_model.files.matrix


def test_static_backend_equals_a_per_text_implementation(
    raw_minilm: Path, minilm_matrix: np.ndarray, corpus_texts: list[str], long_text: str
) -> None:
    texts = [*corpus_texts, *SPECIAL_TEXTS, long_text, long_text[:5000]]
    vectors = beam_m2v.load_model(raw_minilm).encode(texts)
    expected = per_text_static_backend(raw_minilm / "tokenizer.json", minilm_matrix, texts)
    assert float(np.abs(vectors - expected).max()) <= ATOL
    # The file's truncation (512) is honoured: the long text's vector is that of its first 512 tokens.
    tokenizer = Tokenizer.from_file(str(raw_minilm / "tokenizer.json"))
    assert tokenizer.truncation is not None and tokenizer.truncation["max_length"] == 512
    tokenizer.no_truncation()
    assert len(tokenizer.encode(long_text, add_special_tokens=False).ids) > 1000
    np.testing.assert_array_equal(vectors[-2], vectors[-1])  # first 5000 chars still hold > 512 tokens


def test_model2vec_semantics_equals_static_model_on_the_original_folder(
    raw_minilm: Path, model_256_path: Path, corpus_texts: list[str]
) -> None:
    texts = corpus_texts[:2000]
    # The raw format has no config.json, so model2vec semantics falls back to normalize=False, while
    # the original folder's config says normalize: true. Each equals StaticModel with the same setting,
    # bit for bit (the matrix and tokenizer are the same; the corpus slice has no [UNK], see below).
    unnormalised = beam_m2v.load_model(raw_minilm, semantics="model2vec").encode(texts)
    reference = StaticModel.from_pretrained(model_256_path, normalize=False).encode(texts)
    np.testing.assert_array_equal(unnormalised, reference)
    normalised = beam_m2v.load_model(raw_minilm, semantics="model2vec", normalize=True).encode(texts)
    np.testing.assert_array_equal(normalised, StaticModel.from_pretrained(model_256_path).encode(texts))


def test_semantics_agree_on_the_corpus_and_differ_on_unk(raw_minilm: Path, corpus_texts: list[str]) -> None:
    backend = beam_m2v.load_model(raw_minilm)
    model2vec = beam_m2v.load_model(raw_minilm, semantics="model2vec", normalize=True)
    # Checked facts about the first 5,000 paragraphs: no [UNK] (id 1) and none longer than 512 tokens.
    tokenizer = Tokenizer.from_file(str(raw_minilm / "tokenizer.json"))
    tokenizer.no_truncation()
    encodings = tokenizer.encode_batch(corpus_texts, add_special_tokens=False)
    assert not any(1 in encoding.ids for encoding in encodings)
    assert max(len(encoding.ids) for encoding in encodings) <= 512
    # Hence the two semantics pool the same ids; only the normalisation's rounding differs (last ulp:
    # the StaticBackend divides by sqrt(einsum), model2vec by np.linalg.norm + 1e-32).
    assert float(np.abs(backend.encode(corpus_texts) - model2vec.encode(corpus_texts)).max()) <= ATOL
    # Texts with [UNK] do differ: the StaticBackend keeps its row, model2vec drops it ("\u2603" is only [UNK]).
    backend_special, model2vec_special = backend.encode(SPECIAL_TEXTS[:3]), model2vec.encode(SPECIAL_TEXTS[:3])
    # ([UNK]'s row is short, so one [UNK] among a few tokens moves the vector by ~5e-4, still far above 1e-6.)
    assert np.abs(backend_special - model2vec_special).max(axis=1).min() > 1e-4
    np.testing.assert_array_equal(model2vec_special[0], np.zeros(256, dtype=np.float32))
    assert_close(backend_special[0], unit(backend.matrix.embeddings[1]))


# -- (d) EmbedText on FnApiRunner -----------------------------------------------------------------


def test_embed_text_carries_the_semantics(raw_minilm: Path, corpus_texts: list[str], long_text: str) -> None:
    texts = [*corpus_texts[:300], *[text for text in SPECIAL_TEXTS if text], long_text]
    backend_vectors = beam_m2v.load_model(raw_minilm).encode(texts)
    model2vec_vectors = beam_m2v.load_model(raw_minilm, semantics="model2vec").encode(texts)
    assert not np.array_equal(backend_vectors, model2vec_vectors)
    backend_transform = beam_m2v.EmbedText(str(raw_minilm), batch_size=100)
    model2vec_transform = beam_m2v.EmbedText(str(raw_minilm), semantics="model2vec", batch_size=100)
    assert backend_transform.spec.semantics is None and model2vec_transform.spec.semantics == "model2vec"
    with fn_api_pipeline() as p:
        pcoll = p | beam.Create(texts)
        backend = pcoll | "StaticBackend" >> backend_transform
        model2vec = pcoll | "Model2Vec" >> model2vec_transform
        assert_vectors(
            backend.embedded,
            dict(zip(texts, backend_vectors, strict=True)),
            label="StaticBackendVectors",
        )
        assert_vectors(
            model2vec.embedded,
            dict(zip(texts, model2vec_vectors, strict=True)),
            label="Model2VecVectors",
        )
        assert_that(backend.failed, equal_to([]), label="StaticBackendNoFailures")
        assert_that(model2vec.failed, equal_to([]), label="Model2VecNoFailures")


def test_embed_text_with_a_raw_model_of_another_dimension(tmp_path: Path) -> None:
    # A raw matrix of another width than 256, named by a ModelSpec with its raw_dim.
    folder = hand_model(tmp_path)
    texts = ["hello zzz", "hello world", "zzz", ""]
    expected = {
        "hello zzz": np.float32(np.array([1, 1.5, 2, 0]) / np.sqrt(7.25)),
        "hello world": np.float32(np.array([0.5, 1.5, 3, 1]) / np.sqrt(12.5)),
        "zzz": np.float32([1, 0, 0, 0]),
        "": np.zeros(4, dtype=np.float32),
    }
    spec = beam_m2v.ModelSpec(source=str(folder), raw_dim=4)

    def close_to_expected(actual: list[tuple[str, np.ndarray]]) -> None:
        assert sorted(text for text, _ in actual) == sorted(texts)
        for text, vector in actual:
            assert_close(vector, expected[text])

    with fn_api_pipeline() as p:
        result = p | beam.Create(texts) | beam_m2v.EmbedText(spec)
        assert_that(result.embedded, close_to_expected)
        assert_that(result.failed, equal_to([]), label="NoFailures")
