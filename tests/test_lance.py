"""Lance datasets from Beam: ``WriteToLance`` on FnApiRunner, with real files and the bundled model.

Every dataset here is a real Lance dataset on local disk; vectors are checked bit for bit
against ``load_model(...).encode``.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from apache_beam.io.filesystems import FileSystems
from apache_beam.testing.util import assert_that, equal_to

import beam_m2v
from beam_m2v.errors import MissingDependencyError
from beam_m2v.transforms.lance_write import (
    LanceCommitConflict,
    LanceCommitPlan,
    LanceTarget,
    WriteLanceFragments,
    commit_fragments,
)
from pipelines import cli, embed, reembed
from pipelines.content_hash import text_hashes
from pipelines.lance_steps import RUNS_DIR
from pipelines.process_exit import CLOSED_OUTPUT
from tests.beam_helpers import fn_api_pipeline
from tests.conftest import REPO, SAMPLE_PARQUET, corpus_table, links_into
from tests.test_pipeline_reembed import KEEP, corpus_slice, write_parquet
from tests.test_remote_models import KEY_ID, S3, SECRET, moto_server

lance = pytest.importorskip("lance")


@pytest.fixture(scope="module")
def model_64(model_64_path: Path) -> Any:
    return beam_m2v.load_model(str(model_64_path))


def vector_schema(dim: int) -> pa.Schema:
    return pa.schema([("id", pa.int64()), ("text", pa.string()), ("embedding", pa.list_(pa.float32(), dim))])


def as_matrix(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    return np.asarray(column.flatten(), dtype=np.float32).reshape(len(column), column.type.list_size)


def corpus_slices(rows: int, parts: int) -> list[pa.Table]:
    table: pa.Table = corpus_table().slice(0, rows)
    bounds = np.linspace(0, rows, parts + 1).astype(int)
    return [table.slice(int(a), int(b - a)) for a, b in itertools.pairwise(bounds)]


def embed_into_lance(
    uri: str, model_path: Path, tables: list[pa.Table], dim: int, expected_commit: Any, **write: Any
) -> Any:
    beam_m2v.register_arrow_table_coder()
    with fn_api_pipeline() as pipeline:
        embedded, _ = (
            pipeline
            | beam.Create(tables)
            | beam_m2v.EmbedTables(str(model_path), text_column="text", output_column="embedding")
        )
        result = embedded | beam_m2v.WriteToLance(uri, vector_schema(dim), **write)
        summary = result | beam.Map(lambda c: (c.version, c.operation, c.rows_added, c.already_committed))
        assert_that(summary, equal_to([expected_commit]))
    return lance.dataset(uri)


def test_tables_are_written_and_committed_as_one_version(model_64, model_64_path, tmp_path):
    uri = str(tmp_path / "vectors.lance")
    tables = corpus_slices(1200, 6)
    expected_commit = (1, "create", 1200, False)
    dataset = embed_into_lance(uri, model_64_path, tables, model_64.dim, expected_commit, rows_per_fragment=250)
    assert dataset.version == 1 and len(dataset.versions()) == 1
    table = dataset.to_table().sort_by("id")
    texts = pa.concat_tables(tables).sort_by("id")
    assert table.column("id").equals(texts.column("id"))
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), model_64.dim)
    expected = model_64.encode(texts.column("text").to_pylist())
    assert as_matrix(table.column("embedding")).tobytes() == expected.tobytes()
    # Fragments were written by the workers (several, since each holds at most ~250 gathered rows).
    assert len(dataset.get_fragments()) >= 2


def test_dicts_append_and_overwrite_make_new_versions_and_keep_old_ones(tmp_path):
    uri = str(tmp_path / "rows.lance")
    schema = pa.schema([("id", pa.int64()), ("embedding", pa.list_(pa.float32(), 3))])
    rows = [{"id": i, "embedding": [float(i), 0.5, -1.0]} for i in range(10)]

    def write(elements: list[Any], mode: str) -> None:
        with fn_api_pipeline() as pipeline:
            _ = pipeline | beam.Create(elements) | beam_m2v.WriteToLance(uri, schema, mode=mode)

    write(rows[:6], "create")
    write(rows[6:], "append")
    write(rows[:2], "overwrite")
    assert [v["version"] for v in lance.dataset(uri).versions()] == [1, 2, 3]
    assert sorted(lance.dataset(uri, version=2).to_table().column("id").to_pylist()) == list(range(10))
    assert lance.dataset(uri).to_table().to_pylist() == [
        {"id": 0, "embedding": [0.0, 0.5, -1.0]},
        {"id": 1, "embedding": [1.0, 0.5, -1.0]},
    ]
    with pytest.raises(Exception, match="already exists"):
        write(rows, "create")
    assert lance.dataset(uri).version == 3


class FailAfterWriting(WriteLanceFragments):
    """Writes its fragments, then fails the bundle: the attempt's fragments exist but are never emitted."""

    def finish_bundle(self) -> Any:
        list(super().finish_bundle())
        raise RuntimeError("worker lost after writing its fragments")


