"""``load_model``: from a source to a ready ``StaticEmbedder``, failing early with a clear message."""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from beam_m2v.encoder import StaticEmbedder
from beam_m2v.errors import ModelLoadError
from beam_m2v.matrix_files import map_raw_matrix, map_safetensors
from beam_m2v.model_checks import check_finite, check_load_options, config_settings
from beam_m2v.model_options import DEFAULT_RAW_DIM, MODEL_DEFAULT, ModelOptions, option_overrides
from beam_m2v.pooling import VocabularyMatrix
from beam_m2v.semantics import EncodingSettings, Semantics
from beam_m2v.sources import HubOptions, Layout, ModelFiles, resolve_model_files

logger = logging.getLogger(__name__)

DEFAULT_MAX_LENGTH = 512
_NOT_GIVEN: Any = object()


def load_model(
    source: str | os.PathLike[str],
    *,
    tokenizer: str | os.PathLike[str] | None = None,
    dimensionality: int | None = None,
    normalize: bool | None = None,
    max_length: int | None = MODEL_DEFAULT,
    semantics: Semantics | str | None = None,
    raw_dim: int = DEFAULT_RAW_DIM,
    revision: str | None = None,
    token: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    sha256: str | None = None,
    dim: int = _NOT_GIVEN,
) -> StaticEmbedder:
    """Load a static model, memory-mapped, ready to ``encode``.

    Args:
        source: a local model folder (model2vec or Sentence Transformers static layout, or a folder
            with the Rust ``StaticBackend``'s ``vocab_matrix.bin`` + ``tokenizer.json``), a matrix file, a Hugging Face
            hub id such as ``minishlab/potion-base-8M``, or ``hf://owner/name/path/in/repo``.
        tokenizer: where the tokenizer comes from when it is not beside the matrix (a file, a folder
            or a hub id); raw ``vocab_matrix.bin`` models usually take the tokenizer of their source model.
        dimensionality: keep only the first columns (Matryoshka / PCA truncation), as model2vec does.
        normalize: L2-normalise the vectors; defaults to the model config (False when absent).
        max_length: token budget per text; defaults to the model config (512 when absent), None for none.
        semantics: ``"model2vec"`` (default for model2vec and Sentence Transformers folders) or
            ``"static_backend"`` (default for the raw format; ``"seed"`` is its old name): which reference the
            vectors reproduce.
        raw_dim: number of columns of a raw ``vocab_matrix.bin`` (the StaticBackend's default, 256).
        revision: hub revision (branch, tag or commit), as in ``huggingface_hub.snapshot_download``.
        token: hub access token for private models; by default huggingface_hub's own (``HF_TOKEN``
            or ``huggingface-cli login``).
        cache_dir: hub cache folder; by default huggingface_hub's, honouring ``HF_HOME``,
            ``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE``.
        sha256: expected SHA-256 of the matrix file of a model on a remote filesystem
            (``gs://``, ``s3://``...; copied once per machine into ``$BEAM_M2V_CACHE``).
        dim: the old name of ``raw_dim`` (deprecated).

    Each keyword is a field of ``beam_m2v.model_options.ModelOptions``.

    Raises:
        ModelLoadError: naming the file and the problem when the model is missing or damaged.

    """
    if not isinstance(source, (str, os.PathLike)):
        raise ModelLoadError(repr(source), f"a model source is a path, URL or hub id, not {type(source).__name__}")
    if dim is not _NOT_GIVEN:
        raw_dim = option_overrides({"dim": dim}, caller="load_model()").get("raw_dim", dim)
    options = ModelOptions(
        tokenizer=tokenizer,  # type: ignore[arg-type]  # a path is kept as its str
        dimensionality=dimensionality,
        normalize=normalize,
        max_length=max_length,
        semantics=semantics,
        raw_dim=raw_dim,
        revision=revision,
        token=token,
        cache_dir=cache_dir,  # type: ignore[arg-type]  # a path is kept as its str
        sha256=sha256,
    )
    return load_with_options(os.fspath(source), options)


