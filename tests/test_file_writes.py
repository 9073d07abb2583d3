"""``pipelines.file_writes.WriteFiles``: every element written once, shards named as Beam names them, nothing left."""

from __future__ import annotations

import os
from pathlib import Path

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.io.iobase import Write
from apache_beam.testing.util import assert_that, equal_to

from pipelines.file_writes import JsonLinesSink, WriteFiles, _finalize, _WriteBundles
from pipelines.parquet_sink import VectorParquetSink
from tests.beam_helpers import fn_api_pipeline


def lines_of(folder: Path, pattern: str) -> list[str]:
    return [line for path in sorted(folder.glob(pattern)) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("repeat", [0, 1])
def test_every_element_of_every_bundle_is_written_once(tmp_path: Path, repeat: int) -> None:
    """Several bundles (two worker threads); with ``repeat`` 1 the runner also runs every bundle once more and
    drops that attempt's output, as after a retry: its files must not be published."""
    lines = [f'{{"n": {n}, "text": "é\\u2028"}}' for n in range(800)]
    options = ["--direct_num_workers=2", "--direct_running_mode=multi_threading"]
    with fn_api_pipeline(*options, f"--direct_runner_bundle_repeat={repeat}") as pipeline:
        shuffled = pipeline | beam.Create(lines) | beam.Reshuffle()
        names = shuffled | WriteFiles(JsonLinesSink(str(tmp_path / "failed")))
        # The names come out once the files are final: each of them, and only they, are there.
        assert_that(names, lambda found: equal_to(sorted(map(str, tmp_path.iterdir())))(sorted(found)))
    shards = sorted(path.name for path in tmp_path.iterdir())
    assert len(shards) >= 2, shards
    assert shards == [f"failed-{n:05d}-of-{len(shards):05d}.jsonl" for n in range(len(shards))]
    assert sorted(lines_of(tmp_path, "failed-*.jsonl")) == sorted(lines)


def test_the_output_is_the_final_file_names(tmp_path: Path) -> None:
    with fn_api_pipeline() as pipeline:
        names = pipeline | beam.Create(["a", "b"]) | WriteFiles(JsonLinesSink(str(tmp_path / "out")))
        assert_that(names, equal_to([str(tmp_path / "out-00000-of-00001.jsonl")]))
    assert sorted(lines_of(tmp_path, "out-*")) == ["a", "b"]


@pytest.mark.parametrize("skip_if_empty", [False, True])
def test_an_empty_input_gives_one_empty_shard_unless_the_sink_skips_it(tmp_path: Path, skip_if_empty: bool) -> None:
    with fn_api_pipeline() as pipeline:
        empty = pipeline | beam.Create([]).with_output_types(str)
        names = empty | WriteFiles(JsonLinesSink(str(tmp_path / "failed"), skip_if_empty=skip_if_empty))
        assert_that(names | beam.combiners.Count.Globally(), equal_to([0 if skip_if_empty else 1]))
    expected = [] if skip_if_empty else ["failed-00000-of-00001.jsonl"]
    assert sorted(os.listdir(tmp_path)) == expected  # and no temporary folder left
    if not skip_if_empty:
        assert (tmp_path / expected[0]).read_bytes() == b""


def test_a_retried_bundle_is_written_once_and_the_lost_attempt_removed(tmp_path: Path) -> None:
    """A runner retries a failed bundle and drops the failed attempt's output: only the retry's file is kept."""
    sink = JsonLinesSink(str(tmp_path / "failed"))
    folder = sink.initialize_write()
    bundles = _WriteBundles(sink, folder)
    written = []
    for _attempt in range(2):  # the same bundle twice: the first attempt's output never reaches the finalize
        bundles.start_bundle()
        for line in ("one", "two"):
            bundles.process(line)
        written.append(next(iter(bundles.finish_bundle())).value)
    assert written[0] != written[1] and all(os.path.exists(path) for path in written)
    names = list(_finalize((None, [None, written[1]]), sink, folder))
    assert names == [str(tmp_path / "failed-00000-of-00001.jsonl")]
    assert lines_of(tmp_path, "failed-*") == ["one", "two"]
    assert sorted(os.listdir(tmp_path)) == ["failed-00000-of-00001.jsonl"]  # the lost attempt's file went too


def test_parquet_shards_equal_beams_write(tmp_path: Path) -> None:
    schema = pa.schema([("id", pa.int64()), ("embedding", pa.list_(pa.float32(), 2))])
    tables = [pa.table({"id": [n, n + 100], "embedding": [[n, 0.5], [n, -0.5]]}, schema=schema) for n in range(5)]
    for name, write in (("ours", WriteFiles), ("beams", Write)):
        with fn_api_pipeline() as pipeline:
            _ = (
                pipeline
                | f"Tables{name}" >> beam.Create(tables)
                | write(VectorParquetSink(str(tmp_path / name / "part"), schema, vector_columns=["embedding"]))
            )
    ours, beams = (pq.read_table(tmp_path / name).sort_by("id") for name in ("ours", "beams"))
    assert ours.equals(beams) and len(ours) == 10
    assert sorted(os.listdir(tmp_path / "ours")) == ["part-00000-of-00001.parquet"]
