"""Pipeline benchmark: ``pipelines.embed`` / ``pipelines.reembed`` as whole processes, beside the alternatives.

One invocation builds its inputs from the shared corpus (repeated ``--scale`` times, fresh dense
ids 0..n-1, row groups of 50,000 rows like the corpus itself) and runs, each as its own process
timed from start-up to exit, with the peak resident memory of its process tree:

* ``python -m pipelines.embed`` on the Parquet input, and on the same rows as JSON Lines;
* the plain script a user would write without Beam (pyarrow + model2vec ``StaticModel.encode``
  + zstd Parquet): the reference;
* the Beam pipelines a user would write by hand with model2vec (``ReadFromParquet`` rows, the
  model loaded in ``DoFn.setup``, ``WriteToParquet``), per element and with ``BatchElements``,
  on fewer rows (``--baseline-rows``), beside ``pipelines.embed`` on the same rows;
* ``python -m pipelines.reembed`` after 1% of the texts changed, beside a full ``embed`` of the
  same current corpus;
* ``pipelines.embed`` on 100,000 and on 1,000,000 rows (``--scaling``);

and, in this process, ``beam_m2v.load_model(model).encode(texts)`` on the same texts. It checks
that the vectors agree, prints one table and the targets as PASS/MISS lines, then profiles where
``pipelines.embed``'s time goes: cProfile of one whole run (the FnApiRunner runs the pipeline in
the launcher's main thread) and a serial stage-by-stage replay of the pipeline on the same data.

Every contender runs ``--repeats`` times (order rotated per repeat; the table gives medians), and
every process runs a copy of beam_m2v/ and pipelines/ taken at start, so that edits to the working
tree during the run cannot mix code versions.

Run from the repository root::

    python bench/pipeline.py                 # corpus x5 (682,890 rows), 3 repeats, scaling: ~30-45 min on 2 cores
    python bench/pipeline.py --repeats 1     # the same, once each: ~15 min
    python bench/pipeline.py --quick         # corpus once, 1 repeat, baselines on 20,000 rows, no scaling: ~6 min
    python bench/pipeline.py --scale 2 --no-scaling --no-profile --json out.json
    python bench/pipeline.py --smoke         # bundled model and sample once, 1 repeat, no scaling: checks it runs
"""

from __future__ import annotations

import argparse
import compileall
import gc
import json
import math
import os
import platform
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import bench_common  # bench/ is on sys.path as a script
import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
from bench_common import MIB, REPO, loadavg

os.environ.setdefault("HF_HUB_OFFLINE", "1")

#: The copy of beam_m2v/ and pipelines/ every contender runs (set by ``snapshot_code``).
CODE: Path = REPO

DEFAULT_SCALE = 5
QUICK_BASELINE_ROWS = 20_000
ROW_GROUP_ROWS = 50_000  # the shared corpus's own row groups; pipelines.embed reads one table per row group
SCALING_ROWS = (100_000, 1_000_000)
CHANGE_EVERY = 100  # reembed: every 100th text edited = 1% of the rows
EDIT_SUFFIX = " (edited)"
POLL_S = 0.05
WIDTH = 124

# Targets from the issue.
TARGET_VS_PLAIN = 1.0
TARGET_VS_BATCHED = 2.5
TARGET_VS_PER_ELEMENT = 5.0
TARGET_JSONL_VS_PARQUET = 0.8
TARGET_SCALING_WALL = 11.0
TARGET_SCALING_RSS = 1.2
# Allowed output overhead over the embedding column alone: the id (int64, 8 B raw) and the
# text_hash (16 random bytes, incompressible) that every snapshot row stores.
ID_HASH_ALLOWANCE = 8 + 16

EMBED_PARQUET = "embed, Parquet"
EMBED_JSONL = "embed, JSONL (same rows)"
PLAIN = "plain model2vec script (reference)"
ENCODE = "load_model().encode, in-process"
ENCODE_BASELINE_ROWS = "load_model().encode (baseline rows)"
EMBED_BASELINE_ROWS = "embed, Parquet (baseline rows)"
STARTUP = "embed, 10 rows (fixed start-up cost)"
STARTUP_ROWS = 10
BATCHED = "Beam + model2vec, BatchElements"
PER_ELEMENT = "Beam + model2vec, per element"
REEMBED = "reembed, 1% of texts changed"
EMBED_CURRENT = "embed, same current corpus (full)"
RAW_F32 = "raw float32 vectors (dim*4)"
ZSTD_VECTORS = "zstd Parquet, embedding column alone"


def scaling_name(rows: int) -> str:
    return f"embed, {rows:,} rows (scaling)"


# -- the programs a user would write ------------------------------------------------------------

PLAIN_SCRIPT = '''\
"""Embed a Parquet corpus with model2vec, no Beam: read, encode, write."""
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from model2vec import StaticModel

source, model_path, output = sys.argv[1:]
table = pq.read_table(source, columns=["id", "text"])
vectors = StaticModel.from_pretrained(model_path).encode(table.column("text").to_pylist())
vectors = np.ascontiguousarray(vectors, dtype=np.float32)
embedding = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1])
pq.write_table(pa.table({"id": table.column("id"), "embedding": embedding}), output, compression="zstd")
'''

