"""How the programs end: everything a normal exit does that anyone can observe, without the teardown.

A normal interpreter exit first joins the non-daemon threads (``threading._shutdown``, which also
stops idle ``concurrent.futures`` workers), runs the ``atexit`` handlers (``logging.shutdown``,
``weakref.finalize`` clean-ups such as temporary directories) and flushes stdout/stderr; only then
does it tear down every module and free every object one by one. With Apache Beam imported that
teardown alone takes 0.3-0.6 s of a 2-core machine (measured: ``python -c "import apache_beam"``
exits 0.4 s later than the same with ``os._exit``; after an embed run, 0.5-0.6 s), a tenth of a
run on a small corpus. The operating system frees memory faster. mypy ends the same way
(``util.hard_exit``).

Only the command-line entry points use this, after the pipeline is done and every output file
is closed and published, and only when no profiler or tracer is attached. ``main(argv)``
functions return their exit code and never call it, so programs and tests that call them
in-process keep running.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from collections.abc import Callable
from typing import NoReturn

#: The exit code of a program whose reader closed its output (as a shell reports one killed by SIGPIPE).
CLOSED_OUTPUT = 128 + 13


def run_and_exit(main: Callable[[], int]) -> NoReturn:
    """Run a program's ``main`` and exit with its code; a reader that stopped reading ends it quietly.

    ``beam-m2v search ... | head -3`` closes the pipe while the program still prints: the program
    then stops without a traceback and exits with CLOSED_OUTPUT, as other command-line tools do.
    """
    try:
        code = main()
    except BrokenPipeError:
        # Nothing more can be written there; point stdout at /dev/null so the final flush is quiet.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        code = CLOSED_OUTPUT
    exit_process(code)


def exit_process(code: int) -> NoReturn:
    """Exit with ``code`` after joining threads, running atexit handlers and flushing output; skip teardown.

    Under a profiler or debugger (``python -m cProfile``, pdb, coverage's tracer) it exits
    normally instead: those write their results once the program returns.
    """
    if sys.getprofile() is not None or sys.gettrace() is not None:
        sys.exit(code)
    try:
        shutdown_threads = getattr(threading, "_shutdown", None)
        if shutdown_threads is not None:
            shutdown_threads()
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # closed or broken pipe: nothing more can be said there
                pass
        os._exit(code)
