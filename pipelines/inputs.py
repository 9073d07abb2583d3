"""Reading the input corpus: Parquet row groups or JSON Lines files into Arrow tables.

Every table carries two bookkeeping columns, ``__source`` (file) and ``__position``
(row in a Parquet file counted from 0, line number in a JSONL file counted from 1), so that a
dead letter says exactly where its row came from. They are dropped before the vectors are
written. Before a pipeline starts, ``inspect_input`` checks every file (Parquet footers; every
JSONL line) and fixes the column types; see ``docs/inputs.md`` for the rules.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import Metrics

from beam_m2v.arrow_strings import plain_string_type, plain_strings
from beam_m2v.remote_files import is_remote
from beam_m2v.text_checks import find_text_problem
from beam_m2v.transforms.dead_letters import FAILED_TAG, FailedElement, preview
from beam_m2v.transforms.metrics import (
    FAILURES,
    JSONL_BLOCKS_PARSED_BY_LINE,
    JSONL_BLOCKS_PARSED_IN_BULK,
    NAMESPACE,
    ROWS_READ,
)
from pipelines.columns import POSITION_COLUMN, SOURCE_COLUMN
from pipelines.input_error import InputError
from pipelines.jsonl_lines import LineProblem, compression_of, is_blank, needs_line_by_line, numbered_lines, parse_line
from pipelines.jsonl_types import (
    KIND_NAMES,
    ValueSketch,
    arrow_reads_exactly,
    id_type,
    majority_kind,
    misfit,
    scan_jsonl,
    value_type,
)
from pipelines.progress import note_input_bytes
from pipelines.read_ahead import Held, ReadAhead

__all__ = [
    "FAILED_TAG",
    "InputError",
    "InputLayout",
    "InputSpec",
    "ListRowGroups",
    "ReadJsonLines",
    "ReadParquetRows",
    "ReadRowGroup",
    "detect_format",
    "inspect_input",
    "jsonl_schema",
    "match_files",
    "with_positions",
]

logger = logging.getLogger("beam_m2v.inputs")

#: Rows per table when ``--batch-size`` is not given: JSONL lines, or Parquet rows read from a row group.
JSONL_ROWS_PER_TABLE = 50_000
_WILDCARDS = "*?[{"


@dataclass(frozen=True)
class InputSpec:
    """What to read and which columns matter.

    ``position_ids``: the input has no id column, so each row's id is ``<file>:<position>``, the
    file named relative to ``root`` (the folder part of the pattern). ``batch_size``: the most
    rows in one table (None: ``JSONL_ROWS_PER_TABLE``); each table is one encoder call and one
    Parquet row group of the output.
    """

    pattern: str
    format: str
    text_column: str
    id_column: str
    keep_columns: tuple[str, ...] = ()
    position_ids: bool = False
    root: str = ""
    batch_size: int | None = None

    @property
    def columns(self) -> list[str]:
        """The columns of a table, in output order (id first)."""
        return list(dict.fromkeys([self.id_column, self.text_column, *self.keep_columns]))

    @property
    def read_columns(self) -> list[str]:
        """The columns read from the files (the id is not read when it is a position)."""
        return [column for column in self.columns if not (self.position_ids and column == self.id_column)]

    @property
    def id_facts(self) -> dict[str, str]:
        """Where the ids come from, for the manifest: an input column, or each row's position."""
        if not self.position_ids:
            return {"id_column": self.id_column, "id_source": "column"}
        where = "row" if self.format == "parquet" else "line"
        return {
            "id_column": self.id_column,
            "id_source": "position",
            "id_format": f"<file>:<{where}>",
            "id_root": self.root,
        }

    @property
    def rows_per_table(self) -> int:
        """The most rows in one table."""
        return self.batch_size or JSONL_ROWS_PER_TABLE


@dataclass(frozen=True)
class InputLayout:
    """What the start-up checks found: column types, row count, and whether Arrow's JSON reader is exact here."""

    schema: pa.Schema
    """Types of ``InputSpec.columns`` (a position id is a string)."""
    rows: int
    """Rows in the input: Parquet rows, or non-blank JSONL lines."""
    arrow_exact: bool = True
    """JSONL: Arrow's bulk parser converts every value exactly (no integer beyond 2**53 in a float64 column)."""

    def read_schema(self, spec: InputSpec) -> pa.Schema:
        """The types of the columns read from the files."""
        return pa.schema([self.schema.field(column) for column in spec.read_columns])


