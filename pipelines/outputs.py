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
        """Fresh staging folder beside ``output``."""
        final = os.path.abspath(output.rstrip("/"))
        return cls(final=final, staging=f"{final}.staging-{uuid.uuid4().hex[:12]}")

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


def count_output_rows(staging: str) -> tuple[int, int]:
    """(embedded rows in the Parquet shards, dead-letter lines) actually written in staging."""
    embedded = sum(
        pq.ParquetFile(os.path.join(staging, name)).metadata.num_rows
        for name in os.listdir(staging)
        if name.endswith(".parquet")
    )
    failed_dir = os.path.join(staging, FAILED_DIR)
    failed = 0
    for name in os.listdir(failed_dir) if os.path.isdir(failed_dir) else []:
        with open(os.path.join(failed_dir, name), "rb") as handle:
            failed += sum(1 for line in handle if line.strip())
    return embedded, failed


def write_manifest(staging: str, manifest: dict[str, Any]) -> None:
    """Write manifest.json into staging."""
    with open(os.path.join(staging, MANIFEST_NAME), "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=2, sort_keys=True)
        handle.write("\n")


def read_manifest(output: str) -> dict[str, Any]:
    """The manifest of a published output."""
    with open(os.path.join(output, MANIFEST_NAME), encoding="utf-8") as handle:
        manifest: dict[str, Any] = json.load(handle)
    return manifest


def publish(folders: RunFolders) -> None:
    """Swap the finished staging folder in as the output (the previous output, if any, is removed).

    On Linux an existing output is exchanged with the staging folder in one ``renameat2``
    (``RENAME_EXCHANGE``) call, so the output path always holds a complete run. Elsewhere
    two renames are used, and between them the output path briefly does not exist.
    """
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


def discard(folders: RunFolders) -> None:
    """Remove a failed run's staging folder."""
    shutil.rmtree(folders.staging, ignore_errors=True)
