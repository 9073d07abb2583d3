"""File-writing benchmark: Beam's ``Write`` (``WriteImpl``) beside ``pipelines.file_writes.WriteFiles``, same sinks.

Every run of ``beam-m2v embed`` writes its vectors through ``VectorParquetSink`` and its dead letters
through a JSON-lines sink; ``reembed`` writes five such sinks. This script times, on FnApiRunner in
this process, a pipeline that writes

* a handful of dead letters (the usual case: the write's fixed cost), and ``--lines`` of them;
* the vectors of the ``--rows`` first texts (embedded once, outside the timing, and read back from
  a Parquet file in tables of 1,000 rows, as the programs read their input),

each through Beam's ``Write`` and through ``WriteFiles`` (the same sink object kind, the same
elements), interleaved over ``--repeats`` rounds. Wall time includes building the pipeline. It
checks that both wrote the same lines and the same rows, then prints medians side by side.

    python bench/writes.py                  # 10 and 100,000 lines, 50,000 vectors, 256-dim model, 9 repeats
    python bench/writes.py --smoke          # bundled model and sample, 1 repeat: checks the script runs
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.iobase import Write
from apache_beam.io.parquetio import ReadFromParquetBatched
from apache_beam.io.textio import WriteToText
from apache_beam.options.pipeline_options import PipelineOptions
from bench_common import add_input_options, loadavg, resolve_inputs  # bench/ is on sys.path as a script

import beam_m2v
from pipelines.file_writes import JsonLinesSink, WriteFiles
from pipelines.parquet_sink import VectorParquetSink

TABLE_ROWS = 1000


def timed(build: Callable[[beam.Pipeline], Any]) -> float:
    """Seconds to build and run one pipeline on FnApiRunner."""
    started = time.perf_counter()
    pipeline = beam.Pipeline(runner="FnApiRunner", options=PipelineOptions([]))
    build(pipeline)
    pipeline.run().wait_until_finish()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_input_options(parser, repeats=9)
    parser.add_argument("--lines", type=int, default=None, help="dead letters in the large write (default 100,000)")
    parser.add_argument("--rows", type=int, default=None, help="vectors written (default 50,000)")
    args = parser.parse_args()
    resolve_inputs(args, parser, repeats=9)
    lines_count = args.lines or (200 if args.smoke else 100_000)
    rows = args.rows or (200 if args.smoke else 50_000)

    work = Path(tempfile.mkdtemp(prefix="beam-m2v-writes-bench-"))
    texts = pq.read_table(args.corpus, columns=["text"]).column("text").to_pylist()
    texts = (texts * (rows // max(1, len(texts)) + 1))[:rows]
    vectors = beam_m2v.load_model(args.model).encode_arrow(pa.array(texts, pa.string()))
    embedded = pa.table({"id": pa.array(range(rows), pa.int64()), "embedding": vectors})
    schema = embedded.schema
    # Read back in row groups, as the programs read their input: a beam.Create of tables would time pickling.
    vectors_file = work / "vectors.parquet"
    pq.write_table(embedded, vectors_file, row_group_size=TABLE_ROWS)
    del texts, vectors, embedded
    letter_counts = {"few": 10, "many": lines_count}

    def letters(count: int) -> Iterator[str]:
        for n in range(count):
            yield f'{{"id": {n}, "error_type": "InvalidUtf8", "value": "{"x" * 80}", "position": {n}}}'

    def lines_writer(kind: str, ours: bool) -> Callable[[], float]:
        def run() -> float:
            prefix = str(work / f"{kind}-{'ours' if ours else 'beams'}-{time.monotonic_ns()}" / "failed")
            sink = WriteFiles(JsonLinesSink(prefix)) if ours else WriteToText(prefix, file_name_suffix=".jsonl")
            outputs[run] = prefix
            return timed(lambda p: p | beam.Create([letter_counts[kind]]) | beam.FlatMap(letters) | sink)

        return run

    def vectors_writer(ours: bool) -> Callable[[], float]:
        def run() -> float:
            prefix = str(work / f"vectors-{'ours' if ours else 'beams'}-{time.monotonic_ns()}" / "part")
            sink = VectorParquetSink(prefix, schema, vector_columns=["embedding"], undictionary_columns=["id"])
            outputs[run] = prefix
            return timed(
                lambda p: p | ReadFromParquetBatched(str(vectors_file)) | (WriteFiles(sink) if ours else Write(sink))
            )

        return run

    outputs: dict[Callable[[], float], str] = {}
    pairs = {
        "10 dead letters": (lines_writer("few", False), lines_writer("few", True)),
        f"{lines_count:,} dead letters": (lines_writer("many", False), lines_writer("many", True)),
        f"{rows:,} vectors (Parquet)": (vectors_writer(False), vectors_writer(True)),
    }
    times: dict[str, list[list[float]]] = {name: [[], []] for name in pairs}
    timed(lambda p: p | beam.Create(["warm-up"]) | WriteFiles(JsonLinesSink(str(work / "warm-up" / "f"))))
    for repeat in range(args.repeats):
        for name, contenders in pairs.items():
            order = (0, 1) if repeat % 2 == 0 else (1, 0)
            for index in order:
                times[name][index].append(contenders[index]())

    same = True
    for name, (beams, ours) in pairs.items():
        folders = [Path(outputs[run]).parent for run in (beams, ours)]
        if "vectors" in name:
            left, right = (pq.read_table(folder).sort_by("id") for folder in folders)
            same &= left.equals(right) and len(left) == rows
        else:
            left_lines, right_lines = (
                sorted(line for path in folder.glob("*.jsonl") for line in path.read_text().splitlines())
                for folder in folders
            )
            same &= left_lines == right_lines and len(left_lines) > 0

    print(f"corpus {args.corpus} ({rows:,} rows), model {args.model}, median of {args.repeats}, loadavg {loadavg()}")
    print(f"{'write':28} {'Beam Write s':>13} {'WriteFiles s':>13} {'saved s':>9} {'ratio':>7}")
    for name, (beams_times, ours_times) in times.items():
        beams_s, ours_s = statistics.median(beams_times), statistics.median(ours_times)
        print(f"{name:28} {beams_s:13.3f} {ours_s:13.3f} {beams_s - ours_s:9.3f} {ours_s / beams_s:6.2f}x")
    print(f"same lines and rows written by both: {'yes' if same else 'NO'}")
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
