"""``python -m pipelines.embed``: embed a Parquet or JSONL corpus into Parquet vector shards.

Example::

    python -m pipelines.embed --input 'corpus/*.parquet' --output vectors/ --model minishlab/potion-base-8M

Every Beam pipeline option passes through (``--runner``, ``--direct_num_workers``, Dataflow
and Flink options); without ``--runner`` the pipeline runs locally on Beam's FnApiRunner.
"""

from __future__ import annotations

import argparse
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
from pipelines.content_hash import HASH_COLUMN, with_text_hash
from pipelines.inputs import (
    InputError,
    InputSpec,
    ListRowGroups,
    ReadJsonLines,
    ReadRowGroup,
    detect_format,
    jsonl_schema,
    match_files,
    parquet_schema,
)
from pipelines.outputs import (
    EMBEDDING_COLUMN,
    RunFolders,
    count_output_rows,
    dead_letter_json,
    discard,
    output_schema,
    publish,
    to_output_table,
    write_manifest,
)
from pipelines.parquet_sink import VectorParquetSink
from pipelines.process_exit import exit_process
from pipelines.progress import ReportProgress

logger = logging.getLogger("beam_m2v.embed")

DEFAULT_MODEL = "minishlab/potion-base-8M"


def add_input_arguments(parser: argparse.ArgumentParser) -> None:
    """Input and model options shared by ``embed`` and ``reembed``."""
    parser.add_argument("--input", required=True, help="file pattern of Parquet or JSONL (.jsonl, .jsonl.gz) files")
    parser.add_argument("--input-format", choices=["parquet", "jsonl"], help="default: from the extension")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--id-column", default="id")
    parser.add_argument("--keep-columns", default="", help="comma-separated input columns copied to the output")
    parser.add_argument("--output", required=True, help="output directory (replaced atomically)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model folder, hub id or hf:// path")
    parser.add_argument("--tokenizer", help="tokenizer source for a raw vocab_matrix.bin model")
    parser.add_argument("--semantics", choices=["model2vec", "seed"], help="default: from the model format")
    parser.add_argument("--dimensionality", type=int, help="keep the first N dimensions")
    parser.add_argument("--dim", type=int, help="columns of a raw vocab_matrix.bin model (default 256)")
    parser.add_argument("--batch-size", type=int, default=1024, help="texts per tokenizer call")
    parser.add_argument("--hf-revision", help="hub revision (branch, tag or commit)")
    parser.add_argument("--model-sha256", help="expected SHA-256 of the matrix file of a gs:// / s3:// model")
    parser.add_argument(
        "--byte-stream-split",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write vector values with Parquet's BYTE_STREAM_SPLIT encoding (~10%% smaller; readers need "
        "Parquet 2.8+ support: pyarrow, DuckDB, Polars, Spark 3.2+); --no-byte-stream-split for plain pages",
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


def prepare(args: argparse.Namespace) -> Prepared:
    """Check the input and load the model once in the launcher, so that mistakes fail before any work."""
    keep = tuple(column for column in args.keep_columns.split(",") if column)
    spec = InputSpec(
        pattern=args.input,
        format=detect_format(args.input, args.input_format),
        text_column=args.text_column,
        id_column=args.id_column,
        keep_columns=keep,
    )
    files = match_files(spec.pattern)
    input_schema = parquet_schema(files, spec) if spec.format == "parquet" else jsonl_schema(files, spec)
    model_spec = ModelSpec.of(
        args.model,
        tokenizer=args.tokenizer,
        dimensionality=args.dimensionality,
        semantics=args.semantics,
        revision=args.hf_revision,
        sha256=args.model_sha256,
        dim=args.dim,
    )
    # Through the process cache: a pipeline running in this process (FnApiRunner) reuses this load.
    model = acquire_model(model_spec).model
    facts = model_facts(model, model_spec)
    schema = output_schema(input_schema, spec.id_column, keep, model.dim, facts)
    return Prepared(spec, files, model_spec, model, (input_schema, schema), facts, args.byte_stream_split)


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


def read_corpus(pipeline: beam.Pipeline, prepared: Prepared) -> tuple[PCollection, list[PCollection]]:
    """Tables of the corpus (with a text_hash column), and the dead letters of unreadable rows."""
    spec = prepared.input
    input_schema, _ = prepared.schema
    files = pipeline | "Files" >> beam.Create(prepared.files)
    read_failures = []
    if spec.format == "parquet":
        tables = (
            files
            | "RowGroups" >> beam.ParDo(ListRowGroups())
            | "Spread" >> beam.Reshuffle()
            | "ReadParquet" >> beam.ParDo(ReadRowGroup(spec.columns)).with_output_types(pa.Table)
        )
    else:
        parsed = (
            files
            | "Spread" >> beam.Reshuffle()
            | "ReadJsonl"
            >> beam.ParDo(ReadJsonLines(spec, input_schema))
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


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the embed pipeline; returns the published manifest."""
    parser = argparse.ArgumentParser(prog="beam-m2v embed", description=__doc__.split("\n")[0])
    add_input_arguments(parser)
    args, beam_args = parser.parse_known_args(argv)
    options = pipeline_options(beam_args, threads_per_worker=args.m2v_threads_per_worker)
    FileSystems.set_options(options)  # the launcher reads gs:// / s3:// models with the job's credentials
    prepared = prepare(args)
    folders = RunFolders.new(args.output)
    started = datetime.datetime.now(datetime.timezone.utc)
    logger.info("embedding %s (%d files) with %s into %s", args.input, len(prepared.files), args.model, folders.final)
    manifest = run_and_publish(
        options,
        folders,
        lambda pipeline: build_pipeline(pipeline, prepared, folders),
        lambda result: finish_manifest(prepared, folders, result, started),
    )
    logger.info(summary_line(manifest))
    return manifest


def run_and_publish(
    options: PipelineOptions,
    folders: RunFolders,
    build: Callable[[beam.Pipeline], None],
    finish: Callable[[Any], dict[str, Any]],
) -> dict[str, Any]:
    """Build and run a pipeline into the staging folder, write its manifest, then publish it.

    Any failure, the row-accounting check included, removes the staging folder instead.
    """
    register_arrow_table_coder()
    try:
        pipeline = beam.Pipeline(options=options)
        build(pipeline)
        with pipeline_thread_budget(options):
            result = pipeline.run()
            result.wait_until_finish()
        manifest = finish(result)
    except BaseException:
        discard(folders)
        raise
    publish(folders)
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
    """Run a pipeline program; bad input or models give a one-line error and exit code 2."""
    configure_logging()
    try:
        manifest = run_pipeline(argv)
    except (InputError, ModelLoadError, FileNotFoundError, ThreadBudgetError) as error:
        print(f"beam-m2v {command}: error: {error}", file=sys.stderr)
        return 2
    print(summary(manifest))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point of ``beam-m2v embed``."""
    return console_main("embed", run, summary_line, argv)


def configure_logging() -> None:
    """Progress at INFO for beam-m2v, warnings only from Beam."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("beam_m2v").setLevel(logging.INFO)


if __name__ == "__main__":
    exit_process(main())
