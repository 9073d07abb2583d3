"""Damaged models and bad load options are refused at load with a ModelLoadError naming the file and the cause."""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from model2vec import StaticModel
from safetensors.numpy import save_file
from tiny_models import (
    TRAINING_CORPUS,
    build_model2vec_model,
    build_raw_model,
    build_sentence_transformers_model,
    copy_model,
    edit_json,
    make_tokenizer,
    vocab_size,
    write_safetensors_raw,
)

import beam_m2v
from beam_m2v import InvalidTextError, ModelLoadError
from beam_m2v.model_options import ModelKeywords, ModelOptions
from beam_m2v.transforms.model_cache import ModelSpec

REPO = Path(__file__).resolve().parents[1]
TEXTS = [*TRAINING_CORPUS[:12], "", "hello world " * 300]
DIM = 8
ROWS = vocab_size(make_tokenizer("wordpiece"))


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_model2vec_model(tmp_path_factory.mktemp("pristine") / "model", dim=DIM, seed=3)


@pytest.fixture
def model(pristine: Path, tmp_path: Path) -> Path:
    """A writable copy of the tiny model, to damage."""
    return copy_model(pristine, tmp_path / "model")


@pytest.fixture(scope="module")
def quantized(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_model2vec_model(tmp_path_factory.mktemp("quantized") / "model", dim=4, quantized_rows=7, seed=4)


def refusal(source: str | os.PathLike[str], **kwargs: Any) -> ModelLoadError:
    with pytest.raises(ModelLoadError) as info:
        beam_m2v.load_model(source, **kwargs)
    return info.value


def assert_blames(error: ModelLoadError, path: str | os.PathLike[str], *words: str) -> None:
    """The error names exactly ``path`` and its problem mentions every word (case-insensitive)."""
    assert error.path == os.fspath(path), (error.path, os.fspath(path))
    assert str(error).startswith(os.fspath(path))
    assert "\n" not in str(error)
    for word in words:
        assert word.lower() in error.problem.lower(), f"{word!r} not in {error.problem!r}"


def tensor_offset(path: Path, name: str) -> tuple[int, np.dtype[Any], list[int]]:
    """Byte offset in the file, dtype and shape of a safetensors tensor (read independently of beam_m2v)."""
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    info = json.loads(data[8 : 8 + length])[name]
    dtype = {"F16": "<f2", "F32": "<f4", "F64": "<f8", "I32": "<i4", "I64": "<i8"}[info["dtype"]]
    return 8 + length + info["data_offsets"][0], np.dtype(dtype), info["shape"]


def poke(path: Path, name: str, flat_index: int, value: float | int) -> None:
    """Overwrite one element of a tensor in a safetensors file, in place."""
    offset, dtype, _ = tensor_offset(path, name)
    with open(path, "r+b") as handle:
        handle.seek(offset + flat_index * dtype.itemsize)
        handle.write(np.array([value], dtype=dtype).tobytes())


def rewrite_tensors(folder: Path, **tensors: np.ndarray) -> Path:
    path = folder / "model.safetensors"
    save_file({name: np.ascontiguousarray(array) for name, array in tensors.items()}, str(path))
    return path


# -- non-finite values ---------------------------------------------------------------------------


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_embeddings_refused(model: Path, value: float) -> None:
    poke(model / "model.safetensors", "embeddings", 5 * DIM + 3, value)
    assert_blames(refusal(model), model / "model.safetensors", "non-finite", "row 5", "column 3", "embeddings")


@pytest.mark.parametrize("dtype", ["float16", "float64"])
def test_non_finite_in_other_dtypes_refused(tmp_path: Path, dtype: str) -> None:
    folder = build_model2vec_model(tmp_path / "m", dim=DIM, dtype=dtype, seed=5)
    poke(folder / "model.safetensors", "embeddings", (ROWS - 1) * DIM, np.nan)
    assert_blames(refusal(folder), folder / "model.safetensors", "non-finite", f"row {ROWS - 1}", "column 0")


def test_nan_in_bundled_model_copy_refused(model_64_path: Path, tmp_path: Path) -> None:
    folder = copy_model(model_64_path, tmp_path / "m64")
    _, _, shape = tensor_offset(folder / "model.safetensors", "embeddings")
    poke(folder / "model.safetensors", "embeddings", shape[0] * shape[1] - 1, np.inf)
    error = refusal(folder, dimensionality=16)  # also outside the kept columns: the file is damaged
    assert_blames(error, folder / "model.safetensors", "non-finite", f"row {shape[0] - 1}", f"column {shape[1] - 1}")


def test_non_finite_raw_matrix_refused(tmp_path: Path) -> None:
    folder = build_raw_model(tmp_path / "raw", dim=DIM)
    matrix = np.fromfile(folder / "vocab_matrix.bin", dtype="<f4")
    matrix[17] = np.nan
    matrix.tofile(folder / "vocab_matrix.bin")
    assert_blames(refusal(folder, raw_dim=DIM), folder / "vocab_matrix.bin", "non-finite", "row 2", "column 1")


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_weights_refused(quantized: Path, tmp_path: Path, value: float) -> None:
    folder = copy_model(quantized, tmp_path / "q")
    poke(folder / "model.safetensors", "weights", 9, value)
    assert_blames(refusal(folder), folder / "model.safetensors", "weights", "non-finite", "row 9")


# -- vocabulary-quantized models: mapping and weights -------------------------------------------


@pytest.mark.parametrize(("row", "shown"), [(-1, "-1"), (-(2**31), str(-(2**31))), (7, "7"), (10**6, str(10**6))])
def test_mapping_out_of_range_refused(quantized: Path, tmp_path: Path, row: int, shown: str) -> None:
    folder = copy_model(quantized, tmp_path / "q")
    poke(folder / "model.safetensors", "mapping", 11, row)
    assert_blames(refusal(folder), folder / "model.safetensors", "mapping", shown, "0..6")


@pytest.mark.parametrize(
    ("mapping", "what"),
    [(np.zeros(ROWS, dtype=np.float32), "float32"), (np.zeros((ROWS, 1), dtype=np.int64), "(400, 1)")],
)
def test_mapping_of_wrong_kind_refused(quantized: Path, tmp_path: Path, mapping: np.ndarray, what: str) -> None:
    folder = copy_model(quantized, tmp_path / "q")
    weights = np.ones(ROWS, dtype=np.float32)
    path = rewrite_tensors(folder, embeddings=np.ones((7, 4), np.float32), mapping=mapping, weights=weights)
    assert_blames(refusal(folder), path, "mapping", what.replace("400", str(ROWS)))


@pytest.mark.parametrize("length", [ROWS - 1, ROWS + 1, 7])
def test_weights_of_wrong_length_refused(quantized: Path, tmp_path: Path, length: int) -> None:
    folder = copy_model(quantized, tmp_path / "q")
    path = rewrite_tensors(
        folder,
        embeddings=np.ones((7, 4), np.float32),
        mapping=np.zeros(ROWS, np.int64),
        weights=np.ones(length, np.float32),
    )
    assert_blames(refusal(folder), path, "weights", str(length), str(ROWS))


def test_weights_without_mapping_must_match_rows(model: Path) -> None:
    path = rewrite_tensors(model, embeddings=np.ones((ROWS, DIM), np.float32), weights=np.ones(ROWS + 3, np.float32))
    assert_blames(refusal(model), path, "weights", str(ROWS + 3), str(ROWS))


@pytest.mark.parametrize(
    ("weights", "what"), [(np.ones(ROWS, np.int32), "int32"), (np.ones((ROWS, 2), np.float32), "2")]
)
def test_weights_of_wrong_kind_refused(quantized: Path, tmp_path: Path, weights: np.ndarray, what: str) -> None:
    folder = copy_model(quantized, tmp_path / "q")
    path = rewrite_tensors(
        folder, embeddings=np.ones((7, 4), np.float32), mapping=np.zeros(ROWS, np.int64), weights=weights
    )
    assert_blames(refusal(folder), path, "weights", what)


def test_valid_quantized_model_still_equals_model2vec(quantized: Path) -> None:
    reference = StaticModel.from_pretrained(quantized).encode(TEXTS)
    assert np.array_equal(beam_m2v.load_model(quantized).encode(TEXTS), reference)


# -- config values -------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [-1, "512", 512.0, 0.5, True, False, [512], {"tokens": 512}, 2**70 * -1])
def test_bad_config_max_length_refused(model: Path, value: object) -> None:
    edit_json(model / "config.json", lambda config: config.update(max_length=value))
    assert_blames(refusal(model), model / "config.json", "max_length", json.dumps(value)[:10].strip('"'))


@pytest.mark.parametrize("value", ["false", "true", 0, 1, None, [], "no"])
def test_bad_config_normalize_refused(model: Path, value: object) -> None:
    edit_json(model / "config.json", lambda config: config.update(normalize=value))
    assert_blames(refusal(model), model / "config.json", "normalize", "true or false")


def test_both_bad_config_values_are_named(model: Path) -> None:
    edit_json(model / "config.json", lambda config: config.update(normalize="yes", max_length=-1))
    assert_blames(refusal(model), model / "config.json", "normalize", '"yes"', "max_length", "-1")


def test_bad_sentence_transformers_config_names_its_file(tmp_path: Path) -> None:
    folder = build_sentence_transformers_model(tmp_path / "st", dim=4, config_extra={"normalize": "false"})
    assert_blames(refusal(folder), folder / "config_sentence_transformers.json", "normalize")


def test_valid_config_values_still_load(model: Path) -> None:
    edit_json(model / "config.json", lambda config: config.update(max_length=None, normalize=False))
    loaded = beam_m2v.load_model(model)
    assert loaded.settings.max_length is None and loaded.settings.normalize is False
    assert np.array_equal(loaded.encode(TEXTS), StaticModel.from_pretrained(model).encode(TEXTS))
    edit_json(model / "config.json", lambda config: config.update(max_length=7, normalize=True))
    loaded = beam_m2v.load_model(model)
    assert loaded.settings.max_length == 7 and type(loaded.settings.max_length) is int
    assert np.array_equal(loaded.encode(TEXTS), StaticModel.from_pretrained(model).encode(TEXTS))


# -- safetensors headers -------------------------------------------------------------------------


def embeddings_entry(**changes: object) -> dict[str, object]:
    entry: dict[str, object] = {"dtype": "F32", "shape": [ROWS, DIM], "data_offsets": [0, ROWS * DIM * 4]}
    entry.update(changes)
    return {"embeddings": entry}


@pytest.mark.parametrize(
    "shape",
    [
        [2**32, 2**32],  # product 2**64: wraps to 0 in int64
        [2**62, 16],
        [2**63 + 1, DIM],
        [-ROWS, -DIM],  # product positive, sizes negative
        [-1, DIM],
    ],
)
def test_header_shapes_that_overflow_or_are_negative(model: Path, shape: list[int]) -> None:
    header = embeddings_entry(shape=shape, data_offsets=[0, 0])
    path = write_safetensors_raw(model / "model.safetensors", header, b"\x00" * (ROWS * DIM * 4))
    error = refusal(model)
    assert_blames(error, path, "embeddings", "shape")
    assert "needs 0 bytes" not in error.problem


@pytest.mark.parametrize("shape", [[str(ROWS), DIM], [float(ROWS), DIM], [True, DIM], "400x8", None, [[ROWS], DIM]])
def test_header_shapes_that_are_not_sizes(model: Path, shape: object) -> None:
    path = write_safetensors_raw(model / "model.safetensors", embeddings_entry(shape=shape), b"\x00" * (ROWS * DIM * 4))
    assert_blames(refusal(model), path, "embeddings", "shape")


def test_header_shape_mismatching_the_offsets(model: Path) -> None:
    header = embeddings_entry(shape=[ROWS, DIM * 2])
    path = write_safetensors_raw(model / "model.safetensors", header, b"\x00" * (ROWS * DIM * 8))
    assert_blames(refusal(model), path, "embeddings", str(ROWS * DIM * 8), str(ROWS * DIM * 4))


@pytest.mark.parametrize(
    "offsets",
    [
        [-8, ROWS * DIM * 4 - 8],  # negative begin, right length
        [-ROWS * DIM * 4, 0],
        [ROWS * DIM * 4, 0],  # reversed
        [0, -ROWS * DIM * 4],
    ],
)
def test_negative_or_reversed_offsets_are_named_without_contradiction(model: Path, offsets: list[int]) -> None:
    header = embeddings_entry(data_offsets=offsets)
    path = write_safetensors_raw(model / "model.safetensors", header, b"\x00" * (ROWS * DIM * 4))
    error = refusal(model)
    assert_blames(error, path, "embeddings", "data_offsets", str(offsets[0]), str(offsets[1]), "0 <= begin <= end")
    assert "needs" not in error.problem  # the sizes agree: the offsets themselves are what is wrong


@pytest.mark.parametrize(
    "offsets", [[0.0, ROWS * DIM * 4.0], ["0", str(ROWS * DIM * 4)], [0], [0, 1, 2], None, [True, ROWS * DIM * 4]]
)
def test_offsets_that_are_not_two_integers(model: Path, offsets: object) -> None:
    header = embeddings_entry(data_offsets=offsets)
    path = write_safetensors_raw(model / "model.safetensors", header, b"\x00" * (ROWS * DIM * 4))
    assert_blames(refusal(model), path, "embeddings", "data_offsets")


@pytest.mark.parametrize("dtype", [["F32"], 32, None, "f32", "F32 ", "float32", "BF16", "U32", "F8_E5M2"])
def test_unknown_or_malformed_dtypes(model: Path, dtype: object) -> None:
    header = embeddings_entry(dtype=dtype)
    path = write_safetensors_raw(model / "model.safetensors", header, b"\x00" * (ROWS * DIM * 4))
    assert_blames(refusal(model), path, "embeddings", "dtype")


@pytest.mark.parametrize("entry", [[1, 2, 3], "F32", 7, {"dtype": "F32", "shape": [ROWS, DIM]}])
def test_header_entries_that_are_not_objects(model: Path, entry: object) -> None:
    path = write_safetensors_raw(model / "model.safetensors", {"embeddings": entry}, b"\x00" * 64)
    assert_blames(refusal(model), path, "embeddings", "header")


@pytest.mark.parametrize("header", [b"[" * 100_000, b'{"a": ' + b"9" * 5000 + b"}"])
def test_pathological_json_headers(model: Path, header: bytes) -> None:
    path = write_safetensors_raw(model / "model.safetensors", header, b"")
    assert_blames(refusal(model), path, "header")


# -- the raw format and its dimension ------------------------------------------------------------


@pytest.mark.parametrize("wrong_dim", [DIM // 2, DIM * 2, 1, ROWS * DIM])
@pytest.mark.parametrize("semantics", [None, "model2vec"])
def test_raw_matrix_read_with_the_wrong_dim(tmp_path: Path, wrong_dim: int, semantics: str | None) -> None:
    folder = build_raw_model(tmp_path / "raw", dim=DIM)
    error = refusal(folder, raw_dim=wrong_dim, semantics=semantics)
    assert_blames(error, folder / "vocab_matrix.bin", f"raw_dim={wrong_dim}", f"pass raw_dim={DIM}", str(ROWS))


def test_bundled_model_as_raw_matrix_read_with_the_wrong_dim(model_64_path: Path, tmp_path: Path) -> None:
    folder = tmp_path / "raw64"
    folder.mkdir()
    rows = beam_m2v.load_model(model_64_path).matrix.embeddings
    np.asarray(rows, dtype="<f4").tofile(folder / "vocab_matrix.bin")
    (folder / "tokenizer.json").write_bytes((model_64_path / "tokenizer.json").read_bytes())
    for wrong in (32, 16, 8):
        error = refusal(folder, raw_dim=wrong)
        assert_blames(
            error, folder / "vocab_matrix.bin", f"raw_dim={wrong}", "pass raw_dim=64", f"{rows.shape[0]} rows"
        )
    for wrong in (128, 256):  # the default; 29,525 rows x 64 values are not a multiple of either
        assert_blames(
            refusal(folder, raw_dim=wrong), folder / "vocab_matrix.bin", f"not a multiple of dimension {wrong}"
        )
    assert beam_m2v.load_model(folder, raw_dim=64).dim == 64


def test_raw_matrix_length_not_a_multiple_of_dim(tmp_path: Path) -> None:
    folder = build_raw_model(tmp_path / "raw", dim=DIM)
    assert_blames(refusal(folder, raw_dim=7), folder / "vocab_matrix.bin", "multiple of dimension 7")


def test_raw_matrix_with_fewer_rows_under_model2vec_semantics(tmp_path: Path) -> None:
    folder = build_raw_model(tmp_path / "raw", dim=DIM, rows=ROWS - 3)
    error = refusal(folder, raw_dim=DIM, semantics="model2vec")
    assert_blames(error, folder / "vocab_matrix.bin", str(ROWS - 3), "rows", "tokenizer")
    assert beam_m2v.load_model(folder, raw_dim=DIM).dim == DIM  # the seed skips the missing ids


@pytest.mark.parametrize(
    ("content", "what"),
    [
        (b"PK\x03\x04" + b"\x00" * 60, "zip"),
        (b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19" + b"\x00" * 48, "PyTorch"),
        (b"\x1f\x8b\x08\x00" + b"\x00" * 60, "gzip"),
        (b"\x93NUMPY\x01\x00" + b"\x00" * 56, "npy"),
    ],
)
def test_raw_path_holding_another_format(tmp_path: Path, content: bytes, what: str) -> None:
    folder = build_raw_model(tmp_path / "raw", dim=DIM)
    (folder / "vocab_matrix.bin").write_bytes(content)
    assert_blames(refusal(folder, raw_dim=DIM), folder / "vocab_matrix.bin", "not a raw float32 matrix", what)


def test_safetensors_file_named_bin(pristine: Path, tmp_path: Path) -> None:
    folder = build_raw_model(tmp_path / "raw", dim=DIM)
    (folder / "vocab_matrix.bin").write_bytes((pristine / "model.safetensors").read_bytes())
    assert_blames(refusal(folder, raw_dim=DIM), folder / "vocab_matrix.bin", "safetensors")


# -- paths ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["notes.txt", "config.json", "tokenizer.json", "README.md"])
def test_model_path_that_is_a_plain_file(model: Path, name: str) -> None:
    path = model / name
    if not path.exists():
        path.write_text("not a model")
    assert_blames(refusal(path), path, "a file, not a model", "folder")


def test_model_path_that_is_a_symlink_loop(tmp_path: Path) -> None:
    loop_a, loop_b = tmp_path / "loop_a", tmp_path / "loop_b"
    loop_a.symlink_to(loop_b)
    loop_b.symlink_to(loop_a)
    assert_blames(refusal(loop_a), loop_a, "symbolic link loop")
    relative = refusal(os.path.relpath(loop_a))  # a relative name is not sent to the hub either
    assert_blames(relative, os.path.relpath(loop_a), "symbolic link loop")
    inside = tmp_path / "loop_a" / "model"
    assert "loop" in refusal(inside).problem


def test_model_path_that_is_a_broken_link(tmp_path: Path) -> None:
    link = tmp_path / "model"
    link.symlink_to(tmp_path / "gone")
    assert_blames(refusal(link), link, "broken symbolic link", "gone")


@pytest.mark.parametrize("name", ["model.safetensors", "tokenizer.json", "config.json"])
def test_file_in_model_folder_that_is_a_loop(model: Path, name: str) -> None:
    (model / name).unlink()
    (model / name).symlink_to(model / name)
    assert_blames(refusal(model), model / name, "symbolic link loop")


@pytest.mark.parametrize("name", ["model.safetensors", "tokenizer.json"])
def test_file_in_model_folder_that_is_a_broken_link_or_folder(model: Path, name: str) -> None:
    (model / name).unlink()
    (model / name).symlink_to(model / "elsewhere")
    assert_blames(refusal(model), model / name, "broken symbolic link")
    (model / name).unlink()
    (model / name).mkdir()
    assert_blames(refusal(model), model / name, "folder, not a file")


def test_tokenizer_option_that_is_a_loop(tmp_path: Path) -> None:
    folder = build_raw_model(tmp_path / "raw", dim=DIM, with_tokenizer=False)
    loop = tmp_path / "tok"
    loop.symlink_to(loop)
    assert_blames(refusal(folder, raw_dim=DIM, tokenizer=str(loop)), loop, "symbolic link loop")


def test_matrix_file_paths_still_load(pristine: Path, tmp_path: Path) -> None:
    expected = beam_m2v.load_model(pristine).encode(TEXTS)
    assert np.array_equal(beam_m2v.load_model(pristine / "model.safetensors").encode(TEXTS), expected)
    nested = build_sentence_transformers_model(tmp_path / "st", dim=4, nested=True)
    by_file = beam_m2v.load_model(nested / "0_StaticEmbedding" / "model.safetensors")
    assert np.array_equal(by_file.encode(TEXTS), beam_m2v.load_model(nested).encode(TEXTS))


# -- load_model keywords -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keyword", "value", "word"),
    [
        ("max_length", -1, "max_length"),
        ("max_length", "512", "max_length"),
        ("max_length", 1.5, "max_length"),
        ("max_length", True, "max_length"),
        ("normalize", "false", "normalize"),
        ("normalize", 1, "normalize"),
        ("dimensionality", 2.0, "dimensionality"),
        ("dimensionality", "4", "dimensionality"),
        ("dimensionality", True, "dimensionality"),
        ("raw_dim", 0, "raw_dim"),
        ("raw_dim", -8, "raw_dim"),
        ("raw_dim", 8.0, "raw_dim"),
        ("raw_dim", None, "raw_dim"),
        ("semantics", "bogus", "semantics"),
        ("semantics", 3, "semantics"),
        ("sha256", "abc", "sha256"),
        ("revision", 5, "revision"),
        ("tokenizer", 5, "tokenizer"),
        ("cache_dir", 5, "cache_dir"),
    ],
)
def test_bad_keywords_refused_naming_the_source(pristine: Path, keyword: str, value: object, word: str) -> None:
    error = refusal(pristine, **{keyword: value})
    assert_blames(error, pristine, word, repr(value)[:6])
    if value is None:
        return  # the transforms' options take None as "the default"
    with pytest.raises(ModelLoadError, match=word):
        ModelSpec.of(str(pristine), **{keyword: value})  # type: ignore[misc]
    with pytest.raises(ModelLoadError, match=word):
        beam_m2v.EmbedText(str(pristine), **{keyword: value})  # type: ignore[misc]


def test_model_options_are_defined_once() -> None:
    """load_model's keywords, ModelKeywords and ModelSpec all follow the fields of ModelOptions."""
    names = [option.name for option in dataclasses.fields(ModelOptions)]
    assert list(ModelKeywords.__annotations__) == names
    keywords = {
        name: parameter.default
        for name, parameter in inspect.signature(beam_m2v.load_model).parameters.items()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY
    }
    assert list(keywords) == [*names, "dim"]  # dim: the old name of raw_dim
    assert all(keywords[option.name] is option.default for option in dataclasses.fields(ModelOptions))
    assert [option.name for option in dataclasses.fields(ModelSpec)] == [*names, "source"]


def test_the_old_dim_keyword_is_raw_dim(tmp_path: Path) -> None:
    folder = build_raw_model(tmp_path / "raw", dim=DIM)
    with pytest.warns(DeprecationWarning, match="raw_dim"):
        old = beam_m2v.load_model(folder, dim=DIM)
    assert np.array_equal(old.encode(TEXTS), beam_m2v.load_model(folder, raw_dim=DIM).encode(TEXTS))
    with pytest.warns(DeprecationWarning, match="raw_dim"):
        assert beam_m2v.EmbedText(str(folder), dim=DIM).spec.raw_dim == DIM  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="both dim= and its new name raw_dim="), pytest.warns(DeprecationWarning):
        ModelSpec.of(str(folder), dim=DIM, raw_dim=DIM)


@pytest.mark.parametrize(
    "make",
    [
        beam_m2v.EmbedText,
        beam_m2v.EmbedTables,
        beam_m2v.Model2VecModelHandler,
        lambda model, **options: beam_m2v.Model2VecEmbeddings(model, columns=["text"], **options),
    ],
    ids=["EmbedText", "EmbedTables", "Model2VecModelHandler", "Model2VecEmbeddings"],
)
def test_an_unknown_model_keyword_is_a_type_error(pristine: Path, make: Any, request: pytest.FixtureRequest) -> None:
    name = request.node.callspec.id
    with pytest.raises(TypeError, match=rf"^{name}\(\) got an unexpected keyword argument 'dimensionalty' "):
        make(str(pristine), dimensionalty=3)
    with pytest.raises(TypeError, match=r"\(did you mean 'dimensionality'\?\)"):
        make(str(pristine), dimensionalty=3)
    assert make(str(pristine), dimensionality=3).spec.dimensionality == 3  # a well-spelled one is taken


@pytest.mark.parametrize("value", [0, -1, DIM + 1, 10**20])
def test_dimensionality_out_of_range_names_the_matrix(pristine: Path, value: int) -> None:
    assert_blames(
        refusal(pristine, dimensionality=value), pristine / "model.safetensors", "dimensionality", f"1..{DIM}"
    )


def test_numpy_keywords_are_accepted_as_their_values(pristine: Path) -> None:
    plain = beam_m2v.load_model(pristine, max_length=5, dimensionality=4, normalize=True)
    numpy = beam_m2v.load_model(pristine, max_length=np.int64(5), dimensionality=np.int32(4), normalize=np.True_)
    assert numpy.settings == plain.settings and type(numpy.settings.max_length) is int
    assert np.array_equal(numpy.encode(TEXTS), plain.encode(TEXTS))
    unlimited = beam_m2v.load_model(pristine, max_length=None)
    assert np.array_equal(unlimited.encode(TEXTS), StaticModel.from_pretrained(pristine).encode(TEXTS, max_length=None))


def test_source_of_the_wrong_type() -> None:
    with pytest.raises(ModelLoadError, match="not int"):
        beam_m2v.load_model(42)  # type: ignore[arg-type]


# -- remote filesystems without their extra, and platforms without fcntl -------------------------


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO, env=os.environ.copy()
    )


@pytest.mark.parametrize(
    ("url", "module", "extra"),
    [("gs://bucket/models/m2v", "google.cloud.storage", "gcp"), ("s3://bucket/models/m2v", "boto3", "aws")],
)
def test_remote_model_without_its_extra(url: str, module: str, extra: str) -> None:
    # The module the extra installs is made unimportable in a fresh interpreter, as if never installed.
    code = f"""
import sys
sys.modules[{module!r}] = None
import beam_m2v
try:
    beam_m2v.load_model({url!r})
except beam_m2v.ModelLoadError as error:
    print(error)
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert (
        result.stdout.strip()
        == f"{url}: reading {url[:2]}:// needs beam-m2v's {extra} extra: pip install 'beam-m2v[{extra}]'"
    )


def test_import_does_not_need_fcntl() -> None:
    code = """
import sys
sys.modules["fcntl"] = None
import beam_m2v, beam_m2v.loading, beam_m2v.sources, beam_m2v.remote_files
print(beam_m2v.load_model("models/m2v-minilm-64").dim)
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "64"


def test_errors_survive_pickling() -> None:
    error = pickle.loads(pickle.dumps(ModelLoadError("/m/model.safetensors", "damaged")))
    assert (error.path, error.problem, str(error)) == (
        "/m/model.safetensors",
        "damaged",
        "/m/model.safetensors: damaged",
    )
    invalid = pickle.loads(pickle.dumps(InvalidTextError(3, "text is null")))
    assert (invalid.index, invalid.reason, str(invalid)) == (3, "text is null", "text at position 3: text is null")


# -- the command line refuses in one line --------------------------------------------------------


def test_command_line_refuses_a_damaged_model_in_one_line(model: Path, tmp_path: Path) -> None:
    edit_json(model / "config.json", lambda config: config.update(max_length="512"))
    output = tmp_path / "out"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines.cli",
            "embed",
            "--input",
            str(REPO / "samples" / "linux-doc-sample.parquet"),
            "--output",
            str(output),
            "--model",
            str(model),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    [line] = [line for line in result.stderr.splitlines() if line.startswith("beam-m2v embed: error:")]
    assert str(model / "config.json") in line and "max_length" in line
    assert not output.exists()


def test_command_line_refuses_a_gs_model_without_the_gcp_extra_in_one_line(tmp_path: Path) -> None:
    output = tmp_path / "out"
    sample = str(REPO / "samples" / "linux-doc-sample.parquet")
    code = f"""
import sys
sys.modules["google.cloud.storage"] = None  # as if beam-m2v[gcp] were not installed
from pipelines.cli import main
sys.exit(main(["embed", "--input", {sample!r}, "--output", {str(output)!r}, "--model", "gs://bucket/models/m2v"]))
"""
    result = run_python(code)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    [line] = [line for line in result.stderr.splitlines() if line.startswith("beam-m2v embed: error:")]
    assert "gs://bucket/models/m2v" in line and "pip install 'beam-m2v[gcp]'" in line, line
    assert not output.exists()