def test_a_failed_attempt_leaves_the_previous_version_and_its_files_are_never_committed(model_64, tmp_path):
    uri = str(tmp_path / "retry.lance")
    schema = pa.schema([("id", pa.int64()), ("embedding", pa.list_(pa.float32(), 2))])
    first = pa.table({"id": [1, 2], "embedding": pa.array([[1, 2], [3, 4]], pa.list_(pa.float32(), 2))})
    with fn_api_pipeline() as pipeline:
        _ = pipeline | beam.Create([first]) | beam_m2v.WriteToLance(uri, schema)
    second = pa.table({"id": [3, 4], "embedding": pa.array([[5, 6], [7, 8]], pa.list_(pa.float32(), 2))})
    target = LanceTarget.of(uri)
    plan = LanceCommitPlan(target, schema, "append", expected_version=1)
    with pytest.raises(Exception, match="worker lost"), fn_api_pipeline() as pipeline:
        fragments = pipeline | beam.Create([second]) | beam.ParDo(FailAfterWriting(target, schema))
        _ = (
            pipeline
            | "Once" >> beam.Create([None])
            | beam.Map(lambda _, f: commit_fragments(plan, f), beam.pvalue.AsList(fragments))
        )
    dataset = lance.dataset(uri)
    assert dataset.version == 1 and dataset.to_table().column("id").to_pylist() == [1, 2]
    committed = {file.path for fragment in dataset.get_fragments() for file in fragment.metadata.files}
    orphans = {path.name for path in (tmp_path / "retry.lance" / "data").iterdir()} - committed
    assert len(orphans) == 1, "the failed attempt wrote its data file"
    # The next attempt (a whole new run here) commits its own fragments once; the orphan stays unreferenced.
    with fn_api_pipeline() as pipeline:
        _ = pipeline | beam.Create([second]) | beam_m2v.WriteToLance(uri, schema, mode="append")
    dataset = lance.dataset(uri)
    assert dataset.version == 2 and sorted(dataset.to_table().column("id").to_pylist()) == [1, 2, 3, 4]
    referenced = {file.path for fragment in dataset.get_fragments() for file in fragment.metadata.files}
    assert len(referenced) == 2 and not referenced & orphans


def test_a_retried_commit_finds_its_transaction_and_does_not_commit_again(tmp_path):
    uri = str(tmp_path / "once.lance")
    schema = pa.schema([("id", pa.int64())])
    target = LanceTarget.of(uri)
    fragments = [
        beam_m2v.transforms.lance_write.fragment_json(f)
        for f in lance.fragment.write_fragments(pa.table({"id": [1, 2, 3]}), uri, schema=schema)
    ]
    plan = LanceCommitPlan(target, schema, "append")
    first = commit_fragments(plan, fragments)
    again = commit_fragments(plan, fragments)
    assert (first.version, first.already_committed) == (1, False)
    assert (again.version, again.already_committed) == (1, True)
    assert lance.dataset(uri).to_table().column("id").to_pylist() == [1, 2, 3]


def test_expected_version_refuses_a_moved_dataset_and_commits_nothing(tmp_path):
    uri = str(tmp_path / "moved.lance")
    schema = pa.schema([("id", pa.int64())])
    lance.write_dataset(pa.table({"id": [1]}), uri)
    lance.write_dataset(pa.table({"id": [2]}), uri, mode="append")
    with pytest.raises(Exception, match="started from version 1 and now holds version 2"), fn_api_pipeline() as p:
        _ = p | beam.Create([{"id": 3}]) | beam_m2v.WriteToLance(uri, schema, mode="append", expected_version=1)
    assert lance.dataset(uri).version == 2


def test_two_updates_from_the_same_version_never_both_commit(tmp_path, monkeypatch):
    uri = str(tmp_path / "race.lance")
    schema = pa.schema([("id", pa.int64())])
    lance.write_dataset(pa.table({"id": list(range(10))}), uri, max_rows_per_file=5)
    target = LanceTarget.of(uri)

    def update(fragment_id: int, offset: int, new_id: int) -> tuple[LanceCommitPlan, list[str], list[str]]:
        read = lance.dataset(uri, version=1)
        updated = beam_m2v.transforms.lance_write.fragment_json(read.get_fragment(fragment_id).delete_rows([offset]))
        new = lance.fragment.write_fragments(pa.table({"id": [new_id]}), uri, schema=schema)
        plan = LanceCommitPlan(target, schema, "update", expected_version=1)
        return plan, [beam_m2v.transforms.lance_write.fragment_json(f) for f in new], [updated]

    # Disjoint fragments: Lance alone would merge the two; the shared untouched fragment makes them conflict.
    first, second = update(1, 2, 100), update(0, 3, 200)
    commit_fragments(first[0], first[1], updated_fragments=first[2])
    with pytest.raises(LanceCommitConflict, match="started from version 1 and now holds version 2"):
        commit_fragments(second[0], second[1], updated_fragments=second[2])
    # Both runs may pass that check at the same moment; then Lance's own conflict check refuses the second.
    monkeypatch.setattr(beam_m2v.transforms.lance_write, "_check_expected", lambda plan, latest: None)
    with pytest.raises(LanceCommitConflict):
        commit_fragments(second[0], second[1], updated_fragments=second[2])
    assert sorted(lance.dataset(uri).to_table().column("id").to_pylist()) == [0, 1, 2, 3, 4, 5, 6, 8, 9, 100]


