"""Sizing figures for a cluster: rows per CPU-second of a whole ``beam-m2v embed`` process.

Builds the same input as ``bench/pipeline.py`` (the corpus repeated ``--scale`` times, fresh ids,
zstd Parquet in row groups of 50,000 rows), runs ``python -m pipelines.embed`` on it ``--repeats``
times and on 10 rows (the fixed start-up: interpreter, imports, model load, pipeline graph), each
as its own process, and prints wall time, CPU seconds (user + system of the process tree) and

* rows per CPU-second of the whole run, start-up included;
* rows per CPU-second of the work alone (CPU of the run minus CPU of the 10-row run), the figure
  that scales with more machines: a cluster pays the start-up once per worker, not per row.

CPU seconds, unlike wall time, barely depend on what else runs on the machine, which is why a
cluster is sized from them. Run from the repository root::

    python bench/sizing.py                      # corpus x5 = 682,890 rows, 3 repeats: ~2 min on 2 cores
    python bench/sizing.py --scale 1 --repeats 1
    python bench/sizing.py --smoke              # bundled model and sample, once: checks the script runs
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
from pathlib import Path

import bench_common  # bench/ is on sys.path as a script
import pipeline as pipeline_bench
import pyarrow.parquet as pq
from bench_common import MIB, loadavg


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    bench_common.add_input_options(parser, repeats=3)
    parser.add_argument(
        "--scale",
        type=int,
        default=None,
        help=f"corpus repetitions (default {pipeline_bench.DEFAULT_SCALE}; 1 with --smoke)",
    )
    args = parser.parse_args(argv)
    bench_common.resolve_inputs(args, parser, repeats=3)
    args.scale = args.scale or (1 if args.smoke else pipeline_bench.DEFAULT_SCALE)
    work = Path(tempfile.mkdtemp(prefix="beam-m2v-sizing-"))
    try:
        code = pipeline_bench.snapshot_code(work)
        corpus = pq.read_table(args.corpus, columns=["id", "text"])
        rows = len(corpus) * args.scale
        inputs = pipeline_bench.Inputs(corpus, work / "inputs")
        main_input, startup_input = inputs.parquet(rows), inputs.parquet(pipeline_bench.STARTUP_ROWS)
        logs = work / "logs"
        logs.mkdir()
        dirty = " + uncommitted changes" if code["uncommitted_changes"] else ""
        print(
            f"code {code['commit']}{dirty}; corpus {args.corpus.name} x{args.scale} = {rows:,} rows; model {args.model}"
        )
        print(f"machine {pipeline_bench.machine()}; loadavg at start {loadavg()}")
        runs: dict[str, list[pipeline_bench.Measured]] = {"main": [], "startup": []}
        for repeat in range(args.repeats):
            for name, source, count in (
                ("startup", startup_input, pipeline_bench.STARTUP_ROWS),
                ("main", main_input, rows),
            ):
                out = work / "out" / name
                shutil.rmtree(out, ignore_errors=True)
                run = pipeline_bench.run_process(
                    pipeline_bench.embed_argv(source, args.model.resolve(), out), logs / f"{name}-{repeat}.log"
                )
                runs[name].append(run)
                print(
                    f"  {name:<8} {count:>9,} rows {run.wall_s:7.2f} s wall {run.cpu_s:7.2f} CPU-s "
                    f"{run.peak_rss / MIB:6.0f} MiB peak  loadavg before {run.loadavg}",
                    flush=True,
                )
        wall = statistics.median(run.wall_s for run in runs["main"])
        cpu = statistics.median(run.cpu_s for run in runs["main"])
        startup_cpu = statistics.median(run.cpu_s for run in runs["startup"])
        startup_wall = statistics.median(run.wall_s for run in runs["startup"])
        bench_common.section("Sizing (medians)")
        print(f"rows                          {rows:>12,}")
        print(f"wall                          {wall:>12.1f} s   ({rows / wall:,.0f} rows/s on this machine)")
        print(f"CPU (user + system)           {cpu:>12.1f} s   ({cpu / wall:.2f} cores busy on average)")
        print(f"start-up (10-row run)         {startup_cpu:>12.1f} CPU-s, {startup_wall:.1f} s wall")
        print(f"rows per CPU-second, whole run{rows / cpu:>12,.0f}")
        if cpu > startup_cpu:
            print(f"rows per CPU-second, work only{rows / (cpu - startup_cpu):>12,.0f}")
        else:
            print("rows per CPU-second, work only  - (the run took no more CPU than the 10-row start-up)")
        print(f"loadavg at end {loadavg()}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
