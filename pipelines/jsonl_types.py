"""The column types of a JSON Lines input, decided from every line of every file, and the exact-fit check.

Before a pipeline starts, every line of every file is read once (``scan_jsonl``), and each
read column gets a ``ValueSketch``: how many values of each JSON kind it holds, the range of
its integers, and, for objects and arrays, the same for their fields and items. The types
follow from the sketches (``id_type``, ``value_type``):

* the text column is always ``string``;
* the id column takes the kind most ids have: ``string``, ``int64`` or ``float64``; an
  integer id and a fractional one never share a type by rounding;
* another kept column: integers only ``int64``; fractions only ``float64``; both mixed
  ``float64`` when every integer is within +-2**53 (exact in float64), else the kind most
  values have; objects a ``struct`` of every field seen anywhere; arrays a ``list`` of
  their items' type; different kinds (text and numbers) the kind most values have;
  nothing but nulls ``string``.

A row is then only built from values its column's type holds exactly (``misfit``): one
that does not (``2.75`` in an ``int64`` column, an integer beyond int64, a field the
struct lacks, a string with a lone surrogate) makes its row a dead letter naming the file
and line, instead of a rounded or truncated value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

from beam_m2v.transforms.dead_letters import preview
from pipelines.jsonl_lines import is_blank, line_batches, needs_line_by_line, parse_line

#: Integers of at most this magnitude are exact in float64.
FLOAT64_EXACT = 2**53
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def kind_of(value: Any) -> str:
    """The JSON kind of a parsed value: str, int, float, bool, dict or list."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, dict):
        return "dict"
    return "list"


def utf8_ok(text: str) -> bool:
    """Whether UTF-8 can encode ``text`` (it has no lone surrogate)."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass
class ValueSketch:
    """What the values of one column (or nested field) were: counts per kind, integer range, fields and items."""

    counts: dict[str, int] = field(default_factory=dict)
    int_min: int | None = None
    int_max: int | None = None
    fields: dict[str, ValueSketch] = field(default_factory=dict)
    items: ValueSketch | None = None

    @property
    def values(self) -> int:
        """Non-null values seen."""
        return sum(self.counts.values())

    def add(self, value: Any) -> None:
        """Count one parsed JSON value (nested no deeper than ``MAX_DEPTH``)."""
        if value is None:
            return
        kind = kind_of(value)
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if kind == "int":
            self.add_range(value, value)
        elif kind == "dict":
            for key, item in value.items():
                if utf8_ok(key):  # a key that is not text makes its row a misfit; it names no field
                    self.fields.setdefault(key, ValueSketch()).add(item)
        elif kind == "list":
            items = self.items = self.items or ValueSketch()
            for item in value:
                items.add(item)

    def add_kind(self, kind: str, count: int) -> None:
        """Count ``count`` values of ``kind`` at once."""
        if count:
            self.counts[kind] = self.counts.get(kind, 0) + count

    def add_range(self, low: int, high: int) -> None:
        """Widen the integer range to include ``low`` and ``high``."""
        self.int_min = low if self.int_min is None else min(self.int_min, low)
        self.int_max = high if self.int_max is None else max(self.int_max, high)

    def merge(self, other: ValueSketch) -> None:
        """Add another sketch's counts to this one."""
        for kind, count in other.counts.items():
            self.add_kind(kind, count)
        if other.int_min is not None and other.int_max is not None:
            self.add_range(other.int_min, other.int_max)
        for name, sub in other.fields.items():
            self.fields.setdefault(name, ValueSketch()).merge(sub)
        if other.items is not None:
            self.items = self.items or ValueSketch()
            self.items.merge(other.items)

    def ints_exact_in_float64(self) -> bool:
        """Whether every integer seen is within +-2**53."""
        return self.int_min is None or (self.int_min >= -FLOAT64_EXACT and (self.int_max or 0) <= FLOAT64_EXACT)


#: How a message names each kind (``number``: integers and fractions together, in kept columns).
KIND_NAMES = {
    "str": "strings",
    "int": "integers",
    "float": "fractional numbers",
    "number": "numbers",
    "bool": "true/false",
    "dict": "objects",
    "list": "arrays",
}