def test_without_pylance_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "lance", None)  # what `import lance` sees when pylance is not installed
    with pytest.raises(MissingDependencyError, match=r"pip install 'beam-m2v\[lance\]'"):
        beam_m2v.WriteToLance("x.lance", pa.schema([("id", pa.int64())]))


# ----------------------------------------------------------------------------------------------
# beam-m2v embed / reembed --output PATH.lance
#
# Day 1: corpus ids 0..1999 with a kept column. Day 2: ids with id % 15 == 3 deleted, id % 20 == 7
# edited, the kept column changed (text untouched) where id % 50 == 11, ids 2000..2149 added.

DAY1_ROWS = 2000
DAY2_NEW = range(2000, 2150)


class LanceScenario:
    """Day 1 embedded into a Lance dataset, day 2 re-embedded into it, and day 2 embedded from scratch."""

    def __init__(self, root: Path, model: str) -> None:
        source = corpus_slice(DAY1_ROWS + len(DAY2_NEW))
        self.root = root
        self.model = model
        self.day1 = {i: (source[i], f"s{i % 7}") for i in range(DAY1_ROWS)}
        self.deleted = sorted(i for i in self.day1 if i % 15 == 3)
        self.changed = sorted(i for i in self.day1 if i % 20 == 7 and i not in self.deleted)
        self.moved = sorted(i for i in self.day1 if i % 50 == 11 and i not in self.deleted + self.changed)
        self.new = list(DAY2_NEW)
        self.day2: dict[int, tuple[str, str]] = {}
        for i, (text, section) in self.day1.items():
            if i in self.deleted:
                continue
            self.day2[i] = (f"{text} Revised on day 2." if i in self.changed else text, section)
            if i in self.moved:
                self.day2[i] = (text, "moved")
        self.day2.update({i: (source[i], "added") for i in self.new})
        self.input1 = write_parquet(root / "day1", self.day1, files=1)
        self.input2 = write_parquet(root / "day2", self.day2, files=2)
        self.dataset = str(root / "vectors.lance")

    def args(self, input_pattern: str, output: str, *extra: str) -> list[str]:
        return ["--input", input_pattern, "--output", output, "--model", self.model, "--keep-columns", KEEP, *extra]


def read_version(uri: str, version: int | None = None) -> pa.Table:
    return lance.dataset(uri, version=version).to_table().sort_by("id")


def run_records(uri: str) -> list[dict[str, Any]]:
    return [json.loads(path.read_text()) for path in sorted(Path(uri, RUNS_DIR).glob("*/manifest.json"))]


# Three pipeline runs (day 1, day 2 re-embedded, day 2 in full: ~15 s here), shared by the tests below.
@pytest.fixture(scope="module")
def lance_days(tmp_path_factory: pytest.TempPathFactory, model_64_path: Path) -> Any:
    s = LanceScenario(tmp_path_factory.mktemp("lance-days"), str(model_64_path))
    s.manifest1 = embed.run(s.args(s.input1, s.dataset))
    s.version1 = read_version(s.dataset)
    s.manifest2 = reembed.run(s.args(s.input2, s.dataset))
    s.full2 = str(s.root / "full2.lance")
    embed.run(s.args(s.input2, s.full2))
    return s


def test_embed_writes_vectors_hashes_kept_columns_and_model_facts(lance_days, model_64):
    s = lance_days
    dataset = lance.dataset(s.dataset, version=1)
    assert dataset.schema.remove_metadata() == pa.schema(
        [
            ("id", pa.int64()),
            ("embedding", pa.list_(pa.float32(), 64)),
            ("text_hash", pa.binary(16)),
            (KEEP, pa.string()),
        ]
    )
    facts = json.loads(dataset.schema.metadata[b"beam_m2v"])
    assert facts["model_fingerprint"] == model_64.fingerprint and facts["dim"] == 64
    table = s.version1
    assert table.column("id").to_pylist() == sorted(s.day1)
    expected = model_64.encode([s.day1[i][0] for i in sorted(s.day1)])
    assert as_matrix(table.column("embedding")).tobytes() == expected.tobytes()
    assert (
        table.column("text_hash").combine_chunks().equals(text_hashes(pa.array([s.day1[i][0] for i in sorted(s.day1)])))
    )
    assert s.manifest1["rows"] == {"read": 2000, "embedded": 2000, "failed": 0}
    assert (s.manifest1["version"], s.manifest1["operation"], s.manifest1["previous_version"]) == (1, "create", None)
    run_folder = Path(s.dataset, RUNS_DIR, s.manifest1["run"])
    assert json.loads((run_folder / "manifest.json").read_text()) == s.manifest1
    assert [Path(p).parent for p in s.manifest1["dead_letter_files"]] == [run_folder / "failed"]
    # The run record is also committed with the version itself.
    committed = json.loads(dataset.read_transaction(1).transaction_properties["beam_m2v_run"])
    assert committed == {k: v for k, v in s.manifest1.items() if k != "version"}


def test_reembed_latest_version_equals_a_full_embed_bit_for_bit(lance_days, model_64):
    s = lance_days
    latest, full = read_version(s.dataset), read_version(s.full2)
    assert lance.dataset(s.dataset).version == 2
    assert latest.schema.equals(full.schema, check_metadata=True)
    assert latest.column("id").to_pylist() == sorted(s.day2)
    for name in latest.column_names:
        assert latest.column(name).equals(full.column(name)), name
    expected = model_64.encode([s.day2[i][0] for i in sorted(s.day2)])
    assert as_matrix(latest.column("embedding")).tobytes() == expected.tobytes()