def load_with_options(source: str, options: ModelOptions) -> StaticEmbedder:
    """``load_model(source, **options)``: check the options, resolve the files, read and check the model."""
    check_load_options(source, options)
    hub = HubOptions(revision=options.revision, token=options.token, cache_dir=options.cache_dir)
    files = resolve_model_files(source, tokenizer=options.tokenizer, hub=hub, sha256=options.sha256)
    try:
        return _load_files(files, options)
    except ModelLoadError as error:
        if files.remote is None:
            raise
        raise ModelLoadError(files.remote_name(error.path), error.problem) from None


def _load_files(files: ModelFiles, options: ModelOptions) -> StaticEmbedder:
    """Read, check and assemble the model from resolved local files."""
    config_normalize, config_max_length = _read_config(files)
    hf_tokenizer = _read_tokenizer(files.tokenizer)
    matrix = _read_matrix(files, int(options.raw_dim))
    chosen = (
        Semantics(options.semantics)
        if options.semantics is not None
        else (Semantics.STATIC_BACKEND if files.layout is Layout.RAW else Semantics.MODEL2VEC)
    )
    _check_rows(files, matrix, hf_tokenizer, chosen)
    dimensionality, normalize, max_length = options.dimensionality, options.normalize, options.max_length
    if dimensionality is not None:
        if not 0 < dimensionality <= matrix.dim:
            raise ModelLoadError(files.matrix, f"dimensionality {dimensionality} is not in 1..{matrix.dim}")
        matrix = matrix.truncated(int(dimensionality))
    if chosen is Semantics.STATIC_BACKEND:
        settings = EncodingSettings(
            Semantics.STATIC_BACKEND, normalize=True if normalize is None else bool(normalize), max_length=None
        )
    else:
        if max_length is MODEL_DEFAULT:
            max_length = config_max_length
        elif max_length is not None:
            max_length = int(max_length)  # a numpy integer as a Python int
        normalize = config_normalize if normalize is None else bool(normalize)
        settings = EncodingSettings(Semantics.MODEL2VEC, normalize=normalize, max_length=max_length)
    return StaticEmbedder(matrix, hf_tokenizer, settings, files=files)


def _read_config(files: ModelFiles) -> tuple[bool, int | None]:
    """``(normalize, max_length)`` of the model's config, checked (model2vec's defaults for the raw format)."""
    if files.config is None:
        return False, DEFAULT_MAX_LENGTH
    try:
        with open(files.config, encoding="utf-8") as handle:
            config = json.load(handle)
    except (OSError, ValueError, RecursionError) as error:  # JSON and UTF-8 errors are ValueErrors
        raise ModelLoadError(files.config, f"unreadable config: {error}") from None
    if not isinstance(config, dict):
        raise ModelLoadError(files.config, "config is not a JSON object")
    return config_settings(files.config, config, DEFAULT_MAX_LENGTH)


def _read_tokenizer(path: str) -> Tokenizer:
    """Load ``tokenizer.json``, naming the file when it is missing or broken."""
    if not os.path.isfile(path):
        raise ModelLoadError(path, "missing tokenizer")
    try:
        return Tokenizer.from_file(path)
    except Exception as error:  # tokenizers raises a bare Exception on parse errors
        raise ModelLoadError(path, f"not a valid tokenizers tokenizer.json: {error}") from None


_FLOAT_KINDS = {np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.int8)}