# -- files -----------------------------------------------------------------------------------------


def detect_format(pattern: str, explicit: str | None) -> str:
    """``parquet`` or ``jsonl``, from ``--input-format`` or the pattern's extension."""
    if explicit:
        return explicit
    name = pattern.lower()
    suffix = compression_of(name)
    name = name[: -len(suffix)] if suffix else name
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith((".jsonl", ".json", ".ndjson")):
        return "jsonl"
    raise InputError(f"cannot tell the format of {pattern!r} from its extension; pass --input-format parquet|jsonl")


def _matches(pattern: str) -> list[Any]:
    try:
        return list(FileSystems.match([pattern])[0].metadata_list)
    except Exception:
        return []


def _is_folder(pattern: str) -> bool:
    """Whether ``pattern`` names a folder (a local directory, or a prefix with objects under it)."""
    if not is_remote(pattern):
        return os.path.isdir(pattern)
    if any(char in pattern for char in _WILDCARDS):
        return False
    if pattern.endswith("/"):
        return True
    return not _matches(pattern) and bool(_matches(pattern + "/*"))


def _folder_error(folder: str) -> InputError:
    """The refusal of a folder as ``--input``, with a pattern for the files in it."""
    folder = folder.rstrip("/") or "/"
    suffixes = [os.path.basename(m.path).partition(".")[2] for m in _matches(f"{folder}/*")]
    known = [suffix for suffix in suffixes if suffix.lower().startswith(("parquet", "pq", "jsonl", "json", "ndjson"))]
    suffix = max(set(known), key=known.count) if known else "parquet"
    return InputError(
        f"--input {folder!r} is a folder; name its files with a pattern, for example --input '{folder}/*.{suffix}'"
    )


def _literal_file(pattern: str) -> bool:
    """Whether ``pattern`` has wildcard characters and is also the name of an existing file, taken as named."""
    if not any(char in pattern for char in _WILDCARDS):
        return False
    if not is_remote(pattern):
        return os.path.isfile(pattern)
    try:
        return bool(FileSystems.exists(pattern))
    except Exception:
        return False


def match_files(pattern: str) -> list[str]:
    """The files the pattern matches, sorted (local ones as absolute paths); an error when there are none.

    A pattern that is also the exact name of a file (``corpus/day [1].parquet``) means that file.
    """
    if _literal_file(pattern):
        return [pattern if is_remote(pattern) else os.path.abspath(pattern)]
    if _is_folder(pattern):
        raise _folder_error(pattern)
    try:
        with warnings.catch_warnings():
            # Beam turns '[[]' (a literal '[') into the regular expression '[[]', which Python flags as
            # a possible nested set; it means what the pattern says.
            warnings.filterwarnings("ignore", "Possible nested set", FutureWarning)
            matches = FileSystems.match([pattern])[0].metadata_list
    except Exception as error:
        raise InputError(f"input pattern {pattern!r} matches no files ({error})") from None
    files = sorted(
        m.path if is_remote(m.path) else os.path.abspath(m.path)
        for m in matches
        if is_remote(m.path) or not os.path.isdir(m.path)
    )
    if not files:
        raise InputError(f"input pattern {pattern!r} matches no files{_literal_folder_hint(pattern)}")
    return files


def _literal_folder_hint(pattern: str) -> str:
    """For a local pattern whose folder part names an existing folder with pattern characters, how to write it.

    ``'day [1]/*.parquet'`` looks in folders named ``day 1``; when ``day [1]`` exists, the hint gives
    ``'day [[]1]/*.parquet'``, which looks in it. Nothing is guessed: the pattern means what it says.
    """
    folder, name = os.path.split(pattern)
    if is_remote(pattern) or not folder or not any(char in folder for char in "*?[") or not os.path.isdir(folder):
        return ""
    escaped = "".join(f"[{char}]" if char in "*?[" else char for char in folder)
    return (
        f"; the folder {folder!r} exists, but * ? [ ] in it are pattern characters: "
        f"{os.path.join(escaped, name)!r} looks in it"
    )


