"""The JSONL reader: blocks of clean lines are parsed in bulk by Arrow, and yield exactly what the
line-by-line parser yields; any unusual line sends its block line by line, with one dead letter per bad line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pytest
from apache_beam.testing.util import assert_that, equal_to

from pipelines import inputs
from pipelines.inputs import InputSpec, ReadJsonLines, jsonl_schema
from tests.beam_helpers import counter, fn_api_pipeline

SPEC = InputSpec(pattern="", format="jsonl", text_column="text", id_column="id", keep_columns=("tag", "score"))

CLEAN_LINES = [
    b'{"id": 1, "text": "plain text", "tag": "a", "score": 0.5}\n',
    b'{"id": 2, "text": "emoji \xf0\x9f\x98\x80 unescaped", "tag": "b", "score": 1}\n',
    b'{"id": 3, "text": "CRLF line end", "tag": null, "score": 2.5}\r\n',
    b"\n",
    b"   \n",
    b'{"id": 4, "text": "extra fields are ignored", "other": [1, {"x": null}], "score": 3.0}\n',
    b'{"text": "field order does not matter", "id": 5, "tag": "c", "score": -1}\n',
    '{"id": 6, "text": "ünïcödé 日本語 \\u0000 nul", "tag": "d", "score": 0}\n'.encode(),
    b'{"id": 7, "text": "", "tag": "e", "score": 1e3}\n',
    b'{"id": 8, "text": "no newline at the end", "tag": "f", "score": 4}',
]


def outputs_of(path: Path, schema: pa.Schema, *, bulk: bool) -> tuple[list[dict[str, Any]], list[Any]]:
    """Run the DoFn on one file outside a pipeline: (rows of the tables, dead letters)."""
    reader = ReadJsonLines(SPEC, schema)
    reader.setup()
    if not bulk:
        reader._parse_in_bulk = lambda lines: None  # type: ignore[method-assign]
    rows: list[dict[str, Any]] = []
    failures: list[Any] = []
    for item in reader.process(str(path)):
        if isinstance(item, beam.pvalue.TaggedOutput):
            failures.append(item.value)
        else:
            rows.extend(item.to_pylist())
    return rows, failures


def write_lines(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"".join(lines))
    return path


def test_bulk_and_line_by_line_give_the_same_tables(tmp_path):
    path = write_lines(tmp_path / "clean.jsonl", CLEAN_LINES)
    schema = jsonl_schema([str(path)], SPEC)
    reader = ReadJsonLines(SPEC, schema)
    assert reader._parse_in_bulk([line for line in CLEAN_LINES if line.strip()]) is not None
    bulk_rows, bulk_failures = outputs_of(path, schema, bulk=True)
    line_rows, line_failures = outputs_of(path, schema, bulk=False)
    assert bulk_failures == line_failures == []
    assert bulk_rows == line_rows
    assert [row["id"] for row in bulk_rows] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert [row["__position"] for row in bulk_rows] == [1, 2, 3, 6, 7, 8, 9, 10]
    assert bulk_rows[1]["text"] == "emoji \U0001f600 unescaped"


@pytest.mark.parametrize(
    "bad_line",
    [
        b"{not json}\n",
        b"[1, 2]\n",
        b'{"id": 9, "text": 5}\n',
        b'{"id": 9}\n',
        b'{"id": 9, "text": null}\n',
        b'{"text": "no id"}\n',
        b'{"id": 9, "text": "lone \\ud800 surrogate"}\n',
        b'{"id": 9, "text": "an escaped pair \\ud83d\\ude00 is valid"}\n',
        b'{"id": 9, "text": "invalid \xff utf-8"}\n',
        b'{"id": 9, "text": "a", "text": "repeated key"}\n',
        b'{"id": "nine", "text": "id of another type"}\n',
        b'\xef\xbb\xbf{"id": 9, "text": "byte-order mark"}\n',
    ],
    ids=[
        "not_json",
        "not_object",
        "number_text",
        "missing_text",
        "null_text",
        "missing_id",
        "lone_surrogate",
        "escaped_pair",
        "invalid_utf8",
        "repeated_key",
        "id_type",
        "bom",
    ],
)
def test_an_unusual_line_sends_its_block_line_by_line(tmp_path, bad_line):
    lines = [*CLEAN_LINES[:3], bad_line, *CLEAN_LINES[3:-1]]
    path = write_lines(tmp_path / "mixed.jsonl", lines)
    schema = jsonl_schema([str(path)], SPEC)
    assert schema.field("id").type == pa.int64()
    reader = ReadJsonLines(SPEC, schema)
    assert reader._parse_in_bulk([line for line in lines if line.strip()]) is None
    bulk_rows, bulk_failures = outputs_of(path, schema, bulk=True)
    line_rows, line_failures = outputs_of(path, schema, bulk=False)
    assert bulk_rows == line_rows
    assert [(f.error_type, f.reason) for f in bulk_failures] == [(f.error_type, f.reason) for f in line_failures]
    # The escaped pair and the repeated key are valid rows for json.loads: the others one dead letter each.
    assert len(bulk_rows) + len(bulk_failures) == len([line for line in lines if line.strip()])


def test_in_a_pipeline_clean_blocks_go_in_bulk_and_a_bad_block_line_by_line(tmp_path, monkeypatch):
    monkeypatch.setattr(inputs, "JSONL_ROWS_PER_TABLE", 4)
    records = [{"id": i, "text": f"text number {i}", "tag": "t", "score": i / 2} for i in range(12)]
    lines = [json.dumps(record).encode() + b"\n" for record in records]
    lines[9] = b"{broken\n"
    path = write_lines(tmp_path / "blocks.jsonl", lines)
    schema = jsonl_schema([str(path)], SPEC)
    with fn_api_pipeline() as pipeline:
        parsed = (
            pipeline
            | beam.Create([str(path)])
            | beam.ParDo(ReadJsonLines(SPEC, schema)).with_outputs(inputs.FAILED_TAG, main="tables")
        )
        ids = parsed.tables | beam.FlatMap(lambda table: table.column("id").to_pylist())
        assert_that(ids, equal_to([i for i in range(12) if i != 9]), label="ids")
        kinds = parsed[inputs.FAILED_TAG] | beam.Map(lambda failure: failure.error_type)
        assert_that(kinds, equal_to(["InvalidJson"]), label="failures")
    result = pipeline.result
    assert counter(result, "jsonl_blocks_parsed_in_bulk") == 2
    assert counter(result, "jsonl_blocks_parsed_by_line") == 1
    assert counter(result, "rows_read") == 12


def test_the_token_pattern_finds_what_the_plain_pattern_finds():
    """``_TOKEN``'s unrolled string pattern matches exactly as the plain ``"(?:[^"\\]|\\.)*"`` does."""
    import random
    import re

    from pipelines.jsonl_lines import _TOKEN

    plain = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]')
    rng = random.Random(7)
    alphabet = b'"\\[]{}ab \n\xc3\xa9'
    lines = [bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(5000)]
    lines += [b'{"a": "x\\"y[", "b": [1, {"c": "\\\\"}], "d": "\\u00e9}"}', b'"open [ {', b'"a\\', b'"\\"']
    for line in lines:
        assert [m.span() for m in _TOKEN.finditer(line)] == [m.span() for m in plain.finditer(line)], line


def test_an_input_pattern_that_names_a_file_exactly_means_that_file(tmp_path):
    """``--input 'day [1].jsonl'`` reads that file, not ``day 1.jsonl`` (which the pattern also matches)."""
    match_files, pattern_root = inputs.match_files, inputs.pattern_root
    folder = tmp_path / "in [x]"
    folder.mkdir()
    for name in ("day [1].jsonl", "day 1.jsonl", "day *.jsonl"):
        (folder / name).write_text('{"id": 1, "text": "a"}\n')
    assert match_files(str(folder / "day [1].jsonl")) == [str(folder / "day [1].jsonl")]
    assert match_files(str(folder / "day *.jsonl")) == [str(folder / "day *.jsonl")]
    assert pattern_root(str(folder / "day [1].jsonl")) == f"{folder}/"
    # A pattern that names no file exactly is a pattern, as before.
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "day 1.jsonl").write_text('{"id": 1, "text": "a"}\n')
    assert match_files(str(plain / "day [1].jsonl")) == [str(plain / "day 1.jsonl")]
