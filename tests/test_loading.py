"""Loading models: every layout and source, memory-mapping, and errors that name the file and the problem."""

from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import huggingface_hub.constants
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
    fake_commit,
    make_tokenizer,
    populate_hub_cache,
    read_raw_matrix,
    static_backend_reference_vectors,
    truncate_file,
    vocab_size,
    write_safetensors_raw,
    write_safetensors_with_header_length,
)

import beam_m2v
from beam_m2v import ModelLoadError
from beam_m2v.sources import HubOptions

REPO = Path(__file__).resolve().parents[1]
TEXTS = [*TRAINING_CORPUS[:25], "", "   ", "[CLS] x [SEP]", "\U0001f9ec unknown \u16a0", "hello world " * 400]
RAW_DIM = 8


def vectors_of(folder: Path, **kwargs: object) -> np.ndarray:
    return beam_m2v.load_model(folder, **kwargs).encode(TEXTS)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny, valid model2vec folder (WordPiece, 8 x float32) that tests copy before damaging."""
    return build_model2vec_model(tmp_path_factory.mktemp("pristine") / "model", dim=8, seed=11)


@pytest.fixture
def model_copy(pristine: Path, tmp_path: Path) -> Path:
    return copy_model(pristine, tmp_path / "model")


def load_error(source: str | os.PathLike[str], **kwargs: object) -> ModelLoadError:
    with pytest.raises(ModelLoadError) as info:
        beam_m2v.load_model(source, **kwargs)  # type: ignore[arg-type]
    return info.value


def assert_names(error: ModelLoadError, path: str | os.PathLike[str], *problem_words: str) -> None:
    """The error's path is ``path``, its message names it, and the problem mentions every word."""
    assert error.path == os.fspath(path)
    assert os.fspath(path) in str(error)
    for word in problem_words:
        assert word.lower() in error.problem.lower(), f"{word!r} not in {error.problem!r}"
    assert isinstance(error, ValueError)


# -- good models ---------------------------------------------------------------------------------


def test_load_time_of_256_model(model_256_path: Path) -> None:
    start = time.perf_counter()
    model = beam_m2v.load_model(model_256_path)
    loaded = time.perf_counter() - start
    model.encode(["first call"])
    first = time.perf_counter() - start - loaded
    print(f"\nload_model(m2v-minilm-256): {loaded * 1000:.1f} ms; first encode {first * 1000:.1f} ms")
    assert model.dim == 256


@pytest.mark.parametrize("which", ["256", "64"])
def test_matrix_is_memory_mapped_read_only(model_256_path: Path, model_64_path: Path, which: str) -> None:
    path = model_256_path if which == "256" else model_64_path
    model = beam_m2v.load_model(path)
    embeddings = model.matrix.embeddings
    assert isinstance(embeddings, np.memmap)
    assert embeddings.filename is not None and Path(embeddings.filename).samefile(path / "model.safetensors")
    assert embeddings.dtype == (np.float32 if which == "256" else np.float16)
    assert not embeddings.flags.writeable
    with pytest.raises(ValueError):
        embeddings[0, 0] = 1
    truncated = beam_m2v.load_model(path, dimensionality=16).matrix.embeddings
    assert isinstance(truncated, np.memmap) and not truncated.flags.writeable and truncated.shape[1] == 16
    other = model.with_settings(max_length=8)
    assert other.matrix.embeddings is embeddings


def test_memory_mapped_matrix_equals_file_contents(model_64_path: Path) -> None:
    ref = StaticModel.from_pretrained(model_64_path)
    model = beam_m2v.load_model(model_64_path)
    assert np.array_equal(np.asarray(model.matrix.embeddings), ref.embedding)


def test_quantized_and_raw_matrices_are_memory_mapped(tmp_path: Path) -> None:
    folder = build_model2vec_model(tmp_path / "q", dim=6, quantized_rows=9)
    matrix = beam_m2v.load_model(folder).matrix
    assert isinstance(matrix.embeddings, np.memmap) and matrix.embeddings.shape == (9, 6)
    assert isinstance(matrix.weights, np.memmap) and not matrix.weights.flags.writeable
    raw = beam_m2v.load_model(build_raw_model(tmp_path / "raw", dim=RAW_DIM), raw_dim=RAW_DIM).matrix.embeddings
    assert isinstance(raw, np.memmap) and not raw.flags.writeable


