"""Worker-process benchmark: ``beam-m2v embed`` in 1, 2 and 4 SDK worker processes, with and without the thread budget.

One invocation builds one input (the Linux-docs corpus repeated ``--scale`` times, ids 0..n-1, row
groups of 50,000 rows, as ``bench/pipeline.py`` builds it) and runs ``python -m pipelines.embed``
on it, each run a whole process timed from spawn to exit:

* one process: FnApiRunner in memory (the local default);
* FnApiRunner ``--direct_num_workers=N --direct_running_mode=multi_processing``, N = 2 and 4;
* PortableRunner (``--job_endpoint=embed``) with an EXTERNAL worker pool: Beam's local job service
  asks the pool for one worker process, whatever ``--sdk_worker_parallelism`` says;
* the same pool driven over the Fn API for N = 2 and 4 worker processes
  (``bench/pool_runner.py``, what a cluster runner does on a machine with N task slots);
* FnApiRunner multi_processing and the pool with 2 workers, with ``--number_of_worker_harness_threads``
  at 1, 4 and 12 (Beam's local runners do not read it; Dataflow does).

Every setup runs twice side by side: "today", every process sizing its pools to every core
(``BEAM_M2V_THREADS=all``), and "budget", each process working out its share. A fresh pool is
started for each pool run; its CPU (and its workers', which it reaps) is added to the
launcher's. CPU is user + system of the whole process tree. The outputs' vectors are compared
bit for bit (a per-row fingerprint, by id). Then the targets print as PASS/MISS lines.

Run from the repository root::

    python bench/workers.py                 # corpus x5 (682,890 rows), 256-dim model: ~10 min on 2 cores
    python bench/workers.py --quick         # bundled 2,000-row sample x2, bundled 64-dim model, 4 runs
    python bench/workers.py --smoke         # the same 4 runs on the sample once: checks the script runs
    python bench/workers.py --setups one1,multi2,multi4 --repeats 3   # an A/B: medians of 3 (~6 min)
    python bench/workers.py --repeats 3 --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import bench_common  # bench/ is on sys.path as a script
import numpy as np
import pipeline as pipeline_bench  # bench/pipeline.py: inputs, code snapshot, whole-process measurement
import psutil
import pyarrow.parquet as pq
from bench_common import REPO, loadavg

DEFAULT_SCALE = 5
QUICK_SCALE = 2
HARNESS_THREADS = (1, 4, 12)
WIDTH = 132

ENV_THREADS = "BEAM_M2V_THREADS"
ENV_WORKER_PROCESSES = "BEAM_M2V_WORKER_PROCESSES"

ONE = "one process (FnApiRunner, in memory)"
MULTI = "FnApiRunner multi_processing"
PORTABLE = "PortableRunner + EXTERNAL pool"
POOL = "Fn API + EXTERNAL pool"

STARTUP_ROWS = 10
STARTUP_SETUPS = ((ONE, 1), (MULTI, 2), (MULTI, 4))

# Targets (one run, 682,890 rows, a 2-core machine).
TARGET_TWO_WALL = 1.05
TARGET_TWO_CPU = 1.15


@dataclass(frozen=True)
class Setup:
    """How ``pipelines.embed`` runs: the runner, its worker processes and Beam's harness-thread option."""

    runner: str
    processes: int
    harness_threads: int | None = None

    @property
    def key(self) -> str:
        """Short name for ``--setups``: one1, multi2, multi4, portable1, pool2, pool4, multi2-h4, ..."""
        short = {ONE: "one", MULTI: "multi", PORTABLE: "portable", POOL: "pool"}[self.runner]
        return f"{short}{self.processes}" + (f"-h{self.harness_threads}" if self.harness_threads is not None else "")

    @property
    def label(self) -> str:
        harness = f", harness threads {self.harness_threads}" if self.harness_threads is not None else ""
        workers = "" if self.runner == ONE else f", {self.processes} worker process{'es' if self.processes > 1 else ''}"
        return f"{self.runner}{workers}{harness}"

    def beam_args(self, pool: str | None) -> list[str]:
        args: list[str] = []
        if self.runner == MULTI:
            args += [f"--direct_num_workers={self.processes}", "--direct_running_mode=multi_processing"]
        elif self.runner == PORTABLE:
            args += ["--runner=PortableRunner", "--job_endpoint=embed", "--environment_type=EXTERNAL"]
            args += [f"--environment_config={pool}"]
        elif self.runner == POOL:
            args += ["--runner=pool_runner.ExternalPoolRunner", f"--environment_config={pool}"]
            args += [f"--direct_num_workers={self.processes}"]
        if self.harness_threads is not None:
            args.append(f"--number_of_worker_harness_threads={self.harness_threads}")
        return args

    @property
    def uses_pool(self) -> bool:
        return self.runner in (PORTABLE, POOL)


