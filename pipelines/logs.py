"""How the programs log: timestamped lines on stderr, beam-m2v at INFO, Beam's warnings without its noise.

Importing Apache Beam logs two warnings that do not apply to these programs (``apitools not found``
when the Google Cloud extra is not installed, ``Resource module is not available`` on platforms
without ``resource``). ``quiet_beam_imports`` drops exactly those two, and must run before Beam is
imported: ``pipelines/__init__.py`` calls it.
"""

from __future__ import annotations

import logging

#: The start of the messages Beam logs at import time that say nothing about a run.
BEAM_IMPORT_NOISE = ("apitools not found", "Resource module is not available")
#: Beam's own warnings about arguments it cannot parse: ``pipelines.arguments`` names them better.
BEAM_ARGUMENT_WARNINGS = ("Unparseable argument", "Discarding unparseable args")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class DropMessages(logging.Filter):
    """Drops log records whose message starts with one of ``prefixes``."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        """False for the records to drop."""
        return not str(record.msg).startswith(self.prefixes)


def quiet_beam_imports() -> None:
    """Drop Beam's import-time warnings (logged on the root logger) in this process; idempotent."""
    root = logging.getLogger()
    if not any(isinstance(f, DropMessages) and f.prefixes == BEAM_IMPORT_NOISE for f in root.filters):
        root.addFilter(DropMessages(BEAM_IMPORT_NOISE))


def configure_logging() -> None:
    """Timestamped lines on stderr: beam-m2v's progress at INFO, warnings only from everything else."""
    quiet_beam_imports()
    # force: Beam's import may already have installed a bare root handler (logging.warning does that).
    logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT, force=True)
    for handler in logging.getLogger().handlers:
        handler.addFilter(DropMessages(BEAM_IMPORT_NOISE + BEAM_ARGUMENT_WARNINGS))
    logging.getLogger("beam_m2v").setLevel(logging.INFO)