def test_source_and_fingerprint(pristine: Path, tmp_path: Path) -> None:
    model = beam_m2v.load_model(pristine)
    assert model.source == str(pristine)
    assert re.fullmatch(r"[0-9a-f]{64}", model.fingerprint)
    copy = copy_model(pristine, tmp_path / "copy")
    assert beam_m2v.load_model(copy).fingerprint == model.fingerprint
    other = build_model2vec_model(tmp_path / "other", dim=8, seed=12)
    assert beam_m2v.load_model(other).fingerprint != model.fingerprint


def test_load_by_matrix_file_path(pristine: Path) -> None:
    by_file = beam_m2v.load_model(pristine / "model.safetensors")
    assert np.array_equal(by_file.encode(TEXTS), vectors_of(pristine))


def test_dimensionality_out_of_range(pristine: Path) -> None:
    for bad in (0, 9, -1):
        error = load_error(pristine, dimensionality=bad)
        assert_names(error, pristine / "model.safetensors", "dimensionality", str(bad))


# -- the StaticBackend's raw format -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["wordpiece", "bpe", "unigram"])
def test_raw_format_static_backend_semantics(tmp_path: Path, kind: str) -> None:
    folder = build_raw_model(tmp_path / "raw", kind=kind, dim=RAW_DIM, seed=5)  # type: ignore[arg-type]
    model = beam_m2v.load_model(folder, raw_dim=RAW_DIM)
    assert model.dim == RAW_DIM and model.settings.semantics is beam_m2v.Semantics.STATIC_BACKEND
    expected = static_backend_reference_vectors(
        folder / "tokenizer.json", read_raw_matrix(folder / "vocab_matrix.bin", RAW_DIM), TEXTS
    )
    got = model.encode(TEXTS)
    assert got.dtype == np.float32 and np.abs(got - expected).max() <= 1e-6
    assert got[TEXTS.index("\U0001f9ec unknown \u16a0")].any()  # the StaticBackend keeps [UNK]
    assert not got[TEXTS.index("")].any()
    by_file = beam_m2v.load_model(folder / "vocab_matrix.bin", raw_dim=RAW_DIM)
    assert np.array_equal(by_file.encode(TEXTS), got)


def test_raw_format_with_fewer_rows_skips_ids(tmp_path: Path) -> None:
    # A few ids past the matrix (say, tokens added to the tokenizer later). Exactly half the ids
    # would be refused: those values are also exactly one row per id at half the dimension.
    rows = vocab_size(make_tokenizer("wordpiece")) - 5
    folder = build_raw_model(tmp_path / "raw", dim=RAW_DIM, rows=rows, seed=6)
    model = beam_m2v.load_model(folder, raw_dim=RAW_DIM)
    expected = static_backend_reference_vectors(
        folder / "tokenizer.json", read_raw_matrix(folder / "vocab_matrix.bin", RAW_DIM), TEXTS
    )
    assert np.abs(model.encode(TEXTS) - expected).max() <= 1e-6


def test_raw_format_with_separate_tokenizer(tmp_path: Path) -> None:
    folder = build_raw_model(tmp_path / "raw", dim=RAW_DIM, with_tokenizer=False, seed=7)
    tokenizer_dir = tmp_path / "tok"
    tokenizer_dir.mkdir()
    make_tokenizer("wordpiece").save(str(tokenizer_dir / "tokenizer.json"))
    error = load_error(folder, raw_dim=RAW_DIM)
    assert_names(error, folder / "tokenizer.json", "missing tokenizer")
    by_folder = beam_m2v.load_model(folder, raw_dim=RAW_DIM, tokenizer=str(tokenizer_dir))
    by_file = beam_m2v.load_model(folder, raw_dim=RAW_DIM, tokenizer=str(tokenizer_dir / "tokenizer.json"))
    assert np.array_equal(by_folder.encode(TEXTS), by_file.encode(TEXTS))
    expected = static_backend_reference_vectors(
        tokenizer_dir / "tokenizer.json", read_raw_matrix(folder / "vocab_matrix.bin", RAW_DIM), TEXTS
    )
    assert np.abs(by_file.encode(TEXTS) - expected).max() <= 1e-6


