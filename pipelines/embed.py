"""``beam-m2v embed`` (``python -m pipelines.embed``): embed a Parquet or JSONL corpus into Parquet vector shards.

Example::

    beam-m2v embed --input 'corpus/*.parquet' --output vectors/ --model minishlab/potion-base-8M

Every other argument is a Beam pipeline option (``--runner``, ``--direct_num_workers``, Dataflow
and Flink options); without ``--runner`` the pipeline runs locally on Beam's FnApiRunner.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.iobase import Write
from apache_beam.io.textio import WriteToText
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.pvalue import PCollection

import beam_m2v
from beam_m2v.encoder import StaticEmbedder
from beam_m2v.errors import ModelLoadError
from beam_m2v.thread_budget import ThreadBudgetError, check_settings
from beam_m2v.transforms.arrow_coder import register_arrow_table_coder
from beam_m2v.transforms.dead_letters import FAILED_TAG
from beam_m2v.transforms.metrics import NAMESPACE
from beam_m2v.transforms.model_cache import ModelSpec, acquire_model
from beam_m2v.transforms.thread_options import pipeline_thread_budget, threads_option
from pipelines.arguments import parse_program_args, program_parser
from pipelines.content_hash import HASH_COLUMN, with_text_hash
from pipelines.inputs import (
    JSONL_ROWS_PER_TABLE,
    InputError,
    InputLayout,
    InputSpec,
    ListRowGroups,
    ReadJsonLines,
    ReadParquetRows,
    detect_format,
    inspect_input,
    match_files,
)
from pipelines.logs import configure_logging
from pipelines.model_arguments import add_model_arguments, spec_from_arguments
from pipelines.outputs import (
    DEFAULT_MAX_FAILED_FRACTION,
    EMBEDDING_COLUMN,
    REJECTED_EXIT_CODE,
    OutputError,
    RunFolders,
    RunRejected,
    add_output_arguments,
    count_output_rows,
    dead_letter_json,
    discard,
    output_schema,
    output_settings,
    publish,
    reject,
    rejection,
    to_output_table,
    write_manifest,
)
from pipelines.parquet_sink import VectorParquetSink
from pipelines.process_exit import exit_process
from pipelines.progress import DEFAULT_INTERVAL, ProgressReport, ReportProgress, count_dead_letter, progress_report

logger = logging.getLogger("beam_m2v.embed")

DEFAULT_MODEL = "minishlab/potion-base-8M"
DESCRIPTION = """Embed a Parquet or JSON Lines corpus into Parquet vector shards.

