"""``beam-m2v embed`` and ``reembed`` with ``--output PATH.lance``: a Lance dataset, one new version per run.

The dataset (local path, ``s3://`` or ``gs://``) holds ``id``, ``embedding``
(``fixed_size_list<float32>[dim]``), ``text_hash`` and the kept columns; the model facts are
its schema metadata (key ``beam_m2v``). Each run commits exactly one version:

* ``embed``: a version holding only this run's rows (a new dataset, or an overwrite of an
  existing beam-m2v dataset; earlier versions stay readable).
* ``reembed``: the latest version is the previous snapshot. New and changed rows are
  appended as new fragments, the previous rows of changed and vanished ids are deleted
  (deletion files; data files are never rewritten), unchanged rows are not touched. When
  the model, a setting or the columns differ from the dataset's, the run commits a full
  overwrite instead.

A run's record and dead letters go into the dataset's folder, which Lance ignores::

    PATH.lance/_beam_m2v/runs/<UTC start>-<id>/manifest.json
    PATH.lance/_beam_m2v/runs/<UTC start>-<id>/failed/failed-*.jsonl

The record is also committed with the version itself (transaction property ``beam_m2v_run``).
The commit is refused, and nothing is committed, when the dataset moved since the run read it.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from typing import Any

import apache_beam as beam
import pyarrow as pa
from apache_beam.options.pipeline_options import PipelineOptions, S3Options
from apache_beam.pvalue import AsDict, AsList, PCollection

from beam_m2v.errors import MissingDependencyError
from beam_m2v.remote_files import is_remote
from beam_m2v.transforms.arrow_coder import register_arrow_table_coder
from beam_m2v.transforms.lance_write import (
    LanceCommitPlan,
    LanceTarget,
    WriteLanceFragments,
    committed_version,
    import_lance,
)
from beam_m2v.transforms.thread_options import pipeline_thread_budget
from pipelines.arguments import parse_program_args, program_parser
from pipelines.columns import EMBEDDING_COLUMN, HASH_COLUMN
from pipelines.console import console_main
from pipelines.corpus import embed_tables, read_corpus
from pipelines.embed_arguments import add_embed_arguments
from pipelines.file_writes import JsonLinesSink, WriteFiles
from pipelines.inputs import InputError
from pipelines.lance_steps import (
    COPIES,
    KEPT,
    NO_ROWS,
    REMOVED,
    SEEN_IDS,
    TALLY,
    TO_EMBED,
    UPDATED,
    ClassifyRows,
    CommitRun,
    CopyRows,
    ReconcileFragment,
    RunRecord,
    read_json,
    tally,
)
from pipelines.model_facts import reusable
from pipelines.outputs import (
    GLOB_CHARACTERS,
    METADATA_KEY,
    check_object_store_name,
    dead_letter_json,
    glob_free_alias,
    matching_paths,
    to_output_table,
)
from pipelines.prepare import PreparedRun, prepare
from pipelines.progress import ReportProgress
from pipelines.run import launch_options

logger = logging.getLogger("beam_m2v.lance")

LANCE_SUFFIX = ".lance"


class LanceRunConflict(RuntimeError):
    """Another writer committed to the dataset while the run worked; the run committed nothing."""


def lance_output(argv: Sequence[str] | None) -> str | None:
    """The ``--output`` of a command line when it names a Lance dataset (a path ending in ``.lance``)."""
    args = list(sys.argv[1:] if argv is None else argv)
    for position, arg in enumerate(args):
        if arg == "--output" and position + 1 < len(args):
            value = args[position + 1]
        elif arg.startswith("--output="):
            value = arg.split("=", 1)[1]
        else:
            continue
        return value if value.rstrip("/").endswith(LANCE_SUFFIX) else None
    return None


def storage_options_for(uri: str, options: PipelineOptions) -> dict[str, str]:
    """Lance storage options for an ``s3://`` dataset, from Beam's ``--s3_*`` options (none set: none)."""
    if not uri.startswith("s3://"):
        return {}
    s3 = options.view_as(S3Options)
    given = {
        "aws_access_key_id": s3.s3_access_key_id,
        "aws_secret_access_key": s3.s3_secret_access_key,
        "aws_session_token": s3.s3_session_token,
        "aws_endpoint": s3.s3_endpoint_url,
        "aws_region": s3.s3_region_name,
    }
    found = {key: str(value) for key, value in given.items() if value}
    if found.get("aws_endpoint", "").startswith("http://"):
        found["allow_http"] = "true"
    return found