def test_reembed_commits_one_version_that_appends_and_deletes_only_what_changed(lance_days):
    s = lance_days
    rows = s.manifest2["rows"]
    changed = len(s.changed) + len(s.moved)  # a changed kept value rewrites the row (same vector)
    assert rows == {
        "read": len(s.day2),
        "embedded": len(s.day2),
        "failed": 0,
        "new": len(s.new),
        "changed": changed,
        "unchanged": len(s.day2) - len(s.new) - changed,
        "deleted": len(s.deleted),
        "encoded": len(s.new) + changed,
        "previous_read": DAY1_ROWS,
        "previous_rows_deleted": len(s.deleted) + changed,
    }
    assert (s.manifest2["operation"], s.manifest2["previous_version"], s.manifest2["version"]) == ("update", 1, 2)
    v1, v2 = lance.dataset(s.dataset, version=1), lance.dataset(s.dataset)
    files1 = {f.path for fragment in v1.get_fragments() for f in fragment.metadata.files}
    files2 = {f.path for fragment in v2.get_fragments() for f in fragment.metadata.files}
    assert files1 <= files2, "an unchanged vector's data file was rewritten"
    new_fragments = [fragment for fragment in v2.get_fragments() if fragment.metadata.files[0].path not in files1]
    assert sum(fragment.count_rows() for fragment in new_fragments) == len(s.new) + changed
    assert [record["version"] for record in run_records(s.dataset)] == [1, 2]


def test_the_previous_version_reads_as_before(lance_days):
    s = lance_days
    assert read_version(s.dataset, 1).equals(s.version1)


def test_a_model_change_commits_a_full_overwrite(lance_days, model_256_path, tmp_path):
    s = lance_days
    copy = tmp_path / "copy.lance"
    shutil.copytree(s.dataset, copy)
    manifest = reembed.run([*s.args(s.input2, str(copy)), "--model", str(model_256_path)])
    assert (manifest["operation"], manifest["version"], manifest["reused_previous_vectors"]) == ("overwrite", 3, False)
    assert manifest["rows"] == {"read": len(s.day2), "embedded": len(s.day2), "failed": 0}
    latest = read_version(str(copy))
    expected = beam_m2v.load_model(str(model_256_path)).encode([s.day2[i][0] for i in sorted(s.day2)])
    assert as_matrix(latest.column("embedding")).tobytes() == expected.tobytes()
    assert read_version(str(copy), 2).equals(read_version(s.dataset, 2))


# The second case puts the input file and the dataset in a folder named with pattern characters: Beam's
# file writer (dead letters) matches its own temporary files by pattern, and --input is a pattern.
@pytest.mark.parametrize(("folder", "name"), [("plain", "in.jsonl"), ("we[ir]d*{x}?", "in [1]*.jsonl")])
def test_bad_jsonl_rows_are_dead_letters_with_file_and_line(folder, name, model_64, model_64_path, tmp_path):
    lines = [json.dumps({"id": i, "text": text}) for i, text in enumerate(corpus_slice(40).values())]
    lines[5] = "{not json"
    lines[9] = json.dumps({"id": 9, "text": None})
    (tmp_path / folder).mkdir()
    source = tmp_path / folder / name
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    uri = str(tmp_path / folder / "bad[1].lance")
    manifest = embed.run(["--input", str(source), "--output", uri, "--model", str(model_64_path)])
    assert manifest["rows"] == {"read": 40, "embedded": 38, "failed": 2}
    records = [
        json.loads(line) for path in manifest["dead_letter_files"] for line in Path(path).read_text().splitlines()
    ]
    assert all(path.startswith(f"{uri}/{RUNS_DIR}/") for path in manifest["dead_letter_files"])
    assert sorted((r["source"], r["position"], r["error_type"]) for r in records) == [
        (str(source), 6, "InvalidJson"),
        (str(source), 10, "NullText"),
    ]
    assert sorted(read_version(uri).column("id").to_pylist()) == [i for i in range(40) if i not in (5, 9)]
    assert links_into(tmp_path) == []


def test_an_object_store_dataset_named_with_pattern_characters_is_refused(capsys, model_64_path):
    code, err = cli_exit(
        capsys,
        "embed",
        "--input",
        str(SAMPLE_PARQUET),
        "--model",
        str(model_64_path),
        "--output",
        "s3://bucket/vectors[1].lance",
    )
    assert code == 2
    assert err.strip().splitlines() == [
        "beam-m2v embed: error: --output 's3://bucket/vectors[1].lance': on object stores the output path cannot "
        "hold [ * ? (Beam's file sinks read them as patterns); choose another name"
    ]


