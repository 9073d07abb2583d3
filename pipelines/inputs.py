"""Reading the input corpus: Parquet row groups or JSON Lines files into Arrow tables.

Every table carries two bookkeeping columns, ``__source`` (file) and ``__position``
(row in a Parquet file, line number in a JSONL file), so that a dead letter says exactly
where its row came from. They are dropped before the vectors are written.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.json as pa_json
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import Metrics

from beam_m2v.encoder import plain_string_type, plain_strings
from beam_m2v.text_checks import find_text_problem
from beam_m2v.transforms.dead_letters import FAILED_TAG, FailedElement, preview
from pipelines.progress import note_input_bytes

logger = logging.getLogger(__name__)

SOURCE_COLUMN = "__source"
POSITION_COLUMN = "__position"
JSONL_ROWS_PER_TABLE = 50_000
#: A JSON string escape of a UTF-16 surrogate (paired or not): such blocks are parsed line by line.
_ESCAPED_SURROGATE = re.compile(rb"\\[uU][dD][89a-fA-F]")


class InputError(ValueError):
    """The input cannot be read at all (no files, a missing column): the pipeline does not start."""


@dataclass(frozen=True)
class InputSpec:
    """What to read and which columns matter."""

    pattern: str
    format: str
    text_column: str
    id_column: str
    keep_columns: tuple[str, ...] = ()

    @property
    def columns(self) -> list[str]:
        """The input columns read, in output order (id first)."""
        return list(dict.fromkeys([self.id_column, self.text_column, *self.keep_columns]))


def _lines(handle: Any) -> Iterator[bytes]:
    """The lines of a file Beam opened (plain or decompressing; Beam's compressed files only have readline)."""
    return iter(handle.readline, b"")


def detect_format(pattern: str, explicit: str | None) -> str:
    """``parquet`` or ``jsonl``, from ``--input-format`` or the pattern's extension."""
    if explicit:
        return explicit
    name = pattern.lower().removesuffix(".gz")
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith((".jsonl", ".json", ".ndjson")):
        return "jsonl"
    raise InputError(f"cannot tell the format of {pattern!r} from its extension; pass --input-format parquet|jsonl")


def match_files(pattern: str) -> list[str]:
    """The files the pattern matches, sorted; an error when there are none."""
    try:
        matches = FileSystems.match([pattern])[0].metadata_list
    except Exception as error:
        raise InputError(f"input pattern {pattern!r} matches no files ({error})") from None
    files = sorted(m.path for m in matches if m.size_in_bytes > 0 or not m.path.endswith("/"))
    if not files:
        raise InputError(f"input pattern {pattern!r} matches no files")
    return files


def parquet_schema(files: Sequence[str], spec: InputSpec) -> pa.Schema:
    """The schema of the read columns, checked in every file's footer: a missing column is a start-up error."""
    first: pa.Schema | None = None
    for path in files:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            schema = pq.read_schema(handle)
        missing = [column for column in spec.columns if column not in schema.names]
        if missing:
            raise InputError(
                f"{path}: no column {', '.join(map(repr, missing))}; the columns found are {schema.names} "
                "(choose them with --text-column / --id-column / --keep-columns)"
            )
        first = first or schema
    assert first is not None
    fields = [first.field(column) for column in spec.columns]
    return pa.schema([plain_text_field(field) if field.name == spec.text_column else field for field in fields])


def plain_text_field(field: pa.Field) -> pa.Field:
    """A dictionary-encoded or string_view text column is read as plain strings."""
    return field.with_type(plain_string_type(field.type))


def with_positions(table: pa.Table, source: str, positions: np.ndarray) -> pa.Table:
    """Add the ``__source`` (file) and ``__position`` (row or line) bookkeeping columns."""
    sources = pa.DictionaryArray.from_arrays(pa.array(np.zeros(len(table), dtype=np.int32)), pa.array([source]))
    return table.append_column(SOURCE_COLUMN, sources).append_column(
        POSITION_COLUMN, pa.array(positions.astype(np.int64, copy=False))
    )


class ListRowGroups(beam.DoFn):  # type: ignore[misc]
    """One ``(file, row_group, first_row)`` work item per Parquet row group."""

    def process(self, path: str) -> Iterator[tuple[str, int, int]]:
        """List the row groups of one file."""
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            metadata = pq.ParquetFile(handle).metadata
        first_row = 0
        for group in range(metadata.num_row_groups):
            yield path, group, first_row
            first_row += metadata.row_group(group).num_rows


class ReadRowGroup(beam.DoFn):  # type: ignore[misc]
    """Read one Parquet row group (only ``columns``) as a table, counting its rows in ``counter``."""

    def __init__(self, columns: Sequence[str], counter: str = "rows_read") -> None:
        self._columns = list(columns)
        self._counter = counter

    def setup(self) -> None:
        """Create the metrics."""
        self._rows_read = Metrics.counter("beam_m2v", self._counter)

    def process(self, item: tuple[str, int, int]) -> Iterator[pa.Table]:
        """Read the row group ``item`` names, with the ``__source`` / ``__position`` columns."""
        path, _, first_row = item
        table = self.read(item)
        yield with_positions(table, path, np.arange(first_row, first_row + len(table)))

    def read(self, item: tuple[str, int, int]) -> pa.Table:
        """The row group's columns (text as plain strings), counted."""
        path, group, _ = item
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            table = pq.ParquetFile(handle).read_row_group(group, columns=self._columns)
        self._rows_read.inc(len(table))
        return plain_strings(table)


class ReadJsonLines(beam.DoFn):  # type: ignore[misc]
    """Parse a JSON Lines file (plain or gzip) into tables; bad lines become dead letters.

    A line is bad when it is not UTF-8, not JSON, not an object, has no usable text (missing,
    null, not a string, a lone surrogate) or no id, or an id / kept value Arrow cannot hold
    in the column's type. Blank lines are not rows and are skipped.
    """

    def __init__(self, spec: InputSpec, schema: pa.Schema) -> None:
        self._spec = spec
        self._schema = schema

    def setup(self) -> None:
        """Create the metrics."""
        self._rows_read = Metrics.counter("beam_m2v", "rows_read")
        self._failures = Metrics.counter("beam_m2v", "failures")
        self._bulk_blocks = Metrics.counter("beam_m2v", "jsonl_blocks_parsed_in_bulk")
        self._line_blocks = Metrics.counter("beam_m2v", "jsonl_blocks_parsed_by_line")

    def process(self, path: str) -> Iterator[Any]:
        """Read one file, ``JSONL_ROWS_PER_TABLE`` non-blank lines at a time."""
        lines: list[bytes] = []
        line_numbers: list[int] = []
        read = 0  # bytes, for the progress report
        with FileSystems.open(path) as raw:
            for line_number, raw_line in enumerate(_lines(raw), start=1):
                read += len(raw_line)
                if not raw_line.strip():
                    continue
                lines.append(raw_line)
                line_numbers.append(line_number)
                if len(lines) >= JSONL_ROWS_PER_TABLE:
                    note_input_bytes(read)
                    read = 0
                    yield from self._block(lines, line_numbers, path)
                    lines, line_numbers = [], []
        note_input_bytes(read)
        if lines:
            yield from self._block(lines, line_numbers, path)

    def _block(self, lines: list[bytes], line_numbers: list[int], path: str) -> Iterator[Any]:
        """One table of a block of lines: parsed in bulk by Arrow, or line by line when any line is unusual."""
        self._rows_read.inc(len(lines))
        table = self._parse_in_bulk(lines)
        if table is not None:
            self._bulk_blocks.inc()
            yield with_positions(table, path, np.asarray(line_numbers))
            return
        self._line_blocks.inc()
        rows: list[dict[str, Any]] = []
        row_line_numbers: list[int] = []
        for raw_line, line_number in zip(lines, line_numbers, strict=True):
            row = self._parse(raw_line, path, line_number)
            if isinstance(row, FailedElement):
                self._failures.inc()
                yield beam.pvalue.TaggedOutput(FAILED_TAG, row)
                continue
            rows.append(row)
            row_line_numbers.append(line_number)
        if rows:
            yield from self._table(rows, row_line_numbers, path)

    def _parse_in_bulk(self, lines: list[bytes]) -> pa.Table | None:
        """The block as a table when every line is a plain, valid row; None sends it line by line.

        Arrow's JSON reader parses on all cores, but it does not report which line is bad and it
        is more lenient than ``json.loads`` in places (a byte-order mark) and stricter in others
        (a repeated key, a lone surrogate, a value of another type). So any block with an error,
        a null or missing text or id, invalid UTF-8, an escaped surrogate or a BOM is parsed
        line by line instead, where each problem becomes its own dead letter: the bulk path
        only ever yields what the line-by-line path would.
        """
        data = b"".join(line if line.endswith(b"\n") else line + b"\n" for line in lines)
        if _ESCAPED_SURROGATE.search(data) or b"\xef\xbb\xbf" in data:
            return None
        options = pa_json.ParseOptions(explicit_schema=self._schema, unexpected_field_behavior="ignore")
        try:
            table = pa_json.read_json(pa.BufferReader(data), parse_options=options)
            table = table.select(self._schema.names).cast(self._schema)
            table.validate(full=True)
        except (pa.ArrowException, ValueError, TypeError):
            return None
        if table.num_rows != len(lines):
            return None
        for column in (self._spec.text_column, self._spec.id_column):
            if table.column(column).null_count:
                return None
        return table

    def _parse(self, raw_line: bytes, path: str, line_number: int) -> dict[str, Any] | FailedElement:
        """One line as a row dict of the read columns, or its dead letter."""
        where = {SOURCE_COLUMN: path, POSITION_COLUMN: line_number}
        try:
            line = raw_line.decode("utf-8")
        except UnicodeDecodeError as error:
            return FailedElement({**where, "line": preview(raw_line)}, "InvalidUtf8", f"line is not UTF-8: {error}")
        try:
            value = json.loads(line)
        except json.JSONDecodeError as error:
            return FailedElement({**where, "line": preview(line)}, "InvalidJson", f"line is not JSON: {error}")
        if not isinstance(value, dict):
            return FailedElement(
                {**where, "line": preview(line)}, "NotAnObject", f"line is a JSON {type(value).__name__}, not an object"
            )
        spec = self._spec
        context = {**where, "id": value.get(spec.id_column), "line": preview(line)}
        if spec.text_column not in value:
            return FailedElement(
                context, "MissingField", f"no field {spec.text_column!r}; fields: {sorted(value)[:20]}"
            )
        problem = find_text_problem(value[spec.text_column])
        if problem is not None:
            return FailedElement(context, problem.kind, problem.reason)
        if value.get(spec.id_column) is None:
            return FailedElement(context, "MissingId", f"no id in field {spec.id_column!r}")
        return {column: value.get(column) for column in spec.columns}

    def _table(self, rows: list[dict[str, Any]], line_numbers: list[int], path: str) -> Iterator[Any]:
        """Rows to one table in the output schema; rows whose values do not fit go to dead letters."""
        try:
            table = pa.Table.from_pylist(rows, schema=self._schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
            fitting, fitting_lines = [], []
            for row, line_number in zip(rows, line_numbers, strict=True):
                problem = self._misfit(row)
                if problem is None:
                    fitting.append(row)
                    fitting_lines.append(line_number)
                    continue
                self._failures.inc()
                context = {SOURCE_COLUMN: path, POSITION_COLUMN: line_number, **row}
                yield beam.pvalue.TaggedOutput(FAILED_TAG, FailedElement(context, "BadValueType", problem))
            rows, line_numbers = fitting, fitting_lines
            if not rows:
                return
            table = pa.Table.from_pylist(rows, schema=self._schema)
        yield with_positions(table, path, np.asarray(line_numbers))

    def _misfit(self, row: dict[str, Any]) -> str | None:
        """Why a row's values do not fit the column types, or None."""
        for field in self._schema:
            try:
                pa.array([row.get(field.name)], type=field.type)
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError) as error:
                return f"field {field.name!r} value {preview(row.get(field.name), 80)} is not {field.type}: {error}"
        return None


def _majority_type(values: list[Any]) -> pa.DataType:
    """The Arrow type of the most common Python type among sampled values (string when unsure).

    One odd value (a string id among integers) must not change the type of the whole column:
    its own line becomes a dead letter instead.
    """
    by_type: dict[type, list[Any]] = {}
    for value in values:
        by_type.setdefault(type(value), []).append(value)
    for _, group in sorted(by_type.items(), key=lambda item: -len(item[1])):
        try:
            inferred = pa.array(group).type
        except (pa.ArrowException, UnicodeEncodeError, ValueError, TypeError, OverflowError):
            continue
        if not pa.types.is_null(inferred):
            return inferred
    return pa.string()


def jsonl_schema(files: Sequence[str], spec: InputSpec, sample_lines: int = 1000) -> pa.Schema:
    """Column types of a JSONL input, inferred from the first parseable lines (text is always string)."""
    samples: dict[str, list[Any]] = {column: [] for column in spec.columns}
    with FileSystems.open(files[0]) as raw:
        for count, raw_line in enumerate(_lines(raw)):
            if count >= sample_lines:
                break
            try:
                value = json.loads(raw_line)
            except (ValueError, UnicodeDecodeError):
                continue
            if isinstance(value, dict):
                for column in spec.columns:
                    if value.get(column) is not None:
                        samples[column].append(value[column])
    fields = []
    for column in spec.columns:
        if column == spec.text_column:
            fields.append(pa.field(column, pa.string()))
            continue
        fields.append(pa.field(column, _majority_type(samples[column])))
    return pa.schema(fields)
