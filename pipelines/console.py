"""The console entry of the programs that run a pipeline: one summary line, or one error line and an exit code.

Exit codes: 0 published; 2 refused at start-up (a bad input, model, option or output path, named in
one line without a traceback); 3 (``REJECTED_EXIT_CODE``) not published because too many rows failed.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

from beam_m2v.errors import ModelLoadError
from beam_m2v.thread_budget import ThreadBudgetError
from pipelines.input_error import InputError
from pipelines.logs import configure_logging
from pipelines.outputs import REJECTED_EXIT_CODE, OutputError, RunRejected

#: Exit code of a program that refused to start (one line on stderr names what and why).
REFUSED_EXIT_CODE = 2
#: What a program refuses at start-up with one line: the errors of its checks.
START_UP_ERRORS = (InputError, ModelLoadError, OutputError, FileNotFoundError, ThreadBudgetError)


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
    except START_UP_ERRORS as error:
        print(f"beam-m2v {command}: error: {error}", file=sys.stderr)
        return REFUSED_EXIT_CODE
    except RunRejected as error:
        print(f"beam-m2v {command}: not published: {error}", file=sys.stderr)
        return REJECTED_EXIT_CODE
    print(summary(manifest))
    return 0