def cli_exit(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = cli.main(list(argv))
    return code, capsys.readouterr().err


@pytest.mark.parametrize("command", ["embed", "reembed"])
def test_lance_output_without_pylance_is_refused_at_start_up(command, monkeypatch, capsys, tmp_path, model_64_path):
    monkeypatch.setitem(sys.modules, "lance", None)
    out = tmp_path / "v.lance"
    args = ["--input", str(SAMPLE_PARQUET), "--output", str(out), "--model", str(model_64_path)]
    code, err = cli_exit(capsys, command, *args)
    assert code == 2
    assert err.strip().splitlines() == [
        f"beam-m2v {command}: error: --output {out}: Lance datasets needs the 'pylance' package: "
        "pip install 'beam-m2v[lance]'"
    ]
    assert not out.exists()


def test_outputs_that_are_not_beam_m2v_datasets_are_refused(capsys, tmp_path, model_64_path):
    folder = tmp_path / "plain.lance"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    foreign = tmp_path / "foreign.lance"
    lance.write_dataset(pa.table({"id": [1]}), str(foreign))
    args = ["--input", str(SAMPLE_PARQUET), "--model", str(model_64_path)]
    code, err = cli_exit(capsys, "embed", *args, "--output", str(folder))
    assert code == 2 and "exists and is not a Lance dataset" in err and len(err.strip().splitlines()) == 1
    code, err = cli_exit(capsys, "reembed", *args, "--output", str(foreign))
    assert code == 2 and "beam-m2v did not write" in err and len(err.strip().splitlines()) == 1
    code, err = cli_exit(capsys, "reembed", *args, "--output", str(foreign), "--previous", str(tmp_path))
    assert code == 2 and "--previous is not used with a Lance output" in err
    assert (folder / "notes.txt").read_text() == "mine" and lance.dataset(str(foreign)).version == 1


# ----------------------------------------------------------------------------------------------
# crashes and concurrent runs (separate processes)


def cli_process(*args: str) -> subprocess.Popen[str]:
    """``python -m pipelines.cli ARGS`` in a process of its own (the pipeline runs inside it)."""
    return subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


def assert_is_full_embed(table: pa.Table, corpus: dict[int, tuple[str, str]], model: Any) -> None:
    """``table`` holds exactly the corpus's rows, with the model's vectors bit for bit."""
    ids = sorted(corpus)
    assert table.column("id").to_pylist() == ids
    assert table.column(KEEP).to_pylist() == [corpus[i][1] for i in ids]
    expected = model.encode([corpus[i][0] for i in ids])
    assert as_matrix(table.column("embedding")).tobytes() == expected.tobytes()


def files_under(folder: Path) -> set[Path]:
    return {path for path in folder.rglob("*") if path.is_file()}


# A run in its own process killed half-way, then a full run (~15-30 s on a shared 2-core machine).
def test_kill_9_during_a_reembed_leaves_the_previous_version_and_the_next_run_succeeds(lance_days, model_64, tmp_path):
    s = lance_days
    dataset = tmp_path / "killed.lance"
    shutil.copytree(s.dataset, dataset)  # at version 2 (day 2)
    before, files_before = read_version(str(dataset)), files_under(dataset)
    process = cli_process("reembed", *s.args(s.input1, str(dataset)))  # back to day 1
    written: set[Path] = set()
    deadline = time.monotonic() + 120
    while not written and process.poll() is None and time.monotonic() < deadline:
        written = {p for p in files_under(dataset / "data") | files_under(dataset / "_deletions")} - files_before
        time.sleep(0.005)
    assert written, f"the run ended before writing anything: {process.communicate()[1][-2000:]}"
    os.kill(process.pid, signal.SIGKILL)  # in the middle: its first data or deletion file exists, no commit yet
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert lance.dataset(str(dataset)).version == 2
    assert read_version(str(dataset)).equals(before)
    manifest = reembed.run(s.args(s.input1, str(dataset)))
    assert (manifest["version"], manifest["previous_version"]) == (3, 2)
    assert_is_full_embed(read_version(str(dataset)), s.day1, model_64)
    assert read_version(str(dataset), 2).equals(before)


def day3_corpus(s: LanceScenario, root: Path) -> tuple[str, dict[int, tuple[str, str]]]:
    """Day 2 with every ninth text edited and 50 more ids."""
    extra = corpus_slice(DAY2_NEW.stop + 50)
    day3 = {i: (f"{text} Edited on day 3." if i % 9 == 0 else text, section) for i, (text, section) in s.day2.items()}
    day3.update({i: (extra[i], "day3") for i in range(DAY2_NEW.stop, DAY2_NEW.stop + 50)})
    return write_parquet(root, day3, files=1), day3


def check_race(
    processes: list[subprocess.Popen[str]], corpora: list[dict[int, tuple[str, str]]], uri: str, model: Any, **open: Any
) -> None:
    """Either one run committed and the other failed cleanly, or the second one started from the first's version."""
    outputs = [process.communicate(timeout=300) for process in processes]
    codes = [process.returncode for process in processes]
    assert sorted(codes) in ([0, 1], [0, 0]), outputs
    dataset = lance.dataset(uri, **open)
    versions = [v["version"] for v in dataset.versions()]
    if sorted(codes) == [0, 1]:
        winner, loser = codes.index(0), codes.index(1)
        message = outputs[loser][1].strip().splitlines()[-1]
        assert message.startswith("beam-m2v reembed: error: ") and "this run committed nothing" in message, message
        assert versions[-1] == 3 and len(versions) == 3
        assert_is_full_embed(lance.dataset(uri, version=3, **open).to_table().sort_by("id"), corpora[winner], model)
    else:  # the runs did not overlap: the later one re-embedded on top of the earlier one's version
        assert versions[-1] == 4
        for version in (3, 4):
            table = lance.dataset(uri, version=version, **open).to_table().sort_by("id")
            matches = []
            for corpus in corpora:
                try:
                    assert_is_full_embed(table, corpus, model)
                    matches.append(corpus)
                except AssertionError:
                    pass
            assert len(matches) == 1, f"version {version} is not one run's snapshot"


# Two concurrent pipelines in separate processes (~15 s on a shared 2-core machine).
def test_two_reembeds_at_once_never_mix(lance_days, model_64, tmp_path):
    s = lance_days
    dataset = tmp_path / "race.lance"
    shutil.copytree(s.dataset, dataset)
    day3_input, day3 = day3_corpus(s, tmp_path / "day3")
    processes = [
        cli_process("reembed", *s.args(s.input1, str(dataset))),
        cli_process("reembed", *s.args(day3_input, str(dataset))),
    ]
    check_race(processes, [s.day1, day3], str(dataset), model_64)


# ----------------------------------------------------------------------------------------------
# s3:// (moto's S3 server on loopback)

LANCE_BUCKET = "beam-m2v-lance"


@pytest.fixture(scope="module")
def lance_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3]:
    """moto's S3 server on a free loopback port, with an empty bucket, recording requests on demand."""
    with moto_server(tmp_path_factory.mktemp("moto-lance"), LANCE_BUCKET) as server:
        yield server


