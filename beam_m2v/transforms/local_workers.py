"""Starting FnApiRunner's ``multi_processing`` workers from any Python path: ``startable_local_workers``.

Beam's local runner, in ``--direct_running_mode=multi_processing``, starts each SDK worker through a
shell with the command line ``<sys.executable> -m apache_beam.runners.worker.sdk_worker_main``, the
path unquoted. From a virtual environment whose path holds a space (``~/My Projects/.venv``) or
another shell character, the workers never start and the run waits for them forever.
"""

from __future__ import annotations

import contextlib
import shlex
import sys
from collections.abc import Iterator

from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions


@contextlib.contextmanager
def startable_local_workers(options: PipelineOptions) -> Iterator[None]:
    """Around running a pipeline with ``options``, so that ``multi_processing`` workers start whatever the Python path.

    While the block runs, this process's ``sys.executable`` is the shell-quoted path, which Beam's
    command line needs; nothing else in a local run reads it. With any other running mode, or a
    path the shell takes as it is, nothing changes.
    """
    path = sys.executable
    quoted = shlex.quote(path)
    if options.view_as(DirectOptions).direct_running_mode != "multi_processing" or quoted == path:
        yield
        return
    sys.executable = quoted
    try:
        yield
    finally:
        sys.executable = path
