"""``beam-m2v embed`` (``python -m pipelines.embed``): embed a Parquet or JSONL corpus into Parquet vector shards.

Example::

    beam-m2v embed --input 'corpus/*.parquet' --output vectors/ --model minishlab/potion-base-8M

Every other argument is a Beam pipeline option (``--runner``, ``--direct_num_workers``, Dataflow
and Flink options); without ``--runner`` the pipeline runs locally on Beam's FnApiRunner.
"""

from __future__ import annotations

import argparse
import datetime
import logging
from collections.abc import Sequence
from typing import Any

import apache_beam as beam

from pipelines.arguments import parse_program_args, program_parser
from pipelines.console import console_main
from pipelines.corpus import embed_tables, read_corpus
from pipelines.embed_arguments import add_embed_arguments
from pipelines.manifest import write_run_manifest
from pipelines.outputs import RunFolders, add_output_arguments, output_settings
from pipelines.prepare import PreparedRun, prepare
from pipelines.process_exit import run_and_exit
from pipelines.progress import progress_report
from pipelines.run import launch_options, run_and_publish
from pipelines.snapshot import write_snapshot

logger = logging.getLogger("beam_m2v.embed")

DESCRIPTION = """Embed a Parquet or JSON Lines corpus into Parquet vector shards.

example: beam-m2v embed --input 'corpus/*.parquet' --output vectors/ --model minishlab/potion-base-8M"""


def parser() -> argparse.ArgumentParser:
    """The command line of ``beam-m2v embed``."""
    embed_parser = program_parser("beam-m2v embed", DESCRIPTION)
    add_embed_arguments(embed_parser)
    add_output_arguments(embed_parser)
    return embed_parser


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the embed pipeline; returns the published manifest."""
    from pipelines import lance_output  # an output ending in .lance is a Lance dataset

    if lance_output.lance_output(argv):
        return lance_output.run_embed(argv)
    args, beam_args = parse_program_args(parser(), argv)
    options = launch_options(args, beam_args)
    settings = output_settings(args)  # before any work: an output that must not be replaced stops here
    prepared = prepare(args)
    folders = RunFolders.new(settings.output)
    started = datetime.datetime.now(datetime.timezone.utc)
    logger.info("embedding %s (%d files) with %s into %s", args.input, len(prepared.files), args.model, folders.final)
    return run_and_publish(
        options,
        folders,
        lambda pipeline: build_pipeline(pipeline, prepared, folders),
        lambda result: write_run_manifest(prepared, folders, result, started),
        max_failed_fraction=settings.max_failed_fraction,
        progress=progress_report(options, prepared.files, prepared.input.format, args.progress_seconds),
    )


def build_pipeline(pipeline: beam.Pipeline, prepared: PreparedRun, folders: RunFolders) -> None:
    """Read, embed, and write vectors and dead letters into the staging folder."""
    tables, read_failures = read_corpus(pipeline, prepared)
    embedded, failed = embed_tables(tables, prepared)
    write_snapshot(embedded, [failed, *read_failures], prepared, folders)


def summary_line(manifest: dict[str, Any]) -> str:
    """One line: rows read, embedded, failed, time and rate."""
    rows = manifest["rows"]
    seconds = manifest["seconds"]
    return (
        f"done: {rows['read']:,} rows read, {rows['embedded']:,} embedded, {rows['failed']:,} failed "
        f"in {seconds:.1f} s ({rows['read'] / max(seconds, 1e-9):,.0f} rows/s)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point of ``beam-m2v embed``."""
    return console_main("embed", run, summary_line, argv)


if __name__ == "__main__":
    run_and_exit(main)