def pattern_root(pattern: str) -> str:
    """The folder part of ``pattern`` before its first wildcard, ending in ``/`` (local: absolute).

    For a pattern that names one file exactly (``match_files``), the folder of that file.
    """
    literal = _literal_file(pattern)
    first = (
        len(pattern) if literal else min((pattern.index(c) for c in _WILDCARDS if c in pattern), default=len(pattern))
    )
    head = pattern[:first]
    root = head[: head.rfind("/") + 1]
    if is_remote(pattern):
        return root
    return os.path.join(os.path.abspath(root or "."), "")


def source_label(path: str, root: str) -> str:
    """How a position id names its file: the path relative to the pattern's folder."""
    return path[len(root) :] if root and path.startswith(root) else path


# -- start-up checks -------------------------------------------------------------------------------


def inspect_input(files: Sequence[str], spec: InputSpec, *, id_required: bool) -> tuple[InputSpec, InputLayout]:
    """Check every file and fix the column types before a pipeline starts.

    Returns the spec (with ``position_ids`` set when the id column exists nowhere and was not
    asked for: ``id_required`` False) and the layout. Refuses (``InputError``) an input without
    rows, without any text in the text column, with a missing column, with a damaged file, or
    whose files disagree on a column's type in a way no type holds without loss.
    """
    spec = replace(spec, root=pattern_root(spec.pattern))
    if spec.format == "parquet":
        spec, layout = _parquet_layout(files, spec, id_required=id_required)
    else:
        spec, layout = _jsonl_layout(files, spec, id_required=id_required)
    if layout.rows == 0:
        raise InputError(f"{spec.pattern!r}: the input has no rows ({len(files)} files); nothing to embed")
    if spec.position_ids:
        logger.info(
            "the input has no column %r: each row's id is its position, '<file>:<%s>' with the file relative to %s",
            spec.id_column,
            "row" if spec.format == "parquet" else "line",
            spec.root,
        )
    return spec, layout


def _parquet_footer(path: str) -> tuple[pq.FileMetaData, pa.Schema]:
    """The footer of a Parquet file and its Arrow schema; an ``InputError`` naming the file when it is not Parquet."""
    try:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            parquet = pq.ParquetFile(handle)
            return parquet.metadata, parquet.schema_arrow
    except (pa.ArrowException, OSError, ValueError) as error:
        raise InputError(f"{path}: not a readable Parquet file ({error})") from None


def _parquet_layout(files: Sequence[str], spec: InputSpec, *, id_required: bool) -> tuple[InputSpec, InputLayout]:
    read = {path: _parquet_footer(path) for path in files}
    footers = {path: footer for path, (footer, _) in read.items()}
    schemas = {path: schema for path, (_, schema) in read.items()}
    if not id_required and not any(spec.id_column in schema.names for schema in schemas.values()):
        spec = replace(spec, position_ids=True)
    types: dict[str, tuple[pa.DataType, str]] = {}
    for path, schema in schemas.items():
        missing = [column for column in spec.read_columns if column not in schema.names]
        if missing:
            raise InputError(
                f"{path}: no column {', '.join(map(repr, missing))}; the columns found are {schema.names} "
                "(choose them with --text-column / --id-column / --keep-columns)"
            )
        for column in spec.read_columns:
            found = plain_string_type(schema.field(column).type)
            if column not in types:
                types[column] = (found, path)
                continue
            known, known_path = types[column]
            wider = lossless_union(known, found)
            if wider is None:
                raise InputError(
                    f"column {column!r} is {known} in {known_path} but {found} in {path}; no type holds both "
                    "without loss (convert the files to one type)"
                )
            types[column] = (wider, known_path if wider == known else path)
    if not _may_hold_text(footers, spec.text_column):
        raise InputError(f"{spec.pattern!r}: column {spec.text_column!r} is null in every row; nothing to embed")
    fields = [pa.field(column, types[column][0]) for column in spec.read_columns]
    if spec.position_ids:
        fields.insert(0, pa.field(spec.id_column, pa.string()))
    rows = sum(footer.num_rows for footer in footers.values())
    return spec, InputLayout(pa.schema(fields), rows)


