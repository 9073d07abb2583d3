"""``EmbedTables``: the Arrow fast path, one encoder call per table.

Takes a PCollection of ``pyarrow.Table`` or ``RecordBatch`` (what ``ReadFromParquetBatched``
yields) and returns tables with a ``fixed_size_list<float32>[dim]`` column added. Rows whose
text is null, not a string, or not valid UTF-8 leave the table and go to the dead-letter
output as ``FailedElement``s holding the row as a dict.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.pvalue import PCollection

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from beam_m2v.model_options import ModelKeywords

from beam_m2v.arrow_strings import plain_strings
from beam_m2v.text_checks import TextProblem
from beam_m2v.transforms.dead_letters import EMBEDDED_TAG, FAILED_TAG, FailedElement
from beam_m2v.transforms.embed_text import EmbedResult
from beam_m2v.transforms.model_cache import ModelSpec
from beam_m2v.transforms.model_dofn import SharedModelDoFn


def _row_problems(column: pa.Array) -> dict[int, TextProblem]:
    """Why each unusable row of a text column cannot be embedded (row index -> problem)."""
    if pa.types.is_null(column.type):
        return dict.fromkeys(range(len(column)), TextProblem("NullText", "text is null"))
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        wrong_type = TextProblem("NotAString", f"text column has type {column.type}, not string")
        return dict.fromkeys(range(len(column)), wrong_type)
    null = TextProblem("NullText", "text is null")
    problems = {int(row): null for row in np.flatnonzero(~column.is_valid().to_numpy(zero_copy_only=False))}
    try:
        column.validate(full=True)
    except pa.ArrowInvalid:
        for row, raw in enumerate(column.view(_binary_of(column.type)).to_pylist()):
            if raw is not None:
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError as error:
                    problems[row] = TextProblem("InvalidUnicode", f"text is not valid UTF-8: {error}")
    return problems


def _binary_of(string_type: pa.DataType) -> pa.DataType:
    """The binary type with the same layout as a string type (a zero-copy view, no UTF-8 check)."""
    return pa.large_binary() if pa.types.is_large_string(string_type) else pa.binary()


def _cell(column: pa.ChunkedArray, row: int) -> Any:
    """One cell as a Python value; invalid UTF-8 text as its bytes, a value Python cannot hold as its text."""
    value = column[row]
    if pa.types.is_string(value.type) or pa.types.is_large_string(value.type):
        value = value.cast(_binary_of(value.type)) if value.is_valid else value
    try:
        return value.as_py()
    except Exception:  # e.g. a timestamp beyond datetime's range
        try:
            return str(value)
        except Exception:
            return f"<{value.type} value that cannot be shown>"


def _row_as_dict(table: pa.Table, row: int) -> dict[str, Any]:
    """One row as a dict (the first of columns that share a name); text that is not valid UTF-8 is kept as bytes."""
    try:
        return dict(table.slice(row, 1).to_pylist()[0])
    except Exception:  # invalid UTF-8, values Python cannot hold
        cells: dict[str, Any] = {}
        for name, column in zip(table.column_names, table.columns, strict=True):
            cells.setdefault(name, _cell(column, row))
        return cells


def _text_column(table: pa.Table, name: str) -> pa.Array | TextProblem:
    """The text column as one array, or why the table has no usable one."""
    count = table.column_names.count(name)
    if count == 0:
        return TextProblem("MissingField", f"missing column {name!r}; columns: {table.column_names}")
    if count > 1:
        return TextProblem("AmbiguousColumn", f"the table has {count} columns named {name!r}")
    return table.column(name).combine_chunks()


class EmbedTablesDoFn(SharedModelDoFn):
    """Embeds the text column of each table in one call."""

    def __init__(self, spec: ModelSpec, text_column: str, output_column: str) -> None:
        super().__init__(spec)
        self._text_column = text_column
        self._output_column = output_column

    def _fail_all(self, table: pa.Table, problem: TextProblem) -> Iterator[Any]:
        """A dead letter for every row of ``table``."""
        for row in range(len(table)):
            self.metrics.failures.inc()
            yield beam.pvalue.TaggedOutput(
                FAILED_TAG, FailedElement(_row_as_dict(table, row), problem.kind, problem.reason)
            )

    def process(self, table: pa.Table | pa.RecordBatch) -> Iterator[Any]:
        """Embed one table; yield it with the vector column, and dead letters for unusable rows."""
        model = self.shared_model()
        if isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
        if not isinstance(table, pa.Table):
            self.metrics.failures.inc()
            reason = f"element is {type(table).__name__}, not a pyarrow Table or RecordBatch (use EmbedText)"
            yield beam.pvalue.TaggedOutput(FAILED_TAG, FailedElement(table, "NotATable", reason))
            return
        table = plain_strings(table)  # dictionary and string_view text as plain strings (UTF-8 checked below)
        column = _text_column(table, self._text_column)
        if not isinstance(column, TextProblem) and self._output_column in table.column_names:
            column = TextProblem(
                "OutputFieldExists",
                f"the table already has a column {self._output_column!r}, where the vectors would go; "
                "pass another output_column=",
            )
        if isinstance(column, TextProblem):
            yield from self._fail_all(table, column)
            return
        problems = _row_problems(column)
        if problems:
            keep = np.ones(len(table), dtype=bool)
            keep[list(problems)] = False
            for row, row_problem in sorted(problems.items()):
                self.metrics.failures.inc()
                yield beam.pvalue.TaggedOutput(
                    FAILED_TAG, FailedElement(_row_as_dict(table, row), row_problem.kind, row_problem.reason)
                )
            mask = pa.array(keep)
            table, column = table.filter(mask), column.filter(mask)
        if len(table) == 0:
            return
        vectors, tokens = model.encode_arrow_with_stats(column)
        self.metrics.record_batch(vectors.values.to_numpy().reshape(len(table), -1), tokens)
        yield table.append_column(self._output_column, vectors)


class EmbedTables(beam.PTransform[PCollection[Any], EmbedResult]):
    """Add a ``fixed_size_list<float32>[dim]`` column of vectors to each Arrow table of a PCollection.

    Returns ``EmbedResult(embedded, failed)``; ``embedded`` holds ``pyarrow.Table``s (one per
    input table, minus the failed rows), ``failed`` one ``FailedElement`` per unusable row.
    ``model_options`` are those of ``EmbedText`` (``ModelKeywords``).
    """

    def __init__(
        self,
        model: ModelSpec | str | os.PathLike[str],
        *,
        text_column: str = "text",
        output_column: str = "embedding",
        **model_options: Unpack[ModelKeywords],
    ) -> None:
        super().__init__()
        self.spec = ModelSpec.from_keywords(model, model_options, caller="EmbedTables()")
        self.text_column = text_column
        self.output_column = output_column

    def expand(self, pcoll: PCollection[Any]) -> EmbedResult:
        """Embed every table."""
        outputs = pcoll | "EmbedTables" >> beam.ParDo(
            EmbedTablesDoFn(self.spec, self.text_column, self.output_column)
        ).with_output_types(pa.Table).with_outputs(FAILED_TAG, main=EMBEDDED_TAG)
        return EmbedResult(outputs[EMBEDDED_TAG], outputs[FAILED_TAG])
