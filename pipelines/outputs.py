"""Writing a run: vector shards, dead letters, a manifest, and safe, atomic publication.

Layout of an output folder::

    OUTPUT/
      part-00000-of-00002.parquet   id, embedding fixed_size_list<float32>[dim], text_hash, kept columns
      _failed/failed-00000-of-00001.jsonl   one JSON object per row that was not embedded
      _changes/upserts-*.parquet, deletes-*.parquet   (reembed) what to apply to a vector store
      _manifest.json                counts, model facts, versions, times

Side files start with ``_``, which pyarrow, pandas and Spark skip: pointing a reader at the
folder reads exactly the snapshot's rows. Outputs of older versions (``manifest.json``,
``failed/``, ``changes/``) are still read.

A run only writes to an ``--output`` that is absent, an empty folder, or a previous beam-m2v
output (recognised by its manifest, holding only what beam-m2v writes); anything else is
refused before any work. It writes into ``.OUTPUT.staging-<run id>`` beside the output (a
dot name no glob of outputs matches) while holding an exclusive lock on
``.OUTPUT.staging-<run id>.lock``; once everything is written and counted, it swaps the staging
folder in with renames: a reader sees the previous complete output or the new one, never a
mix. A later run removes the staging folders whose lock it can take (their run is dead) and
leaves alone those of live runs. A run with too many failed rows is not published: its dead
letters are kept in ``.OUTPUT.rejected-<run id>/``.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import logging
import math
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from beam_m2v.remote_files import is_remote
from beam_m2v.transforms.dead_letters import FailedElement, preview
from pipelines.columns import ADDED_COLUMNS, EMBEDDING_COLUMN, HASH_COLUMN, POSITION_COLUMN, SOURCE_COLUMN
from pipelines.content_hash import HASH_TYPE
from pipelines.jsonl_lines import json_line

logger = logging.getLogger("beam_m2v.outputs")

MANIFEST_NAME = "_manifest.json"
FAILED_DIR = "_failed"
CHANGES_DIR = "_changes"
SHARD_PREFIX = "part-"
#: The names an output of an older version used for its side files.
OLDER_MANIFEST_NAME, OLDER_FAILED_DIR, OLDER_CHANGES_DIR = "manifest.json", "failed", "changes"
METADATA_KEY = b"beam_m2v"
#: Characters Beam's FileSystems.match reads as a pattern.
GLOB_CHARACTERS = "[*?"
#: Default of ``--max-failed-fraction``.
DEFAULT_MAX_FAILED_FRACTION = 0.1
#: Exit code of a run that was not published because too many rows failed.
REJECTED_EXIT_CODE = 3
_RUN_ID_LENGTH = 12


class OutputError(ValueError):
    """The output path cannot be written safely (not a beam-m2v output, a file...): the pipeline does not start."""


class RunRejected(RuntimeError):
    """A finished run was not published (too many rows failed); its dead letters were kept."""


# -- options -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OutputSettings:
    """The checked output options of a run."""

    output: str
    max_failed_fraction: float


def output_settings(args: Any) -> OutputSettings:
    """Check ``--output`` and ``--max-failed-fraction`` at start-up, before any work (OutputError if unusable)."""
    return OutputSettings(check_output(args.output), failed_fraction(args.max_failed_fraction))


def failed_fraction(text: str) -> float:
    """``--max-failed-fraction``'s value: a number from 0 to 1."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:
        raise OutputError(f"--max-failed-fraction must be a number from 0 to 1, got {text!r}")
    return value


def add_output_arguments(parser: Any) -> None:
    """Options about publishing the output, shared by ``embed`` and ``reembed``."""
    parser.add_argument(
        "--max-failed-fraction",
        default=str(DEFAULT_MAX_FAILED_FRACTION),
        help="publish only when at most this fraction of the rows read failed (0 to 1, default "
        f"{DEFAULT_MAX_FAILED_FRACTION}); above it the previous output stays, the dead letters are kept beside "
        f"it and the exit code is {REJECTED_EXIT_CODE}",
    )


# -- columns and rows ----------------------------------------------------------------------------