def _may_hold_text(footers: dict[str, pq.FileMetaData], column: str) -> bool:
    """False only when the footers' statistics prove the column null in every row of every file."""
    for footer in footers.values():
        paths = [footer.schema.column(index).path for index in range(footer.num_columns)]
        if column not in paths:
            return True
        index = paths.index(column)
        for group in range(footer.num_row_groups):
            row_group = footer.row_group(group)
            stats = row_group.column(index).statistics
            if stats is None or not stats.has_null_count or stats.null_count != row_group.num_rows:
                return True
    return False


_SIGNED = [pa.int8(), pa.int16(), pa.int32(), pa.int64()]
_UNSIGNED = [pa.uint8(), pa.uint16(), pa.uint32(), pa.uint64()]


def lossless_union(first: pa.DataType, second: pa.DataType) -> pa.DataType | None:
    """The narrowest type holding every value of both types exactly, or None when there is none.

    Null joins anything; integers widen (int32 and int64 -> int64; uint32 and int8 -> int64);
    floats widen; string and large_string -> large_string, likewise binary. Anything else
    must be equal.
    """
    if first == second:
        return first
    if pa.types.is_null(first):
        return second
    if pa.types.is_null(second):
        return first
    if pa.types.is_integer(first) and pa.types.is_integer(second):
        bits = max(
            first.bit_width * (2 if pa.types.is_unsigned_integer(first) and pa.types.is_signed_integer(second) else 1),
            second.bit_width * (2 if pa.types.is_unsigned_integer(second) and pa.types.is_signed_integer(first) else 1),
        )
        family = _UNSIGNED if pa.types.is_unsigned_integer(first) and pa.types.is_unsigned_integer(second) else _SIGNED
        return next((candidate for candidate in family if candidate.bit_width >= bits), None)
    if pa.types.is_floating(first) and pa.types.is_floating(second):
        return first if first.bit_width >= second.bit_width else second
    for narrow, wide in ((pa.string(), pa.large_string()), (pa.binary(), pa.large_binary())):
        if {first, second} == {narrow, wide}:
            return wide
    return None


def _jsonl_layout(files: Sequence[str], spec: InputSpec, *, id_required: bool) -> tuple[InputSpec, InputLayout]:
    others = [column for column in spec.columns if column != spec.text_column]
    scan = scan_jsonl(files, spec.text_column, others)
    if scan.rows and not scan.texts:
        raise InputError(
            f"{spec.pattern!r}: no line has a text in field {spec.text_column!r}; "
            "name the text field with --text-column"
        )
    types: dict[str, pa.DataType] = {spec.text_column: pa.string()}
    exact = True
    for column in others:
        sketch = scan.sketches[column]
        _check_files_agree(scan.by_file, column, identifier=column == spec.id_column)
        if column == spec.id_column:
            found = id_type(sketch)
            if found is None:
                if id_required or sketch.values:
                    raise InputError(
                        f"{spec.pattern!r}: no line has a string or number id in field {spec.id_column!r}"
                        + ("" if id_required else "; name the id field with --id-column")
                    )
                spec = replace(spec, position_ids=True)
                found = pa.string()
        else:
            if not sketch.values:
                raise InputError(f"{spec.pattern!r}: no line has a value in field {column!r} (--keep-columns)")
            found = value_type(sketch)
        types[column] = found
        exact = exact and arrow_reads_exactly(sketch, found)
    schema = pa.schema([pa.field(column, types[column]) for column in spec.columns])
    return spec, InputLayout(schema, scan.rows, arrow_exact=exact)


def _check_files_agree(by_file: dict[str, dict[str, ValueSketch]], column: str, *, identifier: bool) -> None:
    """Refuse an input whose files hold mostly different kinds of values in one field (a stray line is fine)."""
    first: tuple[str, str] | None = None
    for path, sketches in by_file.items():
        kind = majority_kind(sketches[column], identifier=identifier)
        if kind is None:
            continue
        if first is None:
            first = (kind, path)
        elif kind != first[0]:
            raise InputError(
                f"field {column!r} holds mostly {KIND_NAMES[first[0]]} in {first[1]} but mostly {KIND_NAMES[kind]} "
                f"in {path}; the files of one input must agree (convert one of them)"
            )