def s3_storage(server: S3) -> dict[str, str]:
    return {
        "aws_endpoint": server.endpoint,
        "aws_access_key_id": KEY_ID,
        "aws_secret_access_key": SECRET,
        "aws_region": "us-east-1",
        "allow_http": "true",
    }


# Three pipeline runs against the S3 server plus two concurrent ones (~40 s here): the whole life of
# a dataset on an object store, in one test so that the server's state is built once.
def test_s3_embed_reembed_and_concurrent_reembeds(lance_days, lance_s3, model_64, tmp_path):
    s = lance_days
    uri = f"s3://{LANCE_BUCKET}/vectors.lance"
    storage = {"storage_options": s3_storage(lance_s3)}
    previous_options = FileSystems._pipeline_options
    try:
        first = embed.run([*s.args(s.input1, uri), *lance_s3.options])
        with lance_s3.record() as requests:
            second = reembed.run([*s.args(s.input2, uri), *lance_s3.options])
    finally:
        FileSystems.set_options(previous_options)
    assert (first["version"], second["version"], second["operation"]) == (1, 2, "update")
    assert second["rows"] == s.manifest2["rows"]
    latest = lance.dataset(uri, **storage).to_table().sort_by("id")
    assert latest.equals(read_version(s.full2))  # bit for bit, kept columns and model facts included
    assert lance.dataset(uri, version=1, **storage).to_table().sort_by("id").equals(s.version1)
    # Lance commits a version with a conditional write (create only if absent): two writers of one version
    # cannot both succeed. The run record is beside the data, written through Beam's S3 filesystem.
    manifest_puts = [r for r in requests if r["method"] == "PUT" and "/_versions/" in r["url"]]
    manifest_puts = [r for r in manifest_puts if r["url"].split("?")[0].endswith(".manifest")]
    assert len(manifest_puts) == 1 and manifest_puts[0]["headers"].get("If-None-Match") == "*"
    record = lance_s3.client.get_object(
        Bucket=LANCE_BUCKET, Key=f"vectors.lance/{RUNS_DIR}/{second['run']}/manifest.json"
    )
    assert json.loads(record["Body"].read()) == second

    day3_input, day3 = day3_corpus(s, tmp_path / "day3")
    processes = [
        cli_process("reembed", *s.args(s.input1, uri), *lance_s3.options),
        cli_process("reembed", *s.args(day3_input, uri), *lance_s3.options),
    ]
    check_race(processes, [s.day1, day3], uri, model_64, **storage)


# ----------------------------------------------------------------------------------------------
# beam-m2v search / index

QUERIES = [
    "how to configure the network driver",
    "memory allocation in the kernel",
    "usb device power management",
    "file system mount options",
    "interrupt handling on arm",
]


def brute_force(table: pa.Table, query: np.ndarray) -> list[tuple[int, float]]:
    """Every row's cosine similarity to ``query``, best first (ties in table order)."""
    vectors = as_matrix(table.column("embedding")).astype(np.float64)
    q = query.astype(np.float64)
    scores = vectors @ q / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(q))
    order = np.lexsort((np.arange(len(scores)), -scores))
    ids = table.column("id").to_pylist()
    return [(ids[i], float(scores[i])) for i in order]


def search_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[list[dict[str, Any]], str]:
    assert cli.main(["search", *argv, "--json"]) == 0
    out, err = capsys.readouterr()
    return [json.loads(line) for line in out.splitlines()], err


def test_search_json_is_one_line_per_hit_whatever_the_id(capsys: pytest.CaptureFixture[str]) -> None:
    from pipelines.search import Hit, print_hits

    ids = ["plain", "a\u2028b", "c\x85d", "e\u2029f\ng"]
    print_hits([Hit(id=value, score=1.0 - n / 10) for n, value in enumerate(ids)], as_json=True)
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["id"] for line in lines] == ids