example: beam-m2v embed --input 'corpus/*.parquet' --output vectors/ --model minishlab/potion-base-8M"""


def add_input_arguments(parser: argparse.ArgumentParser) -> None:
    """Input and model options shared by ``embed`` and ``reembed``."""
    parser.add_argument(
        "--input",
        required=True,
        metavar="PATTERN",
        help="the corpus: a file pattern of Parquet (.parquet) or JSON Lines (.jsonl, .jsonl.gz) files, local or on "
        "gs:// / s3://; quote it so that the shell does not expand it",
    )
    parser.add_argument(
        "--input-format",
        choices=["parquet", "jsonl"],
        help="format of the input files (default: from the file extension)",
    )
    parser.add_argument(
        "--text-column", default="text", metavar="NAME", help="column (Parquet) or field (JSONL) with the text to embed"
    )
    parser.add_argument(
        "--id-column",
        metavar="NAME",
        help="column or field with each row's id, copied to the output (default: id; when the input has no such "
        "column, each row's id is its position '<file>:<line or row>')",
    )
    parser.add_argument(
        "--keep-columns",
        default="",
        metavar="A,B",
        help="comma-separated input columns copied to the output beside each vector (default: none)",
    )
    parser.add_argument(
        "--output",
        required=True,
        metavar="FOLDER",
        help="output folder (local, gs:// or s3://), or a Lance dataset PATH.lance: vector shards, dead letters and a "
        "manifest; it must be absent, empty or a previous beam-m2v output, and is replaced as a whole when the run "
        "succeeds",
    )
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        metavar="SOURCE",
        help="the model: a local folder, a Hugging Face hub id, hf://owner/name/file, or a gs:// / s3:// folder",
    )
    add_model_arguments(parser)
    parser.add_argument(
        "--batch-size",
        type=int,
        default=JSONL_ROWS_PER_TABLE,
        metavar="N",
        help="most rows per table: each table is one encoder call and one Parquet row group of the output "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--byte-stream-split",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write vector values with Parquet's BYTE_STREAM_SPLIT encoding (about 10%% smaller; readers need "
        "Parquet 2.8+ support: pyarrow, DuckDB, Polars, Spark 3.2+); --no-byte-stream-split writes plain pages",
    )
    parser.add_argument(
        "--progress-seconds",
        type=float,
        default=DEFAULT_INTERVAL,
        metavar="S",
        help="seconds between progress lines on stderr (a live bar instead when stderr is a terminal); 0 for none",
    )
    parser.add_argument(
        "--m2v_threads_per_worker",
        type=threads_option,
        metavar="N",
        help="cores each worker process uses to embed, or 'all' (default: its share of the machine when the "
        "runner starts several worker processes, every core otherwise; also BEAM_M2V_THREADS)",
    )


@dataclass(frozen=True)
class Prepared:
    """Everything checked and resolved before a pipeline starts."""

    input: InputSpec
    files: list[str]
    model_spec: ModelSpec
    model: StaticEmbedder
    schema: Any
    model_facts: dict[str, Any]
    byte_stream_split: bool = True
    layout: InputLayout | None = None
    """What the start-up checks found (column types, rows)."""

    @property
    def input_rows(self) -> int | None:
        """Rows in the input, known before the pipeline runs (Parquet footers, non-blank JSONL lines)."""
        return None if self.layout is None else self.layout.rows

    @property
    def input_facts(self) -> dict[str, Any]:
        """Where the ids come from, for the manifest (``InputSpec.id_facts``)."""
        return self.input.id_facts


#: Options that must be positive whole numbers when given.
POSITIVE_OPTIONS = ("dimensionality", "dim", "batch_size")


def check_numbers(args: argparse.Namespace) -> None:
    """Refuse a numeric option that is zero or negative (``InputError``, one line)."""
    for name in POSITIVE_OPTIONS:
        value = getattr(args, name, None)
        if value is not None and value <= 0:
            raise InputError(f"--{name.replace('_', '-')} must be a positive whole number, got {value}")


def prepare(args: argparse.Namespace) -> Prepared:
    """Check the options and the input and load the model once in the launcher: mistakes fail before any work."""
    check_numbers(args)
    keep = tuple(column for column in args.keep_columns.split(",") if column)
    files = match_files(args.input)
    spec = InputSpec(
        pattern=args.input,
        format=detect_format(args.input, args.input_format),
        text_column=args.text_column,
        id_column=args.id_column or "id",
        keep_columns=keep,
        batch_size=args.batch_size,
    )
    spec, layout = inspect_input(files, spec, id_required=args.id_column is not None)
    input_schema = layout.schema
    model_spec = spec_from_arguments(args.model, args)
    # Through the process cache: a pipeline running in this process (FnApiRunner) reuses this load.
    model = acquire_model(model_spec).model
    facts = model_facts(model, model_spec)
    schema = output_schema(input_schema, spec.id_column, keep, model.dim, facts)
    return Prepared(spec, files, model_spec, model, (input_schema, schema), facts, args.byte_stream_split, layout)


def model_facts(model: StaticEmbedder, spec: ModelSpec) -> dict[str, Any]:
    """What identifies the vectors: model source, revision, content, settings and versions."""
    return {
        "model_source": spec.source,
        "model_revision": spec.revision,
        "model_fingerprint": model.fingerprint,
        "dim": model.dim,
        "normalize": model.settings.normalize,
        "max_length": model.settings.max_length,
        "semantics": model.settings.semantics.value,
        "beam_m2v_version": beam_m2v.__version__,
        "apache_beam_version": beam.__version__,
    }


def read_corpus(pipeline: beam.Pipeline, prepared: Prepared) -> tuple[PCollection[pa.Table], list[PCollection[Any]]]:
    """Tables of the corpus (with a text_hash column), and the dead letters of unreadable rows."""
    spec = prepared.input
    assert prepared.layout is not None, "prepare() inspects the input"
    read_schema = prepared.layout.read_schema(spec)
    files = pipeline | "Files" >> beam.Create(prepared.files)
    if spec.format == "parquet":
        parsed = (
            files
            | "RowGroups" >> beam.ParDo(ListRowGroups())
            | "Spread" >> beam.Reshuffle()
            | "ReadParquet"
            >> beam.ParDo(ReadParquetRows(spec, read_schema))
            .with_output_types(pa.Table)
            .with_outputs(FAILED_TAG, main="tables")
        )
    else:
        parsed = (
            files
            | "Spread" >> beam.Reshuffle()
            | "ReadJsonl"
            >> beam.ParDo(ReadJsonLines(spec, read_schema, arrow_exact=prepared.layout.arrow_exact))
            .with_output_types(pa.Table)
            .with_outputs(FAILED_TAG, main="tables")
        )
    tables, read_failures = parsed.tables, [parsed[FAILED_TAG]]
    hashed = tables | "HashTexts" >> beam.Map(with_text_hash, spec.text_column).with_output_types(pa.Table)
    return hashed, read_failures


def embed_tables(tables: PCollection, prepared: Prepared, label: str = "Embed") -> tuple[PCollection, PCollection]:
    """Embedded tables and dead letters."""
    embedded, failed = tables | label >> beam_m2v.EmbedTables(
        prepared.model_spec, text_column=prepared.input.text_column, output_column=EMBEDDING_COLUMN
    )
    return embedded, failed


def write_snapshot(
    embedded: PCollection | Sequence[tuple[str, PCollection]],
    failures: Sequence[PCollection],
    prepared: Prepared,
    folders: RunFolders,
) -> None:
    """Write vector tables and dead letters into the staging folder.

    ``embedded`` is one PCollection of vector tables, or several ``(name, tables)`` parts, each
    written by its own sink as ``part-<name>-*.parquet``. Parts made in different stages are not
    flattened: on a local runner a Flatten across stages holds all its elements in memory.
    """
    spec = prepared.input
    _, schema = prepared.schema
    parts = [("", embedded)] if isinstance(embedded, PCollection) else list(embedded)
    for name, tables in parts:
        suffix = name.capitalize()
        prefix = f"{folders.shard_prefix}-{name}" if name else folders.shard_prefix
        _ = (
            tables
            | f"Progress{suffix}" >> beam.ParDo(ReportProgress()).with_output_types(pa.Table)
            | f"OutputColumns{suffix}" >> beam.Map(to_output_table, schema).with_output_types(pa.Table)
            | f"WriteVectors{suffix}"
            >> Write(
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
        | "WriteFailures" >> WriteToText(folders.failed_prefix, file_name_suffix=".jsonl", skip_if_empty=folders.remote)
    )


def build_pipeline(pipeline: beam.Pipeline, prepared: Prepared, folders: RunFolders) -> None:
    """Read, embed, and write vectors and dead letters into the staging folder."""
    tables, read_failures = read_corpus(pipeline, prepared)
    embedded, failed = embed_tables(tables, prepared)
    write_snapshot(embedded, [failed, *read_failures], prepared, folders)


def counter_total(result: Any, name: str) -> int:
    """A beam_m2v counter summed over steps."""
    query = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE).with_name(name))
    return int(sum(item.committed or 0 for item in query["counters"]))


def parser() -> argparse.ArgumentParser:
    """The command line of ``beam-m2v embed``."""
    embed_parser = program_parser("beam-m2v embed", DESCRIPTION)
    add_input_arguments(embed_parser)
    add_output_arguments(embed_parser)
    return embed_parser


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the embed pipeline; returns the published manifest."""
    from pipelines import lance_output  # an output ending in .lance is a Lance dataset

    if lance_output.lance_output(argv):
        return lance_output.run_embed(argv)
    args, beam_args = parse_program_args(parser(), argv)
    options = pipeline_options(beam_args, threads_per_worker=args.m2v_threads_per_worker)
    FileSystems.set_options(options)  # the launcher reads gs:// / s3:// models with the job's credentials
    settings = output_settings(args)  # before any work: an output that must not be replaced stops here
    prepared = prepare(args)
    folders = RunFolders.new(settings.output)
    started = datetime.datetime.now(datetime.timezone.utc)
    logger.info("embedding %s (%d files) with %s into %s", args.input, len(prepared.files), args.model, folders.final)
    return run_and_publish(
        options,
        folders,
        lambda pipeline: build_pipeline(pipeline, prepared, folders),
        lambda result: finish_manifest(prepared, folders, result, started),
        max_failed_fraction=settings.max_failed_fraction,
        progress=progress_report(options, prepared.files, prepared.input.format, args.progress_seconds),
    )