def jsonl_schema(files: Sequence[str], spec: InputSpec) -> pa.Schema:
    """Column types of a JSONL input, decided from every line of every file (text is always string)."""
    _, layout = _jsonl_layout(files, spec, id_required=True)
    return layout.schema


# -- tables ----------------------------------------------------------------------------------------


def with_positions(table: pa.Table, source: str, positions: np.ndarray) -> pa.Table:
    """Add the ``__source`` (file) and ``__position`` (row or line) bookkeeping columns."""
    sources = pa.DictionaryArray.from_arrays(pa.array(np.zeros(len(table), dtype=np.int32)), pa.array([source]))
    return table.append_column(SOURCE_COLUMN, sources).append_column(
        POSITION_COLUMN, pa.array(positions.astype(np.int64, copy=False))
    )


def with_position_ids(table: pa.Table, spec: InputSpec) -> pa.Table:
    """Add the id column ``<file>:<position>`` of an input without ids (the table has its bookkeeping columns)."""
    if not spec.position_ids:
        return table
    if not len(table):
        return table.append_column(spec.id_column, pa.array([], pa.string()))
    source = table.column(SOURCE_COLUMN).chunk(0).dictionary[0].as_py()
    positions = pc.cast(table.column(POSITION_COLUMN), pa.string())
    ids = pc.binary_join_element_wise(source_label(source, spec.root), positions, ":")
    return table.append_column(spec.id_column, ids)


def _cell(column: pa.ChunkedArray, row: int) -> Any:
    """One cell as a printable Python value (text that is not UTF-8 as a preview of its bytes)."""
    value = column[row]
    if pa.types.is_string(value.type) or pa.types.is_large_string(value.type):
        raw = value.cast(pa.large_binary()).as_py()
        if raw is None:
            return None
        return raw.decode("utf-8", "backslashreplace")
    try:
        return value.as_py()
    except (UnicodeDecodeError, pa.ArrowException, ValueError):
        return preview(str(value))


def _invalid_utf8_rows(table: pa.Table) -> dict[int, str]:
    """Rows holding a string that is not UTF-8 (row -> column), found only when the table fails validation."""
    try:
        table.validate(full=True)
        return {}
    except pa.ArrowInvalid:
        pass
    bad: dict[int, str] = {}
    for name in table.column_names:
        column = table.column(name)
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            for row, raw in enumerate(column.cast(pa.large_binary()).to_pylist()):
                if raw is not None and row not in bad:
                    try:
                        raw.decode("utf-8")
                    except UnicodeDecodeError:
                        bad[row] = name
    rest = np.array([row for row in range(len(table)) if row not in bad], dtype=np.int64)
    try:
        table.take(pa.array(rest)).validate(full=True)
    except pa.ArrowInvalid:  # invalid strings nested in lists or structs: row by row
        for row in rest.tolist():
            try:
                table.slice(row, 1).validate(full=True)
            except pa.ArrowInvalid:
                bad[row] = "nested"
    return bad


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

    def __init__(self, columns: Sequence[str], counter: str = ROWS_READ) -> None:
        self._columns = list(columns)
        self._counter = counter

    def setup(self) -> None:
        """Create the metrics."""
        self._rows_read = Metrics.counter(NAMESPACE, self._counter)

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