def output_schema(
    input_schema: pa.Schema,
    id_column: str,
    keep_columns: tuple[str, ...],
    dim: int,
    model_facts: Mapping[str, Any],
) -> pa.Schema:
    """id, embedding and kept columns, with the model facts as Parquet key-value metadata.

    An input column named like a column the run adds (``embedding``, ``text_hash``) is refused.
    """
    check_input_column_names(input_schema.names, id_column, keep_columns)
    fields = [
        input_schema.field(id_column),
        pa.field(EMBEDDING_COLUMN, pa.list_(pa.float32(), dim)),
        pa.field(HASH_COLUMN, HASH_TYPE),
    ]
    fields += [input_schema.field(column) for column in keep_columns if column != id_column]
    return pa.schema(fields, metadata={METADATA_KEY: json.dumps(model_facts, sort_keys=True).encode()})


def check_input_column_names(read_columns: Iterable[str], id_column: str, keep_columns: tuple[str, ...]) -> None:
    """Refuse an input column (id, text or kept) that has the name of a column the run adds."""
    added = ADDED_COLUMNS
    for column in read_columns:
        if column in added:
            option = (
                "--id-column"
                if column == id_column
                else "--keep-columns"
                if column in keep_columns
                else "--text-column"
            )
            raise OutputError(
                f"input column {column!r} ({option}) has the name of a column beam-m2v adds "
                f"({', '.join(added[:2])}); rename it in the input, or leave it out"
            )