def majority_kind(sketch: ValueSketch, *, identifier: bool) -> str | None:
    """The kind most values have (ties: the first of str, int/number, float, bool, dict, list); None without values.

    For an id the kinds are str, int and float (others are never ids); for a kept column
    integers and fractions count together as ``number``.
    """
    counts = sketch.counts
    if identifier:
        candidates = {kind: counts.get(kind, 0) for kind in ("str", "int", "float")}
    else:
        candidates = {"str": counts.get("str", 0), "number": counts.get("int", 0) + counts.get("float", 0)}
        candidates |= {kind: counts.get(kind, 0) for kind in ("bool", "dict", "list")}
    order = list(candidates)
    best = max(order, key=lambda kind: (candidates[kind], -order.index(kind)))
    return best if candidates[best] else None


def id_type(sketch: ValueSketch) -> pa.DataType | None:
    """The id column's type: the kind most ids have (string, int64 or float64); None when no line has an id."""
    kind = majority_kind(sketch, identifier=True)
    return None if kind is None else {"str": pa.string(), "int": pa.int64(), "float": pa.float64()}[kind]


def value_type(sketch: ValueSketch) -> pa.DataType:
    """The type of a kept column (or nested field): see the module's rules."""
    counts = sketch.counts
    kind = majority_kind(sketch, identifier=False)
    if kind is None:
        return pa.string()
    if kind == "number":
        if not counts.get("float"):
            return pa.int64()
        if not counts.get("int") or sketch.ints_exact_in_float64():
            return pa.float64()
        return pa.int64() if counts["int"] >= counts["float"] else pa.float64()
    if kind == "dict":
        fields = [pa.field(name, value_type(sub)) for name, sub in sketch.fields.items()]
        return pa.struct(fields) if fields else pa.string()  # Parquet cannot store a struct without fields
    if kind == "list":
        return pa.list_(value_type(sketch.items) if sketch.items is not None else pa.string())
    return {"str": pa.string(), "bool": pa.bool_()}[kind]


def arrow_reads_exactly(sketch: ValueSketch, arrow_type: pa.DataType) -> bool:
    """Whether Arrow's JSON reader turns every value of this sketch into ``arrow_type`` without rounding.

    It rounds integers beyond +-2**53 silently into float64 (where ``misfit`` would refuse
    the ones float64 cannot hold); everything else it refuses, like ``misfit``.
    """
    if pa.types.is_floating(arrow_type):
        return sketch.ints_exact_in_float64()
    if pa.types.is_struct(arrow_type):
        return all(arrow_reads_exactly(sketch.fields[f.name], f.type) for f in arrow_type if f.name in sketch.fields)
    if pa.types.is_list(arrow_type) and sketch.items is not None:
        return arrow_reads_exactly(sketch.items, arrow_type.value_type)
    return True


def misfit(value: Any, arrow_type: pa.DataType) -> str | None:
    """Why ``value`` (parsed JSON) cannot be held exactly by ``arrow_type``, or None when it can."""
    if value is None:
        return None
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        if not isinstance(value, str):
            return f"{preview(value, 80)} is a JSON {kind_of(value)}, not a string"
        return None if utf8_ok(value) else f"{preview(value, 80)} holds a lone surrogate, which is not text"
    if pa.types.is_boolean(arrow_type):
        return None if isinstance(value, bool) else f"{preview(value, 80)} is not true or false"
    if pa.types.is_int64(arrow_type):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            return f"{preview(value, 80)} is not a whole number, and the column is int64"
        return None if _INT64_MIN <= value <= _INT64_MAX else f"{preview(value, 80)} is beyond the range of int64"
    if pa.types.is_float64(arrow_type):
        if isinstance(value, float):
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            try:
                exact = float(value) == value
            except OverflowError:
                exact = False
            return None if exact else f"{preview(value, 80)} is not exact in float64, and the column is float64"
        return f"{preview(value, 80)} is a JSON {kind_of(value)}, not a number"
    if pa.types.is_struct(arrow_type):
        if not isinstance(value, dict):
            return f"{preview(value, 80)} is a JSON {kind_of(value)}, not an object"
        for key, item in value.items():
            index = arrow_type.get_field_index(key) if utf8_ok(key) else -1
            if index < 0:
                return f"field {preview(key, 80)} is not in the column's type {arrow_type}"
            problem = misfit(item, arrow_type.field(index).type)
            if problem is not None:
                return f"in field {key!r}: {problem}"
        return None
    if pa.types.is_list(arrow_type):
        if not isinstance(value, list):
            return f"{preview(value, 80)} is a JSON {kind_of(value)}, not an array"
        for index, item in enumerate(value):
            problem = misfit(item, arrow_type.value_type)
            if problem is not None:
                return f"at item {index}: {problem}"
        return None
    return f"{preview(value, 80)} does not fit {arrow_type}"