BASELINE_SCRIPT = '''\
"""Embed a Parquet corpus in Beam by hand: model2vec's StaticModel loaded in DoFn.setup."""
import sys

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.parquetio import ReadFromParquet, WriteToParquet
from apache_beam.options.pipeline_options import PipelineOptions
from model2vec import StaticModel


class EmbedEach(beam.DoFn):
    def __init__(self, model_path):
        self.model_path = model_path

    def setup(self):
        self.model = StaticModel.from_pretrained(self.model_path)

    def process(self, row):
        yield {"id": row["id"], "embedding": self.model.encode([row["text"]])[0]}


class EmbedBatches(EmbedEach):
    def process(self, rows):
        vectors = self.model.encode([row["text"] for row in rows])
        for row, vector in zip(rows, vectors):
            yield {"id": row["id"], "embedding": vector}


def main(mode, source, model_path, dim, output):
    schema = pa.schema([("id", pa.int64()), ("embedding", pa.list_(pa.float32(), int(dim)))])
    with beam.Pipeline(options=PipelineOptions(["--runner=FnApiRunner"])) as pipeline:
        rows = pipeline | ReadFromParquet(source, columns=["id", "text"])
        if mode == "element":
            embedded = rows | beam.ParDo(EmbedEach(model_path))
        else:
            embedded = rows | beam.BatchElements() | beam.ParDo(EmbedBatches(model_path))
        _ = embedded | WriteToParquet(
            output, schema, codec="zstd", use_compliant_nested_type=True, file_name_suffix=".parquet"
        )


if __name__ == "__main__":
    main(*sys.argv[1:])
'''


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    bench_common.add_input_options(parser, repeats=3)
    parser.add_argument("--scale", type=int, default=None, help=f"corpus repetitions (default {DEFAULT_SCALE})")
    parser.add_argument("--baseline-rows", type=int, default=None, help="rows for the hand-written Beam baselines")
    parser.add_argument(
        "--scaling", action=argparse.BooleanOptionalAction, default=None, help="100k vs 1M rows (default: on)"
    )
    parser.add_argument("--profile", action=argparse.BooleanOptionalAction, default=True, help="profile embed")
    parser.add_argument("--quick", action="store_true", help="corpus once, 1 repeat, no scaling, baselines 20k")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a new temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the numbers here")
    args = parser.parse_args(argv)
    bench_common.resolve_inputs(args, parser, repeats=1 if args.quick else 3)
    if args.scale is None:
        args.scale = 1 if args.quick or args.smoke else DEFAULT_SCALE
    if args.scaling is None:
        args.scaling = not (args.quick or args.smoke)
    if args.scale < 1 or args.repeats < 1:
        parser.error("--scale and --repeats must be at least 1")
    return args


# -- small helpers -------------------------------------------------------------------------------


def line(char: str = "-") -> str:
    return bench_common.line(char, WIDTH)


def section(title: str) -> None:
    bench_common.section(title, WIDTH)


def machine() -> str:
    """CPU model, logical CPUs, memory and kernel of this machine, in one line."""
    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            model = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), model)
    except OSError:
        pass
    memory = psutil.virtual_memory().total / 1024**3
    return f"{model}, {os.cpu_count()} logical CPUs, {memory:.0f} GiB RAM, {platform.system()} {platform.release()}"


def parquet_files(path: Path) -> list[Path]:
    """The Parquet files of an output: the file itself, or those directly in the folder (not _failed/, _changes/)."""
    return [path] if path.is_file() else sorted(path.glob("*.parquet"))


def dir_parquet_bytes(path: Path) -> int:
    """Bytes of the Parquet files of an output."""
    return sum(item.stat().st_size for item in parquet_files(path))


def read_vectors(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(ids, vectors) of an output, sorted by id."""
    table = pa.concat_tables(pq.read_table(item, columns=["id", "embedding"]) for item in parquet_files(path))
    ids = table.column("id").to_numpy()
    embedding = table.column("embedding").combine_chunks()
    vectors = embedding.values.to_numpy().reshape(len(table), embedding.type.list_size)
    order = np.argsort(ids, kind="stable")
    return ids[order], vectors[order]


# -- inputs --------------------------------------------------------------------------------------


class Inputs:
    """Input files built from the corpus: the first n rows of the corpus repeated, ids 0..n-1."""

    def __init__(self, corpus: pa.Table, folder: Path) -> None:
        self.corpus = corpus
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self._files: dict[str, Path] = {}

    def table(self, rows: int) -> pa.Table:
        copies = math.ceil(rows / len(self.corpus))
        table = pa.concat_tables([self.corpus] * copies).slice(0, rows)
        return pa.table({"id": pa.array(np.arange(rows, dtype=np.int64)), "text": table.column("text")})

    def parquet(self, rows: int) -> Path:
        name = f"rows-{rows}.parquet"
        if name not in self._files:
            path = self.folder / name
            pq.write_table(self.table(rows), path, row_group_size=ROW_GROUP_ROWS, compression="zstd")
            self._files[name] = path
        return self._files[name]

    def jsonl(self, rows: int) -> Path:
        """The same rows as ``parquet(rows)``, one ``{"id", "text"}`` object per line like the shared JSONL."""
        path = self.folder / f"rows-{rows}.jsonl"
        table = self.table(rows)
        with open(path, "w", encoding="utf-8") as handle:
            for row_id, text in zip(table.column("id").to_pylist(), table.column("text").to_pylist(), strict=True):
                handle.write(json.dumps({"id": row_id, "text": text}, ensure_ascii=False))
                handle.write("\n")
        return path

    def edited(self, rows: int) -> tuple[Path, int]:
        """``parquet(rows)`` with every CHANGE_EVERY-th text edited; returns the file and the edit count."""
        table = self.table(rows)
        texts = table.column("text").to_pylist()
        for row in range(0, rows, CHANGE_EVERY):
            texts[row] += EDIT_SUFFIX
        path = self.folder / f"rows-{rows}-edited.parquet"
        edited = pa.table({"id": table.column("id"), "text": pa.array(texts, pa.string())})
        pq.write_table(edited, path, row_group_size=ROW_GROUP_ROWS, compression="zstd")
        return path, len(range(0, rows, CHANGE_EVERY))


# -- measuring a whole process -------------------------------------------------------------------


@dataclass
class Measured:
    wall_s: float
    cpu_s: float
    peak_rss: int
    """max(sum of RSS over the process tree polled every 50 ms, largest VmHWM of one of its processes)"""
    polled_tree_rss: int
    max_process_hwm: int
    loadavg: str


@dataclass
class Contender:
    name: str
    rows: int
    argv: list[str] | None = None
    output: Path | None = None
    runs: list[Measured] = field(default_factory=list)
    output_bytes: int | None = None

    def median(self, key: str) -> float:
        return float(statistics.median(getattr(run, key) for run in self.runs))

    @property
    def texts_per_s(self) -> float:
        return self.rows / self.median("wall_s")


def snapshot_code(work: Path) -> dict[str, Any]:
    """Copy beam_m2v/ and pipelines/ into the scratch folder and import them from there.

    Every process of the run (and this one) then runs the same code, even when the working tree
    changes while the benchmark runs. The copy is compiled to bytecode, as ``pip install`` does
    for an installed package (and for model2vec and Beam here): with PYTHONDONTWRITEBYTECODE set,
    as on these machines, every process would otherwise compile beam_m2v and pipelines afresh.
    """
    global CODE
    CODE = work / "code"
    for package in ("beam_m2v", "pipelines"):
        shutil.copytree(REPO / package, CODE / package, ignore=shutil.ignore_patterns("__pycache__"))
        compileall.compile_dir(CODE / package, quiet=1)
    sys.path.insert(0, str(CODE))

    def git(*argv: str) -> str:
        try:
            return subprocess.run(["git", *argv], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "uncommitted_changes": bool(git("status", "--porcelain", "--", "beam_m2v", "pipelines")),
        "path": str(CODE),
    }


def child_env() -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(CODE), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, PYTHONPATH=path, HF_HUB_OFFLINE="1")


def vm_hwm(pid: int) -> int:
    """Peak RSS of one process since its exec (``VmHWM``), in bytes; 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as handle:
            for text in handle:
                if text.startswith("VmHWM:"):
                    return int(text.split()[1]) * 1024
    except OSError:
        pass
    return 0


def sample_tree(root: psutil.Process, hwm: dict[int, int]) -> int:
    """Sum of RSS over the process tree now; records each process's VmHWM in ``hwm``."""
    try:
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for process in processes:
        try:
            total += process.memory_info().rss
        except psutil.Error:
            continue
        hwm[process.pid] = max(hwm.get(process.pid, 0), vm_hwm(process.pid))
    return total


def run_process(argv: list[str], log: Path) -> Measured:
    """Run ``argv`` to completion: wall time from spawn to exit, CPU and peak RSS of its process tree.

    Not ``ru_maxrss``: Linux carries the parent's RSS at fork over into the child's ``maxrss``
    (a child of a 800 MB parent reports 800 MB), while ``VmHWM`` starts afresh at exec.
    """
    load = loadavg()
    done: dict[str, Any] = {}
    with open(log, "wb") as out:
        start = time.perf_counter()
        child = subprocess.Popen(argv, cwd=CODE, env=child_env(), stdout=out, stderr=subprocess.STDOUT)

        def reap() -> None:
            _, status, usage = os.wait4(child.pid, 0)
            done.update(end=time.perf_counter(), status=status, usage=usage)

        waiter = threading.Thread(target=reap, daemon=True)
        waiter.start()
        polled, hwm = 0, {}
        try:
            root = psutil.Process(child.pid)
        except psutil.Error:
            root = None
        while waiter.is_alive():
            if root is not None:
                polled = max(polled, sample_tree(root, hwm))
            waiter.join(POLL_S)
    child.returncode = os.waitstatus_to_exitcode(done["status"])
    if child.returncode != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-25:]
        raise RuntimeError(f"{' '.join(argv)} exited with {child.returncode}:\n" + "\n".join(tail))
    usage = done["usage"]
    largest_hwm = max(hwm.values(), default=0)
    return Measured(
        wall_s=done["end"] - start,
        cpu_s=usage.ru_utime + usage.ru_stime,
        peak_rss=max(polled, largest_hwm),
        polled_tree_rss=polled,
        max_process_hwm=largest_hwm,
        loadavg=load,
    )