@pytest.fixture(scope="module")
def parquet_output(tmp_path_factory: pytest.TempPathFactory, model_64_path: Path) -> Path:
    """The bundled sample embedded into a Parquet output folder, its text kept."""
    out = tmp_path_factory.mktemp("search") / "sample"
    args = ["--input", str(SAMPLE_PARQUET), "--output", str(out), "--model", str(model_64_path)]
    embed.run([*args, "--keep-columns", "text"])
    return out


def test_exact_search_over_lance_equals_brute_force_cosine(lance_days, model_64, capsys):
    s = lance_days
    table = lance.dataset(s.dataset).to_table()
    for query in QUERIES:
        expected = brute_force(table, model_64.encode([query])[0])[:10]
        hits, err = search_json(capsys, s.dataset, query)  # the model recorded with the dataset
        assert [hit["id"] for hit in hits] == [row_id for row_id, _ in expected]
        assert [hit["score"] for hit in hits] == pytest.approx([score for _, score in expected], abs=1e-6)
        assert "exact search" in err


def test_search_prints_rank_score_id_and_the_kept_text(parquet_output, model_64, capsys):
    table = ds.dataset(parquet_output, format="parquet").to_table()  # side files start with "_"
    expected = brute_force(table, model_64.encode([QUERIES[0]])[0])[:3]
    assert cli.main(["search", str(parquet_output), QUERIES[0], "--k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    texts = dict(zip(table.column("id").to_pylist(), table.column("text").to_pylist(), strict=True))
    assert len(lines) == 3
    for rank, (line, (row_id, score)) in enumerate(zip(lines, expected, strict=True), start=1):
        assert line.split()[:3] == [str(rank), f"{score:.4f}", str(row_id)]
        assert " ".join(texts[row_id].split()).startswith(line.split(None, 3)[3].rstrip())


def test_search_refuses_a_model_of_another_dimension_and_missing_targets(
    parquet_output, model_256_path, capsys, tmp_path
):
    assert cli.main(["search", str(parquet_output), "query", "--model", str(model_256_path)]) == 2
    assert "makes 256-dim vectors" in capsys.readouterr().err
    assert cli.main(["search", str(tmp_path / "nothing"), "query"]) == 2
    assert "neither a Lance dataset" in capsys.readouterr().err
    assert cli.main(["search", str(tmp_path / "nothing.lance"), "query"]) == 2
    assert "no Lance dataset there" in capsys.readouterr().err


@pytest.mark.parametrize("query", ["", "   \n\t"])
def test_search_refuses_a_query_whose_vector_is_zero(parquet_output, query, capsys):
    """Every cosine with a zero vector is undefined: no hits with made-up scores of 0."""
    assert cli.main(["search", str(parquet_output), query, "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and "has no token the model knows" in captured.err


def test_search_piped_into_a_reader_that_stops_early_ends_quietly(parquet_output):
    """``beam-m2v search ... | head -1``: the program stops without a traceback, with the code of a closed pipe."""
    script = Path(sys.executable).parent / "beam-m2v"
    search = subprocess.Popen(
        [str(script), "search", str(parquet_output), "kernel", "--k", "2000"],  # far more than a pipe holds
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert search.stdout is not None and search.stderr is not None
    first = search.stdout.readline()
    search.stdout.close()  # the reader goes away with hits still to print
    errors = search.stderr.read().decode()
    assert search.wait(timeout=120) == CLOSED_OUTPUT, errors
    assert first.split()[0] == b"1"
    assert "Traceback" not in errors and "BrokenPipe" not in errors


# An embed run, an index build and 10 searches through the console command (~10-15 s here).
def test_an_index_is_used_and_finds_the_exact_top_10(parquet_output, model_64_path, model_64, capsys, tmp_path):
    uri = str(tmp_path / "indexed.lance")
    embed.run(["--input", str(SAMPLE_PARQUET), "--output", uri, "--model", str(model_64_path)])
    assert cli.main(["index", uri]) == 0
    assert "built a IVF_PQ index" in capsys.readouterr().out
    dataset = lance.dataset(uri)
    assert dataset.version == 2 and [index["fields"] for index in dataset.list_indices()] == [["embedding"]]
    table = dataset.to_table()
    found = 0
    for query in QUERIES:
        exact = [row_id for row_id, _ in brute_force(table, model_64.encode([query])[0])[:10]]
        hits, err = search_json(capsys, uri, query)
        assert "index search" in err
        assert hits[0]["id"] == exact[0]
        found += len({hit["id"] for hit in hits} & set(exact))
        exact_hits, err = search_json(capsys, uri, query, "--exact")
        assert [hit["id"] for hit in exact_hits] == exact and "exact search" in err
    assert found / (10 * len(QUERIES)) >= 0.9  # recall@10 against exact search


def write_id_text(path: Path, rows: list[tuple[int, str]], id_type: pa.DataType) -> str:
    """Rows ``(id, text)`` as a Parquet file with ids of ``id_type``; returns its path."""
    ids = pa.array([r[0] for r in rows]).cast(id_type)
    pq.write_table(pa.table({"id": ids, "text": [r[1] for r in rows]}), path)
    return str(path)


def rows_by_id_and_hash(output: Path, version: int | None = None) -> pa.Table:
    """A dataset version's rows, ordered by id and then text hash (rows of one id have no order of their own)."""
    table = lance.dataset(str(output), version=version).to_table()
    return table.sort_by([("id", "ascending"), ("text_hash", "ascending")])


@pytest.mark.parametrize("id_type", [pa.int64(), pa.string()])
def test_reembed_with_duplicate_ids_equals_a_full_embed(id_type, model_64, model_64_path, tmp_path):
    texts = corpus_slice(120)
    day1 = [(i, texts[i]) for i in range(100)] + [(5, texts[5]), (7, texts[107])]
    day2 = [row for row in day1 if row != (7, texts[107])] + [(7, texts[108]), (10, texts[10]), (10, texts[10])]
    day2 = [row for row in day2 if row[0] != 20] + [(20, texts[20])] * 3  # one previous row, three unchanged copies

    def write(rows: list[tuple[int, str]], name: str) -> str:
        return write_id_text(tmp_path / f"{name}.parquet", rows, id_type)

    def args(source: str, output: Path) -> list[str]:
        return ["--input", source, "--output", str(output), "--model", str(model_64_path)]

    uri, full = tmp_path / "dups.lance", tmp_path / "full.lance"
    embed.run(args(write(day1, "day1"), uri))
    manifest = reembed.run(args(write(day2, "day2"), uri))
    embed.run(args(write(day2, "day2"), full))
    assert manifest["rows"]["unchanged_copies"] == 4  # ids 10 and 20: one previous row each, three current rows
    assert manifest["rows"]["read"] == manifest["rows"]["embedded"] == len(day2)

    assert rows_by_id_and_hash(uri).equals(rows_by_id_and_hash(full))
    table = rows_by_id_and_hash(uri)
    order = sorted(
        day2, key=lambda row: (pa.scalar(row[0]).cast(id_type).as_py(), text_hashes(pa.array([row[1]]))[0].as_py())
    )
    assert as_matrix(table.column("embedding")).tobytes() == model_64.encode([t for _, t in order]).tobytes()


@pytest.mark.parametrize("id_type", [pa.int64(), pa.string()])
def test_reembeds_in_a_row_equal_full_embeds_when_fragments_empty_and_rows_repeat(id_type, model_64_path, tmp_path):
    """Day 2 appends a fragment of changed rows; day 3 deletes all of it (the fragment goes) and repeats an id."""
    texts = corpus_slice(200)
    day1 = {i: texts[i] for i in range(60)}
    day2 = {i: (f"{texts[i]} Edited." if 20 <= i < 40 else texts[i]) for i in range(60)}
    day3_rows = [(i, day2[i]) for i in range(20)] + [(5, day2[5])]  # 20..39 vanish: day 2's whole fragment
    day3_rows += [(i, texts[100 + i]) for i in range(40, 60)] + [(i, texts[i]) for i in range(60, 70)]

    def run(program: Any, rows: list[tuple[int, str]], name: str, output: Path) -> dict[str, Any]:
        source = write_id_text(tmp_path / f"{name}.parquet", rows, id_type)
        manifest: dict[str, Any] = program.run(
            ["--input", source, "--output", str(output), "--model", str(model_64_path)]
        )
        return manifest

    uri = tmp_path / "days.lance"
    run(embed, list(day1.items()), "day1", uri)
    second = run(reembed, list(day2.items()), "day2", uri)
    fragments2 = {fragment.fragment_id for fragment in lance.dataset(str(uri)).get_fragments()}
    third = run(reembed, day3_rows, "day3", uri)
    for name, rows in (("full2", list(day2.items())), ("full3", day3_rows)):
        run(embed, rows, name, tmp_path / f"{name}.lance")
    assert rows_by_id_and_hash(uri, 2).equals(rows_by_id_and_hash(tmp_path / "full2.lance"))
    assert rows_by_id_and_hash(uri).equals(rows_by_id_and_hash(tmp_path / "full3.lance"))
    expected = [{"changed": 20, "unchanged": 40, "deleted": 0}]
    expected.append({"new": 10, "changed": 20, "unchanged": 21, "deleted": 20, "unchanged_copies": 1})
    for manifest, counts in zip((second, third), expected, strict=True):
        assert {key: manifest["rows"].get(key) for key in counts} == counts
    assert third["rows"]["previous_rows_deleted"] == 40  # 20 vanished and 20 changed
    left = {fragment.fragment_id for fragment in lance.dataset(str(uri)).get_fragments()}
    assert max(fragments2) not in left, "day 2's fragment lost every row and stays in the version"


def test_a_lance_output_reads_its_options_as_the_parquet_path_does(model_64_path, tmp_path, caplog):
    """Underscore spellings are ours, abbreviations are not, and an argument nobody knows is named."""
    from pipelines import lance_output
    from pipelines.inputs import JSONL_ROWS_PER_TABLE
    from tests.conftest import SAMPLE_PARQUET

    argv = ["--input", str(SAMPLE_PARQUET), "--output", str(tmp_path / "v.lance"), "--model", str(model_64_path)]
    with caplog.at_level("WARNING"):
        args, _, _ = lance_output._start("embed", [*argv, "--text_column", "text", "--batch", "7"])
    assert args.text_column == "text" and args.batch_size == JSONL_ROWS_PER_TABLE  # "--batch" is not --batch-size
    assert "--batch 7 is neither a beam-m2v option nor a Beam pipeline option" in caplog.text