@dataclass
class JsonlScan:
    """What one pass over every line found: rows (non-blank lines), lines with a string text, column sketches.

    ``sketches`` covers every file; ``by_file`` holds each file's own sketches.
    """

    rows: int = 0
    texts: int = 0
    sketches: dict[str, ValueSketch] = field(default_factory=dict)
    by_file: dict[str, dict[str, ValueSketch]] = field(default_factory=dict)


def scan_jsonl(files: Sequence[str], text_column: str, columns: Sequence[str]) -> JsonlScan:
    """Read every line of every file once: count rows and texts, and sketch ``columns`` (not the text column).

    Batches of lines Arrow's JSON reader infers cleanly (every read column a string, integer, boolean or
    null) are sketched from its columns; any other batch line by line with ``parse_line``.
    A damaged compressed file raises ``InputError``.
    """
    total = JsonlScan(sketches={column: ValueSketch() for column in columns})
    for path in files:
        scan = JsonlScan(sketches={column: ValueSketch() for column in columns})
        for _, batch in line_batches(path):
            if not _scan_in_bulk(batch, text_column, scan):
                _scan_by_line(batch, text_column, scan)
        total.rows += scan.rows
        total.texts += scan.texts
        for column, sketch in scan.sketches.items():
            total.sketches[column].merge(sketch)
        total.by_file[path] = scan.sketches
    return total


def _scan_in_bulk(batch: bytes, text_column: str, scan: JsonlScan) -> bool:
    """Sketch a batch from Arrow's inferred columns; False (nothing counted) when the batch needs ``parse_line``."""
    lines = batch.count(b"\n") + (0 if batch.endswith(b"\n") else 1)
    if needs_line_by_line(batch):
        return False
    options = pa_json.ParseOptions(
        explicit_schema=pa.schema([(text_column, pa.string())]), unexpected_field_behavior="infer"
    )
    try:
        table = pa_json.read_json(pa.BufferReader(batch), parse_options=options)
    except (pa.ArrowException, ValueError):
        return False
    if table.num_rows != lines and table.num_rows != sum(1 for line in batch.split(b"\n") if not is_blank(line)):
        return False
    found: dict[str, pa.ChunkedArray] = {}
    for column in scan.sketches:
        if column in table.column_names:
            found[column] = table.column(column)
            kind = _ARROW_KINDS.get(found[column].type)
            if kind is None:
                return False
    for column, values in found.items():
        sketch = scan.sketches[column]
        count = len(values) - values.null_count
        kind = _ARROW_KINDS[values.type]
        sketch.add_kind(kind, count)
        if kind == "int" and count:
            low, high = pc.min_max(values).values()
            sketch.add_range(low.as_py(), high.as_py())
    scan.rows += table.num_rows
    scan.texts += len(table) - table.column(text_column).null_count
    return True


_ARROW_KINDS: dict[pa.DataType, str] = {pa.string(): "str", pa.int64(): "int", pa.bool_(): "bool", pa.null(): ""}


def _scan_by_line(batch: bytes, text_column: str, scan: JsonlScan) -> None:
    """Sketch a batch line by line."""
    for line in batch.split(b"\n"):
        if is_blank(line):
            continue
        scan.rows += 1
        value = parse_line(line)
        if not isinstance(value, dict):
            continue
        if isinstance(value.get(text_column), str):
            scan.texts += 1
        for column, sketch in scan.sketches.items():
            sketch.add(value.get(column))
