"""Smoke runs of every ``bench/`` script, so that the benchmarks keep working against the code they measure.

Each script runs as its own process with ``--smoke`` (``bench_common.add_input_options``) on the bundled
64-dim model and a 200-row corpus from ``corpus_table()``, as a user would run it; the test checks that it
exits 0 and prints its side-by-side table with every contender and a figure. The figures of such a run
mean nothing and are not compared; what the scripts check themselves (vectors equal model2vec's, runs
bit-identical) is. The helper modules are checked through the scripts that use them, and directly
where they expose something of their own.

The scripts that start ``pipelines.embed`` processes pay Beam's start-up (~3 s of CPU) in every one of
them: pipeline.py starts 11, workers.py 4 runs (two of them with two worker processes each), lance.py 3,
sizing.py 2. Those runs are the cost of this file; their inputs are as small as the scripts allow.
"""

from __future__ import annotations

import json
import mmap
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO, corpus_table
from tests.test_thread_budget import THREAD_SETTINGS

BENCH = REPO / "bench"
ROWS = 200
NUMBER = r"[\d,]+\.?\d*"


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first ROWS paragraphs of ``corpus_table()`` (id, text) as a Parquet file."""
    path = tmp_path_factory.mktemp("bench-corpus") / "tiny.parquet"
    pq.write_table(corpus_table().slice(0, ROWS), path)  # type: ignore[attr-defined]
    return path


def run_smoke(script: str, *args: str) -> str:
    """``python bench/<script>.py --smoke ARGS`` from the repository root; its output once it exits 0."""
    # The thread settings (ours and the native pools') are the workers benchmark's to set, per run.
    environment = {k: v for k, v in os.environ.items() if k not in THREAD_SETTINGS}
    done = subprocess.run(
        [sys.executable, str(BENCH / f"{script}.py"), "--smoke", *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=900,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def table_row(output: str, name: str, *cells: str) -> re.Match[str]:
    """The line of ``output`` that starts with contender ``name`` followed by ``cells`` (regexes), blanks between."""
    pattern = r"^\s*" + re.escape(name) + "".join(r"\s+" + cell for cell in cells) + r"(?=\s|$)"
    found = re.search(pattern, output, re.MULTILINE)
    assert found, f"no table row {name!r} followed by {cells} in:\n{output}"
    return found


# -- the scripts ------------------------------------------------------------------------------------


def check_encode(tmp_path: Path, corpus: Path) -> None:
    result = tmp_path / "encode.json"
    output = run_smoke("encode", "--corpus", str(corpus), "--json", str(result))
    for name in (
        "beam_m2v encode (list[str])",
        "beam_m2v encode_arrow (Arrow)",
        "beam_m2v encode_arrow, warm cache",
        "model2vec encode, multiproc on",
        "model2vec encode, multiproc off",
        "tokenizer, 1024-batches, 2 threads",
        "tokenizer, one rayon call",
    ):
        table_row(output, name, NUMBER, NUMBER)
    for kind in ("beam_m2v", "model2vec"):
        table_row(output, kind, NUMBER, "MiB", NUMBER, "MiB", NUMBER, "MiB")  # memory: one fresh process
    table_row(output, "beam_m2v.load_model", NUMBER, NUMBER)
    table_row(output, "pool: mean_pool (into the output rows)", NUMBER)  # piece_replay's stages
    assert "staged vectors equal encode(): True" in output
    assert "PASS  vectors equal model2vec (encode and encode_arrow)" in output
    report = json.loads(result.read_text())
    assert report["texts"] == ROWS and report["equality"]["encode_equals_model2vec"] is True
    assert len(report["throughput"]) == 7 and all(row["median_s"] > 0 for row in report["throughput"].values())
    assert len(report["load"]["beam_m2v.load_model"]["warm_s"]) == 1


def check_pipeline(tmp_path: Path, corpus: Path) -> None:
    result = tmp_path / "pipeline.json"
    output = run_smoke("pipeline", "--corpus", str(corpus), "--json", str(result))
    for name in (
        "embed, Parquet",
        "embed, JSONL (same rows)",
        "plain model2vec script (reference)",
        "load_model().encode, in-process",
        "embed, Parquet (baseline rows)",
        "Beam + model2vec, BatchElements",
        "Beam + model2vec, per element",
        "reembed, 1% of texts changed",
        "embed, same current corpus (full)",
    ):
        table_row(output, name, str(ROWS), NUMBER, NUMBER, NUMBER)
    table_row(output, "embed, 10 rows (fixed start-up cost)", "10", NUMBER)
    for check in (
        "embed (Parquet) == plain model2vec script",
        "embed (JSONL) == embed (Parquet)",
        "reembed snapshot == full embed of the current corpus",
    ):
        assert re.search(rf"^PASS  {re.escape(check)}\s+np.array_equal", output, re.MULTILINE), check
    table_row(output, "encode: pieces, ids, pool (slices on the 2-thread pool; main thread waits)", NUMBER)  # cProfile
    table_row(output, "pool: mean_pool (into the output rows)", NUMBER, NUMBER + "%", NUMBER)  # piece_replay
    assert "replayed vectors equal encode_arrow (every row group): yes" in output
    report = json.loads(result.read_text())
    assert report["rows"]["main"] == ROWS and report["reembed_manifest_rows"]["changed"] == 2
    assert report["profile"]["cprofile"]["load_model_calls"] == 1


def check_sizing(tmp_path: Path, corpus: Path) -> None:
    output = run_smoke("sizing", "--corpus", str(corpus))
    table_row(output, "main", f"{ROWS} rows", NUMBER, "s wall", NUMBER, "CPU-s")
    table_row(output, "startup", "10 rows", NUMBER, "s wall")
    table_row(output, "rows", str(ROWS))
    table_row(output, "rows per CPU-second, whole run", NUMBER)


def check_transforms(tmp_path: Path, corpus: Path) -> None:
    output = run_smoke("transforms", "--corpus", str(corpus))
    assert f"{ROWS} texts, model {REPO / 'models' / 'm2v-minilm-64'}, median of 1" in output
    for name in (
        "load_model().encode (in process)",
        "EmbedText, elements (FnApiRunner)",
        "EmbedTables, Arrow tables (FnApiRunner)",
        "batched DoFn, process_batch (FnApiRunner)",
    ):
        table_row(output, name, NUMBER, NUMBER, NUMBER + "x")


def check_semantics(tmp_path: Path, corpus: Path) -> None:
    output = run_smoke("semantics", "--corpus", str(corpus))
    assert f"corpus: tiny.parquet, {ROWS} texts; model: raw format of m2v-minilm-64 (dim 64)" in output
    mean = float(table_row(output, "mean", NUMBER).group(0).split()[-1])
    assert 0.999 < mean < 1.001  # float32 sums in a different order, the same ids: the vectors barely differ
    table_row(output, "pooled a different list of token ids", "0")


def check_finite_check(tmp_path: Path, corpus: Path) -> None:
    output = run_smoke("finite_check", "--dir", str(tmp_path))
    for name in (
        "load_model, no finite check, warm",
        "load_model, with finite check, warm",
        "finite check alone, warm",
        "load_model, no finite check, cold",
        "load_model, with finite check, cold",
    ):
        table_row(output, name, NUMBER, "ms")
    assert list(tmp_path.iterdir()) == []  # its model folder is removed


def check_pss(tmp_path: Path, corpus: Path) -> None:
    output = run_smoke("pss")
    for kind in ("beam_m2v", "model2vec"):
        table_row(output, kind, "1", NUMBER, "-", NUMBER)
        table_row(output, kind, "2", NUMBER, NUMBER, NUMBER)
    matrix_mapping = float(table_row(output, "beam_m2v", "2", NUMBER, NUMBER, NUMBER).group(0).split()[-1])
    assert matrix_mapping > 0  # beam_m2v maps the matrix file; proc_memory.mapping_pss finds the mapping


def check_lance(tmp_path: Path, corpus: Path) -> None:
    result = tmp_path / "lance.json"
    output = run_smoke("lance", "--corpus", str(corpus), "--json", str(result))
    for name in ("embed -> Parquet", "embed -> Lance", "reembed -> Lance, 1% changed"):
        table_row(output, name, str(ROWS), NUMBER, NUMBER, NUMBER, NUMBER + "x")
    assert "changed rows checked against encode: 2" in output
    assert re.search(r"exact top hit == brute-force cosine for \d+/50 queries", output)
    assert re.search(r"IVF_PQ index recall@10 vs exact search: refine_factor 1: [\d.]+", output)
    report = json.loads(result.read_text())
    assert report["rows"] == ROWS and report["reembed_check"]["rows"]["changed"] == 2


def check_workers(tmp_path: Path, corpus: Path) -> None:
    result = tmp_path / "workers.json"
    output = run_smoke("workers", "--corpus", str(corpus), "--json", str(result))
    report = json.loads(result.read_text())
    assert report["rows"] == ROWS
    assert report["vectors_identical"] is True
    runs = {row["label"]: row for row in report["setups"]}
    assert len(runs) == 3
    assert all(row["budget"] and row["budget"][0]["cpu_s"] > 0 for row in runs.values())
    assert "one process, budget: wall / today's" in report["targets"]
    assert "vectors: all runs bit-identical" in output
    assert "Medians: wall and CPU seconds" in output
    for label in runs:  # the pool setup runs bench/pool_runner.py's ExternalPoolRunner
        table_row(output, label, r"(-|" + NUMBER + ")", r"(-|" + NUMBER + ")")


def check_writes(tmp_path: Path, corpus: Path) -> None:
    output = run_smoke("writes", "--corpus", str(corpus))
    for name in ("10 dead letters", "200 dead letters", "200 vectors (Parquet)"):
        table_row(output, name, NUMBER, NUMBER, "-?" + NUMBER, NUMBER + "x")
    assert "same lines and rows written by both: yes" in output


SMOKES: dict[str, Callable[[Path, Path], None]] = {
    "encode": check_encode,
    "pipeline": check_pipeline,
    "sizing": check_sizing,
    "transforms": check_transforms,
    "semantics": check_semantics,
    "finite_check": check_finite_check,
    "pss": check_pss,
    "lance": check_lance,
    "workers": check_workers,
    "writes": check_writes,
}

#: The modules of bench/ that are not scripts, and the smoke runs that use them.
HELPERS = {
    "bench_common": ("every script", "test_bench_common_inputs"),
    "piece_replay": ("encode", "pipeline"),
    "proc_memory": ("encode", "pss", "test_proc_memory"),
    "pool_runner": ("workers",),
}


@pytest.mark.parametrize("script", list(SMOKES))
def test_bench_script_smoke(script: str, tmp_path: Path, tiny_corpus: Path) -> None:
    SMOKES[script](tmp_path, tiny_corpus)


def test_every_bench_module_is_smoked() -> None:
    modules = {path.stem for path in BENCH.glob("*.py")}
    assert modules == set(SMOKES) | set(HELPERS), "a bench/ module without a smoke run: add it to SMOKES or HELPERS"


# -- the helper modules, directly -------------------------------------------------------------------


@pytest.fixture
def bench_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """``bench/`` importable by bare module names, as when a script runs."""
    monkeypatch.syspath_prepend(str(BENCH))


def test_bench_common_inputs(bench_path: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    import bench_common

    def parse(*argv: str) -> argparse.Namespace:
        parser = argparse.ArgumentParser()
        bench_common.add_input_options(parser, repeats=3)
        args = parser.parse_args(argv)
        bench_common.resolve_inputs(args, parser, repeats=3)
        return args

    smoke = parse("--smoke")
    assert (smoke.corpus, smoke.model, smoke.repeats) == (bench_common.SMOKE_CORPUS, bench_common.SMOKE_MODEL, 1)
    given = parse("--smoke", "--corpus", str(bench_common.SMOKE_CORPUS), "--repeats", "2")
    assert given.repeats == 2
    missing = tmp_path / "no-model"
    with pytest.raises(SystemExit) as stopped:
        parse("--model", str(missing), "--corpus", str(bench_common.SMOKE_CORPUS))
    assert stopped.value.code == 2
    message = capsys.readouterr().err
    assert message.count("\n") == 1 and message.startswith(f"bench: {missing} does not exist")


def test_proc_memory(bench_path: None, tmp_path: Path) -> None:
    import proc_memory

    path = tmp_path / "pages.bin"
    size = 1 << 20
    path.write_bytes(os.urandom(size))
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        assert sum(mapped[offset] for offset in range(0, size, mmap.PAGESIZE)) >= 0  # touch every page
        mapping = proc_memory.mapping_pss(os.getpid(), str(path))
        rollup = proc_memory.smaps_rollup(os.getpid())
    assert mapping == size  # only this process maps the file: it carries all of its pages
    assert rollup["rss"] >= rollup["pss"] >= mapping and rollup["private"] >= mapping