class ReadParquetRows(beam.DoFn):  # type: ignore[misc]
    """Read one Parquet row group of the corpus in tables of at most ``spec.rows_per_table`` rows.

    Columns are cast to the input's unified types (``schema``, lossless by construction). A row
    with a null id, or a string that is not UTF-8, leaves its table as a dead letter. The next
    row group of a bundle is decoded in a background thread while this one's tables go on
    (``pipelines.read_ahead``), at most one table ahead.
    """

    def __init__(self, spec: InputSpec, schema: pa.Schema) -> None:
        self._spec = spec
        self._schema = schema

    def setup(self) -> None:
        """Create the metrics."""
        self._rows_read = Metrics.counter(NAMESPACE, ROWS_READ)
        self._failures = Metrics.counter(NAMESPACE, FAILURES)

    def start_bundle(self) -> None:
        """Start the reading thread of this bundle."""
        self._ahead: ReadAhead[tuple[str, int, int]] = ReadAhead(self._read_row_group)
        self._held: Held | None = None

    def process(
        self, item: tuple[str, int, int], window: Any = beam.DoFn.WindowParam, timestamp: Any = beam.DoFn.TimestampParam
    ) -> Iterator[Any]:
        """Hand the row group ``item`` names to the reading thread; the tables (and dead letters) of the one before."""
        self._ahead.submit(item)
        if self._held is not None:
            yield from self._counted(self._ahead.outputs_before(1), self._held)
        self._held = Held(window, timestamp)

    def finish_bundle(self) -> Iterator[Any]:
        """The tables (and dead letters) of the bundle's last row group."""
        try:
            if self._held is not None:
                yield from self._counted(self._ahead.outputs_before(0), self._held)
        finally:
            self._ahead.close()

    def teardown(self) -> None:
        """Stop a reading thread left by a failed bundle."""
        ahead = getattr(self, "_ahead", None)
        if ahead is not None:
            ahead.close()

    def _counted(self, outputs: Iterator[Any], held: Held) -> Iterator[Any]:
        for output in outputs:  # counted here: Beam's metrics belong to the thread that processes the bundle
            if isinstance(output, beam.pvalue.TaggedOutput):
                self._failures.inc()
                self._rows_read.inc()
            else:
                self._rows_read.inc(len(output))
            yield held.place(output)

    def _read_row_group(self, item: tuple[str, int, int]) -> Iterator[Any]:
        path, group, first_row = item
        try:
            with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
                batches = pq.ParquetFile(handle).iter_batches(
                    batch_size=self._spec.rows_per_table, row_groups=[group], columns=self._schema.names
                )
                for batch in batches:
                    table = plain_strings(pa.Table.from_batches([batch])).select(self._schema.names)
                    if table.schema != self._schema:
                        table = table.cast(self._schema)
                    table = with_positions(table, path, np.arange(first_row, first_row + len(table)))
                    first_row += len(table)
                    yield from self._split(table, path)
        except (pa.ArrowException, OSError) as error:
            raise InputError(f"{path}: row group {group} cannot be read ({error})") from error

    def _split(self, table: pa.Table, path: str) -> Iterator[Any]:
        """The table without its bad rows, and one dead letter per bad row."""
        spec = self._spec
        bad: dict[int, tuple[str, str]] = {
            row: ("InvalidUtf8", f"column {column!r} holds a string that is not UTF-8")
            for row, column in _invalid_utf8_rows(table).items()
        }
        if not spec.position_ids:
            null_ids = np.flatnonzero(~table.column(spec.id_column).is_valid().to_numpy(zero_copy_only=False))
            for null_row in null_ids.tolist():
                bad.setdefault(null_row, ("MissingId", f"id column {spec.id_column!r} is null"))
        if bad:
            keep = np.ones(len(table), dtype=bool)
            for row, (kind, reason) in sorted(bad.items()):
                keep[row] = False
                element = {name: _cell(table.column(name), row) for name in table.column_names}
                yield beam.pvalue.TaggedOutput(FAILED_TAG, FailedElement(element, kind, reason))
            table = table.filter(pa.array(keep))
        if len(table):
            yield with_position_ids(table, spec)