def test_raw_length_not_multiple_of_4(tmp_path: Path) -> None:
    folder = build_raw_model(tmp_path / "raw", dim=RAW_DIM)
    matrix = folder / "vocab_matrix.bin"
    with open(matrix, "ab") as handle:
        handle.write(b"\x00\x01")
    size = matrix.stat().st_size
    error = load_error(folder, raw_dim=RAW_DIM)
    assert_names(error, matrix, "multiple of 4", str(size))


def test_raw_length_not_multiple_of_dim(tmp_path: Path) -> None:
    folder = build_raw_model(tmp_path / "raw", dim=RAW_DIM)
    matrix = folder / "vocab_matrix.bin"
    with open(matrix, "ab") as handle:
        handle.write(np.ones(3, dtype="<f4").tobytes())
    size = matrix.stat().st_size
    error = load_error(folder, raw_dim=RAW_DIM)
    assert_names(error, matrix, str(size))
    assert re.search(rf"\b{RAW_DIM}\b", error.problem), error.problem
    wrong_dim = load_error(build_raw_model(tmp_path / "raw2", dim=RAW_DIM), raw_dim=7)
    assert re.search(r"\b7\b", wrong_dim.problem)


def test_raw_empty_file(tmp_path: Path) -> None:
    folder = build_raw_model(tmp_path / "raw", dim=RAW_DIM)
    (folder / "vocab_matrix.bin").write_bytes(b"")
    assert_names(load_error(folder, raw_dim=RAW_DIM), folder / "vocab_matrix.bin", "empty")