def output_target(output: str, options: PipelineOptions) -> LanceTarget:
    """The dataset an ``--output`` names (a local path made absolute), with its storage options."""
    uri = output if is_remote(output) else os.path.abspath(output)
    return LanceTarget.of(uri, storage_options_for(uri, options))


def _require_lance(output: str) -> None:
    os.environ.setdefault("LANCE_LOG", "error")  # Lance's own warnings would repeat what the run reports
    try:
        import_lance()
    except MissingDependencyError as error:
        raise InputError(f"--output {output}: {error}") from None


def open_output(target: LanceTarget) -> Any:
    """The dataset at the output (None when there is none), checked to be one beam-m2v wrote."""
    try:
        dataset = target.open()
    except (ValueError, OSError) as error:
        raise InputError(f"--output {target.uri}: cannot open it as a Lance dataset ({error})") from None
    if dataset is None:
        exists = bool(matching_paths(f"{target.uri}/*")) if is_remote(target.uri) else os.path.exists(target.uri)
        if exists:
            raise InputError(f"--output {target.uri} exists and is not a Lance dataset; choose another path")
        return None
    if METADATA_KEY not in (dataset.schema.metadata or {}):
        raise InputError(
            f"--output {target.uri} is a Lance dataset that beam-m2v did not write (no {METADATA_KEY.decode()!r} "
            "schema metadata); beam-m2v adds versions only to its own datasets"
        )
    return dataset


def dataset_facts(dataset: Any) -> dict[str, Any]:
    """The model facts stored in a dataset's schema metadata."""
    facts: dict[str, Any] = json.loads(dataset.schema.metadata[METADATA_KEY])
    return facts


def _start(command: str, argv: Sequence[str] | None) -> tuple[argparse.Namespace, PipelineOptions, PreparedRun]:
    parser = program_parser(f"beam-m2v {command}", __doc__.split("\n")[0])
    add_embed_arguments(parser)
    if command == "reembed":
        parser.add_argument("--previous", help=argparse.SUPPRESS)
    args, beam_args = parse_program_args(parser, argv)  # as the Parquet path: no abbreviations, typos named
    _require_lance(args.output)
    check_object_store_name(args.output)
    if getattr(args, "previous", None):
        raise InputError(
            "--previous is not used with a Lance output: the dataset's latest version is the previous snapshot"
        )
    options = launch_options(args, beam_args)
    return args, options, prepare(args)


def _record(target: LanceTarget, prepared: PreparedRun, transaction_id: str, extra: dict[str, Any]) -> RunRecord:
    started = datetime.datetime.now(datetime.timezone.utc)
    fields = {
        "input": prepared.input.pattern,
        "input_format": prepared.input.format,
        "input_files": prepared.files,
        **prepared.model_facts.as_dict(),
        **extra,
    }
    # Microseconds in the name, so the run folders of runs started within one second still sort by start.
    name = f"{started:%Y%m%dT%H%M%S.%f}Z-{transaction_id[:8]}"
    return RunRecord(target.uri, name, started.isoformat(), tuple(sorted(fields.items())))