def to_output_table(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Select and order the output columns of an embedded table (bookkeeping columns dropped)."""
    return pa.Table.from_arrays([table.column(name) for name in schema.names], schema=schema)


def dead_letter_json(failure: FailedElement, id_column: str, text_column: str) -> str:
    """One dead letter as a JSON line: id if known, error type, reason, value, source and position."""
    element = failure.element if isinstance(failure.element, dict) else {"value": failure.element}
    record: dict[str, Any] = {
        "id": element.get(id_column, element.get("id")),
        "error_type": failure.error_type,
        "reason": failure.reason,
        "value": preview(element.get(text_column, element.get("line"))),
        "source": element.get(SOURCE_COLUMN),
        "position": element.get(POSITION_COLUMN),
    }
    if isinstance(record["source"], bytes):  # a file name read back from an Arrow column of bytes
        record["source"] = record["source"].decode("utf-8", errors="replace")
    for key, value in record.items():
        if not _json_scalar(value) or (isinstance(value, str) and not _utf8(value)):
            record[key] = preview(value)
    return json_line(record)


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _json_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


# -- listing and reading outputs -----------------------------------------------------------------


def glob_escape(path: str) -> str:
    """``path`` as a Beam FileSystems pattern that matches only itself (``[`` ``*`` ``?`` as classes)."""
    return "".join(f"[{char}]" if char in GLOB_CHARACTERS else char for char in path)


def matching_paths(pattern: str) -> list[str]:
    """Paths matching a pattern on any Beam filesystem (none when nothing matches)."""
    try:
        return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)
    except Exception:
        return []


def list_folder(folder: str, suffix: str = "") -> list[str]:
    """The files directly in ``folder`` (a local path or a URL) whose names end with ``suffix``, sorted.

    The folder's own name is never read as a pattern, whatever characters it holds.
    """
    folder = folder.rstrip("/")
    if not is_remote(folder):
        try:
            entries = list(os.scandir(folder))
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(entry.path for entry in entries if entry.is_file() and entry.name.endswith(suffix))
    return [path for path in matching_paths(f"{glob_escape(folder)}/*") if path.endswith(suffix)]


def shard_paths(output: str) -> list[str]:
    """The snapshot's vector shards: the Parquet files directly in the output folder."""
    return list_folder(output, ".parquet")


def count_output_rows(staging: str) -> tuple[int, int]:
    """(embedded rows in the Parquet shards, dead-letter lines) actually written in staging."""
    embedded = rows_in(shard_paths(staging))
    failed = 0
    for path in list_folder(f"{staging.rstrip('/')}/{FAILED_DIR}"):
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            failed += sum(1 for line in iter(handle.readline, b"") if line.strip())
    return embedded, failed


def rows_in(paths: Iterable[str]) -> int:
    """Rows of Parquet files (on any Beam filesystem), from their footers."""
    total = 0
    for path in paths:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            total += pq.ParquetFile(handle).metadata.num_rows
    return total


def write_manifest(staging: str, manifest: dict[str, Any]) -> None:
    """Write the manifest into staging."""
    data = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode("utf-8")
    path = f"{staging.rstrip('/')}/{MANIFEST_NAME}"
    with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        handle.write(data)


def manifest_path(output: str | os.PathLike[str]) -> str:
    """Where the manifest of an output is: ``_manifest.json``, or ``manifest.json`` in an older output."""
    folder = os.fspath(output).rstrip("/")
    for name in (MANIFEST_NAME, OLDER_MANIFEST_NAME):
        if FileSystems.exists(f"{folder}/{name}"):
            return f"{folder}/{name}"
    return f"{folder}/{MANIFEST_NAME}"


def read_manifest(output: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of a published output (FileNotFoundError when there is none)."""
    path = manifest_path(output)
    if not FileSystems.exists(path):
        raise FileNotFoundError(f"{os.fspath(output)} has no {MANIFEST_NAME}: it is not an output of beam-m2v")
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        data = f.read()
    if not is_run_manifest(data):
        raise OutputError(f"{path} is not a manifest beam-m2v wrote (JSON with row counts and model facts)")
    manifest: dict[str, Any] = json.loads(data.decode("utf-8"))
    return manifest


def has_manifest(output: str | os.PathLike[str]) -> bool:
    """Whether ``output`` holds a finished run."""
    return bool(FileSystems.exists(manifest_path(output)))


def is_run_manifest(data: bytes) -> bool:
    """Whether ``data`` is a manifest beam-m2v wrote (JSON with row counts and a model fingerprint)."""
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(manifest, dict) and isinstance(manifest.get("rows"), dict) and "model_fingerprint" in manifest


def _is_own_entry(name: str) -> bool:
    """Whether a top-level name in an output folder is one beam-m2v writes (in this layout or the older one)."""
    if name.startswith(SHARD_PREFIX) and name.endswith(".parquet"):
        return True
    return name in {MANIFEST_NAME, FAILED_DIR, CHANGES_DIR, OLDER_MANIFEST_NAME, OLDER_FAILED_DIR, OLDER_CHANGES_DIR}


# -- the output check ----------------------------------------------------------------------------


def check_output(output: str) -> str:
    """The folder a run may publish to, as an absolute path or URL; OutputError when it may not.

    Allowed: a path that does not exist, an empty folder, or a previous beam-m2v output (its
    manifest is ours and it holds nothing beam-m2v did not write). A symbolic link is followed.
    """
    if not output.strip():
        raise OutputError("--output is empty")
    if is_remote(output):
        return _check_remote_output(output.rstrip("/"))
    return _check_local_output(output)


def _refuse(output: str, why: str) -> OutputError:
    where = output if is_remote(output) else os.path.abspath(output)
    named = repr(output) if where == output else f"{output!r} ({where})"
    return OutputError(
        f"--output {named} {why}; a run replaces its whole output folder, so it only writes to a path that "
        "does not exist, an empty folder, or a previous beam-m2v output"
    )


def _names(entries: list[str], limit: int = 3) -> str:
    shown = ", ".join(repr(name) for name in sorted(entries)[:limit])
    return shown + (f" and {len(entries) - limit} more" if len(entries) > limit else "")


def _check_local_output(output: str) -> str:
    final = os.path.abspath(output)
    if os.path.islink(final):
        try:
            final = os.path.realpath(final, strict=True)
        except OSError as error:
            raise _refuse(output, f"is a symbolic link that leads nowhere ({error.strerror})") from None
    if os.path.dirname(final) == final:
        raise _refuse(output, "is the root folder")
    if not os.path.lexists(final):
        return final
    if not os.path.isdir(final):
        raise _refuse(output, "is a file, not a folder")
    if os.path.ismount(final):
        raise _refuse(output, "is a mount point (the staging folder beside it would be on another filesystem)")
    try:
        entries = os.listdir(final)
    except OSError as error:
        raise _refuse(output, f"cannot be listed ({error.strerror})") from None
    if not entries:
        return final
    manifest = next((name for name in (MANIFEST_NAME, OLDER_MANIFEST_NAME) if name in entries), None)
    if manifest is None or not _local_run_manifest(os.path.join(final, manifest)):
        raise _refuse(output, f"is a folder that holds {_names(entries)} and no beam-m2v manifest")
    foreign = [name for name in entries if not _is_own_entry(name)]
    if foreign:
        raise _refuse(output, f"is a beam-m2v output that also holds {_names(foreign)}, which beam-m2v did not write")
    return final


def _local_run_manifest(path: str) -> bool:
    try:
        with open(path, "rb") as handle:
            return is_run_manifest(handle.read(1 << 20))
    except OSError:
        return False


def check_object_store_name(output: str) -> None:
    """Refuse an output on an object store whose path holds pattern characters (OutputError).

    Beam's file sinks match their own temporary files by pattern, and object stores have no links
    to write through instead (as a local run does, ``glob_free_alias``).
    """
    if is_remote(output) and any(char in output for char in GLOB_CHARACTERS):
        raise OutputError(
            f"--output {output!r}: on object stores the output path cannot hold {' '.join(GLOB_CHARACTERS)} "
            "(Beam's file sinks read them as patterns); choose another name"
        )


def _check_remote_output(final: str) -> str:
    check_object_store_name(final)
    if FileSystems.exists(final):
        raise _refuse(final, "is an object (a file), not a folder")
    objects = matching_paths(f"{final}/**")
    if not objects:
        return final
    top = sorted({path[len(final) + 1 :].split("/")[0] for path in objects})
    manifest = next((name for name in (MANIFEST_NAME, OLDER_MANIFEST_NAME) if name in top), None)
    if manifest is None or not _remote_run_manifest(f"{final}/{manifest}"):
        raise _refuse(final, f"holds {_names(top)} and no beam-m2v manifest")
    foreign = [name for name in top if not _is_own_entry(name)]
    if foreign:
        raise _refuse(final, f"is a beam-m2v output that also holds {_names(foreign)}, which beam-m2v did not write")
    return final


def _remote_run_manifest(path: str) -> bool:
    try:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            return is_run_manifest(handle.read(1 << 20))
    except Exception:
        return False


# -- staging -------------------------------------------------------------------------------------


class RunLock:
    """The exclusive ``flock`` on a run's lock file that marks the run as alive; released once."""

    def __init__(self, path: str, fd: int | None) -> None:
        self.path = path
        self._fd = fd

    def release(self) -> None:
        """Remove the lock file and drop the lock (a second call does nothing)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(fd)


@dataclass(frozen=True)
class RunFolders:
    """Where a run writes (staging) and where it publishes (final).

    ``writes_to`` is the path the pipeline's file sinks use: the staging folder itself, or, when
    the staging path holds characters Beam reads as a pattern, a symbolic link to it from a
    temporary folder (``alias_root``). ``lock`` marks the run as alive (local disks only).
    """

    final: str
    staging: str
    writes_to: str
    run_id: str
    lock: RunLock | None = None
    alias_root: str | None = None

    @classmethod
    def new(cls, output: str) -> RunFolders:
        """Check ``output``, remove staging left by dead runs, and claim a fresh staging folder beside it."""
        final = check_output(output)
        if is_remote(final):
            _warn_about_remote_staging(final)
            run_id = uuid.uuid4().hex[:_RUN_ID_LENGTH]
            staging = _sibling(final, "staging", run_id)
            return cls(final=final, staging=staging, writes_to=staging, run_id=run_id)
        try:
            os.makedirs(os.path.dirname(final), exist_ok=True)
            remove_dead_staging(final)
            run_id, lock = _claim(final)
        except OSError as error:
            raise OutputError(
                f"--output {output!r}: cannot write beside it ({error.strerror}: {error.filename})"
            ) from None
        staging = _sibling(final, "staging", run_id)
        alias_root = None
        try:
            os.mkdir(staging)
            writes_to = staging
            if any(char in staging for char in GLOB_CHARACTERS):
                alias_root, writes_to = glob_free_alias(staging)
        except BaseException as error:
            shutil.rmtree(staging, ignore_errors=True)
            lock.release()
            if isinstance(error, OSError):
                raise OutputError(f"--output {output!r}: cannot create {staging} ({error.strerror})") from None
            raise
        return cls(final, staging, writes_to, run_id, lock, alias_root)

    @property
    def remote(self) -> bool:
        """Whether the output is on a remote filesystem (gs://, s3://...) rather than a local disk."""
        return is_remote(self.final)

    @property
    def shard_prefix(self) -> str:
        """Prefix of the vector shards, for the pipeline's sinks."""
        return f"{self.writes_to}/{SHARD_PREFIX.rstrip('-')}"

    @property
    def failed_prefix(self) -> str:
        """Prefix of the dead-letter shards, for the pipeline's sinks."""
        return f"{self.writes_to}/{FAILED_DIR}/failed"

    def changes_prefix(self, kind: str) -> str:
        """Prefix of a change-set shard (``upserts``, ``deletes``), for the pipeline's sinks."""
        return f"{self.writes_to}/{CHANGES_DIR}/{kind}"

    def release(self) -> None:
        """The run is over: remove the glob-free alias and the lock file."""
        if self.alias_root is not None:
            shutil.rmtree(self.alias_root, ignore_errors=True)
        if self.lock is not None:
            self.lock.release()


def _sibling(final: str, kind: str, run_id: str) -> str:
    """``.NAME.<kind>-<run id>`` beside ``final``."""
    parent, name = final.rsplit("/", 1) if is_remote(final) else os.path.split(final)
    return f"{parent}/.{name}.{kind}-{run_id}"


def _claim(final: str) -> tuple[str, RunLock]:
    """A fresh run id and its lock, taken (a lock without a file where the filesystem has no locks)."""
    for _ in range(20):
        run_id = uuid.uuid4().hex[:_RUN_ID_LENGTH]
        lock_path = f"{_sibling(final, 'staging', run_id)}.lock"
        try:
            fd = os.open(lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                continue  # a cleaner took it in passing and removes it: pick another id
            logger.warning("%s: file locks are not supported here; staging folders of killed runs stay", lock_path)
            os.unlink(lock_path)
            return run_id, RunLock(lock_path, None)
        if _same_file(fd, lock_path):
            os.write(fd, f"{os.getpid()}\n".encode())
            return run_id, RunLock(lock_path, fd)
        os.close(fd)  # a cleaner removed it between our create and our lock: pick another id
    raise OutputError(f"--output {final!r}: could not create a lock file beside it")


def _same_file(fd: int, path: str) -> bool:
    try:
        here, there = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def glob_free_alias(folder: str) -> tuple[str, str]:
    """A symbolic link to ``folder`` from a temporary folder whose path holds no pattern characters.

    Returns (the temporary folder, the link); removing the temporary folder removes only the link.
    """
    root = tempfile.mkdtemp(prefix="beam-m2v-staging-")
    if any(char in root for char in GLOB_CHARACTERS):
        os.rmdir(root)
        raise OutputError(
            f"--output: the path {folder!r} and the temporary folder {root!r} both hold one of "
            f"{' '.join(GLOB_CHARACTERS)}; set TMPDIR to a plain path"
        )
    alias = os.path.join(root, "staging")
    os.symlink(folder, alias)
    return root, alias


def remove_dead_staging(final: str) -> list[str]:
    """Remove what dead runs left beside ``final`` (staging folders, lock files); returns what was removed.

    A live run holds an exclusive lock on its ``.NAME.staging-<id>.lock``; what belongs to a run
    whose lock is held (or cannot be tested) is left alone.
    """
    parent, name = os.path.split(final)
    prefix = f".{name}.staging-"
    try:
        entries = sorted(entry for entry in os.listdir(parent) if entry.startswith(prefix))
    except OSError:
        return []
    removed = []
    for run_id in sorted({entry[len(prefix) :][:_RUN_ID_LENGTH] for entry in entries}):
        lock = _dead_run_lock(os.path.join(parent, f"{prefix}{run_id}.lock"))
        if lock is None:
            continue  # a live run
        for entry in entries:
            path = os.path.join(parent, entry)
            if entry.startswith(prefix + run_id) and path != lock.path and os.path.lexists(path):
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    os.unlink(path)
                removed.append(path)
                logger.info("removed %s, left by a run that stopped before publishing", path)
        lock.release()
    return removed


def _dead_run_lock(lock_path: str) -> RunLock | None:
    """The lock of a dead run, taken; None when a live run holds it (or it cannot be tested)."""
    try:
        fd = os.open(lock_path, os.O_RDONLY)
    except FileNotFoundError:
        return RunLock(lock_path, None)  # a run makes its lock file before its staging folder
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    if not _same_file(fd, lock_path):
        os.close(fd)
        return None  # replaced meanwhile: leave it to a later run
    return RunLock(lock_path, fd)


def _warn_about_remote_staging(final: str) -> None:
    """Object stores have no locks: say which staging prefixes are beside the output, never delete them."""
    parent, name = final.rsplit("/", 1)
    prefix = f"{parent}/.{name}.staging-"
    found = sorted({path[len(prefix) :].split("/")[0] for path in matching_paths(f"{prefix}**")})
    if found:
        logger.warning(
            "%d staging folder(s) beside %s (%s...), of runs that were killed or are still running; "
            "on object stores they are never removed automatically: delete them once no run writes there",
            len(found),
            final,
            prefix + found[0],
        )


# -- publishing, discarding, rejecting -----------------------------------------------------------


def publish(folders: RunFolders) -> None:
    """Swap the finished staging folder in as the output (the previous output, if any, is removed).

    The output is checked again first: a folder that stopped being a beam-m2v output while the
    run ran is not replaced (OutputError). On Linux an existing output is exchanged with the
    staging folder in one ``renameat2`` (``RENAME_EXCHANGE``) call, so the output path always
    holds a complete run. Elsewhere two renames are used, and between them the output path
    briefly does not exist.
    """
    check_output(folders.final)
    if folders.remote:
        _publish_remote(folders)
        return
    try:
        if not os.path.lexists(folders.final):
            os.rename(folders.staging, folders.final)
        elif _exchange(folders.staging, folders.final):
            shutil.rmtree(folders.staging, ignore_errors=True)  # now holds the previous output
        else:
            retired = f"{folders.staging}.retired"
            os.rename(folders.final, retired)
            os.rename(folders.staging, folders.final)
            shutil.rmtree(retired, ignore_errors=True)
    finally:
        folders.release()


def _exchange(first: str, second: str) -> bool:
    """Atomically swap two paths with Linux's renameat2(RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    result = renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), rename_exchange)
    return bool(result == 0)


def _publish_remote(folders: RunFolders) -> None:
    """Object stores cannot rename a folder atomically: replace the objects, the manifest last.

    Readers treat an output as complete when its manifest exists; while a run publishes, the
    previous manifest is deleted first and the new one written last.
    """
    old = matching_paths(f"{folders.final}/**")
    manifests = {f"{folders.final}/{name}" for name in (MANIFEST_NAME, OLDER_MANIFEST_NAME)}
    old_manifests = [path for path in old if path in manifests]
    if old_manifests:
        FileSystems.delete(old_manifests)
    rest = [path for path in old if path not in old_manifests]
    if rest:
        FileSystems.delete(rest)
    staged = matching_paths(f"{folders.staging}/**")
    manifest = [path for path in staged if path == f"{folders.staging}/{MANIFEST_NAME}"]
    for batch in ([path for path in staged if path not in manifest], manifest):
        if batch:
            FileSystems.rename(batch, [folders.final + path[len(folders.staging) :] for path in batch])


def discard(folders: RunFolders) -> None:
    """Remove a failed run's staging folder."""
    try:
        if folders.remote:
            staged = matching_paths(f"{folders.staging}/**")
            if staged:
                FileSystems.delete(staged)
        else:
            shutil.rmtree(folders.staging, ignore_errors=True)
    finally:
        folders.release()


def rejection(rows: dict[str, int], max_failed_fraction: float) -> str | None:
    """Why a finished run must not be published (too many failed rows, or no rows at all), or None."""
    read, failed = rows["read"], rows["failed"]
    if read == 0:
        return "no rows were read from the input"
    if failed / read > max_failed_fraction:
        return (
            f"{failed:,} of {read:,} rows failed ({failed / read:.1%}, above --max-failed-fraction "
            f"{max_failed_fraction:g})"
        )
    return None


def reject(folders: RunFolders, manifest: dict[str, Any], reason: str) -> str:
    """Keep a rejected run's dead letters and manifest in ``.NAME.rejected-<run id>``; drop its vectors.

    Returns the folder where the dead letters are.
    """
    kept = _sibling(folders.final, "rejected", folders.run_id)
    record = {**manifest, "published": False, "rejected_because": reason}
    try:
        write_manifest(folders.staging, record)
        if folders.remote:
            staged = matching_paths(f"{folders.staging}/**")
            keep_names = (f"{folders.staging}/{FAILED_DIR}/", f"{folders.staging}/{MANIFEST_NAME}")
            keep = [path for path in staged if path.startswith(keep_names)]
            if keep:
                FileSystems.rename(keep, [kept + path[len(folders.staging) :] for path in keep])
            drop = [path for path in staged if path not in keep]
            if drop:
                FileSystems.delete(drop)
        else:
            for entry in os.listdir(folders.staging):
                if entry not in (FAILED_DIR, MANIFEST_NAME):
                    path = os.path.join(folders.staging, entry)
                    shutil.rmtree(path) if os.path.isdir(path) else os.unlink(path)
            os.rename(folders.staging, kept)
    finally:
        folders.release()
    return f"{kept}/{FAILED_DIR}"