# -- folder errors -------------------------------------------------------------------------------


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """HF_HUB_OFFLINE=1, for this process too (huggingface_hub reads the variable at import)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def test_missing_folder_is_reported(tmp_path: Path, offline: None) -> None:
    missing = tmp_path / "no" / "such" / "model"
    error = load_error(missing)
    assert "no such file or folder" in error.problem
    assert "no/such/model" in str(error)


def test_missing_absolute_folder_names_the_path(tmp_path: Path, offline: None) -> None:
    missing = tmp_path / "no_such_model"
    error = load_error(missing)
    assert_names(error, missing)


def test_folder_without_model(tmp_path: Path) -> None:
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "notes.txt").write_text("nothing here")
    error = load_error(folder)
    assert_names(error, folder, "no model found", "notes.txt")


def test_missing_tokenizer(model_copy: Path) -> None:
    (model_copy / "tokenizer.json").unlink()
    assert_names(load_error(model_copy), model_copy / "tokenizer.json", "missing")


def test_missing_config(model_copy: Path) -> None:
    (model_copy / "config.json").unlink()
    assert_names(load_error(model_copy), model_copy / "config.json", "missing")


@pytest.mark.parametrize("content", [b"{not json", b"", b'{"model": {"type": "Nonsense"}}', b"\xff\xfe\x00"])
def test_corrupt_tokenizer(model_copy: Path, content: bytes) -> None:
    (model_copy / "tokenizer.json").write_bytes(content)
    assert_names(load_error(model_copy), model_copy / "tokenizer.json", "tokenizer")


@pytest.mark.parametrize("content", [b"{broken", b"[1, 2]"])
def test_corrupt_config(model_copy: Path, content: bytes) -> None:
    (model_copy / "config.json").write_bytes(content)
    assert_names(load_error(model_copy), model_copy / "config.json", "config")


# -- safetensors errors --------------------------------------------------------------------------


@pytest.mark.parametrize("keep", ["5 bytes", "inside header", "inside data", "one byte short"])
def test_truncated_safetensors(model_copy: Path, keep: str) -> None:
    path = model_copy / "model.safetensors"
    size = path.stat().st_size
    header_length = int.from_bytes(path.read_bytes()[:8], "little")
    cut = {"5 bytes": 5, "inside header": 8 + header_length // 2, "inside data": (8 + header_length + size) // 2}
    truncate_file(path, cut.get(keep, size - 1))
    error = load_error(model_copy)
    assert_names(error, path, "truncated")


def test_header_length_larger_than_file(model_copy: Path) -> None:
    path = write_safetensors_with_header_length(model_copy / "model.safetensors", 10**6, b'{"a": 1}')
    error = load_error(model_copy)
    assert_names(error, path, "header", str(10**6))
    huge = write_safetensors_with_header_length(model_copy / "model.safetensors", 2**63, b"{}")
    assert_names(load_error(model_copy), huge, "header")


@pytest.mark.parametrize("header", [b"this is not json", b"\xff\xfe\xfd\xfc", b"[1, 2, 3]", b'"a string"'])
def test_non_json_header(model_copy: Path, header: bytes) -> None:
    path = write_safetensors_raw(model_copy / "model.safetensors", header, b"\x00" * 64)
    assert_names(load_error(model_copy), path, "header")


def embeddings_header(rows: int, dim: int, code: str, itemsize: int, name: str = "embeddings") -> dict[str, object]:
    return {name: {"dtype": code, "shape": [rows, dim], "data_offsets": [0, rows * dim * itemsize]}}


@pytest.mark.parametrize(
    ("code", "itemsize"), [("BF16", 2), ("U32", 4), ("U16", 2), ("F8_E4M3", 1), ("BOOL", 1), ("Q4", 1)]
)
def test_unknown_dtype(model_copy: Path, code: str, itemsize: int) -> None:
    rows = vocab_size(make_tokenizer("wordpiece"))
    header = embeddings_header(rows, 8, code, itemsize)
    path = write_safetensors_raw(model_copy / "model.safetensors", header, b"\x00" * (rows * 8 * itemsize))
    error = load_error(model_copy)
    assert_names(error, path, code, "embeddings")


def test_integer_embeddings_rejected(model_copy: Path) -> None:
    rows = vocab_size(make_tokenizer("wordpiece"))
    save_file({"embeddings": np.zeros((rows, 8), dtype=np.int32)}, str(model_copy / "model.safetensors"))
    assert_names(load_error(model_copy), model_copy / "model.safetensors", "int32")


@pytest.mark.parametrize("delta", [-4, 4, -32])
def test_shape_inconsistent_with_byte_range(model_copy: Path, delta: int) -> None:
    rows = vocab_size(make_tokenizer("wordpiece"))
    nbytes = rows * 8 * 4
    header = {"embeddings": {"dtype": "F32", "shape": [rows, 8], "data_offsets": [0, nbytes + delta]}}
    path = write_safetensors_raw(model_copy / "model.safetensors", header, b"\x00" * (nbytes + 64))
    error = load_error(model_copy)
    assert_names(error, path, "embeddings", str(nbytes))


def test_header_entry_without_offsets(model_copy: Path) -> None:
    header = {"embeddings": {"dtype": "F32", "shape": [3, 8]}}
    path = write_safetensors_raw(model_copy / "model.safetensors", header, b"\x00" * 96)
    assert_names(load_error(model_copy), path, "embeddings")


def test_missing_embeddings_tensor(model_copy: Path) -> None:
    rows = vocab_size(make_tokenizer("wordpiece"))
    save_file({"vectors": np.zeros((rows, 8), dtype=np.float32)}, str(model_copy / "model.safetensors"))
    error = load_error(model_copy)
    assert_names(error, model_copy / "model.safetensors", "embeddings", "vectors")


def test_sentence_transformers_missing_tensor(tmp_path: Path) -> None:
    folder = build_sentence_transformers_model(tmp_path / "st", dim=4)
    rows = vocab_size(make_tokenizer("wordpiece"))
    save_file({"embeddings": np.zeros((rows, 4), dtype=np.float32)}, str(folder / "model.safetensors"))
    assert_names(load_error(folder), folder / "model.safetensors", "embedding.weight")


def test_fewer_rows_than_tokenizer_ids(model_copy: Path) -> None:
    rows = vocab_size(make_tokenizer("wordpiece"))
    save_file({"embeddings": np.ones((rows - 1, 8), dtype=np.float32)}, str(model_copy / "model.safetensors"))
    error = load_error(model_copy)
    assert_names(error, model_copy / "model.safetensors", str(rows - 1), str(rows - 1), "tokenizer")
    assert "rows" in error.problem


def test_quantized_mapping_past_matrix(tmp_path: Path) -> None:
    folder = build_model2vec_model(tmp_path / "q", dim=4, quantized_rows=5)
    rows = vocab_size(make_tokenizer("wordpiece"))
    mapping = np.zeros(rows, dtype=np.int32)
    mapping[3] = 5
    tensors = {
        "embeddings": np.ones((5, 4), dtype=np.float32),
        "mapping": mapping,
        "weights": np.ones(rows, dtype=np.float32),
    }
    save_file(tensors, str(folder / "model.safetensors"))
    assert_names(load_error(folder), folder / "model.safetensors", "mapping", "5")


def test_quantized_weights_too_short(tmp_path: Path) -> None:
    folder = build_model2vec_model(tmp_path / "q", dim=4, quantized_rows=5)
    rows = vocab_size(make_tokenizer("wordpiece"))
    tensors = {
        "embeddings": np.ones((5, 4), dtype=np.float32),
        "mapping": np.zeros(rows, dtype=np.int64),
        "weights": np.ones(rows - 3, dtype=np.float32),
    }
    save_file(tensors, str(folder / "model.safetensors"))
    assert_names(load_error(folder), folder / "model.safetensors", "weights", str(rows - 3))


# -- the Hugging Face hub cache, offline ---------------------------------------------------------


class Hub:
    """A hub cache with a few repos, and the local folders they were made from."""

    def __init__(self, root: Path) -> None:
        self.cache = root / "hub"
        self.main = build_model2vec_model(root / "main", kind="wordpiece", dim=8, seed=21)
        self.other = build_model2vec_model(root / "other", kind="wordpiece", dim=8, seed=22)
        self.commit = populate_hub_cache(self.cache, "owner/name", self.main)
        self.other_commit = populate_hub_cache(self.cache, "owner/name", self.other, commit=fake_commit("v2"), ref=None)
        self.st = build_sentence_transformers_model(root / "st", dim=5, nested=True, config_extra={"normalize": True})
        populate_hub_cache(self.cache, "owner/st", self.st)
        self.raw = build_raw_model(root / "raw", kind="bpe", dim=RAW_DIM, with_tokenizer=False, seed=23)
        populate_hub_cache(self.cache, "owner/raw", self.raw)
        self.tok = root / "tok"
        self.tok.mkdir()
        make_tokenizer("bpe").save(str(self.tok / "tokenizer.json"))
        populate_hub_cache(self.cache, "owner2/tok", self.tok)


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Hub:
    return Hub(tmp_path_factory.mktemp("hubroot"))


def test_hub_cache_layout(hub: Hub) -> None:
    storage = hub.cache / "models--owner--name"
    assert (storage / "refs" / "main").read_text() == hub.commit
    snapshot = storage / "snapshots" / hub.commit
    assert (snapshot / "model.safetensors").is_symlink()
    assert (snapshot / "model.safetensors").resolve().parent == (storage / "blobs").resolve()


def test_hub_id_from_cache(hub: Hub, offline: None) -> None:
    expected = vectors_of(hub.main)
    model = beam_m2v.load_model("owner/name", cache_dir=str(hub.cache))
    assert model.source == "owner/name"
    assert np.array_equal(model.encode(TEXTS), expected)
    assert model.fingerprint == beam_m2v.load_model(hub.main).fingerprint
    assert isinstance(model.matrix.embeddings, np.memmap)
    ref = StaticModel.from_pretrained(hub.cache / "models--owner--name" / "snapshots" / hub.commit)
    assert np.array_equal(model.encode(TEXTS), ref.encode(TEXTS).astype(np.float32))
    prefixed = beam_m2v.load_model("hf://owner/name", cache_dir=str(hub.cache))
    assert np.array_equal(prefixed.encode(TEXTS), expected)


def test_hub_revisions(hub: Hub, offline: None) -> None:
    at_main = beam_m2v.load_model("owner/name", revision=hub.commit, cache_dir=str(hub.cache))
    assert np.array_equal(at_main.encode(TEXTS), vectors_of(hub.main))
    at_other = beam_m2v.load_model("owner/name", revision=hub.other_commit, cache_dir=str(hub.cache))
    assert np.array_equal(at_other.encode(TEXTS), vectors_of(hub.other))
    assert not np.array_equal(at_other.encode(TEXTS), at_main.encode(TEXTS))
    missing = fake_commit("never cached")
    error = load_error("owner/name", revision=missing, cache_dir=str(hub.cache))
    assert "owner/name" in str(error) and missing in str(error)


def test_uncached_hub_id(hub: Hub, offline: None) -> None:
    error = load_error("owner/not-cached", cache_dir=str(hub.cache))
    assert error.path == "owner/not-cached"
    assert "owner/not-cached" in str(error) and "HF_HUB_OFFLINE" in error.problem


def test_hub_sentence_transformers_layout(hub: Hub, offline: None) -> None:
    model = beam_m2v.load_model("owner/st", cache_dir=str(hub.cache))
    assert model.settings.normalize is True
    assert np.array_equal(model.encode(TEXTS), vectors_of(hub.st))


def test_hub_raw_matrix_with_tokenizer_from_another_repo(hub: Hub, offline: None) -> None:
    model = beam_m2v.load_model(
        "hf://owner/raw/vocab_matrix.bin", tokenizer="owner2/tok", raw_dim=RAW_DIM, cache_dir=str(hub.cache)
    )
    local = beam_m2v.load_model(hub.raw / "vocab_matrix.bin", tokenizer=str(hub.tok), raw_dim=RAW_DIM)
    assert model.settings.semantics is beam_m2v.Semantics.STATIC_BACKEND
    assert np.array_equal(model.encode(TEXTS), local.encode(TEXTS))
    expected = static_backend_reference_vectors(
        hub.tok / "tokenizer.json", read_raw_matrix(hub.raw / "vocab_matrix.bin", RAW_DIM), TEXTS
    )
    assert np.abs(model.encode(TEXTS) - expected).max() <= 1e-6
    error = load_error(
        "hf://owner/raw/vocab_matrix.bin", tokenizer="owner2/missing", raw_dim=RAW_DIM, cache_dir=str(hub.cache)
    )
    assert "owner2/missing" in str(error)
    error = load_error("hf://owner/raw/vocab_matrix.bin", raw_dim=RAW_DIM, cache_dir=str(hub.cache))
    assert "owner/raw/tokenizer.json" in str(error)


@pytest.fixture
def subprocess_env(hub: Hub, tmp_path: Path) -> Iterator[dict[str, str]]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("HF_")}
    env.update(
        HF_HUB_OFFLINE="1",
        HF_HUB_CACHE=str(hub.cache),
        HF_HOME=str(tmp_path / "hf_home"),
        PYTHONPATH=str(REPO) + os.pathsep + str(REPO / "tests"),
    )
    yield env


def test_hub_cache_from_environment_in_subprocess(hub: Hub, subprocess_env: dict[str, str], tmp_path: Path) -> None:
    """HF_HUB_OFFLINE / HF_HUB_CACHE set before huggingface_hub is imported, as a user would."""
    out = tmp_path / "vectors.npy"
    script = f"""