class ReadJsonLines(beam.DoFn):  # type: ignore[misc]
    """Parse a JSON Lines file (plain or compressed) into tables; bad lines become dead letters.

    A line is bad when it is not UTF-8, not JSON (or nested deeper than ``MAX_DEPTH``), not an
    object, has no usable text (missing, null, not a string, a lone surrogate) or no id, or a
    value its column's type cannot hold exactly (``jsonl_types.misfit``). Blank lines are
    not rows and are skipped. ``schema`` holds the types of ``spec.read_columns``.
    """

    def __init__(self, spec: InputSpec, schema: pa.Schema, *, arrow_exact: bool = True) -> None:
        self._spec = spec
        self._schema = schema
        self._arrow_exact = arrow_exact

    def setup(self) -> None:
        """Create the metrics."""
        self._rows_read = Metrics.counter(NAMESPACE, ROWS_READ)
        self._failures = Metrics.counter(NAMESPACE, FAILURES)
        self._bulk_batches = Metrics.counter(NAMESPACE, JSONL_BLOCKS_PARSED_IN_BULK)
        self._line_batches = Metrics.counter(NAMESPACE, JSONL_BLOCKS_PARSED_BY_LINE)

    def process(self, path: str) -> Iterator[Any]:
        """Read one file, ``spec.rows_per_table`` non-blank lines at a time."""
        limit = self._spec.rows_per_table
        lines: list[bytes] = []
        line_numbers: list[int] = []
        read = 0  # bytes, for the progress report
        for line_number, raw_line in numbered_lines(path):
            read += len(raw_line) + 1  # and its newline
            if is_blank(raw_line):
                continue
            lines.append(raw_line)
            line_numbers.append(line_number)
            if len(lines) >= limit:
                note_input_bytes(read)
                read = 0
                yield from self._batch(lines, line_numbers, path)
                lines, line_numbers = [], []
        note_input_bytes(read)
        if lines:
            yield from self._batch(lines, line_numbers, path)

    def _batch(self, lines: list[bytes], line_numbers: list[int], path: str) -> Iterator[Any]:
        """One table of a batch of lines: parsed in bulk by Arrow, or line by line when any line is unusual."""
        self._rows_read.inc(len(lines))
        table = self._parse_in_bulk(lines)
        if table is not None:
            self._bulk_batches.inc()
            yield with_position_ids(with_positions(table, path, np.asarray(line_numbers)), self._spec)
            return
        self._line_batches.inc()
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
            table = pa.Table.from_pylist(rows, schema=self._schema)
            yield with_position_ids(with_positions(table, path, np.asarray(row_line_numbers)), self._spec)

    def _parse_in_bulk(self, lines: list[bytes]) -> pa.Table | None:
        """The batch as a table when every line is a plain, valid row; None sends it line by line.

        Arrow's JSON reader parses on all cores, but it does not report which line is bad and it
        is more lenient than ``parse_line`` in places (a byte-order mark, nesting of any depth)
        and stricter in others (a repeated key, a lone surrogate, a value of another type). So
        any batch with an error, a null or missing text or id, invalid UTF-8, an escaped
        surrogate, a BOM or deep nesting is parsed line by line instead, where each problem
        becomes its own dead letter: the bulk path only ever yields what the line-by-line path
        would. Where Arrow would round (an integer beyond 2**53 in a float64 column:
        ``arrow_exact`` False), every batch goes line by line.
        """
        if not self._arrow_exact:
            return None
        data = b"".join(line if line.endswith(b"\n") else line + b"\n" for line in lines)
        if needs_line_by_line(data):
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
        required = [self._spec.text_column] + ([] if self._spec.position_ids else [self._spec.id_column])
        if any(table.column(column).null_count for column in required):
            return None
        return table

    def _parse(self, raw_line: bytes, path: str, line_number: int) -> dict[str, Any] | FailedElement:
        """One line as a row dict of the read columns, or its dead letter."""
        where = {SOURCE_COLUMN: path, POSITION_COLUMN: line_number}
        line = preview(raw_line.decode("utf-8", "backslashreplace"))
        value = parse_line(raw_line)
        if isinstance(value, LineProblem):
            return FailedElement({**where, "line": line}, value.kind, value.reason)
        if not isinstance(value, dict):
            reason = f"line is a JSON {type(value).__name__}, not an object"
            return FailedElement({**where, "line": line}, "NotAnObject", reason)
        spec = self._spec
        context = {**where, "id": value.get(spec.id_column), "line": line}
        if spec.text_column not in value:
            return FailedElement(
                context, "MissingField", f"no field {spec.text_column!r}; fields: {sorted(value)[:20]}"
            )
        problem = find_text_problem(value[spec.text_column])
        if problem is not None:
            return FailedElement(context, problem.kind, problem.reason)
        if not spec.position_ids and value.get(spec.id_column) is None:
            return FailedElement(context, "MissingId", f"no id in field {spec.id_column!r}")
        for field in self._schema:
            wrong = misfit(value.get(field.name), field.type)
            if wrong is not None:
                context[spec.text_column] = value[spec.text_column]
                return FailedElement(context, "BadValueType", f"field {field.name!r}: {wrong}")
        return {column: value.get(column) for column in self._schema.names}
