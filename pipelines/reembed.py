"""``python -m pipelines.reembed``: re-embed a changed corpus, reusing the previous run's vectors.

Each row of a snapshot stores a hash of its text. A re-embedding run reads the current
corpus and the ids and hashes of the previous snapshot, joins them by id, embeds only rows
that are new or whose text changed, and drops ids that are gone. Vectors never go through
the join: an unchanged row carries where its previous vector lies (shard, row group, row),
and the vectors are then copied one previous row group at a time. When the
model (fingerprint, dim, normalisation, max_length or semantics) differs from the previous
run's, every row is re-embedded. Outputs, in ``--output``:

* a complete snapshot, laid out exactly as ``pipelines.embed`` lays it out (the next run's
  ``--previous``), equal row for row to a full ``embed`` of the current corpus;
* ``_changes/upserts-*.parquet`` (id, embedding) and ``_changes/deletes-*.parquet`` (id), to
  sync a vector store;
* a manifest counting new, changed, unchanged, deleted and failed rows.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
from collections.abc import Sequence
from typing import Any

import apache_beam as beam
import pyarrow as pa
from apache_beam.runners.runner import PipelineResult

from beam_m2v.remote_files import is_remote
from beam_m2v.transforms.metrics import (
    PREVIOUS_ROWS_READ,
    REEMBED_CHANGED,
    REEMBED_DELETED,
    REEMBED_NEW,
    REEMBED_UNCHANGED,
    TEXTS_EMBEDDED,
)
from pipelines.arguments import parse_program_args, program_parser
from pipelines.columns import EMBEDDING_COLUMN
from pipelines.console import console_main
from pipelines.corpus import embed_tables, read_corpus
from pipelines.embed_arguments import add_embed_arguments
from pipelines.file_writes import WriteFiles
from pipelines.id_buckets import CURRENT, PREVIOUS, SplitByBucket
from pipelines.inputs import ListRowGroups
from pipelines.manifest import counter_total, write_run_manifest
from pipelines.model_facts import changed_facts, describe_changes
from pipelines.outputs import (
    CHANGES_DIR,
    RunFolders,
    add_output_arguments,
    list_folder,
    output_settings,
    read_manifest,
    rows_in,
)
from pipelines.parquet_sink import VectorParquetSink
from pipelines.prepare import PreparedRun, prepare
from pipelines.process_exit import run_and_exit
from pipelines.progress import progress_report
from pipelines.reembed_steps import (
    DELETES,
    TO_EMBED,
    UNCHANGED,
    CopyVectors,
    JoinBucket,
    ReadPreviousKeys,
    SplitByVectorGroup,
    previous_files,
)
from pipelines.run import launch_options, run_and_publish
from pipelines.snapshot import write_snapshot

logger = logging.getLogger("beam_m2v.reembed")

DESCRIPTION = """Re-embed a changed corpus: embed only new and changed rows, reuse the previous run's vectors for
the rest, and write a full snapshot plus the change set (upserts, deletes) for a vector store.