import json, sys
import numpy as np
import beam_m2v
texts = json.loads(sys.argv[1])
model = beam_m2v.load_model("owner/name")
np.save({str(out)!r}, model.encode(texts))
pinned = beam_m2v.load_model("owner/name", revision={hub.other_commit!r})
np.save({str(out.with_name("pinned.npy"))!r}, pinned.encode(texts))
try:
    beam_m2v.load_model("owner/absent")
except beam_m2v.ModelLoadError as error:
    print("ERROR:", error)
"""
    result = subprocess.run(
        [sys.executable, "-c", script, json.dumps(TEXTS)],
        env=subprocess_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert np.array_equal(np.load(out), vectors_of(hub.main))
    assert np.array_equal(np.load(out.with_name("pinned.npy")), vectors_of(hub.other))
    assert "ERROR: owner/absent:" in result.stdout and "HF_HUB_OFFLINE" in result.stdout


# -- the hub token: used in the launching process, never written into a pipeline ------------------

SECRET = "hf_" + "s3cr3t" * 6


def test_hub_token_stays_out_of_repr_and_pickles(pristine: Path) -> None:
    import cloudpickle
    from apache_beam.internal import pickler

    spec = beam_m2v.ModelSpec.of(str(pristine), token=SECRET, dimensionality=4)
    transform = beam_m2v.EmbedText(str(pristine), token=SECRET)
    assert spec.token == SECRET and transform.spec.token == SECRET  # kept for this process's own loads
    for shown in (repr(spec), str(spec), repr(transform.spec), repr(HubOptions(token=SECRET))):
        assert SECRET not in shown and "token" not in shown, shown
    assert repr(spec) == f"ModelSpec({str(pristine)!r}, dimensionality=4)"
    for dumps in (pickle.dumps, cloudpickle.dumps):
        assert SECRET.encode() not in dumps(spec) and SECRET.encode() not in dumps(transform)
    copy = pickle.loads(pickle.dumps(spec))
    assert copy.token is None and copy.token_withheld and not spec.token_withheld
    assert copy == spec and hash(copy) == hash(spec)  # the same process-cache entry
    assert pickler.loads(pickler.dumps(spec)).token is None
    assert pickle.loads(pickle.dumps(beam_m2v.ModelSpec.of(str(pristine)))).token_withheld is False


def test_hub_token_is_not_in_the_pipeline_graph(pristine: Path) -> None:
    """Every DoFn of the pipeline proto, unpickled as a worker does, holds no token."""
    import apache_beam as beam
    from apache_beam.internal import pickler
    from apache_beam.portability import common_urns
    from apache_beam.portability.api import beam_runner_api_pb2

    pipeline = beam.Pipeline(runner="FnApiRunner")
    _ = pipeline | beam.Create(["a text"]) | beam_m2v.EmbedText(str(pristine), token=SECRET)
    specs = []
    for transform in pipeline.to_runner_api().components.transforms.values():
        if transform.spec.urn == common_urns.primitives.PAR_DO.urn:
            payload = beam_runner_api_pb2.ParDoPayload.FromString(transform.spec.payload)
            do_fn = pickler.loads(payload.do_fn.payload)[0]
            specs += [value for value in vars(do_fn).values() if isinstance(value, beam_m2v.ModelSpec)]
    assert len(specs) == 1 and specs[0].token is None and specs[0].token_withheld


def test_a_wrong_token_value_is_not_shown(pristine: Path) -> None:
    error = load_error(pristine, token=SECRET.encode())
    assert "token must be a string or None, got a bytes" in error.problem and SECRET not in str(error)


def test_a_worker_without_the_token_is_told_to_set_hf_token(
    hub: Hub, offline: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    launcher = beam_m2v.ModelSpec.of("owner/private", token=SECRET, cache_dir=str(hub.cache))
    with pytest.raises(ModelLoadError) as info:
        launcher.load()
    assert "HF_TOKEN" not in info.value.problem.replace("HF_HUB_OFFLINE", "")
    worker = pickle.loads(pickle.dumps(launcher))
    with pytest.raises(ModelLoadError, match="set HF_TOKEN there") as info:
        worker.load()
    assert info.value.path == "owner/private" and SECRET not in str(info.value)
    monkeypatch.setenv("HF_TOKEN", "hf_worker")  # the worker's own token is used: no hint
    with pytest.raises(ModelLoadError) as info:
        worker.load()
    assert "set HF_TOKEN there" not in info.value.problem
    assert beam_m2v.load_model("owner/name", cache_dir=str(hub.cache), token=SECRET).dim == 8