def run_and_publish(
    options: PipelineOptions,
    folders: RunFolders,
    build: Callable[[beam.Pipeline], None],
    finish: Callable[[Any], dict[str, Any]],
    *,
    max_failed_fraction: float = DEFAULT_MAX_FAILED_FRACTION,
    progress: ProgressReport | None = None,
) -> dict[str, Any]:
    """Build and run a pipeline into the staging folder, write its manifest, then publish it.

    ``progress`` reports on stderr while the pipeline runs. Any failure, the row-accounting check
    included, removes the staging folder instead. A run in which more than ``max_failed_fraction``
    of the rows read failed (or that read no rows) is not published: its dead letters are kept
    beside the output and RunRejected is raised.
    """
    register_arrow_table_coder()
    try:
        pipeline = beam.Pipeline(options=options)
        build(pipeline)
        with pipeline_thread_budget(options), progress if progress is not None else contextlib.nullcontext():
            result = pipeline.run()
            result.wait_until_finish()
        manifest = finish(result)
        reason = rejection(manifest["rows"], max_failed_fraction)
        if reason is None:
            publish(folders)
    except BaseException:
        discard(folders)
        raise
    if reason is not None:
        kept = reject(folders, manifest, reason)
        raise RunRejected(f"{reason}: {folders.final} was not replaced; the dead letters are kept in {kept}")
    return manifest