def _read_matrix(files: ModelFiles, raw_dim: int) -> VocabularyMatrix:
    """Memory-map the vocabulary matrix (and mapping/weights of vocabulary-quantized models), checked."""
    if files.layout is Layout.RAW:
        raw = map_raw_matrix(files.matrix, raw_dim)
        check_finite(files.matrix, "vocab_matrix", raw)
        return VocabularyMatrix(raw)
    tensors = map_safetensors(files.matrix)
    embeddings = tensors.get(files.tensor_name)
    if embeddings is None:
        raise ModelLoadError(files.matrix, f"no tensor {files.tensor_name!r}; tensors found: {sorted(tensors)}")
    if embeddings.ndim != 2 or embeddings.shape[1] == 0:
        raise ModelLoadError(
            files.matrix, f"tensor {files.tensor_name!r} has shape {embeddings.shape}, not (vocab, dim)"
        )
    if embeddings.dtype not in _FLOAT_KINDS:
        raise ModelLoadError(files.matrix, f"embeddings dtype {embeddings.dtype} is not float16/32/64 or int8")
    check_finite(files.matrix, files.tensor_name, embeddings)
    mapping = _read_mapping(files.matrix, tensors.get("mapping"), embeddings.shape[0])
    rows = embeddings.shape[0] if mapping is None else mapping.shape[0]
    return VocabularyMatrix(embeddings, mapping, _read_weights(files.matrix, tensors.get("weights"), rows))


def _read_mapping(path: str, mapping: np.ndarray | None, matrix_rows: int) -> np.ndarray | None:
    """The token id -> matrix row map of a vocabulary-quantized model: integers, each a row of the matrix."""
    if mapping is None:
        return None
    if mapping.dtype.kind not in "iu" or mapping.ndim != 1:
        raise ModelLoadError(
            path, f"tensor 'mapping' must be a 1-d integer vector, got {mapping.dtype} of shape {mapping.shape}"
        )
    if mapping.size:
        low, high = int(mapping.min()), int(mapping.max())
        if low < 0 or high >= matrix_rows:
            bad = low if low < 0 else high
            raise ModelLoadError(
                path,
                f"tensor 'mapping' points at row {bad}, but rows of the matrix are 0..{matrix_rows - 1}",
            )
    return np.asarray(mapping, dtype=np.int64)


def _read_weights(path: str, weights: np.ndarray | None, rows: int) -> np.ndarray | None:
    """The per-token scales of a vocabulary-quantized model: finite floats, one per token id."""
    if weights is None:
        return None
    if weights.ndim != 1 or weights.dtype.kind != "f":
        raise ModelLoadError(
            path, f"tensor 'weights' must be a 1-d float vector, got {weights.dtype} of shape {weights.shape}"
        )
    if weights.shape[0] != rows:
        raise ModelLoadError(path, f"tensor 'weights' has {weights.shape[0]} entries for {rows} token ids")
    check_finite(path, "weights", weights)
    return weights


def _check_rows(files: ModelFiles, matrix: VocabularyMatrix, tokenizer: Tokenizer, semantics: Semantics) -> None:
    """Every id the tokenizer can produce needs a row (the static_backend semantics skips ids past the matrix).

    A raw matrix has no shape of its own: one whose values are exactly the tokenizer's ids
    times another width was read with the wrong ``raw_dim`` and is refused; other row counts
    can be legitimate and only get a warning (more rows) or, under the static_backend
    semantics, skipped ids (fewer rows).
    """
    vocab = tokenizer.get_vocab()
    needed = max(vocab.values()) + 1 if vocab else 0
    if files.layout is Layout.RAW and matrix.rows != needed and needed:
        values = matrix.rows * matrix.dim
        if values % needed == 0:
            raise ModelLoadError(
                files.matrix,
                f"read with raw_dim={matrix.dim} this matrix has {matrix.rows} rows, but its {values} values are "
                f"exactly {needed} rows of dimension {values // needed}, one per id of the tokenizer "
                f"{files.tokenizer}: pass raw_dim={values // needed}",
            )
        if matrix.rows > needed:
            logger.warning(
                "%s: %d rows for a tokenizer with %d ids: is the dimension (%d) right?",
                files.matrix,
                matrix.rows,
                needed,
                matrix.dim,
            )
    if matrix.rows >= needed:
        return
    problem = f"matrix has {matrix.rows} rows but the tokenizer {files.tokenizer} has ids up to {needed - 1}"
    if semantics is Semantics.STATIC_BACKEND:
        logger.warning("%s: %s; the static_backend semantics skips those ids", files.matrix, problem)
        return
    raise ModelLoadError(files.matrix, problem)