def measure(contender: Contender, logs: Path) -> None:
    assert contender.argv is not None
    if contender.output is not None:
        # Remove the previous run's output outside the timed region.
        shutil.rmtree(contender.output, ignore_errors=True)
        if contender.output.is_file():
            contender.output.unlink()
    slug = "".join(char if char.isalnum() else "-" for char in contender.name).strip("-")
    run = run_process(contender.argv, logs / f"{slug}-{len(contender.runs) + 1}.log")
    contender.runs.append(run)
    if contender.output is not None:
        contender.output_bytes = dir_parquet_bytes(contender.output)
    print(
        f"  {contender.name:<38} {contender.rows:>10,} rows {run.wall_s:>8.2f} s wall {run.cpu_s:>8.2f} s cpu "
        f"{run.peak_rss / MIB:>7.0f} MiB peak   loadavg before {run.loadavg}",
        flush=True,
    )


def run_group(
    contenders: list[Contender], repeats: int, logs: Path, in_process: Callable[[], None] | None = None
) -> None:
    """Every repeat runs every contender once, in an order rotated per repeat, so drift hits all alike.

    A contender without ``argv`` is the in-process one: ``in_process`` measures it.
    """
    for repeat in range(repeats):
        shift = repeat % len(contenders)
        print(f"  repeat {repeat + 1}/{repeats}")
        for contender in contenders[shift:] + contenders[:shift]:
            if contender.argv is None:
                assert in_process is not None
                in_process()
            else:
                measure(contender, logs)


def measure_encode(contender: Contender, model: Path, texts: list[str]) -> None:
    """``load_model(model).encode(texts)`` in this process: wall and process CPU time of the encode call alone.

    The model is loaded afresh for every measurement (load not timed), so the encode starts with an
    empty piece cache, as a pipeline worker does; the matrix pages and the thread pool are warm.
    """
    import beam_m2v

    embedder = beam_m2v.load_model(model)
    load = loadavg()
    gc.collect()
    cpu, start = time.process_time(), time.perf_counter()
    vectors = embedder.encode(texts)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    del vectors, embedder
    contender.runs.append(Measured(wall, cpu, 0, 0, 0, load))
    print(
        f"  {contender.name:<38} {contender.rows:>10,} rows {wall:>8.2f} s wall {cpu:>8.2f} s cpu "
        f"{'':>7}          loadavg before {load}",
        flush=True,
    )


# -- the run -------------------------------------------------------------------------------------


def embed_argv(source: Path, model: Path, output: Path) -> list[str]:
    module = [sys.executable, "-m", "pipelines.embed"]
    return [*module, "--input", str(source), "--model", str(model), "--output", str(output)]


