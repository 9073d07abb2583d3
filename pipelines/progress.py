"""Progress of a long run on stderr: work done of the total, rate and time left, from the start.

The total is known before the pipeline starts: rows from the Parquet footers, or bytes of the JSON
Lines files (uncompressed size; for ``.gz`` files the size their gzip trailer records). The
pipeline's steps count what they do in module-level counters (``note_rows`` for rows written as
vectors or dead letters, ``note_input_bytes`` for JSONL bytes read). When the runner executes the
pipeline in this process (Beam's FnApiRunner or DirectRunner, in memory or multi-threaded: what
``beam-m2v`` does without ``--runner``), a ``ProgressReport`` in the launcher reads those counters:
a live bar when stderr is a terminal, a timestamped log line every few seconds otherwise.
Worker processes of other runners log their own counts instead.
"""

from __future__ import annotations

import logging
import struct
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

logger = logging.getLogger("beam_m2v.progress")

#: Seconds between progress lines (``--progress-seconds``).
DEFAULT_INTERVAL = 5.0
#: Runners that execute the pipeline inside the launching process (unless told to use processes).
IN_PROCESS_RUNNERS = {None, "FnApiRunner", "DirectRunner", "SwitchingDirectRunner", "BundleBasedDirectRunner"}

_lock = threading.Lock()
_counts = {"rows": 0, "bytes": 0}
_worker = {"reported": False, "started": 0.0, "last": 0.0}


# -- counting, in whatever process runs the pipeline's steps ----------------------------------------


def note_rows(rows: int, every_seconds: float = DEFAULT_INTERVAL) -> None:
    """Count ``rows`` finished (written as vectors or dead letters) in this process.

    Outside a ``ProgressReport`` (a worker process of another runner), a line with this process's
    count is logged at most every ``every_seconds``.
    """
    now = time.monotonic()
    with _lock:
        _counts["rows"] += rows
        if _worker["reported"]:
            return
        if not _worker["started"]:
            _worker["started"] = _worker["last"] = now
        if now - _worker["last"] < every_seconds:
            return
        _worker["last"] = now
        total, elapsed = _counts["rows"], now - _worker["started"]
    logger.info("this worker: %s rows written, %s rows/s", f"{total:,}", f"{total / max(elapsed, 1e-9):,.0f}")


def note_input_bytes(size: int) -> None:
    """Count ``size`` bytes of JSON Lines read in this process."""
    with _lock:
        _counts["bytes"] += size


def counts() -> tuple[int, int]:
    """Rows finished and input bytes read so far in this process."""
    with _lock:
        return _counts["rows"], _counts["bytes"]


class ReportProgress(beam.DoFn):  # type: ignore[misc]
    """Pass tables through, counting their rows as finished."""

    def __init__(self, every_seconds: float = DEFAULT_INTERVAL) -> None:
        self._every = every_seconds if every_seconds > 0 else DEFAULT_INTERVAL

    def process(self, table: pa.Table) -> Iterator[pa.Table]:
        """Count and forward one table."""
        note_rows(len(table), self._every)
        yield table


def count_dead_letter(element: Any) -> Any:
    """Count one dead letter as a finished row and pass it on (for ``beam.Map``)."""
    note_rows(1)
    return element


# -- how much work there is ------------------------------------------------------------------------


@dataclass(frozen=True)
class InputSize:
    """How much input a run has: ``rows`` (Parquet) or ``bytes`` (JSON Lines); ``total`` None when unknown."""

    unit: str
    total: int | None


def input_size(files: Sequence[str], input_format: str) -> InputSize:
    """Rows of Parquet files (from their footers), or uncompressed bytes of JSON Lines files."""
    if input_format == "parquet":
        import pyarrow.parquet as pq

        rows = 0
        for path in files:
            with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
                rows += pq.ParquetFile(handle).metadata.num_rows
        return InputSize("rows", rows)
    sizes = {m.path: m.size_in_bytes for result in FileSystems.match(list(files)) for m in result.metadata_list}
    total = 0
    for path in files:
        size = sizes.get(path)
        if size is None:
            return InputSize("bytes", None)
        if path.endswith(".gz"):
            size = gzip_recorded_size(path, size)
            if size is None:
                return InputSize("bytes", None)
        total += size
    return InputSize("bytes", total)


def gzip_recorded_size(path: str, compressed_size: int) -> int | None:
    """The uncompressed size a single-member gzip file records in its trailer (None when implausible).

    The trailer holds the size modulo 2**32; a size smaller than the compressed file means it wrapped
    (or the file has several members), so the total is then unknown.
    """
    if compressed_size < 18:
        return None
    try:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            handle.seek(compressed_size - 4)
            (size,) = struct.unpack("<I", handle.read(4))
    except (OSError, ValueError, struct.error):
        return None
    return int(size) if size >= compressed_size else None


def runs_in_this_process(options: PipelineOptions) -> bool:
    """Whether the runner executes the pipeline's steps inside this process (so its counters are ours)."""
    runner = options.view_as(StandardOptions).runner
    name = runner if isinstance(runner, str) or runner is None else type(runner).__name__
    if name not in IN_PROCESS_RUNNERS:
        return False
    return bool(options.view_as(DirectOptions).direct_running_mode != "multi_processing")