@dataclass
class Run:
    wall_s: float
    cpu_s: float
    loadavg: str


@dataclass
class Row:
    setup: Setup
    runs: dict[str, list[Run]] = field(default_factory=lambda: {"today": [], "budget": []})

    def median(self, mode: str, key: str) -> float:
        return float(statistics.median(getattr(run, key) for run in self.runs[mode]))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    bench_common.add_input_options(parser, repeats=1)
    parser.add_argument(
        "--scale", type=int, default=None, help=f"corpus repetitions (default {DEFAULT_SCALE}; 1 with --smoke)"
    )
    parser.add_argument("--quick", action="store_true", help=f"bundled sample x{QUICK_SCALE} and model, 4 runs")
    parser.add_argument(
        "--startup",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"also time {STARTUP_ROWS} rows in 1, 2 and 4 processes, the fixed cost (default: on; off with --quick, "
        "--smoke)",
    )
    parser.add_argument(
        "--setups",
        default=None,
        help="comma-separated setups to run (one1, multi2, multi4, portable1, pool2, pool4, multi2-h1, pool2-h12, "
        "...); default: all (one1 always runs: the ratios need it)",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a new temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the numbers here")
    args = parser.parse_args(argv)
    if args.quick:  # the bundled inputs, as with --smoke
        args.corpus = args.corpus or bench_common.SMOKE_CORPUS
        args.model = args.model or bench_common.SMOKE_MODEL
    bench_common.resolve_inputs(args, parser, repeats=1)
    args.scale = args.scale or (QUICK_SCALE if args.quick else 1 if args.smoke else DEFAULT_SCALE)
    args.startup = not (args.quick or args.smoke) if args.startup is None else args.startup
    if args.scale < 1:
        parser.error("--scale must be at least 1")
    return args


def plan(quick: bool) -> tuple[list[Setup], dict[Setup, tuple[str, ...]]]:
    """The setups in table order, and which modes each runs (``quick``: three setups, four runs)."""
    both = ("today", "budget")
    if quick:
        return [Setup(ONE, 1), Setup(MULTI, 2), Setup(POOL, 2, 1)], {
            Setup(ONE, 1): both,
            Setup(MULTI, 2): ("budget",),
            Setup(POOL, 2, 1): ("budget",),
        }
    setups = [Setup(ONE, 1), Setup(MULTI, 2), Setup(MULTI, 4), Setup(PORTABLE, 1), Setup(POOL, 2), Setup(POOL, 4)]
    setups += [Setup(runner, 2, threads) for runner in (MULTI, POOL) for threads in HARNESS_THREADS]
    return setups, dict.fromkeys(setups, both)


# -- running one setup ---------------------------------------------------------------------------


@contextlib.contextmanager
def environment(mode: str) -> Iterator[None]:
    """The thread settings of a run: none (the budget decides), or every core in every process (today)."""
    saved = {name: os.environ.pop(name, None) for name in (ENV_THREADS, ENV_WORKER_PROCESSES)}
    if mode == "today":
        os.environ[ENV_THREADS] = "all"
    try:
        yield
    finally:
        os.environ.pop(ENV_THREADS, None)
        os.environ.update({name: value for name, value in saved.items() if value is not None})


def start_pool(log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A Beam Python worker pool on loopback, started like ``tests/beam_helpers.beam_worker_pool`` does."""
    if str(REPO) not in sys.path:
        sys.path.append(str(REPO))  # after the code snapshot: beam_m2v still comes from the snapshot
    from tests.beam_helpers import free_port, wait_for_port

    port = free_port()
    env = pipeline_bench.child_env()
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    command = [sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main", f"--service_port={port}"]
    with open(log, "wb") as sink:
        pool = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=pipeline_bench.CODE)
    wait_for_port(port, pool, "worker pool")
    return pool, f"localhost:{port}"


def stop_pool(pool: subprocess.Popen[bytes]) -> float:
    """Stop the pool (it stops and reaps its workers); CPU seconds of the pool and its workers."""
    pool.send_signal(signal.SIGINT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        pid, status, usage = os.wait4(pool.pid, os.WNOHANG)
        if pid:
            pool.returncode = os.waitstatus_to_exitcode(status)
            return float(usage.ru_utime + usage.ru_stime)
        time.sleep(0.05)
    pool.kill()
    _, _, usage = os.wait4(pool.pid, 0)
    return float(usage.ru_utime + usage.ru_stime)


def run_setup(setup: Setup, mode: str, source: Path, model: Path, work: Path, rows: int) -> tuple[Run, np.ndarray]:
    """One ``pipelines.embed`` run; its wall and CPU time, and the fingerprints of its vectors by id."""
    slug = "".join(char if char.isalnum() else "-" for char in f"{setup.label}-{mode}").strip("-")
    output = work / "out" / slug
    shutil.rmtree(output, ignore_errors=True)
    logs = work / "logs"
    argv = pipeline_bench.embed_argv(source, model, output)
    with environment(mode):
        pool, address, pool_cpu_before = None, None, 0.0
        if setup.uses_pool:
            pool, address = start_pool(logs / f"{slug}-pool.log")
            times = psutil.Process(pool.pid).cpu_times()
            pool_cpu_before = times.user + times.system
        try:
            measured = pipeline_bench.run_process([*argv, *setup.beam_args(address)], logs / f"{slug}.log")
        finally:
            pool_cpu = stop_pool(pool) - pool_cpu_before if pool is not None else 0.0
    run = Run(measured.wall_s, measured.cpu_s + pool_cpu, measured.loadavg)
    prints = fingerprints(output, rows)
    shutil.rmtree(output, ignore_errors=True)
    print(
        f"  {setup.label:<72} {mode:<7} {run.wall_s:>8.2f} s wall {run.cpu_s:>8.2f} s cpu"
        f"   loadavg before {run.loadavg}",
        flush=True,
    )
    return run, prints


def fingerprints(output: Path, rows: int) -> np.ndarray:
    """One 64-bit fingerprint of each row's vector bytes, indexed by id; equal arrays mean equal vectors."""
    result = np.zeros(rows, dtype=np.uint64)
    seen = np.zeros(rows, dtype=bool)
    weights: np.ndarray | None = None
    for path in pipeline_bench.parquet_files(output):
        for batch in pq.ParquetFile(path).iter_batches(columns=["id", "embedding"], batch_size=32_768):
            ids = batch.column(0).to_numpy()
            embedding = batch.column(1)
            dim = embedding.type.list_size
            values = embedding.flatten().to_numpy().view(np.uint32).reshape(len(ids), dim).astype(np.uint64)
            if weights is None:
                weights = np.random.default_rng(17).integers(1, 2**63, size=dim, dtype=np.uint64) | np.uint64(1)
            result[ids] = (values * weights).sum(axis=1, dtype=np.uint64)
            seen[ids] = True
    if not seen.all():
        raise RuntimeError(f"{output}: {int((~seen).sum()):,} of {rows:,} rows missing")
    return result


# -- the run -------------------------------------------------------------------------------------


def run_all(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    code = pipeline_bench.snapshot_code(work)
    shutil.copy2(Path(__file__).with_name("pool_runner.py"), pipeline_bench.CODE / "pool_runner.py")
    (work / "logs").mkdir(parents=True, exist_ok=True)
    corpus = pq.read_table(args.corpus.resolve(), columns=["id", "text"])
    rows = len(corpus) * args.scale
    source = pipeline_bench.Inputs(corpus, work / "inputs").parquet(rows)
    model = args.model.resolve()

    bench_common.section(
        f"pipelines.embed, {rows:,} rows ({args.corpus.name} x{args.scale}), model {model.name}; "
        f"{os.cpu_count()} CPUs; code {code['commit']}{' + changes' if code['uncommitted_changes'] else ''}",
        WIDTH,
    )
    print(f"  {pipeline_bench.machine()}")
    setups, modes = plan(args.quick or args.smoke)
    if args.setups:
        wanted = {"one1", *(key.strip() for key in args.setups.split(","))}
        unknown = wanted - {setup.key for setup in setups}
        if unknown:
            raise SystemExit(f"bench/workers.py: unknown setups {sorted(unknown)}; known: {[s.key for s in setups]}")
        setups = [setup for setup in setups if setup.key in wanted]
    table = {setup: Row(setup) for setup in setups}
    reference: np.ndarray | None = None
    mismatches: list[str] = []
    for repeat in range(args.repeats):
        print(f"  repeat {repeat + 1}/{args.repeats}")
        for setup in setups:
            order = modes[setup] if repeat % 2 == 0 else tuple(reversed(modes[setup]))
            for mode in order:
                run, prints = run_setup(setup, mode, source, model, work, rows)
                table[setup].runs[mode].append(run)
                if reference is None:
                    reference = prints
                elif not np.array_equal(prints, reference):
                    mismatches.append(f"{setup.label}, {mode}")
    startup = measure_startup(source, model, work, set(table)) if args.startup else {}
    print_table(table, rows)
    checks = print_targets(table, args.quick or args.smoke, startup)
    print()
    print(f"vectors: {'all runs bit-identical' if not mismatches else 'DIFFER in ' + '; '.join(mismatches)}")
    return {
        "rows": rows,
        "corpus": str(args.corpus),
        "scale": args.scale,
        "model": str(model),
        "cpus": os.cpu_count(),
        "machine": pipeline_bench.machine(),
        "code": code,
        "loadavg_end": loadavg(),
        "vectors_identical": not mismatches,
        "targets": checks,
        "startup": {setup.label: asdict(run) for setup, run in startup.items()},
        "setups": [
            {
                "setup": asdict(row.setup),
                "label": row.setup.label,
                **{m: [asdict(r) for r in rs] for m, rs in row.runs.items()},
            }
            for row in table.values()
        ],
    }


def measure_startup(source: Path, model: Path, work: Path, chosen: set[Setup]) -> dict[Setup, Run]:
    """The chosen ones of STARTUP_SETUPS on a few rows (with the budget): the fixed cost of starting each."""
    bench_common.section(f"Fixed cost: the first {STARTUP_ROWS} rows, with the budget", WIDTH)
    small = work / "inputs" / f"rows-{STARTUP_ROWS}.parquet"
    pq.write_table(pq.read_table(source).slice(0, STARTUP_ROWS), small)
    return {
        Setup(runner, processes): run_setup(Setup(runner, processes), "budget", small, model, work, STARTUP_ROWS)[0]
        for runner, processes in STARTUP_SETUPS
        if Setup(runner, processes) in chosen
    }


def cells(row: Row, mode: str, rows: int) -> str:
    if not row.runs[mode]:
        return f"{'-':>8} {'-':>8} {'-':>9}"
    wall, cpu = row.median(mode, "wall_s"), row.median(mode, "cpu_s")
    return f"{wall:>8.2f} {cpu:>8.2f} {rows / cpu:>9,.0f}"


def print_table(table: dict[Setup, Row], rows: int) -> None:
    one = table[Setup(ONE, 1)]
    base_wall, base_cpu = one.median("budget", "wall_s"), one.median("budget", "cpu_s")
    bench_common.section("Medians: wall and CPU seconds (process tree, user+system), rows per CPU-second", WIDTH)
    print(f"{'':<72} {'today (every process, every core)':^27} | {'budget':^27} | {'budget / one process':^20}")
    heads = f"{'wall s':>8} {'cpu s':>8} {'rows/cpu-s':>9}"
    print(f"{'setup':<72} {heads} | {heads} | {'wall':>9} {'cpu':>9}")
    print(bench_common.line(width=WIDTH))
    for row in table.values():
        ratio = ""
        if row.runs["budget"]:
            ratio = (
                f"{row.median('budget', 'wall_s') / base_wall:>8.2f}x {row.median('budget', 'cpu_s') / base_cpu:>8.2f}x"
            )
        print(f"{row.setup.label:<72} {cells(row, 'today', rows)} | {cells(row, 'budget', rows)} | {ratio}")


def print_targets(table: dict[Setup, Row], quick: bool, startup: dict[Setup, Run]) -> dict[str, bool]:
    bench_common.section(
        "Targets" + (" (a --quick or --smoke run: small input, not the 682,890-row targets)" if quick else ""), WIDTH
    )
    one = table[Setup(ONE, 1)]
    checks: dict[str, bool] = {}

    def check(name: str, value: float, limit: float) -> None:
        checks[name] = value <= limit
        print(f"  {'PASS' if value <= limit else 'MISS'}  {name}: {value:.3f} (limit {limit:.3f})")

    if one.runs["today"]:
        # The same pools either way in one process: a difference here is the machine's noise.
        check(
            "one process, budget: wall / today's", one.median("budget", "wall_s") / one.median("today", "wall_s"), 1.0
        )
    for runner in (MULTI, POOL):
        two = table.get(Setup(runner, 2))
        if two is None:
            continue
        check(
            f"{runner}, 2 processes: wall / one process",
            two.median("budget", "wall_s") / one.median("budget", "wall_s"),
            TARGET_TWO_WALL,
        )
        check(
            f"{runner}, 2 processes: cpu / one process",
            two.median("budget", "cpu_s") / one.median("budget", "cpu_s"),
            TARGET_TWO_CPU,
        )
        four = table.get(Setup(runner, 4))
        if four is not None:
            check(
                f"{runner}, 4 processes: wall / 2 processes",
                four.median("budget", "wall_s") / two.median("budget", "wall_s"),
                1.0,
            )
            check(
                f"{runner}, 4 processes: cpu / 2 processes",
                four.median("budget", "cpu_s") / two.median("budget", "cpu_s"),
                1.0,
            )
    if startup:
        print("  beyond the fixed cost (each setup's run on a few rows subtracted), for reference:")
        for runner, processes in STARTUP_SETUPS[1:]:
            row = table.get(Setup(runner, processes))
            if row is not None and row.runs["budget"]:
                ratios = [
                    (row.median("budget", key) - getattr(startup[Setup(runner, processes)], key))
                    / (one.median("budget", key) - getattr(startup[Setup(ONE, 1)], key))
                    for key in ("wall_s", "cpu_s")
                ]
                print(
                    f"        {runner}, {processes} processes / one process: wall {ratios[0]:.3f}, cpu {ratios[1]:.3f}"
                )
    return checks


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-workers-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        result = run_all(args, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"total {time.perf_counter() - started:.0f} s; loadavg at the end {loadavg()}")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2), encoding="utf-8")
    return 0 if result["vectors_identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
