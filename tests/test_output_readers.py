"""The output folder as the readers users have see it: pyarrow, pandas, Polars, DuckDB, ``beam-m2v show``.

An ``embed`` output and a ``reembed`` output (with dead letters and a change set beside the
vectors) are read by each reader pointed at the folder; every reader must see exactly the
snapshot's rows, with the vectors of ``load_model(...).encode``. The Python snippets of
docs/output-format.md are run as written.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

import beam_m2v
from pipelines import embed, reembed, show
from tests.conftest import REPO, corpus_table

DIM = 64


class Outputs:
    """Day 1 embedded, day 2 re-embedded; what each snapshot must hold."""

    def __init__(self, root: Path, model_path: Path) -> None:
        table: pa.Table = corpus_table()
        texts = dict(zip(table.column("id").to_pylist(), table.column("text").to_pylist(), strict=True))
        day1: dict[int, str | None] = {i: texts[i] for i in range(1500)}
        day1[7] = day1[1234] = None  # dead letters
        day2: dict[int, str | None] = {i: texts[i] for i in range(100, 1600)}
        day2.update({i: f"{texts[i]} Revised." for i in range(200, 260)})
        day2[333] = None
        self.model_args = ["--model", str(model_path)]
        self.day1_input = self._write(root / "day1", day1)
        self.day2_input = self._write(root / "day2", day2)
        self.day1, self.day2 = root / "out1", root / "out2"
        self.texts1 = {i: t for i, t in day1.items() if t is not None}
        self.texts2 = {i: t for i, t in day2.items() if t is not None}
        embed.run(["--input", self.day1_input, "--output", str(self.day1), *self.model_args])
        reembed.run(
            ["--input", self.day2_input, "--previous", str(self.day1), "--output", str(self.day2), *self.model_args]
        )

    @staticmethod
    def _write(folder: Path, rows: dict[int, str | None]) -> str:
        folder.mkdir(parents=True)
        ids = sorted(rows)
        table = pa.table(
            {
                "id": pa.array(ids, pa.int64()),
                "text": pa.array([rows[i] for i in ids], pa.string()),
                "section": pa.array([f"s{i % 5}" for i in ids]),
            }
        )
        pq.write_table(table.slice(0, 700), folder / "a.parquet", row_group_size=300)
        pq.write_table(table.slice(700), folder / "b.parquet", row_group_size=300)
        return str(folder / "*.parquet")

    def each(self) -> list[tuple[Path, dict[int, str]]]:
        return [(self.day1, self.texts1), (self.day2, self.texts2)]


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory, model_64_path: Path) -> Outputs:
    return Outputs(tmp_path_factory.mktemp("readers"), model_64_path)


@pytest.fixture(scope="module")
def model(model_64_path: Path) -> beam_m2v.StaticEmbedder:
    return beam_m2v.load_model(model_64_path)


def check_rows(ids: list[int], vectors: np.ndarray, texts: dict[int, str], model: Any) -> None:
    """Exactly the snapshot's ids, once each, with ``encode``'s vectors."""
    assert sorted(ids) == sorted(texts) and len(ids) == len(set(ids))
    assert vectors.dtype == np.float32
    assert np.array_equal(vectors, model.encode([texts[i] for i in ids]))


def test_the_side_files_are_there(outputs):
    """The readers below are tested against folders that do hold dead letters and a change set."""
    for out in (outputs.day1, outputs.day2):
        assert list((out / "_failed").glob("*.jsonl")) and (out / "_manifest.json").is_file()
        assert any(line.strip() for path in (out / "_failed").glob("*.jsonl") for line in path.read_text().splitlines())
    assert {path.name.split("-")[0] for path in (outputs.day2 / "_changes").glob("*.parquet")} == {"upserts", "deletes"}


def test_pyarrow_dataset_reads_the_snapshot(outputs, model):
    for out, texts in outputs.each():
        table = ds.dataset(str(out)).to_table()
        assert table.schema.field("embedding").type == pa.list_(pa.float32(), DIM)
        assert table.schema.field("text_hash").type == pa.binary(16)
        assert str(table.schema.field("text_hash").type) == "fixed_size_binary[16]"
        assert table.schema.names == ["id", "embedding", "text_hash"]
        vectors = table.column("embedding").combine_chunks().flatten().to_numpy().reshape(-1, DIM)
        check_rows(table.column("id").to_pylist(), vectors, texts, model)
        manifest = json.loads((out / "_manifest.json").read_text())
        assert manifest["rows"]["embedded"] == len(table) == len(texts)


def test_pandas_read_parquet_reads_the_snapshot(outputs, model):
    for out, texts in outputs.each():
        frame = pd.read_parquet(out)
        assert list(frame.columns) == ["id", "embedding", "text_hash"]
        vectors = np.stack(frame["embedding"].to_list())
        check_rows(frame["id"].to_list(), vectors, texts, model)
        assert {type(value) for value in frame["text_hash"]} == {bytes}
        assert {len(value) for value in frame["text_hash"]} == {16}


def test_polars_scan_of_the_shards_reads_the_snapshot(outputs, model):
    for out, texts in outputs.each():
        frame = pl.scan_parquet(f"{out}/*.parquet").collect()
        assert frame.schema["embedding"] == pl.Array(pl.Float32, DIM)
        assert frame.schema["text_hash"] == pl.Binary
        check_rows(frame["id"].to_list(), frame["embedding"].to_numpy(), texts, model)


def test_polars_refuses_the_folder_itself(outputs):
    """Why the docs name the shards: Polars will not read a folder that also holds other files."""
    with pytest.raises(pl.exceptions.InvalidOperationError, match="different file extensions"):
        pl.read_parquet(outputs.day2)


def test_duckdb_reads_the_shards_and_needs_a_cast_for_array_functions(outputs, model):
    for out, texts in outputs.each():
        shards = f"read_parquet('{out}/*.parquet')"
        con = duckdb.connect()
        types = {row[0]: row[1] for row in con.sql(f"DESCRIBE SELECT * FROM {shards}").fetchall()}
        assert types == {"id": "BIGINT", "embedding": "FLOAT[]", "text_hash": "BLOB"}
        rows = con.sql(f"SELECT id, embedding, octet_length(text_hash) FROM {shards}").fetchall()
        ids = [row[0] for row in rows]
        check_rows(ids, np.array([row[1] for row in rows], dtype=np.float32), texts, model)
        assert {row[2] for row in rows} == {16}
        with pytest.raises(duckdb.BinderException, match="array_cosine_similarity"):
            con.sql(f"SELECT array_cosine_similarity(embedding, embedding) FROM {shards}").fetchall()
        query_id = min(texts)
        query_row = f"SELECT embedding::FLOAT[{DIM}] AS v, embedding AS w FROM {shards} WHERE id = {query_id}"
        scores = con.sql(
            f"SELECT id, array_cosine_similarity(embedding::FLOAT[{DIM}], q.v), list_cosine_similarity(embedding, q.w) "
            f"FROM {shards}, ({query_row}) q"
        ).fetchall()
        vectors = model.encode([texts[row[0]] for row in scores]).astype(np.float64)
        query = model.encode([texts[query_id]])[0].astype(np.float64)
        expected = vectors @ query / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(query))
        assert np.allclose([row[1] for row in scores], expected, atol=1e-6)
        assert np.allclose([row[2] for row in scores], expected, atol=1e-6)


def test_the_readers_above_read_byte_stream_split_pages(outputs):
    for out in (outputs.day1, outputs.day2):
        for shard in out.glob("part-*.parquet"):
            metadata = pq.read_metadata(shard)
            for group in range(metadata.num_row_groups):
                for column in range(metadata.num_columns):
                    chunk = metadata.row_group(group).column(column)
                    if chunk.path_in_schema == "embedding.list.element":
                        assert "BYTE_STREAM_SPLIT" in chunk.encodings, shard


# -- show and reembed on this layout and the older one -------------------------------------------


def older_layout(output: Path, target: Path) -> Path:
    """A copy of ``output`` laid out as older versions wrote it (manifest.json, failed/, changes/)."""
    shutil.copytree(output, target)
    (target / "_manifest.json").rename(target / "manifest.json")
    (target / "_failed").rename(target / "failed")
    if (target / "_changes").exists():
        (target / "_changes").rename(target / "changes")
    return target


def test_show_prints_counts_and_rows_of_both_layouts(outputs, tmp_path, capsys):
    older = older_layout(outputs.day2, tmp_path / "older")
    for out in (outputs.day2, older):
        assert show.main([str(out), "--rows", "3"]) == 0
        printed = capsys.readouterr().out
        rows = json.loads((outputs.day2 / "_manifest.json").read_text())["rows"]
        assert f"rows: {dict(sorted(rows.items()))}" in printed or f"rows: {rows}" in printed, printed
        assert f"vectors: {len(outputs.texts2):,} rows, schema fixed_size_list<element: float>[{DIM}]" in printed
        assert len(re.findall(r"^\s+\d+\s+\[", printed, flags=re.M)) == 3, printed


def test_show_of_a_folder_that_is_not_an_output_exits_2(tmp_path, capsys):
    assert show.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("beam-m2v show: error: ") and str(tmp_path) in err[0], err


def test_reembed_reads_a_previous_output_in_the_older_layout(outputs, model, tmp_path):
    older = older_layout(outputs.day1, tmp_path / "older")
    out = tmp_path / "out2"
    manifest = reembed.run(
        ["--input", outputs.day2_input, "--previous", str(older), "--output", str(out), *outputs.model_args]
    )
    expected = json.loads((outputs.day2 / "_manifest.json").read_text())["rows"]
    assert manifest["rows"] == expected
    table = ds.dataset(str(out)).to_table()
    vectors = table.column("embedding").combine_chunks().flatten().to_numpy().reshape(-1, DIM)
    check_rows(table.column("id").to_pylist(), vectors, outputs.texts2, model)
    assert sorted(os.listdir(out)) == [
        "_changes",
        "_failed",
        "_manifest.json",
        *sorted(p.name for p in out.glob("*.parquet")),
    ]


# -- the snippets of docs/output-format.md -------------------------------------------------------


def doc_snippets() -> list[str]:
    text = (REPO / "docs" / "output-format.md").read_text(encoding="utf-8")
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_the_docs_snippets_run_as_written(model, tmp_path, monkeypatch):
    """Every Python snippet, in order, from a folder laid out like the repository (models/, samples/)."""
    for name in ("models", "samples"):
        (tmp_path / name).symlink_to(REPO / name, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    found: dict[str, Any] = {}
    snippets = doc_snippets()
    assert len(snippets) == 6
    for snippet in snippets:
        namespace: dict[str, Any] = {}
        exec(compile(snippet, "docs/output-format.md", "exec"), namespace)
        found.update(namespace)
    sample = pq.read_table(REPO / "samples" / "linux-doc-sample.parquet")
    rows = len(sample)
    assert found["manifest"]["rows"] == {"read": rows, "embedded": rows, "failed": 0}
    assert len(found["table"]) == len(found["frame"]) == found["polars_frame"].height == rows
    assert found["count"] == [(rows,)]
    texts = dict(zip(sample.column("id").to_pylist(), sample.column("text").to_pylist(), strict=True))
    vectors = found["table"].column("embedding").combine_chunks().flatten().to_numpy().reshape(-1, DIM)
    check_rows(found["table"].column("id").to_pylist(), vectors, texts, model)
    nearest = found["nearest"]
    assert len(nearest) == 5 and nearest[0][0] == 0 and nearest[0][1] == pytest.approx(1.0, abs=1e-6)
    query = model.encode([texts[0]])[0].astype(np.float64)
    for row_id, score in nearest:
        vector = model.encode([texts[row_id]])[0].astype(np.float64)
        assert score == pytest.approx(vector @ query / (np.linalg.norm(vector) * np.linalg.norm(query)), abs=1e-6)
