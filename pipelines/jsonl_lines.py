"""The lines of a JSON Lines file: what makes a line parseable, and how a value is written as one.

Files ending in ``.gz``, ``.bz2``, ``.xz`` or ``.lzma`` are decompressed with Python's own
readers, which notice a stream that is cut short or damaged: that is an ``InputError`` naming
the file, never a silently shorter file. A line is parsed by ``json.loads`` with three rules
more than JSON itself: no ``NaN`` / ``Infinity`` literals, no number beyond float64's range
(``1e400``), and no nesting deeper than ``MAX_DEPTH`` levels.
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import math
import re
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any, NamedTuple

import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipelines.input_error import InputError

#: Nesting deeper than this (objects and arrays) makes a line a dead letter.
MAX_DEPTH = 100
#: Bytes read at a time.
BATCH_BYTES = 8 << 20
#: A JSON string escape of a UTF-16 surrogate (paired or not).
_ESCAPED_SURROGATE = re.compile(rb"\\[uU][dD][89a-fA-F]")
_BOM = b"\xef\xbb\xbf"
#: A JSON string, or one bracket outside strings. The string part is unrolled (runs of plain
#: bytes, then one escape): the same matches as ``"(?:[^"\\]|\\.)*"``, 20x faster on long strings.
_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')
_DECOMPRESSORS: dict[str, Any] = {
    ".gz": gzip.GzipFile,
    ".bz2": bz2.BZ2File,
    ".xz": lzma.LZMAFile,
    ".lzma": lzma.LZMAFile,
}
_STREAM_ERRORS = (EOFError, OSError, zlib.error, lzma.LZMAError)
#: Characters that JSON leaves unescaped but that ``str.splitlines``, Unicode-aware editors and some
#: JSON Lines readers take for the end of a line (NEL, LINE SEPARATOR, PARAGRAPH SEPARATOR).
_LINE_BREAKS = {0x85: "\\u0085", 0x2028: "\\u2028", 0x2029: "\\u2029"}


class LineProblem(NamedTuple):
    """Why a line is not a row: a short ``kind`` (for dead letters) and a readable ``reason``."""

    kind: str
    reason: str


class _NotANumber(ValueError):
    """A number JSON text names that float64 cannot hold, or a NaN / Infinity literal."""


def json_line(value: Any) -> str:
    r"""``value`` as JSON text that every line splitter reads as one line (no newline at the end).

    Non-ASCII text stays as it is, except the three Unicode line breaks JSON itself allows raw
    inside strings: they are written as ``\u`` escapes, which read back as the same characters.
    """
    return json.dumps(value, ensure_ascii=False).translate(_LINE_BREAKS)


def compression_of(path: str) -> str | None:
    """The compression suffix of ``path`` this reader decompresses, or None for a plain file."""
    lowered = path.lower()
    return next((suffix for suffix in _DECOMPRESSORS if lowered.endswith(suffix)), None)


@contextmanager
def open_lines_file(path: str) -> Iterator[IO[bytes]]:
    """``path`` opened for reading, decompressed when its name ends in a known compression suffix."""
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as raw:
        suffix = compression_of(path)
        if suffix is None:
            yield raw
            return
        with _DECOMPRESSORS[suffix](fileobj=raw, mode="rb") as stream:
            yield stream


def line_batches(path: str, batch_bytes: int = BATCH_BYTES) -> Iterator[tuple[int, bytes]]:
    """``(number of the batch's first line, batch)``: the file in batches of whole lines (the last may lack a newline).

    A damaged or truncated compressed stream raises ``InputError`` naming the file.
    """
    first_line = 1
    rest = b""
    with open_lines_file(path) as stream:
        while True:
            try:
                data = stream.read(batch_bytes)
            except _STREAM_ERRORS as error:
                raise InputError(f"{path}: the compressed data is damaged or cut short ({error})") from None
            if not data:
                break
            data = rest + data
            cut = data.rfind(b"\n") + 1
            if not cut:
                rest = data
                continue
            batch, rest = data[:cut], data[cut:]
            yield first_line, batch
            first_line += batch.count(b"\n")
    if rest:
        yield first_line, rest


def numbered_lines(path: str) -> Iterator[tuple[int, bytes]]:
    """``(line number from 1, line without its newline)`` for every line of the file, blank ones included."""
    for first_line, batch in line_batches(path):
        lines = batch.split(b"\n")
        if batch.endswith(b"\n"):
            lines.pop()
        yield from enumerate(lines, start=first_line)


def is_blank(line: bytes) -> bool:
    """Whether a line holds only whitespace (such lines are not rows)."""
    return not line.strip()


def too_deep(line: bytes) -> bool:
    """Whether the line nests objects and arrays deeper than ``MAX_DEPTH`` levels (brackets in strings ignored)."""
    if line.count(b"[") + line.count(b"{") <= MAX_DEPTH:
        return False
    depth = 0
    for match in _TOKEN.finditer(line):
        token = match.group()
        if token in (b"[", b"{"):
            depth += 1
            if depth > MAX_DEPTH:
                return True
        elif token in (b"]", b"}"):
            depth -= 1
    return False


def needs_line_by_line(batch: bytes) -> bool:
    """Whether a batch of lines holds something Arrow's JSON reader treats unlike ``parse_line``.

    That is an escaped surrogate, a byte-order mark, or a line nested deeper than ``MAX_DEPTH``.
    Only lines with more than ``MAX_DEPTH`` opening brackets (found with numpy) are checked
    one by one.
    """
    if _ESCAPED_SURROGATE.search(batch) or _BOM in batch:
        return True
    if batch.count(b"[") + batch.count(b"{") <= MAX_DEPTH:
        return False
    data = np.frombuffer(batch, dtype=np.uint8)
    opening = np.flatnonzero((data | 0x20) == ord("{"))  # "[" is 0x5B, "{" is 0x7B
    ends = np.flatnonzero(data == ord("\n"))
    per_line = np.bincount(np.searchsorted(ends, opening), minlength=len(ends) + 1)
    starts = np.r_[0, ends + 1]
    stops = np.r_[ends, len(batch)]
    return any(too_deep(batch[starts[line] : stops[line]]) for line in np.flatnonzero(per_line > MAX_DEPTH))


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _NotANumber(f"the number {text[:40]} is beyond the range of float64")
    return value


def _no_constant(name: str) -> Any:
    raise _NotANumber(f"{name} is not a JSON number")


def parse_line(raw: bytes) -> Any:
    """The JSON value of a line, or a ``LineProblem`` saying why it has none."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        return LineProblem("InvalidUtf8", f"line is not UTF-8: {error}")
    if too_deep(raw):
        return LineProblem("TooDeep", f"line nests objects or arrays deeper than {MAX_DEPTH} levels")
    try:
        return json.loads(line, parse_float=_finite_float, parse_constant=_no_constant)
    except _NotANumber as error:
        return LineProblem("BadNumber", str(error))
    except json.JSONDecodeError as error:
        return LineProblem("InvalidJson", f"line is not JSON: {error}")
    except ValueError as error:  # an integer of more digits than Python converts
        return LineProblem("BadNumber", str(error))
    except RecursionError:
        return LineProblem("TooDeep", "line nests objects or arrays too deeply to parse")
