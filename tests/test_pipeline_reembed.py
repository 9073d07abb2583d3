"""End-to-end tests of ``pipelines.reembed``: real corpus slices, real files, real runners.

A day-1 slice of the test corpus is embedded; day 2 adds, edits and deletes rows and is
re-embedded against day 1; day 3 is re-embedded against day 2. Every change set, manifest and
snapshot is checked against what the test constructed and against ``load_model(...).encode``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from safetensors.numpy import load_file

import beam_m2v
from pipelines import embed, reembed
from pipelines.columns import HASH_COLUMN
from pipelines.model_facts import changed_facts
from pipelines.outputs import read_manifest
from tests.beam_helpers import beam_worker_pool
from tests.conftest import REPO, corpus_jsonl_lines, corpus_table

CONSOLE = str(Path(sys.executable).parent / "beam-m2v")
KEEP = "section"

# Day 1: corpus ids 0..2999. Day 2: ids with id % 15 == 3 deleted (200), id % 20 == 7 edited (150),
# ids 3000..3249 added (250), and the kept column changed (text untouched) where id % 50 == 11.
DAY1_ROWS = 3000
DAY2_NEW = range(3000, 3250)


def _deleted_on_day2(i: int) -> bool:
    return i % 15 == 3


def _changed_on_day2(i: int) -> bool:
    return i % 20 == 7


# ----------------------------------------------------------------------------------------------
# helpers


def corpus_slice(rows: int) -> dict[int, str]:
    table: pa.Table = corpus_table().slice(0, rows)
    return dict(zip(table.column("id").to_pylist(), table.column("text").to_pylist(), strict=True))


def write_parquet(
    path: Path, rows: dict[int, tuple[str | None, str]], files: int = 1, row_group_size: int = 700
) -> str:
    """Rows ``id -> (text, section)`` shuffled into ``files`` Parquet files; returns a glob pattern."""
    path.mkdir(parents=True, exist_ok=True)
    ids = np.random.default_rng(len(rows)).permutation(list(rows))
    for number, chunk in enumerate(np.array_split(ids, files)):
        table = pa.table(
            {
                "id": pa.array([int(i) for i in chunk], pa.int64()),
                "text": pa.array([rows[int(i)][0] for i in chunk], pa.string()),
                KEEP: pa.array([rows[int(i)][1] for i in chunk], pa.string()),
            }
        )
        pq.write_table(table, path / f"corpus-{number}.parquet", row_group_size=row_group_size)
    return str(path / "*.parquet")


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return str(path)


def snapshot(output: Path | str) -> pa.Table:
    """The vector shards of an output, sorted by id."""
    table = ds.dataset(str(output), format="parquet").to_table()  # the default discovery skips _changes, _failed
    return table.sort_by("id")


def upsert_files(output: Path | str) -> list[Path]:
    return sorted((Path(output) / "_changes").glob("upserts-*.parquet"))


def deleted_ids(output: Path | str) -> list[int]:
    files = sorted((Path(output) / "_changes").glob("deletes-*.parquet"))
    assert files, f"no deletes shard in {output}"
    ids = [i for f in files for i in pq.read_table(f).column("id").to_pylist()]
    assert len(ids) == len(set(ids)), "an id is deleted twice"
    return sorted(ids)


def upserted(output: Path | str) -> pa.Table:
    files = upsert_files(output)
    assert files, f"no upserts shard in {output}"
    table = pa.concat_tables([pq.read_table(f) for f in files]).sort_by("id")
    assert table.column_names == ["id", "embedding"]
    return table


def vectors(table: pa.Table) -> np.ndarray:
    column = table.column("embedding").combine_chunks()
    return np.asarray(column.flatten(), dtype=np.float32).reshape(len(table), column.type.list_size)


def failed_records(output: Path | str) -> list[dict[str, Any]]:
    records = []
    for path in sorted((Path(output) / "_failed").glob("*.jsonl")):
        records += [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return records


def assert_vectors_are(table: pa.Table, texts: dict[int, str], model: Any) -> None:
    """Each row's vector is exactly ``model.encode`` of its text."""
    ids = table.column("id").to_pylist()
    expected = model.encode([texts[i] for i in ids])
    actual = vectors(table)
    assert actual.shape == expected.shape
    bad = [i for i, a, e in zip(ids, actual, expected, strict=True) if not np.array_equal(a, e)]
    assert not bad, f"{len(bad)} vectors differ from encode(), e.g. ids {bad[:5]}"