def progress_report(
    options: PipelineOptions, files: Sequence[str], input_format: str, interval: float
) -> ProgressReport | None:
    """The report for a run of ``files`` with ``options`` (silent for ``interval`` 0); None for other runners.

    Runners that execute the steps in other processes (Dataflow, Flink, Beam's ``multi_processing``
    mode) count there: their workers log their own lines, and the runner's monitoring shows the
    ``beam_m2v`` counters.
    """
    if not runs_in_this_process(options):
        if interval > 0:
            logger.info("progress: counted by the workers (their logs, and the runner's beam_m2v counters)")
        return None
    if interval <= 0:
        return ProgressReport(InputSize("rows", None), 0)  # silent, and keeps the per-worker lines quiet too
    return ProgressReport(input_size(files, input_format), interval)


# -- reporting, in the launcher --------------------------------------------------------------------


def format_duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``2 h 07 min``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def format_bytes(size: float) -> str:
    """``512 B``, ``3.4 MB``, ``1.2 GB`` (powers of 1,000)."""
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


class ProgressReport:
    """Reports this process's counters while a pipeline runs: a bar on a terminal, log lines otherwise.

    Use as a context manager around ``pipeline.run()``; ``interval`` seconds between log lines
    (0: no progress output).
    """

    def __init__(self, size: InputSize, interval: float = DEFAULT_INTERVAL, *, stream: IO[str] | None = None) -> None:
        self._size = size
        self._interval = interval
        self._stream = stream if stream is not None else sys.stderr
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._bar: Any = None
        self._start_counts = (0, 0)
        self._started = 0.0
        self._samples: list[tuple[float, int]] = []
        self._logged = (-1, -1)

    def __enter__(self) -> ProgressReport:
        """Start reporting: a first line now, then one every ``interval`` seconds."""
        with _lock:
            _worker["reported"] = True
        if self._interval <= 0:
            return self
        self._start_counts = counts()
        self._started = time.monotonic()
        if _is_terminal(self._stream):
            self._bar = _live_bar(self._size, self._stream)
        else:
            self._log_line()
        self._thread = threading.Thread(target=self._run, name="beam-m2v-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop reporting; a last line if anything happened since the previous one (the caller prints the summary)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            if self._bar is not None:
                self._update_bar()
                self._bar.close()
            elif self.done() != self._logged:
                self._log_line()
        with _lock:
            _worker["reported"] = False

    def _run(self) -> None:
        tick = min(self._interval, 0.5) if self._bar is not None else self._interval
        while not self._stop.wait(tick):
            if self._bar is not None:
                self._update_bar()
            else:
                self._log_line()

    def _log_line(self) -> None:
        self._logged = self.done()
        logger.info("%s", self.line())

    def done(self) -> tuple[int, int]:
        """Rows finished and bytes read since the report started."""
        rows, size = counts()
        return rows - self._start_counts[0], size - self._start_counts[1]

    def line(self) -> str:
        """``120,000 of 682,890 rows (17.6%), 52,311 rows/s, 11 s left`` (or bytes read, for JSONL)."""
        rows, size = self.done()
        done = rows if self._size.unit == "rows" else size
        now = time.monotonic()
        rate = self._rate(now, done)
        total = self._size.total
        if self._size.unit == "rows":
            text = f"{rows:,} of {total:,} rows" if total is not None else f"{rows:,} rows"
        else:
            read = format_bytes(size)
            text = f"{read} of {format_bytes(total)} read" if total is not None else f"{read} read"
            text += f", {rows:,} rows written"
        if total:
            text += f" ({min(done / total, 1.0):.1%})"
        if rate is None:
            return f"{text}, starting"
        speed = f"{rate:,.0f} rows/s" if self._size.unit == "rows" else f"{format_bytes(rate)}/s"
        elapsed = f"{format_duration(now - self._started)} elapsed"
        if total and rate > 0 and done < total:
            return f"{text}, {speed}, {elapsed}, about {format_duration((total - done) / rate)} left"
        return f"{text}, {speed}, {elapsed}"

    def _rate(self, now: float, done: int) -> float | None:
        """Units per second over the last 30 s (None before any work is done)."""
        self._samples.append((now, done))
        while len(self._samples) > 2 and now - self._samples[1][0] >= 30:
            self._samples.pop(0)
        if done == 0:
            return None
        first_time, first_done = self._samples[0]
        if first_done == done or now <= first_time:
            first_time, first_done = self._started, 0
        return (done - first_done) / max(now - first_time, 1e-9)

    def _update_bar(self) -> None:
        rows, size = self.done()
        done = rows if self._size.unit == "rows" else size
        self._bar.update(done - self._bar.n)
        if self._size.unit == "bytes":
            self._bar.set_postfix_str(f"{rows:,} rows written", refresh=False)


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _live_bar(size: InputSize, stream: IO[str]) -> Any:
    """A tqdm bar on ``stream``: rows, or bytes with the rows written beside them."""
    from tqdm import tqdm

    if size.unit == "rows":
        return tqdm(total=size.total, unit=" rows", unit_scale=True, file=stream, dynamic_ncols=True, mininterval=0.5)
    return tqdm(total=size.total, unit="B", unit_scale=True, file=stream, dynamic_ncols=True, mininterval=0.5)
