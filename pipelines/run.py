"""Running a program's pipeline: its Beam options, then build, run, write the manifest, publish or discard.

``pipeline_options`` turns the arguments a program does not define into Beam's options (the local
FnApiRunner without ``--runner``). ``run_and_publish`` runs a pipeline into a staging folder and
publishes it as a whole, or leaves the previous output untouched: any failure removes the staging
folder, and a run with too many failed rows keeps only its dead letters, beside the output.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineResult

from beam_m2v.thread_budget import check_settings
from beam_m2v.transforms.arrow_coder import register_arrow_table_coder
from beam_m2v.transforms.thread_options import pipeline_thread_budget
from pipelines.outputs import DEFAULT_MAX_FAILED_FRACTION, RunFolders, RunRejected, discard, publish, reject, rejection
from pipelines.progress import ProgressReport


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


def launch_options(args: argparse.Namespace, beam_args: Sequence[str]) -> PipelineOptions:
    """The run's Beam options (``pipeline_options`` with the parsed ``--m2v_threads_per_worker``).

    They are also given to Beam's ``FileSystems``, so that the launcher reads ``gs://`` / ``s3://``
    inputs and models with the job's credentials.
    """
    options = pipeline_options(beam_args, threads_per_worker=args.m2v_threads_per_worker)
    FileSystems.set_options(options)
    return options


def run_and_publish(
    options: PipelineOptions,
    folders: RunFolders,
    build: Callable[[beam.Pipeline], None],
    finish: Callable[[PipelineResult], dict[str, Any]],
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