example: beam-m2v reembed --input 'corpus/*.parquet' --previous vectors/2026-11-24 --output vectors/2026-11-25"""


def parser() -> argparse.ArgumentParser:
    """The command line of ``beam-m2v reembed``: ``embed``'s options and ``--previous``."""
    reembed_parser = program_parser("beam-m2v reembed", DESCRIPTION)
    add_embed_arguments(reembed_parser)
    reembed_parser.add_argument(
        "--previous",
        required=True,
        metavar="FOLDER",
        help="output folder of the previous embed or reembed run, whose vectors are reused",
    )
    add_output_arguments(reembed_parser)
    return reembed_parser


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the re-embedding pipeline; returns the published manifest."""
    from pipelines import lance_output  # an output ending in .lance is a Lance dataset

    if lance_output.lance_output(argv):
        return lance_output.run_reembed(argv)
    args, beam_args = parse_program_args(parser(), argv)
    options = launch_options(args, beam_args)
    settings = output_settings(args)  # before any work: an output that must not be replaced stops here
    prepared = prepare(args)
    id_column = prepared.input.id_column
    previous = previous_files(args.previous, id_column, prepared.output_schema.field(id_column).type)
    previous_manifest = read_manifest(args.previous)
    changed = changed_facts(previous_manifest, prepared.model_facts.as_dict())
    reuse = not changed
    if changed:
        logger.info(
            "re-embedding every row: the model or a setting changed since the previous run (%s)",
            describe_changes(changed),
        )
    folders = RunFolders.new(settings.output)
    started = datetime.datetime.now(datetime.timezone.utc)
    return run_and_publish(
        options,
        folders,
        lambda pipeline: build_pipeline(pipeline, prepared, folders, previous, reuse),
        lambda result: write_manifest_with_changes(prepared, folders, result, started, args.previous, changed),
        max_failed_fraction=settings.max_failed_fraction,
        progress=progress_report(options, prepared.files, prepared.input.format, args.progress_seconds),
    )


def build_pipeline(
    pipeline: beam.Pipeline, prepared: PreparedRun, folders: RunFolders, previous: list[str], reuse: bool
) -> None:
    """Join current and previous rows by id, embed what changed, write the snapshot and the change set."""
    id_column = prepared.input.id_column
    schema = prepared.output_schema
    current, read_failures = read_corpus(pipeline, prepared)
    previous_keys = (
        pipeline
        | "PreviousFiles" >> beam.Create(previous)
        | "PreviousRowGroups" >> beam.ParDo(ListRowGroups())
        | "SpreadPrevious" >> beam.Reshuffle()
        | "ReadPreviousKeys"
        >> beam.ParDo(ReadPreviousKeys(id_column, schema.field(id_column).type)).with_output_types(pa.Table)
    )
    bucketed = beam.typehints.Tuple[int, beam.typehints.Tuple[str, pa.Table]]
    keyed_current = current | "BucketCurrent" >> beam.ParDo(SplitByBucket(id_column, CURRENT)).with_output_types(
        bucketed
    )
    keyed_previous = previous_keys | "BucketPrevious" >> beam.ParDo(
        SplitByBucket(id_column, PREVIOUS)
    ).with_output_types(bucketed)
    joined = (
        (keyed_current, keyed_previous)
        | "Together" >> beam.Flatten()
        | "GroupByBucket" >> beam.GroupByKey()
        | "Join"
        >> beam.ParDo(JoinBucket(id_column, reuse, schema.names))
        .with_output_types(pa.Table)
        .with_outputs(TO_EMBED, UNCHANGED, DELETES)
    )
    reused = (
        joined[UNCHANGED]
        | "ByPreviousRowGroup"
        >> beam.ParDo(SplitByVectorGroup()).with_output_types(
            beam.typehints.Tuple[beam.typehints.Tuple[str, int], pa.Table]
        )
        | "GroupByPreviousRowGroup" >> beam.GroupByKey()
        | "CopyVectors" >> beam.ParDo(CopyVectors()).with_output_types(pa.Table)
    )
    embedded, failed = embed_tables(joined[TO_EMBED], prepared)
    # part-new-*: rows embedded now; part-reused-*: unchanged rows with their previous vectors.
    write_snapshot([("new", embedded), ("reused", reused)], [failed, *read_failures], prepared, folders)
    upsert_schema = pa.schema([schema.field(id_column), schema.field(EMBEDDING_COLUMN)], metadata=schema.metadata)
    _ = (
        embedded
        | "UpsertColumns"
        >> beam.Map(lambda table: table.select([id_column, EMBEDDING_COLUMN]).cast(upsert_schema)).with_output_types(
            pa.Table
        )
        | "WriteUpserts"
        >> WriteFiles(
            VectorParquetSink(
                folders.changes_prefix("upserts"),
                upsert_schema,
                vector_columns=[EMBEDDING_COLUMN],
                undictionary_columns=[id_column],
                byte_stream_split=prepared.byte_stream_split,
            )
        )
    )
    delete_schema = pa.schema([schema.field(id_column)])
    _ = joined[DELETES] | "WriteDeletes" >> WriteFiles(
        VectorParquetSink(
            folders.changes_prefix("deletes"),
            delete_schema,
            vector_columns=[],
            undictionary_columns=[id_column],
        )
    )


def write_manifest_with_changes(
    prepared: PreparedRun,
    folders: RunFolders,
    result: PipelineResult,
    started: datetime.datetime,
    previous: str,
    changed: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """The embed manifest plus what changed: new, changed, unchanged, deleted, encoded, upserts.

    When every row was re-embedded, ``reembed_all_because`` names the model facts that changed.
    """
    counts = {
        "new": counter_total(result, REEMBED_NEW),
        "changed": counter_total(result, REEMBED_CHANGED),
        "unchanged": counter_total(result, REEMBED_UNCHANGED),
        "deleted": counter_total(result, REEMBED_DELETED),
        "encoded": counter_total(result, TEXTS_EMBEDDED),  # texts that went through the model this run
        "previous_read": counter_total(result, PREVIOUS_ROWS_READ),
    }
    changes = list_folder(f"{folders.staging}/{CHANGES_DIR}", ".parquet")
    counts["upserts"] = rows_in(path for path in changes if os.path.basename(path).startswith("upserts-"))
    facts: dict[str, Any] = {
        "previous": previous if is_remote(previous) else os.path.abspath(previous),
        "reused_previous_vectors": not changed,
    }
    if changed:
        facts["reembed_all_because"] = changed
    return write_run_manifest(prepared, folders, result, started, extra_rows=counts, extra_fields=facts)


def summary_line(manifest: dict[str, Any]) -> str:
    """One line: what changed and how long it took."""
    rows = manifest["rows"]
    return (
        f"done: {rows['read']:,} rows read; {rows['new']:,} new, {rows['changed']:,} changed, "
        f"{rows['unchanged']:,} unchanged (vectors reused), {rows['deleted']:,} deleted, {rows['failed']:,} failed "
        f"in {manifest['seconds']:.1f} s"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point of ``beam-m2v reembed``."""
    return console_main("reembed", run, summary_line, argv)


if __name__ == "__main__":
    run_and_exit(main)
