"""Models on any filesystem Beam reads (``gs://``, ``s3://``, ``hdfs://``...): copied once per machine.

A remote model folder (or a raw ``vocab_matrix.bin`` with its ``tokenizer.json``) is copied
into a local cache, keyed by the source URL and the files' sizes and modification times, and
then memory-mapped like a local model. Every process on a machine uses the same cache
entry, so the matrix still occupies memory once. Copies are made under an exclusive file
lock into a private temporary folder, checked (sizes always, SHA-256 when given) and only
then renamed into place: a concurrent process never sees a half-written entry, never
downloads a second time, and an interrupted download is never used.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from beam_m2v.errors import ModelLoadError

#: Files that make a model, in any layout beam-m2v reads.
MODEL_FILE_NAMES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "config_sentence_transformers.json",
    "0_StaticEmbedding/model.safetensors",
    "0_StaticEmbedding/tokenizer.json",
    "vocab_matrix.bin",
    "SHA256SUMS",
)
CHECKSUM_FILE = "SHA256SUMS"
_COMPLETE_MARKER = ".complete"


#: URL scheme -> (beam-m2v extra, a module that extra installs): what reading that scheme needs.
SCHEME_EXTRAS: dict[str, tuple[str, str]] = {"gs": ("gcp", "google.cloud.storage"), "s3": ("aws", "boto3")}


def is_remote(source: str) -> bool:
    """Whether ``source`` is a URL for Beam's FileSystems (anything with a scheme but hf://)."""
    return "://" in source and not source.startswith(("hf://", "file://"))


def cache_root() -> str:
    """Where remote models are cached: ``$BEAM_M2V_CACHE``, else ``~/.cache/beam_m2v``."""
    return os.environ.get("BEAM_M2V_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "beam_m2v")


@dataclass(frozen=True)
class RemoteFile:
    """One file of a remote model: its URL, its name in the model folder and its size."""

    url: str
    name: str
    size: int
    mtime: float


def list_remote_model(source: str) -> list[RemoteFile]:
    """The model files under a remote folder URL, or a remote matrix file and the tokenizer beside it."""
    from apache_beam.io.filesystems import FileSystems

    source = source.rstrip("/")
    if source.endswith((".bin", ".safetensors")):
        folder, names = source.rsplit("/", 1)[0], [source.rsplit("/", 1)[1], "tokenizer.json", CHECKSUM_FILE]
    else:
        folder, names = source, list(MODEL_FILE_NAMES)
    urls = [f"{folder}/{name}" for name in names]
    check_filesystem_installed(source)
    try:
        results = FileSystems.match(urls)
    except Exception as error:  # Beam raises ValueError or BeamIOError, wrapping the store's own errors
        raise ModelLoadError(source, f"cannot list the model files: {error}") from None
    found: list[RemoteFile] = []
    for url, result in zip(urls, results, strict=True):
        for metadata in result.metadata_list:
            name = metadata.path[len(folder) + 1 :] if metadata.path.startswith(folder + "/") else os.path.basename(url)
            found.append(RemoteFile(metadata.path, name, int(metadata.size_in_bytes), metadata.last_updated_in_seconds))
    if not any(f.name.endswith((".safetensors", ".bin")) for f in found):
        raise ModelLoadError(source, "no model found: no model.safetensors or vocab_matrix.bin at this location")
    return found


def check_filesystem_installed(url: str) -> None:
    """Refuse a ``gs://`` or ``s3://`` URL when the extra that reads it is not installed, with the pip command."""
    scheme = url.split("://", 1)[0].lower()
    if scheme not in SCHEME_EXTRAS:
        return
    extra, module = SCHEME_EXTRAS[scheme]
    try:
        importlib.import_module(module)
    except ImportError:
        raise ModelLoadError(
            url, f"reading {scheme}:// needs beam-m2v's {extra} extra: pip install 'beam-m2v[{extra}]'"
        ) from None


@contextlib.contextmanager
def exclusive_lock(path: str) -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` (created if needed) across processes."""
    with open(path, "a+b") as handle:
        if sys.platform == "win32":
            import msvcrt

            handle.seek(0)
            msvcrt.locking(handle.fileno(), msvcrt.LK_LOCK, 1)
            try:
                yield
            finally:
                handle.seek(0)
                msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)
        else:
            import fcntl

            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def fetch_remote_model(source: str, *, sha256: str | None = None) -> str:
    """Copy a remote model into the local cache once per machine; returns the local folder.

    ``sha256`` is the expected digest of the matrix file; a ``SHA256SUMS`` file beside the model
    (``<digest>  <name>`` lines) is honoured for every file it lists.
    """
    files = list_remote_model(source)
    key = hashlib.sha256(
        "\n".join([source, *sorted(f"{f.name}:{f.size}:{f.mtime}" for f in files), sha256 or ""]).encode()
    ).hexdigest()[:32]
    root = cache_root()
    os.makedirs(root, exist_ok=True)
    target = os.path.join(root, key)
    if os.path.exists(os.path.join(target, _COMPLETE_MARKER)):
        return target
    with exclusive_lock(os.path.join(root, f"{key}.lock")):
        if not os.path.exists(os.path.join(target, _COMPLETE_MARKER)):
            _download_checked(files, target, root, sha256)
    return target


def _download_checked(files: Sequence[RemoteFile], target: str, root: str, sha256: str | None) -> None:
    """Download into a private folder, verify, then rename into place."""
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    partial = tempfile.mkdtemp(prefix=".partial-", dir=root)
    try:
        digests: dict[str, str] = {}
        for remote in files:
            local = os.path.join(partial, remote.name)
            os.makedirs(os.path.dirname(local), exist_ok=True)
            digest = hashlib.sha256()
            written = 0
            try:
                with (
                    FileSystems.open(remote.url, compression_type=CompressionTypes.UNCOMPRESSED) as source,
                    open(local, "wb") as sink,
                ):
                    for block in iter(lambda: source.read(1 << 22), b""):
                        sink.write(block)
                        digest.update(block)
                        written += len(block)
            except Exception as error:
                raise ModelLoadError(remote.url, f"download failed: {error}") from error
            if written != remote.size:
                raise ModelLoadError(remote.url, f"download has {written} bytes, the object has {remote.size}")
            digests[remote.name] = digest.hexdigest()
        _verify(files, digests, partial, sha256)
        open(os.path.join(partial, _COMPLETE_MARKER), "w").close()
        if os.path.exists(target):
            shutil.rmtree(target)
        os.rename(partial, target)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def _verify(files: Sequence[RemoteFile], digests: Mapping[str, str], folder: str, sha256: str | None) -> None:
    """Compare digests with ``sha256`` (the matrix) and with a downloaded SHA256SUMS file."""
    by_name = {f.name: f for f in files}
    expected: dict[str, str] = {}
    if CHECKSUM_FILE in digests:
        with open(os.path.join(folder, CHECKSUM_FILE), encoding="utf-8") as handle:
            for line in handle:
                parts = line.split()
                if len(parts) == 2:
                    expected[parts[1].lstrip("*")] = parts[0].lower()
    if sha256:
        matrix = next((name for name in digests if name.endswith((".safetensors", ".bin"))), None)
        if matrix is not None:
            expected[matrix] = sha256.lower()
    for name, digest in expected.items():
        # SHA256SUMS may list files beam-m2v never reads (README.md, modules.json): only ours are checked.
        if name in digests and digests[name] != digest:
            raise ModelLoadError(by_name[name].url, f"SHA-256 mismatch: expected {digest}, got {digests[name]}")
