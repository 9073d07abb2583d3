"""Lance benchmark: ``embed`` into Parquet and into Lance, ``reembed`` into Lance, and search, side by side.

One invocation builds its inputs from the corpus (the linux-doc paragraphs by default), repeated ``--scale``
times with ids 0..n-1 and row groups of 50,000 rows (the same inputs as ``bench/pipeline.py``), and runs,
each as its own process timed from start-up to exit with the peak resident memory of its process tree:

* ``beam-m2v embed --output DIR`` (Parquet shards), and ``--output DIR.lance`` (a Lance dataset);
* ``beam-m2v reembed --output DIR.lance`` after 1% of the texts changed (every 100th), on a copy
  of the dataset the Lance embed made (copied outside the timed region).

It checks that the re-embedded version has every row, that the changed rows carry ``encode``'s
vectors of the new texts and that the earlier version still reads. Then, on the bundled 2,000-row
sample (with the same model): the exact search's top hit against brute-force cosine in numpy,
and the recall@10 of an IVF_PQ index (``beam-m2v index``) against exact search. It prints one
table and the targets as PASS/MISS lines.

Run from the repository root::

    python bench/lance.py              # corpus x5 (682,890 rows), once each: ~5-10 min on 2 cores
    python bench/lance.py --quick      # 20,000 rows (~1-2 min)
    python bench/lance.py --smoke      # bundled model and sample once: checks the script runs
    python bench/lance.py --repeats 3 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import bench_common  # bench/ is on sys.path as a script
import numpy as np
import pyarrow.parquet as pq
from bench_common import MIB, SMOKE_CORPUS, loadavg
from pipeline import CHANGE_EVERY, EDIT_SUFFIX, Contender, Inputs, machine, measure, snapshot_code

# Run as ``python bench/lance.py``, this file's folder is first on sys.path, where ``import lance`` would
# find this script instead of the pylance package: the folder's modules are imported above, so drop it.
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != Path(__file__).resolve().parent]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LANCE_LOG", "error")

DEFAULT_SCALE = 5
QUICK_ROWS = 20_000
SAMPLE = SMOKE_CORPUS  # the bundled 2,000-paragraph sample: the search checks run on it
SEARCH_QUERIES = 50
WIDTH = 110

EMBED_PARQUET = "embed -> Parquet"
EMBED_LANCE = "embed -> Lance"
REEMBED_LANCE = "reembed -> Lance, 1% changed"

TARGET_REEMBED_WALL = 0.35  # x the full embed into Lance
TARGET_LANCE_VS_PARQUET = 1.25


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    bench_common.add_input_options(parser, repeats=1)
    parser.add_argument("--scale", type=int, default=None, help="corpus repetitions (default 5; 1 with --smoke)")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_ROWS:,} rows, once each")
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    parser.add_argument("--workdir", type=Path, help="scratch folder (default: a fresh temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args(argv)
    bench_common.resolve_inputs(args, parser, repeats=1)
    args.scale = args.scale or (1 if args.smoke else DEFAULT_SCALE)
    return args


def cli_argv(command: str, source: Path, model: Path, output: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pipelines.cli",
        command,
        "--input",
        str(source),
        "--model",
        str(model),
        "--output",
        str(output),
    ]


def reembed_round(reembed: Contender, base: Path, target: Path, logs: Path) -> None:
    """One timed reembed on a fresh copy of the embedded dataset (the copy is not timed)."""
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(base, target)
    output, reembed.output = reembed.output, None  # measure() must not remove the copy
    try:
        measure(reembed, logs)
    finally:
        reembed.output = output


def check_reembed(dataset: Path, rows: int, edited: Path, model: Path) -> dict[str, Any]:
    """The re-embedded version: all rows; changed rows carry the new texts' vectors; the base version reads."""
    import lance

    import beam_m2v

    latest = lance.dataset(str(dataset))
    assert latest.count_rows() == rows, f"{latest.count_rows()} rows, expected {rows}"
    assert lance.dataset(str(dataset), version=latest.version - 1).count_rows() == rows
    changed = latest.to_table(columns=["id", "embedding"], filter=f"id % {CHANGE_EVERY} = 0").sort_by("id")
    texts = pq.read_table(edited, columns=["id", "text"], filters=[("id", "in", changed.column("id").to_pylist())])
    texts = texts.sort_by("id")
    assert all(text.endswith(EDIT_SUFFIX) for text in texts.column("text").to_pylist())
    column = changed.column("embedding").combine_chunks()
    vectors = np.asarray(column.flatten(), dtype=np.float32).reshape(len(changed), column.type.list_size)
    expected = beam_m2v.load_model(model).encode(texts.column("text").to_pylist())
    assert vectors.tobytes() == expected.tobytes(), "a changed row's vector differs from encode"
    record = json.loads(latest.read_transaction(latest.version).transaction_properties["beam_m2v_run"])
    return {"changed_rows_checked": len(changed), "version": latest.version, "rows": record["rows"]}


