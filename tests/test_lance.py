"""Lance datasets from Beam: ``WriteToLance`` on FnApiRunner, with real files and the bundled model.

Every dataset here is a real Lance dataset on local disk; vectors are checked bit for bit
against ``load_model(...).encode``.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pytest
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
from tests.beam_helpers import fn_api_pipeline
from tests.conftest import corpus_table

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
