"""Reading ahead: outputs in order and in their own window, bounded, errors where they are read; real pipelines."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import FixedWindows, TimestampedValue

from pipelines.inputs import FAILED_TAG, InputError, InputSpec, ReadParquetRows
from pipelines.read_ahead import ReadAhead
from tests.beam_helpers import counter, fn_api_pipeline


def test_outputs_come_in_submission_order_and_only_up_to_what_is_asked():
    ahead: ReadAhead[int] = ReadAhead(lambda item: iter([(item, part) for part in range(item % 3)]))
    try:
        for item in range(10):
            ahead.submit(item)
        assert list(ahead.outputs_before(7)) == [(1, 0), (2, 0), (2, 1)]  # items 0-2 (item 0 has no outputs)
        assert list(ahead.outputs_before(0)) == [(item, part) for item in range(3, 10) for part in range(item % 3)]
    finally:
        ahead.close()


def test_the_reading_thread_stays_at_most_depth_outputs_ahead():
    made: list[int] = []

    def read(item: int) -> Iterator[int]:
        for part in range(50):
            made.append(part)
            yield part

    ahead: ReadAhead[int] = ReadAhead(read, depth=2)
    try:
        ahead.submit(0)
        time.sleep(0.3)
        assert len(made) == 3  # two handed over, one waiting to be
        assert list(ahead.outputs_before(0)) == list(range(50))
    finally:
        ahead.close()


def test_an_error_is_raised_where_the_outputs_are_read_and_later_items_still_read():
    def read(item: int) -> Iterator[int]:
        yield item
        if item == 1:
            raise InputError("row group 1 cannot be read")

    ahead: ReadAhead[int] = ReadAhead(read)
    try:
        for item in range(3):
            ahead.submit(item)
        outputs = ahead.outputs_before(1)
        assert [next(outputs), next(outputs)] == [0, 1]
        with pytest.raises(InputError, match="row group 1"):
            next(outputs)
        assert list(ahead.outputs_before(0)) == [2]
    finally:
        ahead.close()


def test_close_stops_a_thread_blocked_on_outputs_nobody_reads():
    ahead: ReadAhead[int] = ReadAhead(lambda item: iter(range(1000)))
    ahead.submit(0)
    time.sleep(0.1)
    ahead.close()
    assert not [thread for thread in threading.enumerate() if thread.name == "beam-m2v-read-ahead"]


def write_row_groups(path: Path, groups: int, rows: int) -> None:
    """A Parquet file of ``groups`` row groups; every 7th id is null (a dead letter)."""
    ids = [None if i % 7 == 3 else i for i in range(groups * rows)]
    table = pa.table({"id": pa.array(ids, pa.int64()), "text": [f"text {i}" for i in range(groups * rows)]})
    pq.write_table(table, path, row_group_size=rows)


def test_read_parquet_rows_keeps_every_row_each_in_its_own_window_and_counts_them(tmp_path):
    path = tmp_path / "corpus.parquet"
    groups, rows = 6, 40
    write_row_groups(path, groups, rows)
    spec = InputSpec(str(path), "parquet", "text", "id", batch_size=15)
    schema = pa.schema([("id", pa.int64()), ("text", pa.string())])
    items = [TimestampedValue((str(path), group, group * rows), group * 10) for group in range(groups)]
    p = fn_api_pipeline()
    read = (
        p
        | beam.Create(items)
        | beam.WindowInto(FixedWindows(10))
        | beam.ParDo(ReadParquetRows(spec, schema)).with_outputs(FAILED_TAG, main="tables")
    )

    def window_of_each_row(table: pa.Table, window: Any = beam.DoFn.WindowParam) -> list[tuple[int, int]]:
        return [(int(window.start), position // rows * 10) for position in table.column("__position").to_pylist()]

    def where_each_failure_is(failure: Any, window: Any = beam.DoFn.WindowParam) -> tuple[int, int]:
        return int(window.start), failure.element["id"] is None

    expected_ids = [i for i in range(groups * rows) if i % 7 != 3]
    ids = read.tables | beam.FlatMap(lambda table: table.column("id").to_pylist())
    assert_that(ids, equal_to(expected_ids), label="every good row once")
    windows = read.tables | beam.FlatMap(window_of_each_row)
    assert_that(windows | beam.MapTuple(lambda got, want: got == want), equal_to([True] * len(expected_ids)))
    failures = read[FAILED_TAG] | beam.Map(where_each_failure_is)
    assert_that(
        failures,
        equal_to([(i // rows * 10, True) for i in range(groups * rows) if i % 7 == 3]),
        label="dead letters in their row group's window",
    )
    result = p.run()
    result.wait_until_finish()
    assert counter(result, "rows_read") == groups * rows
    assert counter(result, "failures") == groups * rows - len(expected_ids)
    assert not [thread for thread in threading.enumerate() if thread.name == "beam-m2v-read-ahead"]


def test_a_damaged_row_group_fails_the_run_with_its_file_and_group(tmp_path):
    path = tmp_path / "corpus.parquet"
    write_row_groups(path, 3, 40)
    spec = InputSpec(str(path), "parquet", "text", "id")
    schema = pa.schema([("id", pa.int64()), ("text", pa.string())])
    p = fn_api_pipeline()
    _ = (
        p
        | beam.Create([(str(path), group, group * 40) for group in (0, 7, 1)])  # there is no row group 7
        | beam.ParDo(ReadParquetRows(spec, schema)).with_outputs(FAILED_TAG, main="tables")
    )
    with pytest.raises(Exception, match=r"row group 7 cannot be read"):
        p.run().wait_until_finish()
