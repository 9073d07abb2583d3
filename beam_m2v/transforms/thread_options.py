"""The ``--m2v_threads_per_worker`` pipeline option, and running a pipeline so that its workers follow it.

Importing this module registers the option with Beam, so that it travels with the pipeline
options to the runner's SDK worker processes (``beam_m2v.thread_budget`` reads it there).
FnApiRunner's ``multi_processing`` workers see no pipeline options: ``pipeline_thread_budget``
tells them through their inherited environment instead.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions

from beam_m2v.thread_budget import OPTION, exported, launcher_environment, launcher_options, parse_threads
from beam_m2v.transforms.local_workers import startable_local_workers


def threads_option(text: str) -> str:
    """Check a ``--m2v_threads_per_worker`` value (a positive number or ``all``) and return it normalised."""
    threads = parse_threads(text, f"--{OPTION}")
    return "all" if threads is None else str(threads)


class ThreadBudgetOptions(PipelineOptions):  # type: ignore[misc]
    """``--m2v_threads_per_worker``: cores each worker process uses to embed."""

    @classmethod
    def _add_argparse_args(cls, parser: Any) -> None:
        parser.add_argument(
            f"--{OPTION}",
            type=threads_option,
            default=None,
            help="cores each worker process uses to embed: a number, or 'all' for every core in every process "
            "(default: the process's share of the machine when the runner starts several; every core otherwise)",
        )


@contextlib.contextmanager
def pipeline_thread_budget(options: PipelineOptions) -> Iterator[None]:
    """Around running a pipeline from this process, so that each process running it follows ``options``.

    This process (where local runners run the pipeline) takes ``--m2v_threads_per_worker`` from
    ``options``, unless its budget is already fixed; FnApiRunner's ``multi_processing`` workers
    started in the block learn it, or how many of them share the machine, from the environment,
    and start from a Python whose path needs quoting in a shell (``startable_local_workers``).
    """
    explicit = options.view_as(ThreadBudgetOptions).m2v_threads_per_worker
    direct = options.view_as(DirectOptions)
    workers = None
    if direct.direct_running_mode == "multi_processing":
        workers = 1 if direct.direct_num_workers is None else int(direct.direct_num_workers)
    own = {OPTION: explicit} if explicit else {}
    with launcher_options(own), exported(launcher_environment(explicit, workers)), startable_local_workers(options):
        yield