def search_checks(model: Path, work: Path) -> dict[str, Any]:
    """Exact top hit vs brute force, and an IVF_PQ index's recall@10 vs exact search, on the bundled sample."""
    import lance

    import beam_m2v
    from pipelines import lance_index, lance_output, search

    uri = work / "sample.lance"
    lance_output.run_embed(["--input", str(SAMPLE), "--model", str(model), "--output", str(uri)])
    texts = pq.read_table(SAMPLE, columns=["text"]).column("text").to_pylist()
    rng = np.random.default_rng(16)
    queries = [" ".join(texts[int(i)].split()[:8]) for i in rng.choice(len(texts), SEARCH_QUERIES, replace=False)]
    embedder = beam_m2v.load_model(model)
    table = lance.dataset(str(uri)).to_table(columns=["id", "embedding"])
    column = table.column("embedding").combine_chunks()
    matrix = np.asarray(column.flatten(), dtype=np.float64).reshape(len(table), column.type.list_size)
    ids = table.column("id").to_pylist()
    target = search.open_target(str(uri))
    top_equal, exact_top10 = 0, []
    started = time.perf_counter()
    for query in queries:
        q = embedder.encode([query])[0].astype(np.float64)
        scores = matrix @ q / (np.linalg.norm(matrix, axis=1) * np.linalg.norm(q))
        brute = [ids[i] for i in np.lexsort((np.arange(len(scores)), -scores))[:10]]
        hits, how = search.search(target, embedder, query, k=10)
        assert how == "exact"
        top_equal += hits[0].id == brute[0]
        exact_top10.append([hit.id for hit in hits])
    exact_seconds = (time.perf_counter() - started) / len(queries)
    assert lance_index.main([str(uri)]) == 0
    target = search.open_target(str(uri))
    recall: dict[str, float] = {}
    for refine in (1, 10):
        found = 0
        for query, exact in zip(queries, exact_top10, strict=True):
            hits, how = search.search(target, embedder, query, k=10, refine_factor=refine)
            assert how == "index"
            found += len({hit.id for hit in hits} & set(exact))
        recall[f"refine_factor {refine}"] = found / (10 * len(queries))
    return {
        "queries": len(queries),
        "rows": len(ids),
        "exact_top_hit_equals_brute_force": top_equal,
        "exact_search_ms_per_query": round(exact_seconds * 1000, 2),
        "index_recall_at_10": recall,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="beam-m2v-lance-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    code = snapshot_code(work)
    import lance

    print(bench_common.line("=", WIDTH))
    print("beam_m2v Lance benchmark" + ("  (--quick)" if args.quick else "") + ("  (--smoke)" if args.smoke else ""))
    print(bench_common.line("=", WIDTH))
    dirty = " + uncommitted changes" if code["uncommitted_changes"] else ""
    print(f"corpus {args.corpus.resolve()}, model {args.model.resolve()}, pylance {lance.__version__}")
    print(f"code   beam_m2v/ and pipelines/ at {code['commit']}{dirty}; machine {machine()}")
    try:
        model = args.model.resolve()
        corpus = pq.read_table(args.corpus.resolve(), columns=["id", "text"])
        rows = QUICK_ROWS if args.quick else len(corpus) * args.scale
        repeats = 1 if args.quick else args.repeats
        inputs = Inputs(corpus, work / "inputs")
        source = inputs.parquet(rows)
        edited, n_edited = inputs.edited(rows)
        outputs, logs = work / "out", work / "logs"
        outputs.mkdir(parents=True, exist_ok=True)
        logs.mkdir(parents=True, exist_ok=True)
        bench_common.section(f"Runs: {rows:,} rows, {n_edited:,} texts changed for reembed, {repeats} repeat(s)", WIDTH)
        embed_parquet = Contender(EMBED_PARQUET, rows, cli_argv("embed", source, model, outputs / "parquet"))
        embed_parquet.output = outputs / "parquet"
        embed_lance = Contender(EMBED_LANCE, rows, cli_argv("embed", source, model, outputs / "embed.lance"))
        embed_lance.output = outputs / "embed.lance"
        reembed_target = outputs / "reembed.lance"
        reembed = Contender(REEMBED_LANCE, rows, cli_argv("reembed", edited, model, reembed_target))
        reembed.output = reembed_target
        order = [embed_parquet, embed_lance]
        for repeat in range(repeats):
            for contender in order[repeat % 2 :] + order[: repeat % 2]:
                measure(contender, logs)
            reembed_round(reembed, outputs / "embed.lance", reembed_target, logs)
        checked = check_reembed(reembed_target, rows, edited, model)
        search_figures = search_checks(model, work)

        bench_common.section("Results (medians)", WIDTH)
        base = embed_lance.median("wall_s")
        print(f"{'contender':<34} {'rows':>10} {'wall s':>8} {'cpu s':>8} {'peak MiB':>9} {'x embed->Lance':>15}")
        print(bench_common.line(width=WIDTH))
        table: dict[str, dict[str, float]] = {}
        for contender in (embed_parquet, embed_lance, reembed):
            wall, cpu, peak = (contender.median(key) for key in ("wall_s", "cpu_s", "peak_rss"))
            table[contender.name] = {
                "wall_s": wall,
                "cpu_s": cpu,
                "peak_rss_mib": peak / MIB,
                "vs_embed_lance": wall / base,
            }
            figures = f"{wall:>8.2f} {cpu:>8.2f} {peak / MIB:>9.0f} {wall / base:>14.2f}x"
            print(f"{contender.name:<34} {contender.rows:>10,} {figures}")
        print(f"reembed commit: version {checked['version']}, rows {checked['rows']}")
        print(f"changed rows checked against encode: {checked['changed_rows_checked']:,}")
        found, queries = search_figures["exact_top_hit_equals_brute_force"], search_figures["queries"]
        recall = ", ".join(f"{name}: {value:.3f}" for name, value in search_figures["index_recall_at_10"].items())
        print(f"search on the sample ({search_figures['rows']:,} rows, {queries} queries):")
        print(f"  exact top hit == brute-force cosine for {found}/{queries} queries")
        print(f"  exact search {search_figures['exact_search_ms_per_query']} ms/query")
        print(f"  IVF_PQ index recall@10 vs exact search: {recall}")

        bench_common.section("Targets", WIDTH)
        reembed_ratio = table[REEMBED_LANCE]["wall_s"] / table[EMBED_LANCE]["wall_s"]
        rss_ratio = table[REEMBED_LANCE]["peak_rss_mib"] / table[EMBED_LANCE]["peak_rss_mib"]
        lance_ratio = table[EMBED_LANCE]["wall_s"] / table[EMBED_PARQUET]["wall_s"]
        targets = {
            f"reembed 1% wall <= {TARGET_REEMBED_WALL}x embed->Lance": (
                reembed_ratio,
                reembed_ratio <= TARGET_REEMBED_WALL,
            ),
            "reembed 1% peak RSS <= embed->Lance's": (rss_ratio, rss_ratio <= 1.0),
            f"embed->Lance wall <= {TARGET_LANCE_VS_PARQUET}x embed->Parquet": (
                lance_ratio,
                lance_ratio <= TARGET_LANCE_VS_PARQUET,
            ),
            "exact top hit == brute force (every query)": (
                search_figures["exact_top_hit_equals_brute_force"] / search_figures["queries"],
                search_figures["exact_top_hit_equals_brute_force"] == search_figures["queries"],
            ),
        }
        for name, (value, passed) in targets.items():
            print(f"{'PASS' if passed else 'MISS'}  {name:<58} {value:.3f}")
        print(f"\nloadavg at the end {loadavg()} (the machine is shared: figures are noisy)")
        if args.json is not None:
            report = {
                "rows": rows,
                "edited": n_edited,
                "repeats": repeats,
                "code": code,
                "pylance": lance.__version__,
                "contenders": table,
                "runs": {c.name: [run.__dict__ for run in c.runs] for c in (embed_parquet, embed_lance, reembed)},
                "reembed_check": checked,
                "search": search_figures,
                "targets": {name: {"value": value, "pass": passed} for name, (value, passed) in targets.items()},
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
