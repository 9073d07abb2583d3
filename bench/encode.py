"""Encoding benchmark: beam_m2v against model2vec and against the bare tokenizer.

One invocation measures, on the shared Linux-doc corpus:

* throughput (texts/s, median of ``--repeats`` runs, contenders interleaved in every repeat) of
  beam_m2v ``encode`` and ``encode_arrow``, model2vec ``StaticModel.encode`` with its thread pool on
  and off, and the tokenizer alone (batches of 1024 on a 2-thread pool, and one rayon-parallel call);
* that beam_m2v's vectors equal model2vec's;
* where beam_m2v's time goes (a serial pass through its internals, stage by stage);
* load time of ``load_model`` and ``StaticModel.from_pretrained``;
* resident memory of a loaded model in a fresh process, and how much a second process on the same
  machine adds (PSS from ``/proc/PID/smaps_rollup``), for beam_m2v and model2vec.

Run from the repository root::

    python bench/encode.py            # full corpus, 3 repeats (a few minutes on 2 cores)
    python bench/encode.py --quick    # first 20,000 texts, 1 repeat
    python bench/encode.py --json out.json
    python bench/encode.py --smoke    # bundled model and sample, 1 repeat, 1 warm load: checks the script runs
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench_common import (
    MIB,
    REPO,
    add_input_options,
    line,
    loadavg,
    resolve_inputs,
    section,
    start_children,
)

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import tokenizers
from piece_replay import Stages, replay_batch
from proc_memory import mapping_pss, smaps_rollup
from tokenizers import Tokenizer

import beam_m2v
from beam_m2v.encoder import PIECE_BATCH, StaticEmbedder, vector_array
from beam_m2v.piece_tokenization import PieceCache
from beam_m2v.pooling import sum_rows

QUICK_TEXTS = 20_000
TOKENIZER_BATCH = 1024
LOAD_REPEATS = 5

# Targets from the issue.
TARGET_VS_MODEL2VEC = 1.1
TARGET_VS_CEILING = 0.9
TARGET_EXTRA_PSS = 0.10
TARGET_LOAD_S = 0.3

BEAM_ENCODE = "beam_m2v encode (list[str])"
BEAM_ARROW = "beam_m2v encode_arrow (Arrow)"
BEAM_ARROW_WARM = "beam_m2v encode_arrow, warm cache"
M2V_MP = "model2vec encode, multiproc on"
M2V_SERIAL = "model2vec encode, multiproc off"
TOK_POOL = "tokenizer, 1024-batches, 2 threads"
TOK_RAYON = "tokenizer, one rayon call"
MODEL2VEC_ROWS = (M2V_MP, M2V_SERIAL)
TOKENIZER_ROWS = (TOK_POOL, TOK_RAYON)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_input_options(parser, repeats=3)
    parser.add_argument("--quick", action="store_true", help=f"first {QUICK_TEXTS:,} texts, 1 repeat")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the numbers here")
    args = parser.parse_args(argv)
    resolve_inputs(args, parser, repeats=1 if args.quick else 3)
    return args


# -- small helpers -------------------------------------------------------------------------------


@contextmanager
def restored_env(name: str) -> Iterator[None]:
    """Put ``os.environ[name]`` back as it was (model2vec's thread pool sets TOKENIZERS_PARALLELISM=false)."""
    before = os.environ.get(name)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def timed_cpu(fn: Callable[[], Any]) -> tuple[float, float]:
    """Wall and process CPU seconds of one call; the result is dropped outside the timed region."""
    gc.collect()
    cpu = time.process_time()
    start = time.perf_counter()
    result = fn()
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu
    del result
    return elapsed, cpu


def timed(fn: Callable[[], Any]) -> float:
    return timed_cpu(fn)[0]


# -- throughput ----------------------------------------------------------------------------------


def make_contenders(
    embedder: beam_m2v.StaticEmbedder,
    reference: Any,
    tokenizer: Tokenizer,
    texts: list[str],
    column: pa.ChunkedArray,
    pool: ThreadPoolExecutor,
) -> dict[str, Callable[[], Any]]:
    def model2vec_multiprocessing() -> Any:
        with restored_env("TOKENIZERS_PARALLELISM"):
            return reference.encode(texts)

    def tokenizer_pool() -> Any:
        return list(
            pool.map(
                lambda start: tokenizer.encode_batch_fast(
                    texts[start : start + TOKENIZER_BATCH], add_special_tokens=False
                ),
                range(0, len(texts), TOKENIZER_BATCH),
            )
        )

    def cold() -> StaticEmbedder:
        """The same loaded model with an empty piece cache: every call starts as a fresh worker does."""
        return StaticEmbedder(embedder.matrix, fresh_cache(embedder), embedder.settings)

    warm = StaticEmbedder(embedder.matrix, fresh_cache(embedder), embedder.settings)
    warm.encode_arrow(column)  # the corpus seen once before: a re-run, or repeated text

    return {
        BEAM_ENCODE: lambda: cold().encode(texts),
        BEAM_ARROW: lambda: cold().encode_arrow(column),
        BEAM_ARROW_WARM: lambda: warm.encode_arrow(column),
        M2V_MP: model2vec_multiprocessing,
        M2V_SERIAL: lambda: reference.encode(texts, use_multiprocessing=False),
        TOK_POOL: tokenizer_pool,
        TOK_RAYON: lambda: tokenizer.encode_batch_fast(texts, add_special_tokens=False),
    }


def fresh_cache(embedder: beam_m2v.StaticEmbedder) -> Any:
    """The embedder's prepared tokenizer with a new, empty piece cache."""
    prepared = embedder.text_to_ids.prepared
    cache = prepared.piece_cache
    new_cache = None if cache is None else PieceCache(cache.tokenizer, cache.punctuation)
    return dataclasses.replace(prepared, piece_cache=new_cache)


def run_throughput(
    contenders: dict[str, Callable[[], Any]], repeats: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Every repeat runs every contender once, in an order rotated per repeat, so drift hits all alike."""
    names = list(contenders)
    times: dict[str, list[float]] = {name: [] for name in names}
    cpus: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(repeats):
        shift = repeat % len(names)
        order = names[shift:] + names[:shift]
        for name in order:
            wall, cpu = timed_cpu(contenders[name])
            times[name].append(wall)
            cpus[name].append(cpu)
        summary = "  ".join(f"{times[name][-1]:.2f}" for name in names)
        print(f"  repeat {repeat + 1}/{repeats} (s, table order): {summary}   loadavg {loadavg()}", flush=True)
    return times, cpus


def throughput_table(
    times: dict[str, list[float]], cpus: dict[str, list[float]], n_texts: int
) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    for name, runs in times.items():
        median = statistics.median(runs)
        rows[name] = {
            "runs_s": runs,
            "cpu_s": cpus[name],
            "cpu_per_wall": sum(cpus[name]) / sum(runs),
            "texts_per_cpu_s": n_texts / statistics.median(cpus[name]),
            "median_s": median,
            "texts_per_s": n_texts / median,
            "best_texts_per_s": n_texts / min(runs),
            "spread": max(runs) / min(runs),
        }
    model2vec_best = max(rows[name]["texts_per_s"] for name in MODEL2VEC_ROWS)
    ceiling = max(rows[name]["texts_per_s"] for name in TOKENIZER_ROWS)
    for row in rows.values():
        row["vs_model2vec_best"] = row["texts_per_s"] / model2vec_best
        row["vs_tokenizer_ceiling"] = row["texts_per_s"] / ceiling
    print(
        f"{'contender':<35} {'median s':>8} {'texts/s':>8} {'best/s':>8} {'spread':>6} {'cpu/wall':>8} "
        f"{'txt/cpu-s':>9} {'vs m2v':>7} {'vs ceil':>7}"
    )
    print(line())
    for name, row in rows.items():
        print(
            f"{name:<35} {row['median_s']:>8.3f} {row['texts_per_s']:>8,.0f} {row['best_texts_per_s']:>8,.0f} "
            f"{row['spread']:>5.2f}x {row['cpu_per_wall']:>7.2f}x {row['texts_per_cpu_s']:>9,.0f} "
            f"{row['vs_model2vec_best']:>6.2f}x {row['vs_tokenizer_ceiling']:>6.2f}x"
        )
    print(line())
    print(f"model2vec best: {model2vec_best:,.0f} texts/s    tokenizer ceiling: {ceiling:,.0f} texts/s")
    print("texts/s, vs m2v (vs model2vec best) and vs ceil (vs tokenizer ceiling) use the median run;")
    print("best/s = fastest run; spread = slowest/fastest run; cpu/wall = this process's CPU seconds per")
    print("wall second over all runs (2.00x = both cores busy); txt/cpu-s = texts per CPU second (median):")
    print("work done, less sensitive to other load on the machine, but rayon's idle spinning counts as work")
    return rows


# -- equality ------------------------------------------------------------------------------------


def verify(
    embedder: beam_m2v.StaticEmbedder, reference: Any, texts: list[str], column: pa.ChunkedArray
) -> dict[str, Any]:
    ours = embedder.encode(texts)
    with restored_env("TOKENIZERS_PARALLELISM"):
        theirs = reference.encode(texts)
    arrow = embedder.encode_arrow(column)
    arrow_matrix = arrow.values.to_numpy().reshape(len(arrow), arrow.type.list_size)
    ours32, theirs32 = ours.astype(np.float32), theirs.astype(np.float32)
    result = {
        "encode_equals_model2vec": bool(np.array_equal(ours32, theirs32)),
        "encode_arrow_equals_model2vec": bool(np.array_equal(arrow_matrix, theirs32)),
        "max_abs_difference": float(np.abs(ours32 - theirs32).max()) if ours32.size else 0.0,
        "shape": list(ours.shape),
        "model2vec_dtype": str(theirs.dtype),
    }
    print(
        f"np.array_equal after casting to float32; {ours.shape[0]:,} x {ours.shape[1]} vectors, "
        f"model2vec returns {theirs.dtype}"
    )
    for key, label in (("encode_equals_model2vec", "encode"), ("encode_arrow_equals_model2vec", "encode_arrow")):
        print(f"  beam_m2v {label:<13} vs model2vec StaticModel.encode: {'EQUAL' if result[key] else 'DIFFERENT'}")
    if not result["encode_equals_model2vec"]:
        print(f"  max |difference| {result['max_abs_difference']:.3g}")
    return result


# -- where beam_m2v's time goes ------------------------------------------------------------------


def profile_stages(
    embedder: beam_m2v.StaticEmbedder, column: pa.ChunkedArray, encode_median_s: float, arrow_median_s: float
) -> dict[str, Any]:
    """One serial pass over the slices ``encode_arrow`` makes, replaying its internals stage by stage.

    Serial, so that stages do not overlap and their wall times add up; the tokenizer call itself
    still runs on rayon (both cores) as it does inside ``encode``. The piece cache starts empty.
    """
    settings, matrix = embedder.settings, embedder.matrix
    own_cache = embedder.text_to_ids.prepared.piece_cache
    if settings.semantics is not beam_m2v.Semantics.MODEL2VEC or own_cache is None:
        print("(stage profile replays the piece-by-piece path with model2vec semantics; skipped)")
        return {}
    cache = PieceCache(own_cache.tokenizer, own_cache.punctuation)
    stages = Stages()
    sum_rows_alone = Stages()
    gc.collect()
    with stages.stage("arrow: combine_chunks"):
        array = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    with stages.stage("other: output array (allocated once, as encode does)"):
        vectors = np.empty((len(array), embedder.dim), dtype=np.float32)
    tokens, pieces, distinct = 0, 0, 0
    for start in range(0, len(array), PIECE_BATCH):
        texts = array.slice(start, PIECE_BATCH)
        token_ids, split = replay_batch(embedder, texts, cache, stages, vectors[start : start + len(texts)])
        with sum_rows_alone.stage("sum_rows"):
            sum_rows(matrix, token_ids)
        tokens += int(token_ids.ids.size)
        pieces += int(split.occurrences.size)
        distinct += len(split.distinct)
    with stages.stage("arrow: vector_array"):
        vector_array(vectors)
    reference = StaticEmbedder(embedder.matrix, fresh_cache(embedder), embedder.settings)
    equal = bool(np.array_equal(vectors, reference.encode(array.to_pylist())))
    encode_stages = [name for name in stages.wall if not name.startswith("arrow:")]
    serial_encode = sum(stages.wall[name] for name in encode_stages)
    serial_arrow = sum(stages.wall.values())
    groups: dict[str, float] = {}
    for name in encode_stages:
        group = name.split(":")[0]
        groups[group] = groups.get(group, 0.0) + stages.wall[name]
    title = f"stage (serial pass over {len(array):,} texts)"
    print(f"{title:<48} {'wall s':>8} {'% encode':>9} {'cpu s':>8} {'cpu/wall':>9}")
    print(line())
    for name in stages.wall:
        wall, cpu = stages.wall[name], stages.cpu[name]
        share = f"{100 * wall / serial_encode:>8.1f}%" if name in encode_stages else f"{'':>9}"
        ratio = f"{cpu / wall:>8.2f}x" if wall > 0.01 else f"{'':>9}"
        print(f"{name:<48} {wall:>8.3f} {share} {cpu:>8.3f} {ratio}")
    print(line())
    for group, wall in groups.items():
        print(f"{'  subtotal ' + group:<48} {wall:>8.3f} {100 * wall / serial_encode:>8.1f}%")
    print(
        f"{'  (sum_rows alone, separate call)':<48} {sum_rows_alone.wall['sum_rows']:>8.3f} "
        f"{100 * sum_rows_alone.wall['sum_rows'] / serial_encode:>8.1f}%"
    )
    print(f"{'serial sum, encode stages':<48} {serial_encode:>8.3f}")
    print(f"{'serial sum, incl. arrow conversions':<48} {serial_arrow:>8.3f}")
    print(
        f"{'encode with its 2-thread pool (median)':<48} {encode_median_s:>8.3f}   "
        f"(serial sum / this = {serial_encode / encode_median_s:.2f}x)"
    )
    print(f"{'encode_arrow (median)':<48} {arrow_median_s:>8.3f}")
    print(
        f"pieces: {pieces:,} occurrences, {distinct:,} distinct per slice summed, {len(cache):,} tokenized "
        f"(the rest from the cache); tokens pooled: {tokens:,}; staged vectors equal encode(): {equal}"
    )
    return {
        "wall_s": stages.wall,
        "cpu_s": stages.cpu,
        "groups_wall_s": groups,
        "sum_rows_alone_s": sum_rows_alone.wall["sum_rows"],
        "serial_encode_s": serial_encode,
        "serial_with_arrow_s": serial_arrow,
        "tokens": tokens,
        "pieces": pieces,
        "distinct_pieces_per_slice": distinct,
        "pieces_tokenized": len(cache),
        "equal_to_encode": equal,
    }


# -- load time -----------------------------------------------------------------------------------


def load_times(model: Path, repeats: int = LOAD_REPEATS) -> dict[str, Any]:
    from model2vec import StaticModel

    def measure(load: Callable[[], Any]) -> dict[str, Any]:
        first = timed(load)
        warm = [timed(load) for _ in range(repeats)]
        return {"first_s": first, "warm_s": warm, "median_s": statistics.median(warm)}

    result = {
        "beam_m2v.load_model": measure(lambda: beam_m2v.load_model(model)),
        "StaticModel.from_pretrained": measure(lambda: StaticModel.from_pretrained(model)),
    }
    print(f"{'loader':<36} {'first s':>9} {'median s':>9} {'min s':>9} {'max s':>9}")
    print(line())
    for name, row in result.items():
        print(
            f"{name:<36} {row['first_s']:>9.3f} {row['median_s']:>9.3f} "
            f"{min(row['warm_s']):>9.3f} {max(row['warm_s']):>9.3f}"
        )
    print(f"first = first load in this process; median/min/max over the next {repeats} (warm) loads")
    return result


# -- memory --------------------------------------------------------------------------------------

CHILD = r"""
import os, sys
os.environ.setdefault("HF_HUB_OFFLINE", "1")
kind, model = sys.argv[1], sys.argv[2]
import numpy as np
if kind == "beam_m2v":
    import beam_m2v
else:
    from model2vec import StaticModel

def step(name):
    print("@" + name, flush=True)
    if sys.stdin.readline().strip() != "go":
        sys.exit(0)

step("imported")
if kind == "beam_m2v":
    loaded = beam_m2v.load_model(model)
    matrix = loaded.matrix.embeddings
else:
    loaded = StaticModel.from_pretrained(model)
    matrix = loaded.embedding
step("loaded")
touched = float(np.asarray(matrix).sum())
step("touched")
"""

STEPS = ("imported", "loaded", "touched")


def child_states(kind: str, model: Path, count: int, matrix_path: str) -> list[dict[str, dict[str, int]]]:
    """Start ``count`` processes that load the model; measure all of them after each step, in lockstep."""
    children = start_children(CHILD, kind, str(model), count=count)
    states: list[dict[str, dict[str, int]]] = [{} for _ in children]
    try:
        for step in STEPS:
            for child in children:
                assert child.stdin is not None and child.stdout is not None
                while True:
                    text = child.stdout.readline()
                    if not text:
                        raise RuntimeError(f"{kind} child {child.pid} exited before step {step!r}")
                    if text.strip() == "@" + step:
                        break
            for child, state in zip(children, states, strict=True):
                state[step] = {**smaps_rollup(child.pid), "matrix_pss": mapping_pss(child.pid, matrix_path)}
            for child in children:
                assert child.stdin is not None
                child.stdin.write("go\n")
                child.stdin.flush()
    finally:
        for child in children:
            if child.stdin is not None:
                child.stdin.close()
            child.wait(timeout=60)
    return states


def memory_check(model: Path, matrix_bytes: int) -> dict[str, Any]:
    """Fresh processes: RSS/PSS of a loaded model, and the PSS a second process on the machine adds.

    The children load a private copy of the model folder: PSS divides a shared page among every
    process on the machine that maps it, so another program using the shared model file (a test
    run, say) would otherwise dilute the numbers.
    """
    with tempfile.TemporaryDirectory(prefix="beam-m2v-bench-") as scratch:
        private = Path(scratch) / model.name
        shutil.copytree(model, private)
        matrix_path = str(private / "model.safetensors")
        check_not_mapped(matrix_path)
        results = _memory_check(private, matrix_path, matrix_bytes)
    print(f"(the children loaded a private copy of the model folder, in {Path(scratch).parent})")
    return results


def _memory_check(model: Path, matrix_path: str, matrix_bytes: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for kind in ("beam_m2v", "model2vec"):
        one = child_states(kind, model, 1, matrix_path)
        two = child_states(kind, model, 2, matrix_path)

        def total(states: list[dict[str, dict[str, int]]], step: str, key: str) -> int:
            return sum(state[step][key] for state in states)

        single = one[0]
        model_one = total(one, "touched", "pss") - total(one, "imported", "pss")
        model_two = total(two, "touched", "pss") - total(two, "imported", "pss")
        results[kind] = {
            "one_process": single,
            "two_processes": two,
            "rss_after_load": single["loaded"]["rss"] - single["imported"]["rss"],
            "rss_after_touch": single["touched"]["rss"] - single["imported"]["rss"],
            "pss_one": total(one, "touched", "pss"),
            "pss_two_sum": total(two, "touched", "pss"),
            "model_pss_one": model_one,
            "model_pss_two_sum": model_two,
            "extra_model_pss": model_two - model_one,
            "extra_model_pss_of_matrix": (model_two - model_one) / matrix_bytes,
            "matrix_pss_one": single["touched"]["matrix_pss"],
            "matrix_pss_two_sum": total(two, "touched", "matrix_pss"),
        }
    print(f"matrix: {matrix_bytes / MIB:.1f} MiB")
    print("resident memory of one fresh process, growth over its imports:")
    print(f"  {'':<12} {'RSS after load':>15} {'RSS after touching matrix':>26} {'PSS after touching':>19}")
    for kind, row in results.items():
        print(
            f"  {kind:<12} {row['rss_after_load'] / MIB:>11.1f} MiB {row['rss_after_touch'] / MIB:>22.1f} MiB "
            f"{row['model_pss_one'] / MIB:>15.1f} MiB"
        )
    print("two processes loading the same model and touching every page of its matrix (PSS, MiB):")
    print(f"  {'':<12} {'whole process':>27} {'model (growth over imports)':>32} {'matrix file mapping':>22}")
    print(
        f"  {'':<12} {'one':>8} {'two (sum)':>10} {'ratio':>7} {'one':>8} {'two (sum)':>10} {'extra':>12} "
        f"{'one':>8} {'two (sum)':>10}"
    )
    for kind, row in results.items():
        extra = f"{row['extra_model_pss_of_matrix'] * 100:+.1f}%"
        print(
            f"  {kind:<12} {row['pss_one'] / MIB:>8.1f} {row['pss_two_sum'] / MIB:>10.1f} "
            f"{row['pss_two_sum'] / row['pss_one']:>6.2f}x {row['model_pss_one'] / MIB:>8.1f} "
            f"{row['model_pss_two_sum'] / MIB:>10.1f} {extra:>12} "
            f"{row['matrix_pss_one'] / MIB:>8.1f} {row['matrix_pss_two_sum'] / MIB:>10.1f}"
        )
    print("  extra = (model PSS, two processes) - (model PSS, one process), as % of the matrix size;")
    print("  whole-process PSS includes each interpreter's own heap, which a second process always duplicates")
    return results


# -- main ----------------------------------------------------------------------------------------


def check_not_mapped(path: str) -> None:
    with open("/proc/self/maps", encoding="utf-8", errors="replace") as handle:
        if any(text.rstrip("\n").endswith(path) for text in handle):
            print(f"WARNING: this process maps {path}; child PSS figures are diluted by it")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from model2vec import StaticModel
    from model2vec import __version__ as model2vec_version

    model = args.model.resolve()
    corpus = args.corpus.resolve()
    n_limit = QUICK_TEXTS if args.quick else None

    print(line("="))
    print("beam_m2v encode benchmark" + ("  (--quick)" if args.quick else "") + ("  (--smoke)" if args.smoke else ""))
    print(line("="))
    print(f"corpus   {corpus}")
    print(f"model    {model}")
    print(
        f"python {platform.python_version()}, beam_m2v {beam_m2v.__version__}, model2vec {model2vec_version}, "
        f"tokenizers {tokenizers.__version__}, numpy {np.__version__}, pyarrow {pa.__version__}"
    )
    print(
        f"cpus {os.cpu_count()}, TOKENIZERS_PARALLELISM={os.environ.get('TOKENIZERS_PARALLELISM', '<unset>')}, "
        f"beam_m2v PIECE_BATCH {PIECE_BATCH} (piece path), repeats {args.repeats}"
    )

    # Memory first: the children's PSS must not be shared with a mapping in this process.
    section("Memory (fresh processes; PSS from /proc/PID/smaps_rollup)")
    probe = beam_m2v.load_model(model)
    matrix_bytes = int(np.asarray(probe.matrix.embeddings).nbytes)
    del probe
    gc.collect()
    memory = memory_check(model, matrix_bytes)

    section("Load time (this process, files in the page cache)")
    loads = load_times(model, 1 if args.smoke else LOAD_REPEATS)

    table = pq.read_table(corpus, columns=["text"])
    if n_limit is not None:
        table = table.slice(0, n_limit)
    column = table.column("text")
    texts = column.to_pylist()
    n_texts = len(texts)

    embedder = beam_m2v.load_model(model)
    reference = StaticModel.from_pretrained(model)
    tokenizer = Tokenizer.from_file(str(model / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="bench-tokenize")

    section(f"Equality ({n_texts:,} texts; also the warm-up)")
    equality = verify(embedder, reference, texts, column)
    contenders = make_contenders(embedder, reference, tokenizer, texts, column, pool)
    for run in (contenders[TOK_POOL], contenders[TOK_RAYON]):
        timed(run)

    section(f"Throughput ({n_texts:,} texts, median of {args.repeats}, contenders interleaved)")
    print("model2vec's thread pool sets TOKENIZERS_PARALLELISM=false; the bench restores it after each call")
    print(f"  loadavg before {loadavg()}")
    times, cpus = run_throughput(contenders, args.repeats)
    print()
    rows = throughput_table(times, cpus, n_texts)

    section("Where beam_m2v encode's time goes")
    stages = profile_stages(embedder, column, rows[BEAM_ENCODE]["median_s"], rows[BEAM_ARROW]["median_s"])
    pool.shutdown()

    section("Targets")
    arrow = rows[BEAM_ARROW]
    load_s = loads["beam_m2v.load_model"]["median_s"]
    extra = memory["beam_m2v"]["extra_model_pss_of_matrix"]
    targets = {
        "encode_arrow >= 1.1x model2vec best encode": (
            arrow["vs_model2vec_best"] >= TARGET_VS_MODEL2VEC,
            f"{arrow['vs_model2vec_best']:.2f}x",
        ),
        "encode_arrow within 10% of tokenizer ceiling": (
            arrow["vs_tokenizer_ceiling"] >= TARGET_VS_CEILING,
            f"{arrow['vs_tokenizer_ceiling']:.2f}x of ceiling",
        ),
        "two processes < 1.1x one (extra PSS < 10% of matrix)": (
            extra < TARGET_EXTRA_PSS,
            f"{extra * 100:+.1f}% of {matrix_bytes / MIB:.1f} MiB "
            f"(model2vec: {memory['model2vec']['extra_model_pss_of_matrix'] * 100:+.1f}%)",
        ),
        "load_model < 0.3 s": (load_s < TARGET_LOAD_S, f"{load_s:.3f} s median"),
    }
    beam_memory = memory["beam_m2v"]
    matrix_ratio = beam_memory["matrix_pss_two_sum"] / max(beam_memory["matrix_pss_one"], 1)
    for name, (passed, detail) in targets.items():
        print(f"{'PASS' if passed else 'MISS'}  {name:<54} {detail}")
    print(
        f"{'info':<4}  {'matrix pages alone: PSS of the mapping, two vs one':<54} {matrix_ratio:.2f}x "
        f"({beam_memory['matrix_pss_two_sum'] / MIB:.1f} vs {beam_memory['matrix_pss_one'] / MIB:.1f} MiB)"
    )
    equal = equality["encode_equals_model2vec"] and equality["encode_arrow_equals_model2vec"]
    print(f"{'PASS' if equal else 'FAIL'}  {'vectors equal model2vec (encode and encode_arrow)':<54}")

    if args.json is not None:
        report = {
            "corpus": str(corpus),
            "model": str(model),
            "texts": n_texts,
            "repeats": args.repeats,
            "quick": args.quick,
            "versions": {
                "python": platform.python_version(),
                "beam_m2v": beam_m2v.__version__,
                "model2vec": model2vec_version,
                "tokenizers": tokenizers.__version__,
                "numpy": np.__version__,
                "pyarrow": pa.__version__,
            },
            "cpus": os.cpu_count(),
            "matrix_bytes": matrix_bytes,
            "throughput": rows,
            "equality": equality,
            "stages": stages,
            "load": loads,
            "memory": memory,
            "targets": {name: {"pass": passed, "detail": detail} for name, (passed, detail) in targets.items()},
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