def run_all(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    model = args.model.resolve()
    corpus = pq.read_table(args.corpus.resolve(), columns=["id", "text"])
    n_main = len(corpus) * args.scale
    n_baseline = args.baseline_rows or (QUICK_BASELINE_ROWS if args.quick else len(corpus))
    n_baseline = min(n_baseline, n_main)
    import beam_m2v

    embedder = beam_m2v.load_model(model)
    dim = embedder.dim

    section("Inputs")
    started = time.perf_counter()
    inputs = Inputs(corpus, work / "inputs")
    main_parquet = inputs.parquet(n_main)
    main_jsonl = inputs.jsonl(n_main)
    baseline_parquet = inputs.parquet(n_baseline)
    edited_parquet, n_edited = inputs.edited(n_main)
    scaling_inputs = {rows: inputs.parquet(rows) for rows in SCALING_ROWS} if args.scaling else {}
    for path in sorted(inputs.folder.iterdir()):
        print(f"  {path.name:<32} {path.stat().st_size / MIB:>9.1f} MiB")
    print(f"  built in {time.perf_counter() - started:.1f} s; row groups of {ROW_GROUP_ROWS:,} rows, zstd")

    outputs, logs, scripts = work / "out", work / "logs", work / "scripts"
    for folder in (outputs, logs, scripts):
        folder.mkdir(parents=True, exist_ok=True)
    plain_script = scripts / "plain_model2vec.py"
    plain_script.write_text(PLAIN_SCRIPT, encoding="utf-8")
    baseline_script = scripts / "beam_by_hand.py"
    baseline_script.write_text(BASELINE_SCRIPT, encoding="utf-8")
    py = sys.executable

    embed_parquet = Contender(EMBED_PARQUET, n_main, embed_argv(main_parquet, model, outputs / "embed-parquet"))
    embed_parquet.output = outputs / "embed-parquet"
    embed_jsonl = Contender(EMBED_JSONL, n_main, embed_argv(main_jsonl, model, outputs / "embed-jsonl"))
    embed_jsonl.output = outputs / "embed-jsonl"
    plain_out = outputs / "plain.parquet"
    plain = Contender(PLAIN, n_main, [py, str(plain_script), str(main_parquet), str(model), str(plain_out)])
    plain.output = plain_out
    encode = Contender(ENCODE, n_main)
    embed_small = Contender(
        EMBED_BASELINE_ROWS, n_baseline, embed_argv(baseline_parquet, model, outputs / "embed-baseline-rows")
    )
    embed_small.output = outputs / "embed-baseline-rows"
    encode_small = Contender(ENCODE_BASELINE_ROWS, n_baseline)
    startup = Contender(STARTUP, STARTUP_ROWS, embed_argv(inputs.parquet(STARTUP_ROWS), model, outputs / "startup"))
    startup.output = outputs / "startup"
    batched = Contender(
        BATCHED,
        n_baseline,
        [py, str(baseline_script), "batch", str(baseline_parquet), str(model), str(dim), str(outputs / "batch/part")],
        outputs / "batch",
    )
    per_element = Contender(
        PER_ELEMENT,
        n_baseline,
        [py, str(baseline_script), "element", str(baseline_parquet), str(model), str(dim), str(outputs / "each/part")],
        outputs / "each",
    )
    reembed = Contender(
        REEMBED,
        n_main,
        [
            *[py, "-m", "pipelines.reembed", "--input", str(edited_parquet), "--previous"],
            *[str(embed_parquet.output), "--model", str(model), "--output", str(outputs / "reembed")],
        ],
        outputs / "reembed",
    )
    embed_current = Contender(EMBED_CURRENT, n_main, embed_argv(edited_parquet, model, outputs / "embed-current"))
    embed_current.output = outputs / "embed-current"
    scaling = {
        rows: Contender(scaling_name(rows), rows, embed_argv(path, model, outputs / f"scale-{rows}"))
        for rows, path in scaling_inputs.items()
    }
    for rows, contender in scaling.items():
        contender.output = outputs / f"scale-{rows}"

    texts = pq.read_table(main_parquet, columns=["text"]).column("text").to_pylist()
    embedder.encode(texts[:10_000])  # warm-up: page in the matrix, start the thread pool
    section(f"Main contenders: {n_main:,} rows (wall = spawn to exit, incl. interpreter start-up and model load)")
    core = [embed_parquet, embed_jsonl, plain, encode]
    run_group(core, args.repeats, logs, lambda: measure_encode(encode, model, texts))
    texts.clear()
    gc.collect()

    section(f"Hand-written Beam baselines, {n_baseline:,} rows each, beside pipelines.embed on the same rows")
    baseline_texts = pq.read_table(baseline_parquet, columns=["text"]).column("text").to_pylist()
    if args.smoke:
        # A smoke run checks that every code path runs: embed on the baseline rows and on 10 rows is the
        # main embed's path again, so those rows show the main embed's run instead of starting two more.
        print("  --smoke: the baseline-rows and 10-row embed rows show the main embed's run (the same code path)")
        embed_small.runs, embed_small.output = list(embed_parquet.runs), embed_parquet.output
        startup.runs = list(embed_parquet.runs)
    run_group(
        [batched, per_element, encode_small]
        if args.smoke
        else [embed_small, batched, per_element, encode_small, startup],
        args.repeats,
        logs,
        lambda: measure_encode(encode_small, model, baseline_texts),
    )
    baseline_texts.clear()
    for contender in (batched, per_element):
        shutil.rmtree(contender.output, ignore_errors=True)  # type: ignore[arg-type]

    section(f"Re-embedding: {n_edited:,} of {n_main:,} texts edited ({100 * n_edited / n_main:.1f}%), vs a full embed")
    run_group([reembed, embed_current], args.repeats, logs)
    manifest = json.loads((outputs / "reembed" / "_manifest.json").read_text(encoding="utf-8"))
    counts = manifest["rows"]
    print(
        f"  reembed manifest: {counts['changed']:,} changed, {counts['unchanged']:,} unchanged, "
        f"{counts['new']:,} new, {counts['deleted']:,} deleted, {counts['upserts']:,} upserts"
    )

    if scaling:
        section("Scaling: pipelines.embed on 100,000 and 1,000,000 rows")
        run_group(list(scaling.values()), args.repeats, logs)
        for contender in scaling.values():
            shutil.rmtree(contender.output, ignore_errors=True)  # type: ignore[arg-type]

    section("Output size: the embedding column alone, written with zstd (pyarrow defaults otherwise)")
    embedding_only = pa.concat_tables(
        pq.read_table(path, columns=["embedding"])
        for path in parquet_files(embed_parquet.output)  # type: ignore[arg-type]
    )
    zstd_path = outputs / "embedding-only.parquet"
    pq.write_table(embedding_only, zstd_path, compression="zstd", row_group_size=ROW_GROUP_ROWS)
    zstd_per_row = zstd_path.stat().st_size / len(embedding_only)
    del embedding_only
    print(f"  {zstd_per_row:.1f} B/row (raw float32: {dim * 4} B/row)")

    section("Vectors (sorted by id, np.array_equal)")
    checks = {
        "embed (Parquet) == plain model2vec script": (embed_parquet.output, plain.output),
        "embed (JSONL) == embed (Parquet)": (embed_jsonl.output, embed_parquet.output),
        "reembed snapshot == full embed of the current corpus": (reembed.output, embed_current.output),
    }
    equal: dict[str, bool] = {}
    for label, (left, right) in checks.items():
        left_ids, left_vectors = read_vectors(left)  # type: ignore[arg-type]
        right_ids, right_vectors = read_vectors(right)  # type: ignore[arg-type]
        equal[label] = bool(np.array_equal(left_ids, right_ids) and np.array_equal(left_vectors, right_vectors))
        print(f"  {label:<56} {'EQUAL' if equal[label] else 'DIFFERENT'} ({len(left_ids):,} rows)")
        del left_ids, left_vectors, right_ids, right_vectors
        gc.collect()

    contenders = [
        embed_parquet,
        embed_jsonl,
        plain,
        encode,
        embed_small,
        batched,
        per_element,
        encode_small,
        startup,
        reembed,
        embed_current,
        *scaling.values(),
    ]
    return {
        "contenders": contenders,
        "dim": dim,
        "zstd_per_row": zstd_per_row,
        "equal": equal,
        "reembed_counts": counts,
        "n_main": n_main,
        "n_baseline": n_baseline,
        "n_edited": n_edited,
        "profile_input": inputs.parquet(len(corpus)),
        "profile_plain_run": embed_parquet.runs[0],
    }


# -- the table and the targets -------------------------------------------------------------------


def print_table(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    contenders: list[Contender] = results["contenders"]
    by_name = {contender.name: contender for contender in contenders}
    encode_tps = by_name[ENCODE].texts_per_s
    plain_tps = by_name[PLAIN].texts_per_s
    rows: dict[str, dict[str, Any]] = {}
    header = (
        f"{'contender':<40} {'rows':>9} {'wall s':>8} {'cpu s':>8} {'texts/s':>8} {'vs encode':>9} "
        f"{'vs plain':>8} {'peak RSS':>9} {'B/row':>7}"
    )
    print(header)
    print(f"{'':<40} {'':>9} {'(median)':>8} {'(median)':>8} {'':>8} {'':>9} {'':>8} {'MiB':>9} {'':>7}")
    print(line())
    for contender in contenders:
        tps = contender.texts_per_s
        in_process = contender.argv is None
        row = {
            "rows": contender.rows,
            "runs": [asdict(run) for run in contender.runs],
            "wall_s": contender.median("wall_s"),
            "cpu_s": contender.median("cpu_s"),
            "texts_per_s": tps,
            "texts_per_cpu_s": contender.rows / contender.median("cpu_s"),
            "vs_encode": tps / encode_tps,
            "vs_plain": tps / plain_tps,
            "peak_rss_mib": None if in_process else contender.median("peak_rss") / MIB,
            "bytes_per_row": None if contender.output_bytes is None else contender.output_bytes / contender.rows,
        }
        rows[contender.name] = row
        rss = "-" if row["peak_rss_mib"] is None else f"{row['peak_rss_mib']:.0f}"
        size = "-" if row["bytes_per_row"] is None else f"{row['bytes_per_row']:.1f}"
        print(
            f"{contender.name:<40} {contender.rows:>9,} {row['wall_s']:>8.2f} {row['cpu_s']:>8.2f} {tps:>8,.0f} "
            f"{row['vs_encode']:>8.2f}x {row['vs_plain']:>7.2f}x {rss:>9} {size:>7}"
        )
    for name, per_row in ((RAW_F32, float(results["dim"] * 4)), (ZSTD_VECTORS, results["zstd_per_row"])):
        rows[name] = {"bytes_per_row": per_row}
        print(f"{name:<40} {'':>9} {'':>8} {'':>8} {'':>8} {'':>9} {'':>8} {'':>9} {per_row:>7.1f}")
    print(line())
    print("wall = spawn to exit (interpreter start-up, imports, model load, read, embed, write); texts/s = rows/wall;")
    print("vs encode / vs plain = texts/s over that of load_model().encode (in-process, encode call alone) / the plain")
    print("model2vec script; cpu = user+sys of the process tree; peak RSS = max(RSS of the process tree polled every")
    print("50 ms, largest VmHWM of a process in it); B/row = Parquet bytes of the output / rows (reembed: the")
    print("snapshot, without _changes/). Medians over the repeats where a contender ran more than once.")
    return rows


def evaluate_targets(results: dict[str, Any], rows: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    def tps(name: str) -> float:
        return float(rows[name]["texts_per_s"])

    def cpu_tps(name: str) -> float:
        return float(rows[name]["texts_per_cpu_s"])

    targets: dict[str, dict[str, Any]] = {}

    def add(name: str, value: float | None, passed: bool | None, detail: str) -> None:
        targets[name] = {"value": value, "pass": passed, "detail": detail}
        status = "SKIP" if passed is None else ("PASS" if passed else "MISS")
        print(f"{status}  {name:<58} {detail}")

    ratio = tps(EMBED_PARQUET) / tps(PLAIN)
    add(
        f"embed (Parquet) >= {TARGET_VS_PLAIN}x plain model2vec script",
        ratio,
        ratio >= TARGET_VS_PLAIN,
        f"{ratio:.2f}x ({tps(EMBED_PARQUET):,.0f} vs {tps(PLAIN):,.0f} texts/s, whole processes; "
        f"per CPU second {cpu_tps(EMBED_PARQUET) / cpu_tps(PLAIN):.2f}x; ceiling {tps(ENCODE) / tps(PLAIN):.2f}x)",
    )
    n_baseline = results["n_baseline"]
    for baseline, target in ((BATCHED, TARGET_VS_BATCHED), (PER_ELEMENT, TARGET_VS_PER_ELEMENT)):
        ratio = tps(EMBED_BASELINE_ROWS) / tps(baseline)
        add(
            f"embed >= {target}x {baseline}",
            ratio,
            ratio >= target,
            f"{ratio:.2f}x on the same {n_baseline:,} rows ({tps(EMBED_BASELINE_ROWS):,.0f} vs {tps(baseline):,.0f} "
            f"texts/s; per CPU s {cpu_tps(EMBED_BASELINE_ROWS) / cpu_tps(baseline):.2f}x; embed on "
            f"{results['n_main']:,} rows: {tps(EMBED_PARQUET) / tps(baseline):.2f}x; "
            f"ceiling {tps(ENCODE) / tps(baseline):.2f}x)",
        )
    floor_s = rows[STARTUP]["wall_s"] + rows[ENCODE_BASELINE_ROWS]["wall_s"]
    print(
        "      ceiling = texts/s of load_model().encode alone (no start-up, no I/O) over the other side's: the\n"
        "      ratio an embed pipeline that cost nothing but encoding would reach\n"
        "      bound = the ratio of a pipeline costing only its fixed start-up "
        f"({rows[STARTUP]['wall_s']:.2f} s: embed of {STARTUP_ROWS} rows) plus\n"
        f"      encode ({rows[ENCODE_BASELINE_ROWS]['wall_s']:.2f} s for {n_baseline:,} rows) = {floor_s:.2f} s: "
        + ", ".join(
            f"{rows[name]['wall_s'] / floor_s:.2f}x over {label}"
            for name, label in ((BATCHED, "BatchElements"), (PER_ELEMENT, "per element"))
        )
    )
    ratio = tps(EMBED_JSONL) / tps(EMBED_PARQUET)
    add(
        f"embed JSONL >= {TARGET_JSONL_VS_PARQUET}x embed Parquet",
        ratio,
        ratio >= TARGET_JSONL_VS_PARQUET,
        f"{ratio:.2f}x ({tps(EMBED_JSONL):,.0f} vs {tps(EMBED_PARQUET):,.0f} texts/s)",
    )
    small, large = (scaling_name(rows_) for rows_ in SCALING_ROWS)
    if small in rows and large in rows:
        wall = rows[large]["wall_s"] / rows[small]["wall_s"]
        rss = rows[large]["peak_rss_mib"] / rows[small]["peak_rss_mib"]
        add(
            f"embed 1M / 100k rows: wall <= {TARGET_SCALING_WALL:g}x",
            wall,
            wall <= TARGET_SCALING_WALL,
            f"{wall:.2f}x ({rows[large]['wall_s']:.1f} vs {rows[small]['wall_s']:.1f} s; 10x the rows)",
        )
        add(
            f"embed 1M / 100k rows: peak RSS <= {TARGET_SCALING_RSS:g}x",
            rss,
            rss <= TARGET_SCALING_RSS,
            f"{rss:.2f}x ({rows[large]['peak_rss_mib']:.0f} vs {rows[small]['peak_rss_mib']:.0f} MiB)",
        )
    else:
        add(f"embed 1M / 100k rows: wall <= {TARGET_SCALING_WALL:g}x", None, None, "not run (--no-scaling / --quick)")
        add(f"embed 1M / 100k rows: peak RSS <= {TARGET_SCALING_RSS:g}x", None, None, "not run")
    per_row = rows[EMBED_PARQUET]["bytes_per_row"]
    limit = results["zstd_per_row"] + ID_HASH_ALLOWANCE
    add(
        f"embed output bytes/row <= zstd vectors alone + {ID_HASH_ALLOWANCE} B",
        per_row,
        per_row <= limit,
        f"{per_row:.1f} vs {results['zstd_per_row']:.1f} + {ID_HASH_ALLOWANCE} B (id int64 8 B + text_hash 16 B, "
        f"raw) = {limit:.1f} B/row; raw float32 {results['dim'] * 4} B",
    )
    ratio = rows[EMBED_CURRENT]["wall_s"] / rows[REEMBED]["wall_s"]
    targets["reembed speed-up over a full embed"] = {"value": ratio, "pass": None, "detail": ""}
    print(
        f"info  {'reembed (1% changed) vs full embed of the same corpus':<58} {ratio:.2f}x faster "
        f"({rows[REEMBED]['wall_s']:.1f} vs {rows[EMBED_CURRENT]['wall_s']:.1f} s)"
    )
    for label, same in results["equal"].items():
        targets[label] = {"value": None, "pass": same, "detail": "np.array_equal, sorted by id"}
        print(f"{'PASS' if same else 'FAIL'}  {label:<58} np.array_equal, sorted by id")
    return targets


# -- where pipelines.embed's time goes -----------------------------------------------------------


def code_key(function: Callable[..., Any]) -> tuple[str, int, str]:
    code = function.__code__
    return code.co_filename, code.co_firstlineno, code.co_name


def profile_embed(source: Path, model: Path, work: Path, plain_run: Measured | None = None) -> dict[str, Any]:
    """One ``pipelines.embed`` process under cProfile; cumulative seconds of its stages (main thread).

    ``plain_run`` is a run of the same command without the profiler, when one was measured already.
    """
    import apache_beam as beam

    from beam_m2v.encoder import StaticEmbedder
    from beam_m2v.loading import load_with_options as load_model  # every load goes through it
    from beam_m2v.transforms.embed_tables import EmbedTablesDoFn, _row_problems
    from beam_m2v.transforms.metrics import EmbeddingMetrics
    from pipelines import embed as embed_module
    from pipelines.content_hash import with_text_hash
    from pipelines.inputs import ListRowGroups, ReadParquetRows
    from pipelines.manifest import write_run_manifest
    from pipelines.outputs import publish, to_output_table
    from pipelines.parquet_sink import VectorParquetSink
    from pipelines.prepare import prepare
    from pipelines.progress import ReportProgress

    rows = pq.ParquetFile(source).metadata.num_rows
    prof = work / "embed.prof"
    out = work / "out" / "profile"
    if plain_run is None:
        plain_run = run_process(embed_argv(source, model, out), work / "logs" / "profile-plain.log")
        shutil.rmtree(out, ignore_errors=True)
    argv = [sys.executable, "-m", "cProfile", "-o", str(prof), *embed_argv(source, model, out)[1:]]
    measured = run_process(argv, work / "logs" / "profile.log")
    shutil.rmtree(out, ignore_errors=True)
    stats: dict[Any, Any] = pstats.Stats(str(prof)).stats  # type: ignore[attr-defined]

    def cum(function: Callable[..., Any]) -> float:
        entry = stats.get(code_key(function))
        return float(entry[3]) if entry else 0.0

    def calls(function: Callable[..., Any]) -> int:
        entry = stats.get(code_key(function))
        return int(entry[1]) if entry else 0

    module_key = (embed_module.__file__, 1, "<module>")
    module_s = float(stats[module_key][3]) if module_key in stats else 0.0
    pickling = 0.0
    for key, entry in stats.items():
        if key[2] == "<built-in method _pickle.dumps>":
            pickling = sum(
                float(value[3])
                for caller, value in entry[4].items()
                if caller[0].endswith(os.path.join("apache_beam", "coders", "coders.py"))
            )
    encode = cum(StaticEmbedder._encode_array)
    arrow_encode = cum(StaticEmbedder.encode_arrow_with_stats)
    checks = cum(_row_problems)
    record = cum(EmbeddingMetrics.record_batch)
    runner = cum(beam.Pipeline.run)
    inside = {
        "read Parquet row groups (ListRowGroups, ReadParquetRows)": cum(ListRowGroups.process)
        + cum(ReadParquetRows.process),
        "text hash (blake2b per text, with_text_hash)": cum(with_text_hash),
        "text checks (_row_problems: nulls, UTF-8 validation)": checks,
        "encode: pieces, ids, pool (slices on the 2-thread pool; main thread waits)": encode,
        "Arrow vector column, nulls (vector_array)": arrow_encode - encode,
        "metrics (record_batch: empty-vector count)": record,
        "rest of EmbedTablesDoFn.process (append_column)": cum(EmbedTablesDoFn.process)
        - arrow_encode
        - checks
        - record,
        "progress + output columns (to_output_table)": cum(ReportProgress.process) + cum(to_output_table),
        "Parquet write: waiting for the background writer, footer": cum(VectorParquetSink.write_record)
        + cum(VectorParquetSink.close),
        "Beam: pickling in coders (tables use ArrowTableCoder)": pickling,
    }
    inside["Beam: runner, bundles, coders, sink finalize (rest of Pipeline.run)"] = runner - sum(inside.values())
    main_s = cum(embed_module.main)
    stages = {
        "interpreter start-up + profile dump (process wall - profiled)": measured.wall_s
        - float(pstats.Stats(str(prof)).total_tt),  # type: ignore[attr-defined]
        "imports (pipelines.embed module level: Beam, pyarrow, ...)": module_s - main_s,
        "prepare: input schema, load model, fingerprint": cum(prepare),
        "build the pipeline graph": cum(embed_module.build_pipeline),
        **{f"  {name}": value for name, value in inside.items()},
        "finish: count rows, manifest, publish": cum(write_run_manifest) + cum(publish),
    }
    stages["other (options, logging, ...)"] = measured.wall_s - sum(stages.values())
    total_in_pipeline = runner
    print(
        f"cProfile of `python -m pipelines.embed` on {rows:,} rows (the corpus once): profiled process "
        f"{measured.wall_s:.2f} s wall, {measured.cpu_s:.2f} s cpu; the same run without the profiler "
        f"{plain_run.wall_s:.2f} s wall, {plain_run.cpu_s:.2f} s cpu"
    )
    print(f"{'stage (cumulative seconds in the main thread)':<78} {'s':>8} {'% wall':>7}")
    print(line())
    for name, seconds in stages.items():
        print(f"{name:<78} {seconds:>8.2f} {100 * seconds / measured.wall_s:>6.1f}%")
    print(line())
    print(f"{'  sum inside Pipeline.run':<78} {total_in_pipeline:>8.2f} {100 * runner / measured.wall_s:>6.1f}%")
    print(
        f"load_model calls in the process: {calls(load_model)} ({cum(load_model):.2f} s); "
        f"tables pickled for size sampling: "
        f"{sum(int(e[1]) for k, e in stats.items() if k[2] == '<built-in method _pickle.dumps>')} pickle.dumps "
        f"calls in all"
    )
    return {
        "rows": rows,
        "profiled_wall_s": measured.wall_s,
        "profiled_cpu_s": measured.cpu_s,
        "unprofiled_wall_s": plain_run.wall_s,
        "unprofiled_cpu_s": plain_run.cpu_s,
        "stages_s": stages,
        "load_model_calls": calls(load_model),
        "load_model_s": cum(load_model),
    }


def replay_stages(source: Path, model: Path, work: Path) -> dict[str, Any]:
    """pipelines.embed's per-table work, replayed serially stage by stage on the same row groups."""
    from piece_replay import Stages, replay_batch

    from beam_m2v import load_model
    from beam_m2v.encoder import PIECE_BATCH, vector_array
    from beam_m2v.transforms.embed_tables import _row_problems
    from pipelines.content_hash import with_text_hash
    from pipelines.inputs import with_positions
    from pipelines.outputs import output_schema, to_output_table
    from pipelines.parquet_sink import VectorParquetSink

    embedder = load_model(model)
    cache = embedder.text_to_ids.prepared.piece_cache
    assert cache is not None, "the replay follows the piece-by-piece path"
    reference = load_model(model)  # its own piece cache, so the check below does not warm the replay's
    parquet = pq.ParquetFile(source)
    schema = output_schema(parquet.schema_arrow, "id", (), embedder.dim, {"bench": "pipeline"})
    out = work / "out" / "replay.parquet"
    stages = Stages()
    written: list[pa.Table] = []
    equal = True
    gc.collect()
    sink = VectorParquetSink(
        str(out), schema, vector_columns=["embedding"], undictionary_columns=["id", "text_hash"]
    )  # as pipelines.embed configures it
    writer = sink.parquet_writer(str(out))
    first_row = 0
    for group in range(parquet.num_row_groups):
        with stages.stage("read row group (+ source/position columns)"):
            table = parquet.read_row_group(group, columns=["id", "text"])
            table = with_positions(table, str(source), np.arange(first_row, first_row + len(table)))
        first_row += len(table)
        with stages.stage("text hash (blake2b per text)"):
            table = with_text_hash(table, "text")
        with stages.stage("text checks (_row_problems)"):
            column = table.column("text").combine_chunks()
            _row_problems(column)
        vectors = np.empty((len(column), embedder.dim), dtype=np.float32)  # as encode: one array per table
        for start in range(0, len(column), PIECE_BATCH):
            texts = column.slice(start, PIECE_BATCH)
            replay_batch(embedder, texts, cache, stages, vectors[start : start + len(texts)])
        with stages.stage("Arrow vector column (vector_array)"):
            embedded = table.append_column("embedding", vector_array(vectors))
        with stages.stage("metrics (empty-vector count)"):
            np.count_nonzero(vectors.any(axis=1))
        with stages.stage("output columns (to_output_table)"):
            output = to_output_table(embedded, schema)
        with stages.stage("Parquet write (zstd, BYTE_STREAM_SPLIT vectors, as the pipeline)"):
            writer.write_table(output)
        equal = equal and bool(
            np.array_equal(vectors, reference.encode_arrow(column).values.to_numpy().reshape(vectors.shape))
        )
        written.append(output)
    with stages.stage("Parquet write (zstd, BYTE_STREAM_SPLIT vectors, as the pipeline)"):
        writer.close()
    rows = sum(len(table) for table in written)
    pipeline_bytes = out.stat().st_size
    total = sum(stages.wall.values())
    print(
        f"serial replay of pipelines.embed's per-table work on the same {rows:,} rows "
        f"({parquet.num_row_groups} row groups, batches of {PIECE_BATCH:,} texts, cold piece cache; tokenizer calls "
        "on rayon, everything else one thread)"
    )
    print(f"{'stage':<66} {'wall s':>8} {'% sum':>7} {'cpu s':>8}")
    print(line())
    for name, wall in stages.wall.items():
        print(f"{name:<66} {wall:>8.2f} {100 * wall / total:>6.1f}% {stages.cpu[name]:>8.2f}")
    print(line())
    print(f"{'sum':<66} {total:>8.2f}")
    print(f"replayed vectors equal encode_arrow (every row group): {'yes' if equal else 'NO'}")

    table = pa.concat_tables(written)
    del written
    variants = {
        "pyarrow defaults (zstd, dictionary on): WriteToParquetBatched": {},
        "use_dictionary=False": {"use_dictionary": False},
        "use_dictionary=False + byte_stream_split(embedding): the sink": {
            "use_dictionary": False,
            "use_byte_stream_split": ["embedding.list.element"],
        },
    }
    writes: dict[str, dict[str, float]] = {}
    print()
    print(f"Parquet write variants, same {rows:,} rows (id, embedding, text_hash), row groups of {ROW_GROUP_ROWS:,}")
    print(f"{'variant':<66} {'write s':>8} {'B/row':>8}")
    print(line())
    for name, options in variants.items():
        path = work / "out" / "variant.parquet"
        gc.collect()
        started = time.perf_counter()
        pq.write_table(
            table, path, compression="zstd", use_compliant_nested_type=True, row_group_size=ROW_GROUP_ROWS, **options
        )
        seconds = time.perf_counter() - started
        writes[name] = {"write_s": seconds, "bytes_per_row": path.stat().st_size / rows}
        print(f"{name:<66} {seconds:>8.2f} {path.stat().st_size / rows:>8.1f}")
        path.unlink()
    out.unlink()
    return {
        "rows": rows,
        "stages_wall_s": stages.wall,
        "stages_cpu_s": stages.cpu,
        "vectors_equal": equal,
        "pipeline_file_bytes_per_row": pipeline_bytes / rows,
        "write_variants": writes,
    }


# -- main ----------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="beam-m2v-pipeline-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    code = snapshot_code(work)
    import apache_beam as beam
    import model2vec

    import beam_m2v

    print(line("="))
    print("beam_m2v pipeline benchmark" + ("  (--quick)" if args.quick else "") + ("  (--smoke)" if args.smoke else ""))
    print(line("="))
    print(f"corpus   {args.corpus.resolve()}")
    print(f"model    {args.model.resolve()}")
    dirty = " + uncommitted changes" if code["uncommitted_changes"] else ""
    print(f"code     beam_m2v/ and pipelines/ at {code['commit']}{dirty}, copied to {code['path']} (every run uses it)")
    print(
        f"python {platform.python_version()}, beam_m2v {beam_m2v.__version__}, apache-beam {beam.__version__}, "
        f"model2vec {model2vec.__version__}, numpy {np.__version__}, pyarrow {pa.__version__}"
    )
    print(
        f"cpus {os.cpu_count()}, scale {args.scale}, repeats {args.repeats}, "
        f"scaling {'on' if args.scaling else 'off'}, "
        f"runner FnApiRunner (pipelines.embed's default), loadavg {loadavg()}"
    )
    print(f"machine  {machine()}")
    print(f"scratch  {work}")
    started = time.perf_counter()
    try:
        results = run_all(args, work)
        section("Results")
        rows = print_table(results)
        section("Targets")
        targets = evaluate_targets(results, rows)
        profile: dict[str, Any] = {}
        if args.profile:
            section("Where pipelines.embed's time goes")
            plain = results["profile_plain_run"] if args.smoke else None  # the main embed's run: the same command
            profile["cprofile"] = profile_embed(results["profile_input"], args.model.resolve(), work, plain)
            print()
            profile["replay"] = replay_stages(results["profile_input"], args.model.resolve(), work)
        print(f"\nbenchmark took {(time.perf_counter() - started) / 60:.1f} min")
        if args.json is not None:
            report = {
                "corpus": str(args.corpus.resolve()),
                "model": str(args.model.resolve()),
                "scale": args.scale,
                "repeats": args.repeats,
                "quick": args.quick,
                "rows": {"main": results["n_main"], "baseline": results["n_baseline"], "edited": results["n_edited"]},
                "versions": {
                    "python": platform.python_version(),
                    "beam_m2v": beam_m2v.__version__,
                    "apache_beam": beam.__version__,
                    "model2vec": model2vec.__version__,
                    "numpy": np.__version__,
                    "pyarrow": pa.__version__,
                },
                "cpus": os.cpu_count(),
                "code": code,
                "contenders": rows,
                "reembed_manifest_rows": results["reembed_counts"],
                "targets": targets,
                "profile": profile,
            }
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
            print(f"wrote {args.json}")
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
