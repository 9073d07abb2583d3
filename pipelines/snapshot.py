"""Writing a snapshot into a run's staging folder: vector shards (``part-*.parquet``) and dead letters.

Every vector table passes the progress count, loses its bookkeeping columns and goes to a
``VectorParquetSink``; every dead letter is counted and written as one JSON line in
``_failed/failed-*.jsonl``. What is written here is published (or discarded) by ``pipelines.run``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import apache_beam as beam
import pyarrow as pa
from apache_beam.pvalue import PCollection

from pipelines.columns import EMBEDDING_COLUMN, HASH_COLUMN
from pipelines.file_writes import JsonLinesSink, WriteFiles
from pipelines.outputs import RunFolders, dead_letter_json, to_output_table
from pipelines.parquet_sink import VectorParquetSink
from pipelines.prepare import PreparedRun
from pipelines.progress import ReportProgress, count_dead_letter


def write_snapshot(
    embedded: PCollection[pa.Table] | Sequence[tuple[str, PCollection[pa.Table]]],
    failures: Sequence[PCollection[Any]],
    prepared: PreparedRun,
    folders: RunFolders,
) -> None:
    """Write vector tables and dead letters into the staging folder.

    ``embedded`` is one PCollection of vector tables, or several ``(name, tables)`` parts, each
    written by its own sink as ``part-<name>-*.parquet``. Parts made in different stages are not
    flattened: on a local runner a Flatten across stages holds all its elements in memory.
    """
    spec = prepared.input
    schema = prepared.output_schema
    parts = [("", embedded)] if isinstance(embedded, PCollection) else list(embedded)
    for name, tables in parts:
        suffix = name.capitalize()
        prefix = f"{folders.shard_prefix}-{name}" if name else folders.shard_prefix
        _ = (
            tables
            | f"Progress{suffix}" >> beam.ParDo(ReportProgress()).with_output_types(pa.Table)
            | f"OutputColumns{suffix}" >> beam.Map(to_output_table, schema).with_output_types(pa.Table)
            | f"WriteVectors{suffix}"
            >> WriteFiles(
                VectorParquetSink(
                    prefix,
                    schema,
                    vector_columns=[EMBEDDING_COLUMN],
                    undictionary_columns=[spec.id_column, HASH_COLUMN],
                    byte_stream_split=prepared.byte_stream_split,
                )
            )
        )
    _ = (
        tuple(failures)
        | "AllFailures" >> beam.Flatten()
        | "CountFailures" >> beam.Map(count_dead_letter)
        | "FailureJson" >> beam.Map(dead_letter_json, spec.id_column, spec.text_column)
        # Beam 2.77's S3 writer rejects empty objects: on object stores, no failures means no shard.
        | "WriteFailures" >> WriteFiles(JsonLinesSink(folders.failed_prefix, skip_if_empty=folders.remote))
    )
