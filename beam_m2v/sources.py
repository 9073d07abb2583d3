"""Where a model comes from: a local folder, a file, or the Hugging Face hub, resolved to local files.

Nothing here reads a matrix; it only finds the files and says which layout they follow.
"""

from __future__ import annotations

import enum
import errno
import hashlib
import os
import re
import stat
from dataclasses import dataclass, field, replace

from beam_m2v.errors import ModelLoadError
from beam_m2v.remote_files import fetch_remote_model, is_remote

HUB_PREFIX = "hf://"
#: What a bare Hugging Face hub model id looks like: ``name`` or ``owner/name``.
HUB_ID = re.compile(r"(?:[\w.-]+/)?[\w.-]+")
RAW_MATRIX_NAME = "vocab_matrix.bin"
TOKENIZER_NAME = "tokenizer.json"


class Layout(str, enum.Enum):
    """The on-disk formats beam-m2v reads."""

    MODEL2VEC = "model2vec"
    """``model.safetensors`` (tensor ``embeddings``), ``tokenizer.json``, ``config.json``."""
    SENTENCE_TRANSFORMERS = "sentence-transformers"
    """A Sentence Transformers static model: tensor ``embedding.weight``, ``config_sentence_transformers.json``."""
    RAW = "raw"
    """The Rust ``StaticBackend``'s ``vocab_matrix.bin`` (headerless float32) and a separate ``tokenizer.json``."""


@dataclass(frozen=True)
class ModelFiles:
    """The local files of one model and how to read them."""

    source: str
    layout: Layout
    matrix: str
    tokenizer: str
    config: str | None
    revision: str | None = None
    remote: tuple[str, str] | None = None
    """For a model copied from a remote filesystem: (remote folder URL, local cache folder)."""

    def remote_name(self, local_path: str) -> str:
        """The URL a local cached path was copied from (the path itself for local models)."""
        if self.remote is not None and local_path.startswith(self.remote[1]):
            return self.remote[0].rstrip("/") + local_path[len(self.remote[1]) :]
        return local_path

    @property
    def tensor_name(self) -> str:
        """Name of the embedding tensor in the safetensors file."""
        return "embedding.weight" if self.layout is Layout.SENTENCE_TRANSFORMERS else "embeddings"


#: (layout, config, matrix, tokenizer) relative paths, in the order model2vec tries them.
FOLDER_LAYOUTS: tuple[tuple[Layout, str, str, str], ...] = (
    (Layout.MODEL2VEC, "config.json", "model.safetensors", TOKENIZER_NAME),
    (Layout.SENTENCE_TRANSFORMERS, "config_sentence_transformers.json", "model.safetensors", TOKENIZER_NAME),
    (
        Layout.SENTENCE_TRANSFORMERS,
        "config_sentence_transformers.json",
        "0_StaticEmbedding/model.safetensors",
        "0_StaticEmbedding/tokenizer.json",
    ),
)

#: Files fetched from the hub: those of every folder layout, the raw format and the model card.
HUB_ALLOW_PATTERNS: list[str] = sorted(
    {path for _, *paths in FOLDER_LAYOUTS for path in paths} | {RAW_MATRIX_NAME, "README.md"}
)


@dataclass(frozen=True)
class HubOptions:
    """How to reach the Hugging Face hub (or its local cache)."""

    revision: str | None = None
    token: str | None = field(default=None, repr=False)
    cache_dir: str | None = None


