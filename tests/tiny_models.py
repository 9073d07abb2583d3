"""Builders of real, tiny static models on disk, for tests.

Every model here is made of real parts: a ``tokenizers`` tokenizer trained in memory on a small
built-in corpus (WordPiece, BPE, byte-level BPE, Unigram or WordLevel), a random embedding matrix
of a chosen dtype, and the files that model2vec itself writes (``StaticModel.save_pretrained``).
Other layouts are written by hand: Sentence Transformers static folders (root and
``0_StaticEmbedding/``), the Rust StaticBackend's raw ``vocab_matrix.bin``, a Hugging Face hub cache, and
deliberately damaged safetensors files.

Nothing here imports beam_m2v: these are the references the library is tested against.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from model2vec import StaticModel
from safetensors.numpy import save_file
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

TokenizerKind = Literal["wordpiece", "bpe", "bytelevel_bpe", "unigram", "wordlevel"]
"""The tokenizer models the builders can make."""

TOKENIZER_KINDS: tuple[TokenizerKind, ...] = ("wordpiece", "bpe", "bytelevel_bpe", "unigram", "wordlevel")

MatrixDtype = Literal["float16", "float32", "float64", "int8"]
"""Embedding dtypes model2vec can save and load."""

MATRIX_DTYPES: tuple[MatrixDtype, ...] = ("float16", "float32", "float64", "int8")

#: The unknown token of each kind (the Unigram one is found through ``unk_id``); None: the model has none.
UNKNOWN_TOKENS: dict[TokenizerKind, str | None] = {
    "wordpiece": "[UNK]",
    "bpe": "[UNK]",
    "bytelevel_bpe": None,
    "unigram": "<unk>",
    "wordlevel": "[UNK]",
}

#: A small multilingual training corpus: enough for every trainer to make a few hundred tokens,
#: with some accented, Hebrew, Arabic, CJK and emoji text so that not every non-ASCII char is unknown.
TRAINING_CORPUS: tuple[str, ...] = (
    "The quick brown fox jumps over the lazy dog.",
    "A static embedding model maps every token to one vector and averages them.",
    "Tokenizers split text into words and sub-word pieces before looking them up.",
    "Memory-mapped matrices are shared between processes through the page cache.",
    "Apache Beam runs pipelines on many workers, each with many threads.",
    "The kernel documentation describes drivers, schedulers and file systems.",
    "Embedding vectors are normalised to unit length when the model asks for it.",
    "Unknown tokens are dropped before the mean is taken, so they do not count.",
    "Truncation keeps only the first tokens of a long text; the rest is ignored.",
    "Numbers like 3.14, 42 and 1,000,000 appear in technical writing too.",
    "Caf\u00e9 cr\u00e8me br\u00fbl\u00e9e na\u00efve r\u00e9sum\u00e9 fa\u00e7ade \u00fcber stra\u00dfe.",
    "\u05e9\u05dc\u05d5\u05dd \u05e2\u05d5\u05dc\u05dd \u05d6\u05d4 "
    "\u05d8\u05e7\u05e1\u05d8 \u05d1\u05e2\u05d1\u05e8\u05d9\u05ea.",
    "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645 \u0647\u0630\u0627 \u0646\u0635.",
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8\u3068\u4e2d\u6587\u6587\u672c\u3002",
    "Emoji like \U0001f600 and \U0001f680 show up in chat messages \U0001f600.",
    "Hello world, hello again, and goodbye world.",
    "Sphinx, reStructuredText and Markdown are markup languages for documentation.",
    "Interrupts, spinlocks, mutexes and semaphores synchronise concurrent code.",
    "The scheduler picks the next runnable task on every CPU core.",
    "Filesystems such as ext4, btrfs and xfs store files and directories.",
    "Networking drivers move packets between the wire and the kernel stack.",
    "Testing against a reference implementation catches subtle rounding differences.",
    "float16 float32 float64 int8 are the dtypes of embedding matrices.",
    "playing played player plays replay unplayable playground",
    "running runner runs ran rerun outrunning",
) * 4

SPECIAL_TOKENS_BERT: tuple[str, ...] = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
SPECIAL_TOKENS_SP: tuple[str, ...] = ("<pad>", "<unk>", "<s>", "</s>")


def _train(tokenizer: Tokenizer, trainer: Any) -> Tokenizer:
    tokenizer.train_from_iterator(list(TRAINING_CORPUS), trainer=trainer)
    return tokenizer


def _bert_post_processor(tokenizer: Tokenizer) -> None:
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )


@functools.cache
def _tokenizer_json(kind: TokenizerKind) -> str:
    """Train the tokenizer of ``kind`` once per process; returns its JSON."""
    if kind == "wordpiece":
        tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
        tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.decoder = decoders.WordPiece()
        _train(
            tokenizer,
            trainers.WordPieceTrainer(vocab_size=400, special_tokens=list(SPECIAL_TOKENS_BERT), show_progress=False),
        )
        _bert_post_processor(tokenizer)
    elif kind == "bpe":
        tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
        tokenizer.normalizer = normalizers.NFKC()
        tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
        _train(
            tokenizer,
            trainers.BpeTrainer(vocab_size=400, special_tokens=list(SPECIAL_TOKENS_BERT), show_progress=False),
        )
        _bert_post_processor(tokenizer)
    elif kind == "bytelevel_bpe":
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        _train(
            tokenizer,
            trainers.BpeTrainer(
                vocab_size=500,
                special_tokens=["<|endoftext|>"],
                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                show_progress=False,
            ),
        )
    elif kind == "unigram":
        tokenizer = Tokenizer(models.Unigram())
        tokenizer.normalizer = normalizers.NFKC()
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
        tokenizer.decoder = decoders.Metaspace()
        _train(
            tokenizer,
            trainers.UnigramTrainer(
                vocab_size=300, special_tokens=list(SPECIAL_TOKENS_SP), unk_token="<unk>", show_progress=False
            ),
        )
    elif kind == "wordlevel":
        tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
        tokenizer.normalizer = normalizers.Lowercase()
        tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
        _train(tokenizer, trainers.WordLevelTrainer(special_tokens=list(SPECIAL_TOKENS_BERT), show_progress=False))
    else:
        raise ValueError(f"unknown tokenizer kind {kind!r}")
    vocab = tokenizer.get_vocab()
    if sorted(vocab.values()) != list(range(len(vocab))):
        raise AssertionError(f"{kind} tokenizer ids are not contiguous")
    return tokenizer.to_str()


def make_tokenizer(kind: TokenizerKind) -> Tokenizer:
    """A fresh (private) real ``tokenizers`` tokenizer of ``kind``, trained on ``TRAINING_CORPUS``."""
    return Tokenizer.from_str(_tokenizer_json(kind))


def vocab_size(tokenizer: Tokenizer) -> int:
    """Number of ids the tokenizer can produce, added tokens included (model2vec's row count)."""
    return len(tokenizer.get_vocab())


def random_matrix(rows: int, dim: int, dtype: MatrixDtype | str, seed: int = 0) -> np.ndarray:
    """A random (rows, dim) matrix of ``dtype``: standard normal floats, or int8 over the full range."""
    rng = np.random.default_rng(seed)
    if np.dtype(dtype) == np.int8:
        return rng.integers(-128, 128, size=(rows, dim), dtype=np.int8)
    return rng.standard_normal((rows, dim)).astype(dtype)


def build_model2vec_model(
    folder: str | os.PathLike[str],
    *,
    kind: TokenizerKind = "wordpiece",
    dim: int = 16,
    dtype: MatrixDtype | str = "float32",
    normalize: bool = True,
    max_length: int | None = 512,
    quantized_rows: int | None = None,
    weights_dtype: str = "float32",
    mapping_dtype: str = "int32",
    seed: int = 0,
    omit_config_keys: Sequence[str] = (),
) -> Path:
    """Write a model2vec model folder with ``StaticModel.save_pretrained`` and return its path.

    Args:
        folder: where to write (created).
        kind: the tokenizer model.
        dim: number of columns.
        dtype: the embedding matrix dtype.
        normalize, max_length: written to config.json by model2vec.
        quantized_rows: make a vocabulary-quantized model: ``embeddings`` of this many rows, a
            ``mapping`` (token id -> row) and ``weights`` (token id -> scale) tensor.
        weights_dtype, mapping_dtype: dtypes of those tensors.
        seed: of the random matrix (and mapping/weights).
        omit_config_keys: keys removed from config.json after saving (to test the defaults).
    """
    folder = Path(folder)
    tokenizer = make_tokenizer(kind)
    rows = vocab_size(tokenizer)
    weights = mapping = None
    if quantized_rows is None:
        vectors = random_matrix(rows, dim, dtype, seed)
    else:
        rng = np.random.default_rng(seed + 1)
        vectors = random_matrix(quantized_rows, dim, dtype, seed)
        mapping = rng.integers(0, quantized_rows, size=rows).astype(mapping_dtype)
        weights = rng.uniform(0.05, 3.0, size=rows).astype(weights_dtype)
    model = StaticModel(
        vectors=vectors,
        tokenizer=tokenizer,
        normalize=normalize,
        weights=weights,
        token_mapping=mapping,
        max_length=max_length,
    )
    model.save_pretrained(folder)
    if omit_config_keys:
        edit_json(folder / "config.json", lambda config: [config.pop(key, None) for key in omit_config_keys])
    return folder


def edit_json(path: str | os.PathLike[str], edit: Callable[[dict[str, Any]], object]) -> None:
    """Load a JSON object file, let ``edit`` change it in place, write it back."""
    path = Path(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    edit(data)
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")


def rewrite_tokenizer(folder: str | os.PathLike[str], edit: Callable[[Tokenizer], object]) -> None:
    """Load ``folder/tokenizer.json``, let ``edit`` reconfigure it (padding, truncation...), save it back."""
    path = Path(folder) / "tokenizer.json"
    tokenizer = Tokenizer.from_file(str(path))
    edit(tokenizer)
    tokenizer.save(str(path), pretty=False)


ST_CONFIG: dict[str, Any] = {
    "__version__": {"sentence_transformers": "3.3.1", "transformers": "4.46.0", "pytorch": "2.5.1"},
    "prompts": {},
    "default_prompt_name": None,
    "similarity_fn_name": "cosine",
}


def build_sentence_transformers_model(
    folder: str | os.PathLike[str],
    *,
    kind: TokenizerKind = "wordpiece",
    dim: int = 16,
    dtype: MatrixDtype | str = "float32",
    nested: bool = False,
    config_extra: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> Path:
    """Write a Sentence Transformers static-embedding folder and return its path.

    The root layout holds ``model.safetensors`` (tensor ``embedding.weight``), ``tokenizer.json``,
    ``config_sentence_transformers.json`` and ``modules.json``. With ``nested`` the matrix and the
    tokenizer live in ``0_StaticEmbedding/`` instead (and a ``1_Normalize`` module is listed).
    ``config_extra`` is merged into ``config_sentence_transformers.json`` (model2vec reads
    ``normalize`` and ``max_length`` from it).
    """
    folder = Path(folder)
    tokenizer = make_tokenizer(kind)
    matrix = random_matrix(vocab_size(tokenizer), dim, dtype, seed)
    module_dir = folder / "0_StaticEmbedding" if nested else folder
    module_dir.mkdir(parents=True, exist_ok=True)
    save_file({"embedding.weight": np.ascontiguousarray(matrix)}, str(module_dir / "model.safetensors"))
    tokenizer.save(str(module_dir / "tokenizer.json"), pretty=False)
    config = {**ST_CONFIG, **(config_extra or {})}
    (folder / "config_sentence_transformers.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    modules: list[dict[str, Any]] = [
        {
            "idx": 0,
            "name": "0",
            "path": "0_StaticEmbedding" if nested else "",
            "type": "sentence_transformers.models.StaticEmbedding",
        }
    ]
    if nested:
        modules.append({"idx": 1, "name": "1", "path": "1_Normalize", "type": "sentence_transformers.models.Normalize"})
        (folder / "1_Normalize").mkdir(exist_ok=True)
    (folder / "modules.json").write_text(json.dumps(modules, indent=2), encoding="utf-8")
    return folder


def build_raw_model(
    folder: str | os.PathLike[str],
    *,
    kind: TokenizerKind = "wordpiece",
    dim: int = 8,
    rows: int | None = None,
    seed: int = 0,
    with_tokenizer: bool = True,
) -> Path:
    """Write the StaticBackend's raw format: ``vocab_matrix.bin`` (flat little-endian float32) and ``tokenizer.json``.

    ``rows`` defaults to the tokenizer's vocabulary size (fewer rows make ids the StaticBackend skips).
    Returns the folder.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = make_tokenizer(kind)
    matrix = random_matrix(vocab_size(tokenizer) if rows is None else rows, dim, "float32", seed)
    matrix.astype("<f4").tofile(folder / "vocab_matrix.bin")
    if with_tokenizer:
        tokenizer.save(str(folder / "tokenizer.json"), pretty=False)
    return folder


def read_raw_matrix(path: str | os.PathLike[str], dim: int) -> np.ndarray:
    """Read a raw ``vocab_matrix.bin`` back (a copy, not a map) as a (rows, dim) float32 array."""
    return np.fromfile(path, dtype="<f4").reshape(-1, dim)


def static_backend_reference_vectors(
    tokenizer_path: str | os.PathLike[str], matrix: np.ndarray, texts: Iterable[str]
) -> np.ndarray:
    """The ``static_backend`` semantics written out plainly, one text at a time.

    ``encode(text, add_special_tokens=False)`` with the tokenizer as its file configures it, ids past
    the matrix skipped (the unknown token is kept), float32 mean left to right, divided by
    ``max(norm, 1e-12)``, zero vector when nothing is left.
    """
    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    out = []
    for text in texts:
        ids = [i for i in tokenizer.encode(text, add_special_tokens=False).ids if i < matrix.shape[0]]
        vector = np.zeros(matrix.shape[1], dtype=np.float32)
        for i in ids:
            vector += matrix[i].astype(np.float32)
        if ids:
            vector /= np.float32(len(ids))
        norm = np.float32(np.sqrt(np.dot(vector, vector)))
        out.append(vector / max(norm, np.float32(1e-12)))
    return np.stack(out) if out else np.zeros((0, matrix.shape[1]), dtype=np.float32)


# -- damaged safetensors -------------------------------------------------------------------------


def write_safetensors_raw(path: str | os.PathLike[str], header: Mapping[str, Any] | bytes, data: bytes) -> Path:
    """Write a safetensors file byte by byte: 8-byte LE header length, the header, ``data``.

    ``header`` may be a mapping (JSON-encoded here) or raw bytes (for non-JSON headers).
    """
    path = Path(path)
    header_bytes = header if isinstance(header, bytes) else json.dumps(header).encode("utf-8")
    path.write_bytes(struct.pack("<Q", len(header_bytes)) + header_bytes + data)
    return path


def write_safetensors_with_header_length(path: str | os.PathLike[str], header_length: int, rest: bytes) -> Path:
    """Write a file whose 8-byte header length field says ``header_length``, followed by ``rest``."""
    path = Path(path)
    path.write_bytes(struct.pack("<Q", header_length) + rest)
    return path


def truncate_file(path: str | os.PathLike[str], keep_bytes: int) -> None:
    """Cut a file down to its first ``keep_bytes`` bytes."""
    with open(path, "r+b") as handle:
        handle.truncate(keep_bytes)


# -- Hugging Face hub cache ----------------------------------------------------------------------


def fake_commit(seed: str) -> str:
    """A deterministic 40-hex-digit commit hash."""
    return hashlib.sha1(seed.encode()).hexdigest()


def populate_hub_cache(
    cache_dir: str | os.PathLike[str],
    repo_id: str,
    files: str | os.PathLike[str] | Mapping[str, str | os.PathLike[str]],
    *,
    commit: str | None = None,
    ref: str | None = "main",
) -> str:
    """Lay model files out in a hub cache exactly as ``huggingface_hub`` does, and return the commit.

    ``<cache>/models--owner--name/blobs/<sha256>`` holds each file's bytes;
    ``snapshots/<commit>/<path>`` is a relative symlink to its blob; ``refs/<ref>`` holds the commit.
    ``files`` is a folder (all its files, recursively) or a mapping ``path in repo -> local file``.
    """
    if isinstance(files, (str, os.PathLike)):
        root = Path(files)
        mapping = {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}
    else:
        mapping = {name: Path(path) for name, path in files.items()}
    commit = commit or fake_commit(repo_id + json.dumps(sorted(mapping)))
    storage = Path(cache_dir) / f"models--{repo_id.replace('/', '--')}"
    blobs = storage / "blobs"
    snapshot = storage / "snapshots" / commit
    blobs.mkdir(parents=True, exist_ok=True)
    for name, source in mapping.items():
        data = source.read_bytes()
        blob = blobs / hashlib.sha256(data).hexdigest()
        if not blob.exists():
            blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.exists() or link.is_symlink():
            link.unlink()
        link.symlink_to(os.path.relpath(blob, link.parent))
    if ref is not None:
        (storage / "refs").mkdir(exist_ok=True)
        (storage / "refs" / ref).write_text(commit)
    return commit


def copy_model(source: str | os.PathLike[str], destination: str | os.PathLike[str]) -> Path:
    """Copy a model folder (following symlinks), writable, and return the copy's path."""
    destination = Path(destination)
    shutil.copytree(source, destination, symlinks=False)
    for path in destination.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    destination.chmod(0o755)
    return destination
