"""Writing a run: vector shards, dead letters, a manifest, and atomic publication.

Layout of an output directory::

    OUTPUT/
      part-00000-of-00002.parquet   id, embedding fixed_size_list<float32>[dim], text_hash, kept columns
      failed/failed-00000-of-00001.jsonl   one JSON object per row that was not embedded
      manifest.json                 counts, model facts, versions, times

A run writes into ``OUTPUT.staging-<run id>`` beside ``OUTPUT`` and, once everything is
written and counted, swaps it in with renames: a reader sees the previous complete output
or the new complete output, never a mix, and a crashed run leaves only its staging folder.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from beam_m2v.remote_files import is_remote
from beam_m2v.transforms.dead_letters import FailedElement, preview
from pipelines.content_hash import HASH_COLUMN, HASH_TYPE
from pipelines.inputs import POSITION_COLUMN, SOURCE_COLUMN

EMBEDDING_COLUMN = "embedding"
MANIFEST_NAME = "manifest.json"
FAILED_DIR = "failed"
METADATA_KEY = b"beam_m2v"


@dataclass(frozen=True)
class RunFolders:
    """Where a run writes (staging) and where it publishes (final)."""

    final: str
    staging: str

    @classmethod
    def new(cls, output: str) -> RunFolders:
        """Fresh staging folder (or, on object stores, prefix) beside ``output``."""
        final = output.rstrip("/") if is_remote(output) else os.path.abspath(output.rstrip("/"))
        return cls(final=final, staging=f"{final}.staging-{uuid.uuid4().hex[:12]}")

    @property
    def remote(self) -> bool:
        """Whether the output is on a remote filesystem (gs://, s3://...) rather than a local disk."""
        return is_remote(self.final)

    @property
    def shard_prefix(self) -> str:
        """Prefix of the vector shards in staging."""
        return os.path.join(self.staging, "part")

    @property
    def failed_prefix(self) -> str:
        """Prefix of the dead-letter shards in staging."""
        return os.path.join(self.staging, FAILED_DIR, "failed")


def output_schema(
    input_schema: pa.Schema, id_column: str, keep_columns: tuple[str, ...], dim: int, model_facts: dict[str, Any]
) -> pa.Schema:
    """id, embedding and kept columns, with the model facts as Parquet key-value metadata."""
    fields = [
        input_schema.field(id_column),
        pa.field(EMBEDDING_COLUMN, pa.list_(pa.float32(), dim)),
        pa.field(HASH_COLUMN, HASH_TYPE),
    ]
    fields += [input_schema.field(column) for column in keep_columns if column != id_column]
    return pa.schema(fields, metadata={METADATA_KEY: json.dumps(model_facts, sort_keys=True).encode()})


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
    if not _json_scalar(record["id"]) or (isinstance(record["id"], str) and not _utf8(record["id"])):
        record["id"] = preview(record["id"])
    return json.dumps(record, ensure_ascii=False)


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _json_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def matching_paths(pattern: str) -> list[str]:
    """Paths matching a pattern on any Beam filesystem (none when nothing matches)."""
    try:
        return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)
    except Exception:
        return []


def count_output_rows(staging: str) -> tuple[int, int]:
    """(embedded rows in the Parquet shards, dead-letter lines) actually written in staging."""
    embedded = 0
    for path in matching_paths(f"{staging}/*.parquet"):
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            embedded += pq.ParquetFile(handle).metadata.num_rows
    failed = 0
    for path in matching_paths(f"{staging}/{FAILED_DIR}/*"):
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            failed += sum(1 for line in iter(handle.readline, b"") if line.strip())
    return embedded, failed


def write_manifest(staging: str, manifest: dict[str, Any]) -> None:
    """Write manifest.json into staging."""
    data = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode("utf-8")
    with FileSystems.create(f"{staging}/{MANIFEST_NAME}", compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        handle.write(data)


def manifest_path(output: str | os.PathLike[str]) -> str:
    """Where the manifest of an output (a local path or a URL) is."""
    return f"{os.fspath(output).rstrip('/')}/{MANIFEST_NAME}"


def read_manifest(output: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of a published output."""
    with FileSystems.open(manifest_path(output), compression_type=CompressionTypes.UNCOMPRESSED) as f:
        manifest: dict[str, Any] = json.loads(f.read().decode("utf-8"))
    return manifest


def has_manifest(output: str | os.PathLike[str]) -> bool:
    """Whether ``output`` holds a finished run."""
    return bool(FileSystems.exists(manifest_path(output)))


def publish(folders: RunFolders) -> None:
    """Swap the finished staging folder in as the output (the previous output, if any, is removed).

    On Linux an existing output is exchanged with the staging folder in one ``renameat2``
    (``RENAME_EXCHANGE``) call, so the output path always holds a complete run. Elsewhere
    two renames are used, and between them the output path briefly does not exist.
    """
    if folders.remote:
        _publish_remote(folders)
        return
    if not os.path.exists(folders.final):
        os.rename(folders.staging, folders.final)
        return
    if _exchange(folders.staging, folders.final):
        shutil.rmtree(folders.staging, ignore_errors=True)  # now holds the previous output
        return
    retired = f"{folders.staging}.retired"
    os.rename(folders.final, retired)
    os.rename(folders.staging, folders.final)
    shutil.rmtree(retired, ignore_errors=True)


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
    """Object stores cannot rename a folder atomically: replace the objects, manifest.json last.

    Readers treat an output as complete when its manifest exists; while a run publishes, the
    previous manifest is deleted first and the new one written last.
    """
    old = matching_paths(f"{folders.final}/**")
    old_manifest = [path for path in old if path.endswith("/" + MANIFEST_NAME)]
    if old_manifest:
        FileSystems.delete(old_manifest)
    rest = [path for path in old if path not in old_manifest]
    if rest:
        FileSystems.delete(rest)
    staged = matching_paths(f"{folders.staging}/**")
    manifest = [path for path in staged if path.endswith("/" + MANIFEST_NAME)]
    for batch in ([path for path in staged if path not in manifest], manifest):
        if batch:
            FileSystems.rename(batch, [folders.final + path[len(folders.staging) :] for path in batch])


def discard(folders: RunFolders) -> None:
    """Remove a failed run's staging folder."""
    if folders.remote:
        staged = matching_paths(f"{folders.staging}/**")
        if staged:
            FileSystems.delete(staged)
        return
    shutil.rmtree(folders.staging, ignore_errors=True)
