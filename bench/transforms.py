"""Benchmark of the Beam transforms: EmbedText (elements) and EmbedTables (Arrow) vs bare encode.

Runs, in one invocation and interleaved over ``--repeats`` rounds, on the shared corpus:

* ``load_model().encode`` over all texts, in this process (the reference);
* ``EmbedText`` on FnApiRunner over a PCollection of ``str`` (BatchElements, batches of 1024);
* ``EmbedTables`` on FnApiRunner over the Parquet row groups as ``pyarrow.Table``s;
* the alternative EmbedText did not choose: a batched DoFn (``process_batch`` on lists of str,
  batches made by Beam) encoding the same texts, to compare with BatchElements.

Each pipeline counts its outputs in a Beam metric; wall time includes pipeline construction
and the runner's start-up, but not reading the corpus into the launcher.

    python bench/transforms.py [--quick] [--repeats 3] [--model PATH] [--corpus PATH] [--with-process-batch]
    python bench/transforms.py --smoke     # bundled model and sample, 1 repeat, every contender: checks it runs
"""

# No `from __future__ import annotations`: Beam reads process_batch type hints at run time.

import argparse
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import apache_beam as beam
import pyarrow.parquet as pq
from apache_beam.io.parquetio import ReadFromParquetBatched
from apache_beam.metrics.metric import Metrics, MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from bench_common import add_input_options, resolve_inputs  # bench/ is on sys.path as a script

import beam_m2v

REPO = Path(__file__).resolve().parents[1]


class CountVectors(beam.DoFn):
    """Count embedded rows (tables or elements) in a metric, so nothing is materialised."""

    def __init__(self, tables: bool) -> None:
        self._tables = tables

    def setup(self):
        self._rows = Metrics.counter("bench", "rows")

    def process(self, element):
        self._rows.inc(len(element) if self._tables else 1)


class EncodeWithProcessBatch(beam.DoFn):
    """The alternative to BatchElements: a batched DoFn (Beam builds the batches, at most 4096)."""

    def __init__(self, model: str) -> None:
        self._model_path = model

    def setup(self):
        self._model = beam_m2v.load_model(self._model_path)
        self._rows = Metrics.counter("bench", "rows")

    def process_batch(self, batch: list[str]) -> Iterator[list[int]]:
        self._model.encode(batch)
        self._rows.inc(len(batch))
        yield [0] * len(batch)

    def process(self, element: str) -> Iterator[int]:
        self._model.encode([element])
        self._rows.inc()
        yield 0


def run_pipeline(build, expected: int) -> float:
    started = time.perf_counter()
    pipeline = beam.Pipeline(runner="FnApiRunner", options=PipelineOptions([]))
    build(pipeline)
    result = pipeline.run()
    result.wait_until_finish()
    seconds = time.perf_counter() - started
    rows = sum(c.committed for c in result.metrics().query(MetricsFilter().with_name("rows"))["counters"])
    if rows != expected:
        raise SystemExit(f"pipeline produced {rows} rows, expected {expected}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_input_options(parser, repeats=3)
    parser.add_argument("--quick", action="store_true", help="first 20,000 texts, 1 repeat")
    parser.add_argument(
        "--with-process-batch", action="store_true", help="also time a process_batch DoFn (slow; on with --smoke)"
    )
    args = parser.parse_args()
    resolve_inputs(args, parser, repeats=3)
    args.corpus, args.model = str(args.corpus), str(args.model)
    args.with_process_batch = args.with_process_batch or args.smoke
    corpus = args.corpus
    table = pq.read_table(corpus, columns=["id", "text"])
    if args.quick:
        table, args.repeats = table.slice(0, 20_000), 1
        corpus = str(Path(tempfile.mkdtemp()) / "quick.parquet")
        pq.write_table(table, corpus)
    texts = table.column("text").to_pylist()
    beam_m2v.load_model(args.model).encode(texts[:2000])  # warm-up: matrix pages, thread pool

    def encode() -> float:
        model = beam_m2v.load_model(args.model)  # afresh, not timed: an empty piece cache, as in a pipeline
        started = time.perf_counter()
        model.encode(texts)
        return time.perf_counter() - started

    # Pipelines read the corpus from its Parquet file, as real ones do: a beam.Create of 19 MB of
    # text would be pickled and bz2-compressed into the pipeline, and time that instead.
    def read_tables(p):
        return p | ReadFromParquetBatched(corpus, columns=["text"])

    def read_texts(p):
        return read_tables(p) | beam.FlatMap(lambda t: t.column("text").to_pylist()).with_output_types(str)

    def embed_text() -> float:
        return run_pipeline(
            lambda p: (read_texts(p) | beam_m2v.EmbedText(args.model)).embedded | beam.ParDo(CountVectors(False)),
            len(texts),
        )

    def embed_tables() -> float:
        return run_pipeline(
            lambda p: (read_tables(p) | beam_m2v.EmbedTables(args.model)).embedded | beam.ParDo(CountVectors(True)),
            len(texts),
        )

    def process_batch() -> float:
        return run_pipeline(
            lambda p: read_texts(p) | beam.ParDo(EncodeWithProcessBatch(args.model)).with_input_types(str),
            len(texts),
        )

    contenders = {
        "load_model().encode (in process)": encode,
        "EmbedText, elements (FnApiRunner)": embed_text,
        "EmbedTables, Arrow tables (FnApiRunner)": embed_tables,
    }
    if args.with_process_batch:
        contenders["batched DoFn, process_batch (FnApiRunner)"] = process_batch
    times: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for repeat in range(args.repeats):
        order = names[repeat % len(names) :] + names[: repeat % len(names)]
        for name in order:
            times[name].append(contenders[name]())
        print(f"repeat {repeat + 1}/{args.repeats}: " + "  ".join(f"{times[n][-1]:.2f}s" for n in names))
    reference = statistics.median(times[names[0]])
    print(f"\n{len(texts):,} texts, model {args.model}, median of {args.repeats}")
    print(f"{'contender':44} {'median s':>9} {'texts/s':>9} {'vs encode':>10}")
    for name in names:
        median = statistics.median(times[name])
        print(f"{name:44} {median:9.2f} {len(texts) / median:9,.0f} {reference / median:9.2f}x")


if __name__ == "__main__":
    main()