def run_embed(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """``embed`` into a Lance dataset: one version holding this run's rows; returns the run's manifest."""
    args, options, prepared = _start("embed", argv)
    target = output_target(args.output, options)
    existing = open_output(target)
    plan = LanceCommitPlan(
        target,
        prepared.output_schema,
        "create" if existing is None else "overwrite",
        expected_version=0 if existing is None else int(existing.version),
    )
    record = _record(target, prepared, plan.transaction_id, {})
    logger.info("embedding %s (%d files) with %s into %s", args.input, len(prepared.files), args.model, target.uri)
    return _run(options, prepared, plan, record)


def run_reembed(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """``reembed`` into a Lance dataset: its latest version is the previous snapshot; returns the run's manifest."""
    args, options, prepared = _start("reembed", argv)
    target = output_target(args.output, options)
    existing = open_output(target)
    schema = prepared.output_schema
    if existing is None:
        logger.info("%s does not exist yet: embedding every row", target.uri)
        plan = LanceCommitPlan(target, schema, "create", expected_version=0)
        return _run(options, prepared, plan, _record(target, prepared, plan.transaction_id, {}))
    version = int(existing.version)
    same_columns = existing.schema.remove_metadata().equals(schema.remove_metadata())
    reuse = reusable(dataset_facts(existing), prepared.model_facts.as_dict()) and same_columns
    fragment_ids = sorted(int(fragment.fragment_id) for fragment in existing.get_fragments())
    extra = {"reused_previous_vectors": reuse and bool(fragment_ids), "previous_version": version}
    if not (reuse and fragment_ids):
        if not reuse:
            logger.info("the model, its settings or the columns differ from %s: re-embedding every row", target.uri)
        plan = LanceCommitPlan(target, schema, "overwrite", expected_version=version)
        return _run(options, prepared, plan, _record(target, prepared, plan.transaction_id, extra))
    plan = LanceCommitPlan(target, schema, "update", expected_version=version)
    logger.info("re-embedding %s against %s version %d", args.input, target.uri, version)
    return _run(options, prepared, plan, _record(target, prepared, plan.transaction_id, extra), fragment_ids)


def _run(
    options: PipelineOptions,
    prepared: PreparedRun,
    plan: LanceCommitPlan,
    record: RunRecord,
    fragment_ids: Sequence[int] = (),
) -> dict[str, Any]:
    """Run the pipeline; a failure after another writer moved the dataset is reported as a conflict."""
    register_arrow_table_coder()
    alias_root = None
    if any(char in record.folder for char in GLOB_CHARACTERS):  # local only: _start refuses them on object stores
        os.makedirs(record.folder, exist_ok=True)
        alias_root, alias = glob_free_alias(record.folder)
        record = dataclasses.replace(record, writes_through=alias)
    try:
        pipeline = beam.Pipeline(options=options)
        build_pipeline(pipeline, prepared, plan, record, fragment_ids)
        with pipeline_thread_budget(options):
            pipeline.run().wait_until_finish()
    except Exception as error:
        _raise_if_moved(plan, error)
        raise
    finally:
        if alias_root is not None:
            shutil.rmtree(alias_root, ignore_errors=True)  # the link only, not what it points to
    return read_json(record.manifest_path)


def _raise_if_moved(plan: LanceCommitPlan, error: Exception) -> None:
    latest = plan.target.open()
    now = 0 if latest is None else int(latest.version)
    if plan.expected_version is None or now == plan.expected_version:
        return
    if latest is not None and committed_version(latest, plan.transaction_id, plan.expected_version) is not None:
        return
    raise LanceRunConflict(
        f"{plan.target.uri} moved from version {plan.expected_version} to {now} while this run worked "
        "(another writer committed); this run committed nothing: run it again"
    ) from error


def build_pipeline(
    pipeline: beam.Pipeline,
    prepared: PreparedRun,
    plan: LanceCommitPlan,
    record: RunRecord,
    fragment_ids: Sequence[int] = (),
) -> None:
    """Read, (join,) embed, write fragments and dead letters, then commit once."""
    spec = prepared.input
    schema = prepared.output_schema
    tables, read_failures = read_corpus(pipeline, prepared)
    counts = [tables | "CountRows" >> tally("rows")]
    counts += [failures | f"CountReadFailures{n}" >> tally("read_failed") for n, failures in enumerate(read_failures)]
    side: dict[str, Any] = {}
    to_embed = tables
    if plan.operation == "update":
        assert plan.expected_version is not None
        version = plan.expected_version
        compared = [name for name in schema.names if name not in (spec.id_column, EMBEDDING_COLUMN, HASH_COLUMN)]
        classified = tables | "Classify" >> beam.ParDo(
            ClassifyRows(plan.target, version, spec.id_column, compared)
        ).with_outputs(TO_EMBED, KEPT, SEEN_IDS, TALLY)
        to_embed = classified[TO_EMBED]
        previous_fragments = pipeline | "PreviousFragments" >> beam.Create(list(fragment_ids), reshuffle=False)
        every_fragment = previous_fragments | "EveryFragment" >> beam.Map(lambda fragment_id: (fragment_id, NO_ROWS))
        reconciled = (
            (classified[KEPT], every_fragment)
            | "Together" >> beam.Flatten()
            | "GroupByFragment" >> beam.GroupByKey()
            | "Reconcile"
            >> beam.ParDo(
                ReconcileFragment(plan.target, version, [spec.id_column]),
                AsList(classified[SEEN_IDS]),
            ).with_outputs(UPDATED, REMOVED, COPIES, TALLY)
        )
        copies = reconciled[COPIES] | "CopyRows" >> beam.ParDo(
            CopyRows(plan.target, version, schema.names)
        ).with_output_types(pa.Table)
        copied = copies | "WriteCopies" >> beam.ParDo(WriteLanceFragments(plan.target, schema))
        counts += [
            copies | "CountCopies" >> tally("copied"),
            classified[TALLY],
            reconciled[TALLY],
        ]
        side = {
            "updated": AsList(reconciled[UPDATED]),
            "removed": AsList(reconciled[REMOVED]),
            "copies": AsList(copied),
        }
    embedded, failed = embed_tables(to_embed, prepared)
    counts.append(failed | "CountFailed" >> tally("embed_failed"))
    fragments = (
        embedded
        | "Progress" >> beam.ParDo(ReportProgress()).with_output_types(pa.Table)
        | "OutputColumns" >> beam.Map(to_output_table, schema).with_output_types(pa.Table)
        | "WriteFragments"
        >> beam.ParDo(WriteLanceFragments(plan.target, schema, new_schema=plan.operation != "update"))
    )
    dead_letter_files: PCollection[str] = (
        (failed, *read_failures)
        | "AllFailures" >> beam.Flatten()
        | "FailureJson" >> beam.Map(dead_letter_json, spec.id_column, spec.text_column)
        # Beam 2.77's S3 writer rejects empty objects: on object stores, no failures means no shard.
        | "WriteFailures" >> WriteFiles(JsonLinesSink(record.failed_prefix, skip_if_empty=is_remote(record.output)))
    )
    totals = tuple(counts) | "AllCounts" >> beam.Flatten() | "SumCounts" >> beam.CombinePerKey(sum)
    _ = (
        pipeline
        | "CommitOnce" >> beam.Create([None])
        | "Commit"
        >> beam.ParDo(CommitRun(plan, record), AsList(fragments), AsDict(totals), AsList(dead_letter_files), **side)
    )


def summary_line(manifest: dict[str, Any]) -> str:
    """One line: what the run did and the version it committed."""
    rows = manifest["rows"]
    if "new" in rows:
        done = (
            f"{rows['new']:,} new, {rows['changed']:,} changed, {rows['unchanged']:,} unchanged (vectors kept), "
            f"{rows['deleted']:,} deleted"
        )
    else:
        done = f"{rows['embedded']:,} embedded"
    return (
        f"done: {rows['read']:,} rows read; {done}; {rows['failed']:,} failed in {manifest['seconds']:.1f} s; "
        f"{manifest['output']} is at version {manifest['version']}"
    )


def _console(command: str, run: Callable[[Sequence[str] | None], dict[str, Any]], argv: Sequence[str] | None) -> int:
    """``console_main``, with a conflicting writer reported in one line and exit code 1."""
    try:
        return console_main(command, run, summary_line, argv)
    except LanceRunConflict as error:
        print(f"beam-m2v {command}: error: {error}", file=sys.stderr)
        return 1


def embed_main(argv: Sequence[str] | None = None) -> int:
    """Console entry point of ``beam-m2v embed --output PATH.lance``."""
    return _console("embed", run_embed, argv)


def reembed_main(argv: Sequence[str] | None = None) -> int:
    """Console entry point of ``beam-m2v reembed --output PATH.lance``."""
    return _console("reembed", run_reembed, argv)