def assert_same_snapshot(actual: pa.Table, expected: pa.Table, columns: tuple[str, ...] = ()) -> None:
    """Row for row equal on id, embedding, text_hash and ``columns``."""
    names = ["id", "embedding", HASH_COLUMN, *columns]
    assert actual.num_rows == expected.num_rows
    assert actual.column("id").to_pylist() == expected.column("id").to_pylist()
    for name in names:
        assert actual.column(name).type == expected.column(name).type, name
        if not actual.column(name).equals(expected.column(name)):
            ids = actual.column("id").to_pylist()
            pairs = zip(actual.column(name).to_pylist(), expected.column(name).to_pylist(), strict=True)
            differ = [i for i, (a, e) in zip(ids, pairs, strict=True) if a != e]
            pytest.fail(f"column {name!r} differs in {len(differ)} rows, e.g. ids {differ[:5]}")


def assert_snapshot_of(
    table: pa.Table, texts: dict[int, str], model: Any, sections: dict[int, str] | None = None
) -> None:
    """``table`` (sorted by id) is exactly what an embed of ``texts`` writes: one row per id, its
    ``model.encode`` vector, the BLAKE2b-128 hash of its text and, when given, its kept section."""
    ids = sorted(texts)
    assert table.column("id").to_pylist() == ids
    assert table.schema.field("id").type == pa.int64()
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), model.dim)
    assert table.schema.field(HASH_COLUMN).type == pa.binary(16)
    assert_vectors_are(table, texts, model)
    hashes = [hashlib.blake2b(texts[i].encode("utf-8"), digest_size=16).digest() for i in ids]
    assert table.column(HASH_COLUMN).to_pylist() == hashes
    if sections is not None:
        assert table.schema.field(KEEP).type == pa.string()
        assert table.column(KEEP).to_pylist() == [sections[i] for i in ids]


def assert_store_sync(previous: pa.Table, output: Path | str) -> None:
    """Applying deletes then upserts to the previous snapshot gives exactly the new snapshot's vectors."""
    store = dict(zip(previous.column("id").to_pylist(), vectors(previous), strict=True))
    for i in deleted_ids(output):
        store.pop(i, None)
    changes = upserted(output)
    store.update(zip(changes.column("id").to_pylist(), vectors(changes), strict=True))
    current = snapshot(output)
    assert sorted(store) == current.column("id").to_pylist(), (
        f"store after sync has {sorted(set(store) - set(current.column('id').to_pylist()))[:10]} too many, "
        f"{sorted(set(current.column('id').to_pylist()) - set(store))[:10]} too few ids"
    )
    for i, vector in zip(current.column("id").to_pylist(), vectors(current), strict=True):
        assert np.array_equal(store[i], vector), f"id {i}: synced vector differs from the snapshot"