def pipeline_options(beam_args: Sequence[str], *, threads_per_worker: str | None = None) -> PipelineOptions:
    """Beam options from the remaining arguments; without --runner, Beam's local FnApiRunner.

    ``threads_per_worker`` becomes ``--m2v_threads_per_worker``; a thread setting in the
    environment that is not valid raises ThreadBudgetError.
    """
    check_settings()
    if threads_per_worker is not None:
        beam_args = [*beam_args, f"--m2v_threads_per_worker={threads_per_worker}"]
    options = PipelineOptions(list(beam_args))
    if not any(arg == "--runner" or arg.startswith("--runner=") for arg in beam_args):
        options = PipelineOptions([*beam_args, "--runner=FnApiRunner"])
    return options


def finish_manifest(
    prepared: Prepared,
    folders: RunFolders,
    result: Any,
    started: datetime.datetime,
    *,
    extra_rows: dict[str, int] | None = None,
    extra_fields: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Count what was written, check that every row is accounted for, and write the manifest.

    ``extra_rows`` / ``extra_fields`` add a program's own counts and facts (``reembed``'s).
    """
    embedded, failed = count_output_rows(folders.staging)
    rows_read = counter_total(result, "rows_read")
    if rows_read != embedded + failed:
        raise RuntimeError(
            f"row accounting mismatch: read {rows_read} rows but wrote {embedded} vectors and {failed} dead letters"
        )
    ended = datetime.datetime.now(datetime.timezone.utc)
    manifest = {
        "input": prepared.input.pattern,
        "input_format": prepared.input.format,
        "input_files": prepared.files,
        **prepared.input_facts,
        **(extra_fields or {}),
        "rows": {"read": rows_read, "embedded": embedded, "failed": failed, **(extra_rows or {})},
        **prepared.model_facts,
        "started": started.isoformat(),
        "ended": ended.isoformat(),
        "seconds": round((ended - started).total_seconds(), 3),
    }
    write_manifest(folders.staging, manifest)
    return manifest


def summary_line(manifest: dict[str, Any]) -> str:
    """One line: rows read, embedded, failed, time and rate."""
    rows = manifest["rows"]
    seconds = manifest["seconds"]
    return (
        f"done: {rows['read']:,} rows read, {rows['embedded']:,} embedded, {rows['failed']:,} failed "
        f"in {seconds:.1f} s ({rows['read'] / max(seconds, 1e-9):,.0f} rows/s)"
    )


def console_main(
    command: str,
    run_pipeline: Callable[[Sequence[str] | None], dict[str, Any]],
    summary: Callable[[dict[str, Any]], str],
    argv: Sequence[str] | None,
) -> int:
    """Run a pipeline program; exit codes: 0 published, 2 refused at start-up (one line), 3 not published.

    Bad input, models, options or output paths give a one-line error and exit code 2; a run with
    too many failed rows is not published and exits with code 3.
    """
    configure_logging()
    try:
        manifest = run_pipeline(argv)
    except (InputError, ModelLoadError, OutputError, FileNotFoundError, ThreadBudgetError) as error:
        print(f"beam-m2v {command}: error: {error}", file=sys.stderr)
        return 2
    except RunRejected as error:
        print(f"beam-m2v {command}: not published: {error}", file=sys.stderr)
        return REJECTED_EXIT_CODE
    print(summary(manifest))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point of ``beam-m2v embed``."""
    return console_main("embed", run, summary_line, argv)


if __name__ == "__main__":
    exit_process(main())
