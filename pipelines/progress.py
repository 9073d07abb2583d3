"""Progress lines during a long run: rows embedded per worker process, and the rate."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

import apache_beam as beam
import pyarrow as pa

logger = logging.getLogger("beam_m2v.progress")

_lock = threading.Lock()
_state = {"rows": 0, "started": 0.0, "last": 0.0}


def note_rows(rows: int, every_seconds: float = 10.0) -> None:
    """Add ``rows`` to this process's count; log a progress line at most every ``every_seconds``."""
    now = time.monotonic()
    with _lock:
        if not _state["started"]:
            _state["started"] = _state["last"] = now
        _state["rows"] += rows
        if now - _state["last"] < every_seconds:
            return
        _state["last"] = now
        total, elapsed = int(_state["rows"]), now - _state["started"]
    logger.info("embedded %s rows in this worker, %.0f rows/s", f"{total:,}", total / max(elapsed, 1e-9))


class ReportProgress(beam.DoFn):  # type: ignore[misc]
    """Pass tables through, counting their rows for the progress log."""

    def process(self, table: pa.Table) -> Iterator[pa.Table]:
        """Count and forward one table."""
        note_rows(len(table))
        yield table