def run_cli(args: list[str], *, console: bool = False) -> subprocess.CompletedProcess[str]:
    command = [CONSOLE, "reembed"] if console else [sys.executable, "-m", "pipelines.reembed"]
    return subprocess.run(
        [*command, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


def run_in_process(args: list[str]) -> subprocess.CompletedProcess[str]:
    """``pipelines.reembed.main(args)`` in this process: its exit code and what it printed, as a finished process.

    The same program as ``run_cli`` without 3 s of Python and Beam start-up; the console command runs in
    ``test_chain_of_three_runs_with_console_command`` and ``test_previous_that_is_not_an_output``.
    """
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = reembed.main(args)
    return subprocess.CompletedProcess(["pipelines.reembed.main", *args], code, out.getvalue(), err.getvalue())


def check_ok(completed: subprocess.CompletedProcess[str]) -> None:
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.startswith("done: "), completed.stdout


# ----------------------------------------------------------------------------------------------
# the shared day-1 / day-2 scenario (Parquet, with a kept column)


class Scenario:
    """Day-1 and day-2 corpora, their outputs, and what was changed between them."""

    def __init__(self, root: Path, model: str) -> None:
        self.root = root
        self.model = model
        source = corpus_slice(DAY1_ROWS + len(DAY2_NEW))
        self.day1 = {i: (source[i], f"s{i % 7}") for i in range(DAY1_ROWS)}
        self.deleted = sorted(i for i in self.day1 if _deleted_on_day2(i))
        self.changed = sorted(i for i in self.day1 if _changed_on_day2(i))
        self.new = list(DAY2_NEW)
        self.day2: dict[int, tuple[str, str]] = {}
        for i, (text, section) in self.day1.items():
            if i in self.deleted:
                continue
            if i in self.changed:
                text = f"{text} This paragraph was revised on day 2."
            elif i % 50 == 11:
                section = "moved"
            self.day2[i] = (text, section)
        self.day2.update({i: (source[i], "added") for i in self.new})
        self.unchanged = sorted(set(self.day2) - set(self.changed) - set(self.new))
        self.input1 = write_parquet(root / "day1", self.day1, files=1)
        self.input2 = write_parquet(root / "day2", self.day2, files=2)
        self.out1 = root / "out1"
        self.out2 = root / "out2"

    def texts(self, day: dict[int, tuple[str, str]]) -> dict[int, str]:
        return {i: text for i, (text, _) in day.items()}

    def args(self, input_pattern: str, output: Path, *extra: str) -> list[str]:
        return [
            "--input",
            input_pattern,
            "--output",
            str(output),
            "--model",
            self.model,
            "--keep-columns",
            KEEP,
            *extra,
        ]


@pytest.fixture(scope="module")
def model_64(model_64_path: Path) -> Any:
    return beam_m2v.load_model(model_64_path)


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory, model_64_path: Path) -> Scenario:
    """Day 1 embedded with ``pipelines.embed.run``, day 2 re-embedded with ``pipelines.reembed.main``, in-process."""
    s = Scenario(tmp_path_factory.mktemp("scenario"), str(model_64_path))
    embed.run(s.args(s.input1, s.out1))
    check_ok(run_in_process(s.args(s.input2, s.out2, "--previous", str(s.out1))))
    return s


# ----------------------------------------------------------------------------------------------
# incremental runs


def test_day2_manifest_counts_exactly_what_changed(scenario: Scenario) -> None:
    s = scenario
    assert (len(s.new), len(s.changed), len(s.unchanged), len(s.deleted)) == (250, 150, 2650, 200)
    manifest = read_manifest(s.out2)
    assert manifest["reused_previous_vectors"] is True
    assert manifest["previous"] == str(s.out1)
    assert manifest["rows"] == {
        "read": len(s.day2),
        "embedded": len(s.day2),  # snapshot rows: embedded now + carried over
        "failed": 0,
        "new": 250,
        "changed": 150,
        "unchanged": 2650,
        "deleted": 200,
        "upserts": 400,
        "encoded": 400,  # only new + changed texts went through the model
        "previous_read": len(s.day1),
    }
    assert manifest["dim"] == 64
    assert manifest["model_fingerprint"] == read_manifest(s.out1)["model_fingerprint"]
    assert failed_records(s.out2) == []


def test_day2_change_set(scenario: Scenario, model_64: Any) -> None:
    s = scenario
    changes = upserted(s.out2)
    assert changes.column("id").to_pylist() == sorted(s.new + s.changed)
    assert changes.schema.field("embedding").type == pa.list_(pa.float32(), 64)
    assert_vectors_are(changes, s.texts(s.day2), model_64)
    assert deleted_ids(s.out2) == s.deleted
    assert_store_sync(snapshot(s.out1), s.out2)


def test_day2_snapshot_equals_a_full_embed(scenario: Scenario, model_64: Any, tmp_path: Path) -> None:
    s = scenario
    full = tmp_path / "full2"
    embed.run(s.args(s.input2, full))
    actual, expected = snapshot(s.out2), snapshot(full)
    assert actual.schema.equals(expected.schema, check_metadata=True)
    assert_same_snapshot(actual, expected, (KEEP,))
    assert_vectors_are(actual, s.texts(s.day2), model_64)
    sections = dict(zip(actual.column("id").to_pylist(), actual.column(KEEP).to_pylist(), strict=True))
    assert sections == {i: section for i, (_, section) in s.day2.items()}  # kept values come from day 2
    assert sum(v == "moved" for v in sections.values()) > 0


def test_chain_of_three_runs_with_console_command(scenario: Scenario, model_64: Any, tmp_path: Path) -> None:
    """Day 2's output is day 3's --previous; run with the ``beam-m2v reembed`` console command."""
    s = scenario
    back = s.deleted[:20]  # deleted on day 2, back on day 3
    dropped = s.new[:30]  # new on day 2, gone on day 3
    edited_again = s.changed[:25]  # changed on day 2, changed again
    reverted = s.changed[25:40]  # changed on day 2, back to the day-1 text
    day3 = {i: row for i, row in s.day2.items() if i not in dropped}
    day3.update({i: s.day1[i] for i in back})
    day3.update({i: (f"{s.day2[i][0]} And again on day 3.", s.day2[i][1]) for i in edited_again})
    day3.update({i: s.day1[i] for i in reverted})
    input3 = write_parquet(tmp_path / "day3", day3, files=3, row_group_size=500)
    out3 = tmp_path / "out3"

    check_ok(run_cli(s.args(input3, out3, "--previous", str(s.out2)), console=True))

    manifest = read_manifest(out3)
    assert manifest["previous"] == str(s.out2)
    assert manifest["reused_previous_vectors"] is True
    assert manifest["rows"] == {
        "read": len(day3),
        "embedded": len(day3),
        "failed": 0,
        "new": 20,
        "changed": 40,
        "unchanged": len(day3) - 60,
        "deleted": 30,
        "upserts": 60,
        "encoded": 60,
        "previous_read": len(s.day2),
    }
    changes = upserted(out3)
    assert changes.column("id").to_pylist() == sorted(back + edited_again + reverted)
    texts3 = {i: text for i, (text, _) in day3.items()}
    assert_vectors_are(changes, texts3, model_64)
    assert deleted_ids(out3) == sorted(dropped)
    assert_store_sync(snapshot(s.out2), out3)

    # What a full embed of day 3 would write, row for row (test_day2_snapshot_equals_a_full_embed runs one).
    assert_snapshot_of(snapshot(out3), texts3, model_64, {i: section for i, (_, section) in day3.items()})


def test_unchanged_rows_are_not_embedded_again(scenario: Scenario) -> None:
    """Only new + changed texts go through the model (Beam counter texts_embedded, in the manifest as
    rows.encoded); the snapshot still holds every row. Checked on the scenario's day-2 run."""
    s = scenario
    manifest = read_manifest(s.out2)
    assert manifest["rows"]["encoded"] == len(s.new) + len(s.changed)
    assert manifest["rows"]["previous_read"] == len(s.day1)
    assert manifest["rows"]["read"] == len(s.day2)
    assert manifest["rows"]["upserts"] == len(s.new) + len(s.changed)
    assert sum(pq.ParquetFile(f).metadata.num_rows for f in upsert_files(s.out2)) == 400
    assert snapshot(s.out2).num_rows == len(s.day2)


def _tamper(output: Path, replacements: dict[int, np.ndarray]) -> None:
    """Rewrite the vector shards of ``output`` with other (valid, unit-length) vectors for some ids."""
    found = set()
    for shard in sorted(output.glob("part-*.parquet")):
        table = pq.read_table(shard)
        ids = table.column("id").to_pylist()
        hits = [row for row, i in enumerate(ids) if i in replacements]
        if not hits:
            continue
        matrix = vectors(table).copy()
        for row in hits:
            matrix[row] = replacements[ids[row]]
            found.add(ids[row])
        index = table.schema.get_field_index("embedding")
        field = table.schema.field(index)
        column = pa.FixedSizeListArray.from_arrays(pa.array(matrix.ravel(), pa.float32()), type=field.type)
        pq.write_table(table.set_column(index, field, column), shard, compression="zstd")
    assert found == set(replacements)


def test_unchanged_vector_is_carried_over_not_recomputed(scenario: Scenario, model_64: Any, tmp_path: Path) -> None:
    s = scenario
    previous = tmp_path / "out1-tampered"
    shutil.copytree(s.out1, previous)
    kept_id, edited_id = s.unchanged[0], s.changed[0]
    original = dict(zip(snapshot(previous).column("id").to_pylist(), vectors(snapshot(previous)), strict=True))
    planted = {i: -original[i] for i in (kept_id, edited_id)}  # still unit length, clearly different
    _tamper(previous, planted)

    reembed.run(s.args(s.input2, tmp_path / "out2", "--previous", str(previous)))

    result = snapshot(tmp_path / "out2")
    by_id = dict(zip(result.column("id").to_pylist(), vectors(result), strict=True))
    assert np.array_equal(by_id[kept_id], planted[kept_id]), "unchanged row was re-embedded, not reused"
    assert not np.array_equal(by_id[kept_id], original[kept_id])
    assert np.array_equal(by_id[edited_id], model_64.encode([s.day2[edited_id][0]])[0]), "changed row was reused"
    assert kept_id not in upserted(tmp_path / "out2").column("id").to_pylist()
    # every other unchanged row carries its previous vector bit for bit
    for i in s.unchanged[1:]:
        assert np.array_equal(by_id[i], original[i])


# ----------------------------------------------------------------------------------------------
# JSONL


def test_jsonl_day1_day2(model_64: Any, model_64_path: Path, tmp_path: Path) -> None:
    """Day 1 is the first lines of the test corpus as JSONL; day 2 edits it."""
    lines = [line.decode("utf-8") for line in corpus_jsonl_lines(400)]
    (tmp_path / "in").mkdir()
    day1_path = tmp_path / "in" / "day1.jsonl"
    day1_path.write_text("".join(lines), encoding="utf-8")
    day1 = {r["id"]: r["text"] for r in map(json.loads, lines)}
    extra = corpus_slice(450)
    deleted = sorted(i for i in day1 if i % 11 == 5)
    changed = sorted(i for i in day1 if i % 13 == 4 and i not in deleted)
    new = list(range(400, 450))
    day2 = {i: (f"Edited: {t}" if i in changed else t) for i, t in day1.items() if i not in deleted}
    day2.update({i: extra[i] for i in new})
    day2_path = write_jsonl(tmp_path / "in" / "day2.jsonl", [{"id": i, "text": t} for i, t in day2.items()])
    model = str(model_64_path)
    out1, out2 = tmp_path / "out1", tmp_path / "out2"

    embed.run(["--input", str(day1_path), "--output", str(out1), "--model", model])
    manifest = reembed.run(["--input", day2_path, "--output", str(out2), "--model", model, "--previous", str(out1)])

    assert manifest["input_format"] == "jsonl"
    assert manifest["rows"] == {
        "read": len(day2),
        "embedded": len(day2),
        "failed": 0,
        "new": len(new),
        "changed": len(changed),
        "unchanged": len(day2) - len(new) - len(changed),
        "deleted": len(deleted),
        "upserts": len(new) + len(changed),
        "encoded": len(new) + len(changed),
        "previous_read": len(day1),
    }
    changes = upserted(out2)
    assert changes.column("id").to_pylist() == sorted(new + changed)
    assert_vectors_are(changes, day2, model_64)
    assert deleted_ids(out2) == deleted
    assert_snapshot_of(snapshot(out2), day2, model_64)  # what a full embed of day 2 writes
    assert_store_sync(snapshot(out1), out2)


# ----------------------------------------------------------------------------------------------
# model changes


# A whole reembed that embeds every row again, with a second model loaded to compare: ~4-11 s here.
@pytest.mark.parametrize("change", ["model-256", "dimensionality-32"])
def test_model_change_re_embeds_everything(
    change: str,
    scenario: Scenario,
    model_256_path: Path,
    model_64_path: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    s = scenario
    if change == "model-256":
        extra = ["--model", str(model_256_path)]
        model, dim = beam_m2v.load_model(model_256_path), 256
    else:
        extra = ["--dimensionality", "32"]
        model, dim = beam_m2v.load_model(model_64_path, dimensionality=32), 32
    out = tmp_path / "out2"

    with caplog.at_level(logging.INFO, logger="beam_m2v.reembed"):
        manifest = reembed.run([*s.args(s.input2, out, "--previous", str(s.out1)), *extra])

    assert manifest["reused_previous_vectors"] is False
    assert manifest["dim"] == dim
    # Which facts changed, old -> new, in the manifest and in the log.
    because = manifest["reembed_all_because"]
    assert because["dim"] == {"previous": 64, "current": dim}
    assert ("model_fingerprint" in because) is (change == "model-256")
    assert set(because) <= {"model_fingerprint", "dim", "normalize", "max_length", "semantics"}
    assert f"dim 64 -> {dim}" in caplog.text and "re-embedding every row" in caplog.text
    assert manifest["rows"] == {
        "read": len(s.day2),
        "embedded": len(s.day2),
        "failed": 0,
        "new": len(s.new),
        "changed": len(s.day2) - len(s.new),  # every surviving row, its vector is stale
        "unchanged": 0,
        "deleted": len(s.deleted),
        "upserts": len(s.day2),
        "encoded": len(s.day2),
        "previous_read": len(s.day1),
    }
    changes = upserted(out)
    assert changes.column("id").to_pylist() == sorted(s.day2)
    assert changes.schema.field("embedding").type == pa.list_(pa.float32(), dim)
    assert_vectors_are(changes, s.texts(s.day2), model)
    assert deleted_ids(out) == s.deleted
    current = snapshot(out)
    assert_vectors_are(current, s.texts(s.day2), model)
    assert current.column(HASH_COLUMN).equals(snapshot(s.out2).column(HASH_COLUMN))


def test_an_output_whose_manifest_says_seed_is_reused_by_static_backend(
    scenario: Scenario, model_64_path: Path, tmp_path: Path
) -> None:
    """Outputs written before ``seed`` was renamed ``static_backend`` keep their vectors on the next reembed."""
    s = scenario
    raw = tmp_path / "raw-model"  # the bundled model's matrix in the StaticBackend's raw format
    raw.mkdir()
    load_file(str(model_64_path / "model.safetensors"))["embeddings"].astype("<f4").tofile(raw / "vocab_matrix.bin")
    shutil.copyfile(model_64_path / "tokenizer.json", raw / "tokenizer.json")
    day1, day2 = tmp_path / "day1", tmp_path / "day2"
    model = ["--model", str(raw), "--dim", "64"]
    first = embed.run([*s.args(s.input1, day1), *model])
    assert first["semantics"] == "static_backend"
    manifest_path = day1 / "_manifest.json"
    old = json.loads(manifest_path.read_text(encoding="utf-8"))
    manifest_path.write_text(json.dumps({**old, "semantics": "seed"}), encoding="utf-8")

    second = reembed.run([*s.args(s.input2, day2, "--previous", str(day1)), *model])

    assert second["reused_previous_vectors"] is True and "reembed_all_because" not in second
    assert second["semantics"] == "static_backend"
    assert (second["rows"]["unchanged"], second["rows"]["encoded"]) == (len(s.unchanged), 400)


def test_changed_facts_compares_semantics_by_meaning() -> None:
    facts = {"model_fingerprint": "f", "dim": 64, "normalize": True, "max_length": None, "semantics": "static_backend"}
    assert changed_facts({**facts, "semantics": "seed"}, facts) == {}
    assert changed_facts({**facts, "semantics": "model2vec"}, facts) == {
        "semantics": {"previous": "model2vec", "current": "static_backend"}
    }
    assert changed_facts({**facts, "normalize": False, "dim": 32}, facts) == {
        "dim": {"previous": 32, "current": 64},
        "normalize": {"previous": False, "current": True},
    }


# ----------------------------------------------------------------------------------------------
# bad rows


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_bad_rows_on_day2(fmt: str, scenario: Scenario, model_64: Any, tmp_path: Path) -> None:
    s = scenario
    null_existing, null_new = s.unchanged[:3], [9000, 9001]
    bad: dict[int, Any] = dict.fromkeys(null_existing + null_new)
    if fmt == "jsonl":
        bad.update({s.unchanged[3]: 42, s.changed[0]: ["a", "list"], 9002: {"an": "object"}, 9003: 1.5})
    good = {i: row for i, row in s.day2.items() if i not in bad}
    records = [{"id": i, "text": text, KEEP: section} for i, (text, section) in good.items()]
    records += [{"id": i, "text": value, KEEP: "bad"} for i, value in bad.items()]
    records = [records[k] for k in np.random.default_rng(7).permutation(len(records))]
    if fmt == "jsonl":
        pattern = write_jsonl(tmp_path / "day2" / "day2.jsonl", records)
    else:
        pattern = write_parquet(tmp_path / "day2", {r["id"]: (r["text"], r[KEEP]) for r in records}, files=2)
    out = tmp_path / "out2"

    manifest = reembed.run(s.args(pattern, out, "--previous", str(s.out1)))

    rows = manifest["rows"]
    failures = failed_records(out)
    assert sorted(r["id"] for r in failures) == sorted(bad)
    kinds = {r["id"]: r["error_type"] for r in failures}
    assert {kinds[i] for i in null_existing + null_new} == {"NullText"}
    if fmt == "jsonl":
        assert {kinds[i] for i in bad if i not in null_existing + null_new} == {"NotAString"}
    assert rows["failed"] == len(bad)
    assert rows["read"] == len(records) == rows["embedded"] + rows["failed"]
    current = snapshot(out)
    assert current.column("id").to_pylist() == sorted(good)
    assert_vectors_are(current, s.texts(good), model_64)

    existing_bad = [i for i in bad if i in s.day1]
    good_new = [i for i in s.new if i in good]
    good_changed = [i for i in s.changed if i in good]
    assert rows["unchanged"] == len([i for i in s.unchanged if i in good])
    assert upserted(out).column("id").to_pylist() == sorted(good_new + good_changed)
    # the change set must take a store holding day 1 to exactly the day-2 snapshot: an id whose
    # row now fails is gone from the snapshot, so it must be deleted
    assert set(existing_bad) - set(deleted_ids(out)) == set(), "failed ids keep their stale day-1 vectors"
    assert deleted_ids(out) == sorted(s.deleted + existing_bad)
    assert_store_sync(snapshot(s.out1), out)
    assert rows["new"] + rows["changed"] == rows["upserts"] == len(good_new) + len(good_changed)
    assert rows["deleted"] == len(s.deleted) + len(existing_bad)


# ----------------------------------------------------------------------------------------------
# errors


def _no_manifest(root: Path, s: Scenario) -> Path:
    """A folder of Parquet files that is not an output (the day-1 corpus folder)."""
    return Path(s.input1).parent


def _leftover_staging(root: Path, s: Scenario) -> Path:
    """What a crashed run leaves: vector shards, no manifest."""
    folder = root / ".out1.staging-0123456789ab"
    folder.mkdir()
    for shard in s.out1.glob("part-*.parquet"):
        shutil.copy(shard, folder)
    return folder


def _no_text_hash(root: Path, s: Scenario) -> Path:
    """An output with a manifest whose shards have no text_hash column (as embed wrote before it had one)."""
    folder = root / "old-embed-output"
    shutil.copytree(s.out1, folder)
    for shard in folder.glob("part-*.parquet"):
        table = pq.read_table(shard)
        pq.write_table(table.drop_columns([HASH_COLUMN]), shard)
    return folder


@pytest.mark.parametrize(
    ("make_previous", "through_console"),
    [
        pytest.param(lambda root, s: root / "missing", False, id="missing-folder"),
        pytest.param(lambda root, s: Path(s.input1.replace("*", "corpus-0")), False, id="a-parquet-file"),
        pytest.param(lambda root, s: s.out2 / "_changes", False, id="changes-folder"),
        pytest.param(_no_manifest, True, id="corpus-folder"),
        pytest.param(_leftover_staging, False, id="staging-folder"),
        pytest.param(_no_text_hash, False, id="shards-without-hash"),
    ],
)
def test_previous_that_is_not_an_output(
    make_previous: Any, through_console: bool, scenario: Scenario, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One case through the ``beam-m2v reembed`` console command (exit code and stderr as a user sees them),
    the others through ``pipelines.reembed.main`` in-process (the same check, without 3 s of start-up each)."""
    s = scenario
    previous = make_previous(tmp_path, s)
    out = tmp_path / "out"
    args = s.args(s.input2, out, "--previous", str(previous))
    if through_console:
        completed = run_cli(args, console=True)
        code, stderr = completed.returncode, completed.stderr
    else:
        code, stderr = reembed.main(args), capsys.readouterr().err
    assert code == 2, stderr[-3000:]
    assert "Traceback" not in stderr
    message = stderr.strip().splitlines()[-1]
    assert message.startswith("beam-m2v reembed: error: ")
    assert "--previous" in message and str(previous) in message, message
    assert not out.exists()
    assert not list(tmp_path.glob(".out.*"))


def test_previous_error_from_python_module(scenario: Scenario, tmp_path: Path) -> None:
    s = scenario
    empty = tmp_path / "empty"
    empty.mkdir()
    completed = run_cli(s.args(s.input2, tmp_path / "out", "--previous", str(empty)))
    assert completed.returncode == 2
    assert "is not a finished output of beam-m2v" in completed.stderr
    assert completed.stdout == ""


# ----------------------------------------------------------------------------------------------
# PortableRunner with an EXTERNAL worker pool


@pytest.fixture(scope="module")
def worker_pool() -> Iterator[str]:
    """A Beam Python worker pool on loopback; each SDK worker it starts is a separate process."""
    with beam_worker_pool(cwd=REPO) as address:
        yield address


# A reembed on PortableRunner with an external SDK worker (Beam start-up in a second process): ~6-8 s here.
def test_portable_runner_gives_the_same_snapshot(scenario: Scenario, worker_pool: str, tmp_path: Path) -> None:
    s = scenario
    out = tmp_path / "out2-portable"
    portable = [
        "--runner=PortableRunner",
        "--job_endpoint=embed",
        "--environment_type=EXTERNAL",
        f"--environment_config={worker_pool}",
        "--sdk_worker_parallelism=1",
    ]
    manifest = reembed.run([*s.args(s.input2, out, "--previous", str(s.out1)), *portable])
    assert manifest["rows"] == read_manifest(s.out2)["rows"]
    assert_same_snapshot(snapshot(out), snapshot(s.out2), (KEEP,))
    assert upserted(out).equals(upserted(s.out2))
    assert deleted_ids(out) == deleted_ids(s.out2)