def content_fingerprint(files: ModelFiles) -> str:
    """SHA-256 over the model's matrix, tokenizer and config bytes: equal models give equal fingerprints."""
    digest = hashlib.sha256()
    for path in (files.matrix, files.tokenizer, files.config):
        if path is None:
            continue
        digest.update(os.path.basename(path).encode() + b"\0")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def path_problem(path: str) -> str | None:
    """Why ``path``, which is named but is no readable file or folder, cannot be used; None when it is usable or absent.

    Catches what ``os.path.exists`` hides: symbolic link loops, links to nothing, unreadable
    entries, and entries that are neither files nor folders (sockets, devices, pipes).
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return f"broken symbolic link to {os.readlink(path)!r}" if os.path.islink(path) else None
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "symbolic link loop: following the links never reaches a file"
        return f"cannot be read: {error.strerror or error}"
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        return "neither a file nor a folder"
    return None


def _check_entries(folder: str) -> None:
    """Refuse a model folder where a file of some layout is a broken link, a loop, a folder or unreadable."""
    names = {name for _, *paths in FOLDER_LAYOUTS for name in paths} | {RAW_MATRIX_NAME}
    for name in sorted(names):
        path = os.path.join(folder, name)
        problem = path_problem(path)
        if problem is None and os.path.isdir(path):
            problem = "a folder, not a file"
        if problem is not None:
            raise ModelLoadError(path, problem)


def find_layout(folder: str, source: str, revision: str | None = None) -> ModelFiles:
    """Identify the layout of a local model folder, or explain what is missing."""
    _check_entries(folder)
    for layout, config, matrix, tokenizer in FOLDER_LAYOUTS:
        paths = [os.path.join(folder, name) for name in (config, matrix, tokenizer)]
        if all(os.path.isfile(path) for path in paths):
            return ModelFiles(source, layout, paths[1], paths[2], paths[0], revision)
    raw_matrix = os.path.join(folder, RAW_MATRIX_NAME)
    if os.path.isfile(raw_matrix):
        return ModelFiles(source, Layout.RAW, raw_matrix, os.path.join(folder, TOKENIZER_NAME), None, revision)
    safetensors = os.path.join(folder, "model.safetensors")
    if os.path.isfile(safetensors):
        for name in (TOKENIZER_NAME, "config.json"):
            if not os.path.isfile(os.path.join(folder, name)):
                raise ModelLoadError(
                    os.path.join(folder, name),
                    "missing: a model2vec folder needs it beside model.safetensors",
                )
    try:
        present = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    except OSError as error:
        raise ModelLoadError(folder, f"cannot list the folder: {error.strerror or error}") from None
    raise ModelLoadError(
        folder,
        "no model found: expected model.safetensors + tokenizer.json + config.json (model2vec), "
        "a Sentence Transformers static layout, or vocab_matrix.bin + tokenizer.json; "
        f"the folder holds {present}",
    )


def resolve_tokenizer_file(tokenizer: str, hub: HubOptions) -> str:
    """A local ``tokenizer.json`` path from a file, a folder holding one, or a hub id."""
    problem = path_problem(tokenizer)
    if problem is not None:
        raise ModelLoadError(tokenizer, problem)
    if os.path.isfile(tokenizer):
        return tokenizer
    if os.path.isdir(tokenizer):
        path = os.path.join(tokenizer, TOKENIZER_NAME)
        if not os.path.isfile(path):
            raise ModelLoadError(path, "missing tokenizer")
        return path
    repo_id, path_in_repo = _split_hub_path(tokenizer.removeprefix(HUB_PREFIX))
    return _hub_file(repo_id, path_in_repo or TOKENIZER_NAME, hub)


def resolve_model_files(
    source: str, *, tokenizer: str | None = None, hub: HubOptions | None = None, sha256: str | None = None
) -> ModelFiles:
    """Resolve ``source`` (folder, matrix file, ``hf://`` path or hub id) to local model files.

    ``sha256`` is the expected digest of the matrix file of a model on a remote filesystem.
    """
    hub = hub or HubOptions()
    source = os.fspath(source)
    if source.startswith("file://"):
        source = source.removeprefix("file://")
    problem = None if is_remote(source) else path_problem(source)
    if problem is not None:
        raise ModelLoadError(source, problem)
    if is_remote(source):
        files = _resolve_remote(source, sha256)
    elif os.path.isdir(source):
        files = find_layout(source, source)
    elif os.path.isfile(source):
        files = _files_beside(source, source, None)
    else:
        files = _resolve_hub(source, tokenizer, hub)
    if tokenizer is not None:
        files = replace(files, tokenizer=resolve_tokenizer_file(tokenizer, hub))
    if not os.path.isfile(files.tokenizer):
        raise ModelLoadError(
            files.tokenizer or files.matrix,
            "missing tokenizer: the model needs a tokenizer.json beside its matrix, or pass tokenizer=",
        )
    return files


def _resolve_remote(source: str, sha256: str | None) -> ModelFiles:
    """Copy a model from a Beam filesystem (gs://, s3://, ...) into the machine's cache."""
    local = fetch_remote_model(source, sha256=sha256)
    remote_folder = source.rstrip("/")
    if source.endswith((".bin", ".safetensors")):
        remote_folder, name = remote_folder.rsplit("/", 1)
    try:
        if source.endswith((".bin", ".safetensors")):
            files = _files_beside(os.path.join(local, name), source, None)
        else:
            files = find_layout(local, source)
        if not os.path.isfile(files.tokenizer):
            raise ModelLoadError(
                files.tokenizer, "missing tokenizer: the model needs a tokenizer.json beside its matrix"
            )
    except ModelLoadError as error:
        path = remote_folder + error.path[len(local) :] if error.path.startswith(local) else error.path
        raise ModelLoadError(path, error.problem) from None
    return replace(files, remote=(remote_folder, local))


def _files_beside(matrix_path: str, source: str, revision: str | None) -> ModelFiles:
    """Model files for an explicit matrix file: a raw ``.bin`` or a ``.safetensors`` inside a model folder."""
    folder = os.path.dirname(os.path.abspath(matrix_path))
    if matrix_path.endswith(".safetensors"):
        if os.path.basename(folder) == "0_StaticEmbedding":  # a Sentence Transformers module folder
            folder = os.path.dirname(folder)
        files = find_layout(folder, source, revision)
        return files if os.path.samefile(files.matrix, matrix_path) else replace(files, matrix=matrix_path)
    if not matrix_path.endswith(".bin"):
        raise ModelLoadError(
            matrix_path,
            "a file, not a model: pass the model's folder, its .safetensors file, or a raw float32 matrix "
            f"such as {RAW_MATRIX_NAME}",
        )
    tokenizer = os.path.join(folder, TOKENIZER_NAME)
    return ModelFiles(source, Layout.RAW, matrix_path, tokenizer, None, revision)


def _split_hub_path(path: str) -> tuple[str, str]:
    """Split ``owner/name/some/file`` into the repo id and the path inside the repo."""
    parts = path.strip("/").split("/")
    if len(parts) < 2 or not all(parts[:2]):
        raise ModelLoadError(path, "not a local path, and not a Hugging Face hub id of the form owner/name")
    return "/".join(parts[:2]), "/".join(parts[2:])


def _resolve_hub(source: str, tokenizer: str | None, hub: HubOptions) -> ModelFiles:
    """Fetch (or find in the cache) a model from the Hugging Face hub."""
    if not source.startswith(HUB_PREFIX):
        if not HUB_ID.fullmatch(source):
            raise ModelLoadError(source, "no such file or folder (and not a Hugging Face hub id like owner/name)")
    repo_id, path_in_repo = _split_hub_path(source.removeprefix(HUB_PREFIX))
    if path_in_repo:
        matrix = _hub_file(repo_id, path_in_repo, hub)
        files = _files_beside(matrix, source, hub.revision)
        if files.layout is Layout.RAW and tokenizer is None:
            files = replace(files, tokenizer=_hub_file(repo_id, TOKENIZER_NAME, hub))
        return files
    return find_layout(_hub_snapshot(repo_id, hub), source, hub.revision)


def _hub_snapshot(repo_id: str, hub: HubOptions) -> str:
    """Download (or reuse from the cache) the model files of a hub repo; returns the snapshot folder."""
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return str(
            huggingface_hub.snapshot_download(
                repo_id,
                repo_type="model",
                revision=hub.revision,
                token=hub.token,
                cache_dir=hub.cache_dir,
                allow_patterns=HUB_ALLOW_PATTERNS,
            )
        )
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as error:
        raise ModelLoadError(repo_id, _hub_failure(error, hub)) from error


def _hub_file(repo_id: str, filename: str, hub: HubOptions) -> str:
    """Download (or reuse from the cache) one file of a hub repo."""
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return str(
            huggingface_hub.hf_hub_download(
                repo_id, filename, revision=hub.revision, token=hub.token, cache_dir=hub.cache_dir
            )
        )
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as error:
        raise ModelLoadError(f"{repo_id}/{filename}", _hub_failure(error, hub)) from error


def _hub_failure(error: Exception, hub: HubOptions) -> str:
    """A readable reason for a failed hub lookup."""
    revision = f" at revision {hub.revision!r}" if hub.revision else ""
    offline = " (HF_HUB_OFFLINE is set, so only the local cache was searched)" if _hub_offline() else ""
    return f"not a local path, and could not be fetched from the Hugging Face hub{revision}{offline}: {error}"


def _hub_offline() -> bool:
    """Whether huggingface_hub runs in offline mode."""
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}
