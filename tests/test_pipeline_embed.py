"""End-to-end tests of ``pipelines.embed``: real files in, real runners, the published output read back.

Every run goes through a real entry point (``python -m pipelines.embed``, the ``beam-m2v embed``
console script, or ``pipelines.embed.run(argv)`` in-process) and is checked against
``beam_m2v.load_model(path).encode`` of the input texts, vector for vector.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

import beam_m2v
from pipelines.embed import main, run
from tests.beam_helpers import beam_worker_pool
from tests.conftest import REPO, corpus_jsonl_lines
from tests.conftest import corpus_table as whole_corpus

BOOKKEEPING = {"__source", "__position"}
SUMMARY = re.compile(r"done: ([\d,]+) rows read, ([\d,]+) embedded, ([\d,]+) failed")


# -- data and run helpers ------------------------------------------------------------------------


def corpus_table(start: int, stop: int) -> pa.Table:
    """Rows ``start:stop`` of the test corpus (id int64, text string)."""
    table: pa.Table = whole_corpus()
    return table.slice(start, stop - start)


def write_parquet_parts(table: pa.Table, folder: Path, parts: list[tuple[int, int, int]]) -> list[Path]:
    """Write ``table[start:stop]`` to ``folder/input-i.parquet`` with the given row group size, per part."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, (start, stop, row_group_size) in enumerate(parts):
        path = folder / f"input-{index}.parquet"
        pq.write_table(table.slice(start, stop - start), path, row_group_size=row_group_size)
        assert pq.ParquetFile(path).metadata.num_row_groups == -(-(stop - start) // row_group_size)
        paths.append(path)
    return paths


def subprocess_env() -> dict[str, str]:
    """This interpreter first on PATH (for any worker Beam starts), and no hub access."""
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
    }


def run_command(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run a command with ``subprocess_env()``, capturing its output as text."""
    return subprocess.run(
        argv,
        cwd=cwd,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        errors="replace",
        timeout=600,
        check=False,
    )


def embed_module(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    """``python -m pipelines.embed ARGS`` with this interpreter."""
    return run_command([sys.executable, "-m", "pipelines.embed", *args], cwd)


def embed_in_process(*args: str) -> subprocess.CompletedProcess[str]:
    """``pipelines.embed.main(ARGS)`` in this process: its exit code and what it printed, as a finished process.

    The same program as ``python -m pipelines.embed`` without the 3 s of Python and Beam start-up;
    the tests that must see the real process (exit code, no traceback) keep a subprocess.
    """
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return subprocess.CompletedProcess(["pipelines.embed.main", *args], code, out.getvalue(), err.getvalue())


def embed_console(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``beam-m2v embed ARGS``: the console script installed next to this interpreter."""
    script = Path(sys.executable).parent / "beam-m2v"
    assert script.exists(), script
    return run_command([str(script), "embed", *args], cwd)


def succeeded(process: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert process.returncode == 0, f"exit {process.returncode}\n{process.stderr[-4000:]}"
    return process


def read_rows(out: Path) -> pa.Table:
    """All vector rows of a published output: pyarrow's default discovery skips the ``_`` side files."""
    return ds.dataset(str(out), format="parquet").to_table()


def vectors_of(table: pa.Table) -> np.ndarray:
    column = table.column("embedding").combine_chunks()
    return column.flatten().to_numpy(zero_copy_only=False).reshape(len(table), column.type.list_size)


def sorted_rows(out: Path, id_column: str = "id") -> tuple[list[Any], np.ndarray]:
    table = read_rows(out).sort_by(id_column)
    return table.column(id_column).to_pylist(), vectors_of(table)


def dead_letters(out: Path) -> list[dict[str, Any]]:
    records = []
    for path in sorted((out / "_failed").glob("*.jsonl")):
        records += [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return records


def manifest_of(out: Path) -> dict[str, Any]:
    return json.loads((out / "_manifest.json").read_text(encoding="utf-8"))


def part_files(out: Path) -> list[Path]:
    return sorted(out.glob("part-*.parquet"))


def check_facts(facts: dict[str, Any], model: beam_m2v.StaticEmbedder, model_path: Path) -> None:
    assert facts["model_fingerprint"] == model.fingerprint
    assert facts["dim"] == model.dim
    assert facts["normalize"] is model.settings.normalize
    assert facts["model_source"] == str(model_path)
    assert facts["beam_m2v_version"] == beam_m2v.__version__
    assert facts["apache_beam_version"] == beam.__version__


def check_part_files(out: Path, model: beam_m2v.StaticEmbedder, model_path: Path, id_type: pa.DataType) -> None:
    """Every shard: model facts in its key-value metadata, zstd everywhere, fixed_size_list<float32>[dim]."""
    parts = part_files(out)
    assert parts, sorted(os.listdir(out))
    for part in parts:
        metadata = pq.read_metadata(part)
        assert metadata.metadata is not None and b"beam_m2v" in metadata.metadata, part
        check_facts(json.loads(metadata.metadata[b"beam_m2v"]), model, model_path)
        schema = pq.read_schema(part)
        assert schema.field("embedding").type == pa.list_(pa.float32(), model.dim)
        assert not BOOKKEEPING & set(schema.names), schema.names
        assert schema.field(schema.names[0]).type == id_type
        for group in range(metadata.num_row_groups):
            for column in range(metadata.num_columns):
                assert metadata.row_group(group).column(column).compression == "ZSTD", (part, group, column)


def check_manifest(
    out: Path, model: beam_m2v.StaticEmbedder, model_path: Path, *, read: int, embedded: int, failed: int
) -> dict[str, Any]:
    """The manifest's counts (also against what is really on disk) and model facts."""
    manifest = manifest_of(out)
    assert manifest["rows"] == {"read": read, "embedded": embedded, "failed": failed}
    assert read == embedded + failed
    assert len(read_rows(out)) == embedded
    assert len(dead_letters(out)) == failed
    check_facts(manifest, model, model_path)
    return manifest


def check_vectors(
    out: Path, texts_by_id: dict[Any, str], model: beam_m2v.StaticEmbedder, id_column: str = "id"
) -> None:
    """Every id present exactly once, with exactly the reference vector of its text."""
    table = read_rows(out)
    ids = table.column(id_column).to_pylist()
    duplicates = [key for key, count in Counter(ids).items() if count > 1]
    assert not duplicates, duplicates[:10]
    assert set(ids) == set(texts_by_id)
    expected = model.encode([texts_by_id[key] for key in ids])
    assert np.array_equal(vectors_of(table), expected)


def siblings(out: Path) -> list[str]:
    """Anything beside OUT that a run left behind (staging, lock, retired or rejected folders)."""
    names = (f"{out.name}.", f".{out.name}.")
    return sorted(path.name for path in out.parent.iterdir() if path.name.startswith(names))


# -- shared fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model(model_64_path: Path) -> beam_m2v.StaticEmbedder:
    return beam_m2v.load_model(model_64_path)


@pytest.fixture(scope="module")
def parquet_input(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pa.Table]:
    """3,000 corpus rows in three files of 3, 3 and 1 row groups."""
    table = corpus_table(0, 3000)
    folder = tmp_path_factory.mktemp("parquet-input")
    write_parquet_parts(table, folder, [(0, 1200, 500), (1200, 2000, 300), (2000, 3000, 1000)])
    return folder, table


@pytest.fixture(scope="module")
def parquet_run(
    parquet_input: tuple[Path, pa.Table], model_64_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """The reference run: ``python -m pipelines.embed`` on FnApiRunner (the default)."""
    folder, _ = parquet_input
    out = tmp_path_factory.mktemp("parquet-run") / "vectors"
    process = embed_module("--input", str(folder / "*.parquet"), "--output", str(out), "--model", str(model_64_path))
    return out, succeeded(process)


@pytest.fixture(scope="module")
def worker_pool(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A Beam Python worker pool for ``--environment_type=EXTERNAL``; its SDK workers use this interpreter.

    Yields ``(address, log file)``; the pool's output goes to the log, for diagnosing a failed run.
    """
    log = tmp_path_factory.mktemp("worker-pool") / "pool.log"
    with beam_worker_pool(env=subprocess_env(), log=log) as address:
        yield address, log


# -- Parquet and JSONL inputs --------------------------------------------------------------------


def test_parquet_input_vectors_equal_the_reference(parquet_run, parquet_input, model, model_64_path):
    out, _ = parquet_run
    _, table = parquet_input
    texts_by_id = dict(zip(table.column("id").to_pylist(), table.column("text").to_pylist(), strict=True))
    check_vectors(out, texts_by_id, model)
    assert dead_letters(out) == []
    manifest = check_manifest(out, model, model_64_path, read=3000, embedded=3000, failed=0)
    assert manifest["input_format"] == "parquet"
    assert len(manifest["input_files"]) == 3
    # int64 ids pass through with their type and values.
    assert read_rows(out).schema.field("id").type == pa.int64()


def test_parquet_shards_carry_model_facts_zstd_and_fixed_size_lists(parquet_run, model, model_64_path):
    out, _ = parquet_run
    check_part_files(out, model, model_64_path, pa.int64())
    assert not siblings(out)


def column_encodings(part: Path) -> dict[str, set[str]]:
    """The Parquet encodings used by each leaf column of a shard, over all row groups."""
    metadata = pq.read_metadata(part)
    found: dict[str, set[str]] = defaultdict(set)
    for group in range(metadata.num_row_groups):
        for column in range(metadata.num_columns):
            chunk = metadata.row_group(group).column(column)
            found[chunk.path_in_schema].update(chunk.encodings)
    return found


def test_vectors_are_byte_stream_split_without_dictionaries(parquet_run):
    out, _ = parquet_run
    for part in part_files(out):
        encodings = column_encodings(part)
        assert encodings["embedding.list.element"] == {"BYTE_STREAM_SPLIT", "RLE"}, encodings
        for column in ("id", "text_hash"):
            assert not {"PLAIN_DICTIONARY", "RLE_DICTIONARY"} & encodings[column], (column, encodings)


def test_no_byte_stream_split_writes_plain_vector_pages(parquet_input, model, model_64_path, tmp_path):
    folder, table = parquet_input
    out = tmp_path / "vectors"
    args = ["--input", str(folder / "input-1.parquet"), "--output", str(out), "--model", str(model_64_path)]
    run([*args, "--no-byte-stream-split"])
    for part in part_files(out):
        assert column_encodings(part)["embedding.list.element"] == {"PLAIN", "RLE"}
    part = table.slice(1200, 800)
    check_vectors(out, dict(zip(part["id"].to_pylist(), part["text"].to_pylist(), strict=True)), model)


def test_the_final_summary_is_printed_once_on_stdout(parquet_run):
    out, process = parquet_run
    found = SUMMARY.findall(process.stdout)
    assert len(found) == 1, process.stdout[-2000:]
    assert not SUMMARY.search(process.stderr), process.stderr[-2000:]  # progress and log lines only
    rows = manifest_of(out)["rows"]
    assert tuple(int(n.replace(",", "")) for n in found[0]) == (rows["read"], rows["embedded"], rows["failed"])


@pytest.mark.parametrize(
    ("compressed", "console"),
    [(False, True), (False, False), (True, False)],
    ids=["plain-via-console-script", "plain-in-process", "gzip-in-process"],
)
def test_jsonl_input_plain_and_gzip(compressed, console, model, model_64_path, tmp_path):
    lines = corpus_jsonl_lines(2000)
    folder = tmp_path / "input"
    folder.mkdir()
    suffix = ".jsonl.gz" if compressed else ".jsonl"
    for index, chunk in enumerate([lines[:1300], lines[1300:]]):
        data = b"".join(chunk)
        (folder / f"corpus-{index}{suffix}").write_bytes(gzip.compress(data) if compressed else data)
    out = tmp_path / "vectors"
    args = ["--input", str(folder / f"*{suffix}"), "--output", str(out), "--model", str(model_64_path)]
    # The console script runs from another folder than the repository: the installed command must work.
    # (``python -m pipelines.embed`` is the reference run of the Parquet tests.)
    process = embed_console(*args, cwd=tmp_path) if console else embed_in_process(*args)
    succeeded(process)
    records = [json.loads(line) for line in lines]
    check_vectors(out, {record["id"]: record["text"] for record in records}, model)
    manifest = check_manifest(out, model, model_64_path, read=2000, embedded=2000, failed=0)
    assert manifest["input_format"] == "jsonl"
    check_part_files(out, model, model_64_path, pa.int64())
    assert SUMMARY.search(process.stdout), process.stdout[-2000:]


# -- columns, ids, dimensionality ----------------------------------------------------------------


def test_renamed_and_kept_columns_with_string_ids_parquet(model, model_64_path, tmp_path):
    base = corpus_table(3000, 4200)
    n = len(base)
    table = pa.table(
        {
            "lang": pa.array(["en" if i % 3 else "de" for i in range(n)]),
            "doc_key": pa.array([f"doc-é-{i:05d}" for i in range(n)]),
            "body": base.column("text"),
            "score": pa.array(np.arange(n, dtype=np.int32) * 7),
            "not_kept": pa.array(np.zeros(n)),
        }
    )
    write_parquet_parts(table, tmp_path / "input", [(0, 700, 256), (700, n, 256)])
    out = tmp_path / "vectors"
    manifest = run(
        [
            "--input",
            str(tmp_path / "input" / "*.parquet"),
            "--output",
            str(out),
            "--model",
            str(model_64_path),
            "--text-column",
            "body",
            "--id-column",
            "doc_key",
            "--keep-columns",
            "lang,score,body",
        ]
    )
    assert manifest["rows"] == {"read": n, "embedded": n, "failed": 0}
    result = read_rows(out)
    assert result.schema.names[:2] == ["doc_key", "embedding"]
    assert {"lang", "score", "body"} <= set(result.schema.names)
    assert not ({"not_kept", "id", "text"} | BOOKKEEPING) & set(result.schema.names), result.schema.names
    assert result.schema.field("doc_key").type == pa.string()
    assert result.schema.field("score").type == pa.int32()
    check_vectors(
        out, dict(zip(table["doc_key"].to_pylist(), table["body"].to_pylist(), strict=True)), model, "doc_key"
    )
    # Kept values stay on their own row.
    expected = {row["doc_key"]: row for row in table.select(["doc_key", "lang", "score", "body"]).to_pylist()}
    for row in result.select(["doc_key", "lang", "score", "body"]).to_pylist():
        assert row == expected[row["doc_key"]]


@pytest.mark.parametrize(
    "make_id",
    [lambda i: f"key/{i:04d}", lambda i: 9_007_199_254_740_993 + 2 * i],
    ids=["string-ids", "int-ids-beyond-float-precision"],
)
def test_renamed_columns_and_ids_unchanged_jsonl(make_id, model, model_64_path, tmp_path):
    lines = corpus_jsonl_lines(1500)
    records = [json.loads(line) for line in lines]
    source = tmp_path / "docs.jsonl"
    with open(source, "w", encoding="utf-8") as handle:
        for record in records:
            key = make_id(record["id"])
            handle.write(json.dumps({"key": key, "content": record["text"], "tag": f"t{record['id'] % 5}"}) + "\n")
    out = tmp_path / "vectors"
    args = ["--input", str(source), "--output", str(out), "--model", str(model_64_path)]
    run([*args, "--text-column", "content", "--id-column", "key", "--keep-columns", "tag"])
    table = read_rows(out)
    expected_type = pa.string() if isinstance(make_id(0), str) else pa.int64()
    assert table.schema.field("key").type == expected_type
    texts_by_key = {make_id(record["id"]): record["text"] for record in records}
    check_vectors(out, texts_by_key, model, "key")
    tags = {make_id(record["id"]): f"t{record['id'] % 5}" for record in records}
    assert all(tags[row["key"]] == row["tag"] for row in table.select(["key", "tag"]).to_pylist())
    assert manifest_of(out)["rows"] == {"read": 1500, "embedded": 1500, "failed": 0}


def test_dimensionality_32(parquet_input, model_64_path, tmp_path):
    folder, table = parquet_input
    out = tmp_path / "vectors"
    args = ["--input", str(folder / "input-1.parquet"), "--output", str(out), "--model", str(model_64_path)]
    run([*args, "--dimensionality", "32"])
    model_32 = beam_m2v.load_model(model_64_path, dimensionality=32)
    assert model_32.dim == 32
    part = table.slice(1200, 800)
    check_vectors(out, dict(zip(part["id"].to_pylist(), part["text"].to_pylist(), strict=True)), model_32)
    check_part_files(out, model_32, model_64_path, pa.int64())
    check_manifest(out, model_32, model_64_path, read=800, embedded=800, failed=0)


# -- bad input -----------------------------------------------------------------------------------


def huge_text(corpus_texts: list[str], size: int = 10 * 1024 * 1024) -> str:
    """About ``size`` characters of real paragraphs."""
    block = " ".join(corpus_texts[:2000])
    return (block + " ") * (size // (len(block) + 1)) + block[: size % (len(block) + 1)]


# (raw line, expectation): ("ok", id, text) is embedded, ("fail", error_type, id or None), ("blank",) skipped.
def bad_jsonl_lines(big: str) -> list[tuple[bytes, tuple[Any, ...]]]:
    def good(key: int, text: str) -> tuple[bytes, tuple[Any, ...]]:
        return json.dumps({"id": key, "text": text}, ensure_ascii=False).encode(), ("ok", key, text)

    return [
        good(1, "The first good paragraph of this file."),
        (b'{"id": 2, "text": "an unterminated string', ("fail", "InvalidJson", None)),
        (b'{"id": 3, "text": "trailing comma",}', ("fail", "InvalidJson", None)),
        (b"[1, 2, 3]", ("fail", "NotAnObject", None)),
        (b"42", ("fail", "NotAnObject", None)),
        (b'"just a string"', ("fail", "NotAnObject", None)),
        (b"", ("blank",)),
        (b'{"id": 8}', ("fail", "MissingField", 8)),
        (b'{"id": 9, "text": null}', ("fail", "NullText", 9)),
        (b'{"id": 10, "text": 12345}', ("fail", "NotAString", 10)),
        (b'{"id": 11, "text": 1.5e3}', ("fail", "NotAString", 11)),
        (b'{"id": 12, "text": "a lone \\ud800 surrogate"}', ("fail", "InvalidUnicode", 12)),
        (b'{"id": 13, "text": "invalid \xff\xfe bytes"}', ("fail", "InvalidUtf8", None)),
        good(14, "The first of two lines with the same id."),
        good(14, "The second of two lines with the same id."),
        good(16, ""),
        (b"   \t ", ("blank",)),
        good(18, big),
        (
            b'{"id": 19, "text": "an escaped pair \\ud83d\\ude00 is fine"}',
            ("ok", 19, "an escaped pair \U0001f600 is fine"),
        ),
        (b"", ("blank",)),
        good(21, "The last line has no newline after it."),
    ]


@pytest.fixture(scope="module")
def bad_jsonl_run(model_64_path, corpus_texts, tmp_path_factory):
    """One in-process run on every kind of bad line and a 10 MB one: about 10 s on an idle machine, most
    of it spent checking the 10 MB line's nesting depth (its text holds brackets), once in the launcher's
    type scan and once in the pipeline."""
    folder = tmp_path_factory.mktemp("bad-jsonl")
    lines = bad_jsonl_lines(huge_text(corpus_texts))
    source = folder / "mixed.jsonl"
    source.write_bytes(b"\n".join(raw for raw, _ in lines))  # no final newline
    out = folder / "vectors"
    process = embed_in_process(
        "--input", str(source), "--output", str(out), "--model", str(model_64_path), "--max-failed-fraction", "1"
    )
    return source, lines, out, process


def test_bad_jsonl_lines_become_one_dead_letter_each(bad_jsonl_run, model, model_64_path):
    source, lines, out, process = bad_jsonl_run
    succeeded(process)
    expected_failures = {
        number: expectation for number, (_, expectation) in enumerate(lines, start=1) if expectation[0] == "fail"
    }
    records = dead_letters(out)
    positions = Counter(record["position"] for record in records)
    assert sorted(positions) == sorted(expected_failures), records
    assert all(count == 1 for count in positions.values()), positions
    for record in records:
        _, error_type, key = expected_failures[record["position"]]
        assert record["error_type"] == error_type, record
        assert Path(record["source"]).resolve() == source.resolve(), record
        assert record["reason"], record
        assert isinstance(record["value"], str) and record["value"], record
        if key is not None:
            assert record["id"] == key, record
    rows_in = sum(1 for _, expectation in lines if expectation[0] != "blank")
    embedded = sum(1 for _, expectation in lines if expectation[0] == "ok")
    check_manifest(out, model, model_64_path, read=rows_in, embedded=embedded, failed=len(expected_failures))
    assert SUMMARY.search(process.stdout), process.stdout[-2000:]


def test_good_lines_among_bad_ones_embed_like_the_reference(bad_jsonl_run, model):
    _, lines, out, process = bad_jsonl_run
    succeeded(process)
    expected: dict[int, list[bytes]] = defaultdict(list)
    for _, expectation in lines:
        if expectation[0] == "ok":
            _, key, text = expectation
            expected[key].append(model.encode([text])[0].tobytes())
    table = read_rows(out)
    found: dict[int, list[bytes]] = defaultdict(list)
    for key, vector in zip(table.column("id").to_pylist(), vectors_of(table), strict=True):
        found[key].append(vector.tobytes())
    # Duplicate ids are not deduplicated: both lines are embedded, each with its own text's vector.
    assert {key: sorted(v) for key, v in found.items()} == {key: sorted(v) for key, v in expected.items()}
    by_id = dict(zip(table.column("id").to_pylist(), vectors_of(table), strict=True))
    assert np.array_equal(by_id[16], np.zeros(model.dim, dtype=np.float32))  # empty text: zero vector
    assert np.abs(by_id[18]).sum() > 0  # the 10 MB line: truncated like the reference, not empty


@pytest.fixture(scope="module")
def late_bad_id_run(model_64_path, tmp_path_factory):
    """1,100 int-id lines; line 1,050 (past the 1,000 lines the launcher samples) has a string id."""
    folder = tmp_path_factory.mktemp("late-bad-id")
    source = folder / "ids.jsonl"
    with open(source, "w", encoding="utf-8") as handle:
        for number in range(1, 1101):
            key: Any = "not-a-number" if number == 1050 else number
            handle.write(json.dumps({"id": key, "text": f"paragraph on line {number}"}) + "\n")
    out = folder / "vectors"
    run(["--input", str(source), "--output", str(out), "--model", str(model_64_path)])
    return source, out


def test_an_id_of_another_type_fails_alone(late_bad_id_run, model):
    source, out = late_bad_id_run
    records = dead_letters(out)
    assert [(r["position"], r["error_type"], r["id"]) for r in records] == [(1050, "BadValueType", "not-a-number")]
    assert Path(records[0]["source"]).resolve() == source.resolve()
    table = read_rows(out)
    assert table.schema.field("id").type == pa.int64()
    check_vectors(out, {n: f"paragraph on line {n}" for n in range(1, 1101) if n != 1050}, model)
    assert manifest_of(out)["rows"] == {"read": 1100, "embedded": 1099, "failed": 1}


def test_a_bad_value_type_dead_letter_keeps_the_text(late_bad_id_run):
    _, out = late_bad_id_run
    (record,) = dead_letters(out)
    assert "paragraph on line 1050" in record["value"], record


def test_one_string_id_among_int_ids_fails_alone(model, model_64_path, tmp_path):
    source = tmp_path / "ids.jsonl"
    keys: list[Any] = [1, 2, "three", 4, 5, 6]
    source.write_text("".join(json.dumps({"id": k, "text": f"text of {k}"}) + "\n" for k in keys), encoding="utf-8")
    out = tmp_path / "vectors"
    run(["--input", str(source), "--output", str(out), "--model", str(model_64_path), "--max-failed-fraction", "1"])
    assert [(r["position"], r["error_type"]) for r in dead_letters(out)] == [(3, "BadValueType")]
    check_vectors(out, {k: f"text of {k}" for k in keys if isinstance(k, int)}, model)


def test_a_lone_surrogate_id_does_not_crash_the_job(model, model_64_path, tmp_path):
    source = tmp_path / "ids.jsonl"
    source.write_text(
        '{"id": "a", "text": "a fine text"}\n{"id": "\\ud800", "text": "ok"}\n{"id": "c", "text": "also fine"}\n',
        encoding="utf-8",
    )
    out = tmp_path / "vectors"
    process = embed_module(
        "--input", str(source), "--output", str(out), "--model", str(model_64_path), "--max-failed-fraction", "1"
    )
    assert process.returncode == 0, process.stderr[-2000:]
    records = dead_letters(out)
    assert [r["position"] for r in records] == [2], records
    assert records[0]["error_type"] in {"BadValueType", "InvalidUnicode"}, records
    check_vectors(out, {"a": "a fine text", "c": "also fine"}, model)


def test_parquet_null_texts_are_dead_letters_at_their_row(model, model_64_path, tmp_path):
    texts_a: list[str | None] = [f"text number {i}" for i in range(10)]
    for row in (1, 5, 9):  # one null in each of the three row groups
        texts_a[row] = None
    texts_b: list[str | None] = ["", "b one", "b two", "b three", None, "b five"]
    folder = tmp_path / "input"
    write_parquet_parts(pa.table({"id": range(10), "text": pa.array(texts_a, pa.string())}), folder, [(0, 10, 4)])
    (folder / "input-0.parquet").rename(folder / "a.parquet")
    write_parquet_parts(pa.table({"id": range(100, 106), "text": pa.array(texts_b, pa.string())}), folder, [(0, 6, 3)])
    (folder / "input-0.parquet").rename(folder / "b.parquet")
    out = tmp_path / "vectors"
    args = ["--input", str(folder / "*.parquet"), "--output", str(out), "--model", str(model_64_path)]
    run([*args, "--max-failed-fraction", "0.25"])  # 4 of 16 rows fail
    found = sorted((Path(r["source"]).name, r["position"], r["id"], r["error_type"]) for r in dead_letters(out))
    assert found == [
        ("a.parquet", 1, 1, "NullText"),
        ("a.parquet", 5, 5, "NullText"),
        ("a.parquet", 9, 9, "NullText"),
        ("b.parquet", 4, 104, "NullText"),
    ]
    good = {i: t for i, t in enumerate(texts_a) if t is not None}
    good |= {100 + i: t for i, t in enumerate(texts_b) if t is not None}
    check_vectors(out, good, model)
    check_manifest(out, model, model_64_path, read=16, embedded=12, failed=4)


@pytest.mark.parametrize(
    "text_type", [pa.dictionary(pa.int32(), pa.string()), pa.string_view()], ids=["dictionary", "string_view"]
)
def test_parquet_text_of_other_string_types(text_type, model, model_64_path, tmp_path):
    texts = ["alpha beta", "gamma delta", "alpha beta", "epsilon"]
    table = pa.table({"id": [1, 2, 3, 4], "text": pa.array(texts, pa.string()).cast(text_type)})
    pq.write_table(table, tmp_path / "in.parquet")
    out = tmp_path / "vectors"
    run(["--input", str(tmp_path / "in.parquet"), "--output", str(out), "--model", str(model_64_path)])
    assert dead_letters(out) == []
    check_vectors(out, dict(enumerate(texts, start=1)), model)


# -- start-up errors -----------------------------------------------------------------------------


def check_clean_start_up_error(process: subprocess.CompletedProcess[str], out: Path) -> str:
    assert process.returncode == 2, f"exit {process.returncode}\n{process.stderr[-3000:]}"
    assert "Traceback" not in process.stderr, process.stderr[-3000:]
    assert not out.exists()
    assert not siblings(out)
    return process.stderr


def test_parquet_without_the_text_column_exits_2(model_64_path, tmp_path):
    pq.write_table(pa.table({"id": [1, 2], "body": ["a", "b"], "lang": ["en", "en"]}), tmp_path / "only.parquet")
    out = tmp_path / "vectors"
    process = embed_module(
        "--input", str(tmp_path / "only.parquet"), "--output", str(out), "--model", str(model_64_path)
    )
    message = check_clean_start_up_error(process, out)
    assert "'text'" in message
    assert all(column in message for column in ("'id'", "'body'", "'lang'")), message


def test_a_later_parquet_file_without_the_text_column_exits_2(model_64_path, tmp_path):
    """In-process: the real process's exit code and stderr are shown by the test above."""
    folder = tmp_path / "input"
    write_parquet_parts(corpus_table(0, 200), folder, [(0, 200, 100)])
    pq.write_table(pa.table({"id": [1, 2], "body": ["a", "b"]}), folder / "z-no-text.parquet")
    out = tmp_path / "vectors"
    process = embed_in_process(
        "--input", str(folder / "*.parquet"), "--output", str(out), "--model", str(model_64_path)
    )
    message = check_clean_start_up_error(process, out)
    assert "z-no-text.parquet" in message and "'text'" in message and "'body'" in message, message


def test_a_pattern_matching_nothing_exits_2(model_64_path, tmp_path):
    """In-process, like the test above."""
    pattern = str(tmp_path / "nowhere" / "*.parquet")
    out = tmp_path / "vectors"
    process = embed_in_process("--input", pattern, "--output", str(out), "--model", str(model_64_path))
    message = check_clean_start_up_error(process, out)
    assert pattern in message and "no files" in message.lower(), message


# -- atomic publication and determinism ----------------------------------------------------------


def test_a_rerun_replaces_the_output_completely(parquet_input, model, model_64_path, tmp_path):
    folder, _ = parquet_input
    out = tmp_path / "vectors"
    first_args = ["--input", str(folder / "*.parquet"), "--output", str(out), "--model", str(model_64_path)]
    run([*first_args, "--direct_num_workers=2", "--direct_running_mode=multi_threading"])
    first_parts = {path.name for path in part_files(out)}
    assert len(first_parts) >= 2, first_parts  # so that a stale shard would show
    assert len(read_rows(out)) == 3000

    second = corpus_table(4000, 4500)
    write_parquet_parts(second, tmp_path / "second", [(0, 500, 500)])
    second_file = tmp_path / "second" / "input-0.parquet"
    run(["--input", str(second_file), "--output", str(out), "--model", str(model_64_path)])

    second_ids = set(second["id"].to_pylist())
    for part in part_files(out):  # every shard on disk belongs to the second run
        assert set(pq.read_table(part, columns=["id"])["id"].to_pylist()) <= second_ids, part.name
    check_vectors(out, dict(zip(second["id"].to_pylist(), second["text"].to_pylist(), strict=True)), model)
    manifest = check_manifest(out, model, model_64_path, read=500, embedded=500, failed=0)
    assert manifest["input_files"] == [str(second_file)]
    assert not siblings(out)


def test_a_leftover_staging_folder_does_not_leak_into_the_output(parquet_input, model, model_64_path, tmp_path):
    folder, table = parquet_input
    out = tmp_path / "vectors"
    crashed = tmp_path / ".vectors.staging-0123456789ab"  # no lock file, or one no process holds: a dead run
    crashed.mkdir()
    bogus = pa.table(
        {"id": pa.array([999_999], pa.int64()), "embedding": pa.array([[1.0] * 64], pa.list_(pa.float32(), 64))}
    )
    pq.write_table(bogus, crashed / "part-00000-of-00002.parquet")
    (crashed / "_manifest.json").write_text('{"rows": {"read": 1, "embedded": 1, "failed": 0}}')
    run(["--input", str(folder / "input-2.parquet"), "--output", str(out), "--model", str(model_64_path)])
    part = table.slice(2000, 1000)
    check_vectors(out, dict(zip(part["id"].to_pylist(), part["text"].to_pylist(), strict=True)), model)
    check_manifest(out, model, model_64_path, read=1000, embedded=1000, failed=0)
    assert "part-00000-of-00002.parquet" not in {path.name for path in part_files(out)}
    # The run removed the dead run's staging folder and left nothing of its own beside the output.
    assert siblings(out) == []


def test_the_same_input_gives_the_same_rows(parquet_run, parquet_input, model_64_path, tmp_path):
    reference, _ = parquet_run
    folder, _ = parquet_input
    out = tmp_path / "vectors"
    for _ in range(2):  # the second run replaces the first in place
        run(["--input", str(folder / "*.parquet"), "--output", str(out), "--model", str(model_64_path)])
        ids, vectors = sorted_rows(out)
        reference_ids, reference_vectors = sorted_rows(reference)
        assert ids == reference_ids
        assert np.array_equal(vectors, reference_vectors)


# -- other runners -------------------------------------------------------------------------------


def check_same_output(out: Path, reference: Path) -> None:
    ids, vectors = sorted_rows(out)
    reference_ids, reference_vectors = sorted_rows(reference)
    assert ids == reference_ids
    assert np.array_equal(vectors, reference_vectors)
    assert manifest_of(out)["rows"] == manifest_of(reference)["rows"]
    assert dead_letters(out) == dead_letters(reference)


def test_portable_runner_with_external_workers_equals_fn_api_runner(
    worker_pool, parquet_run, parquet_input, model, model_64_path, tmp_path
):
    reference, _ = parquet_run
    folder, _ = parquet_input
    address, pool_log = worker_pool
    out = tmp_path / "vectors"
    process = embed_module(
        *("--input", str(folder / "*.parquet"), "--output", str(out), "--model", str(model_64_path)),
        "--runner=PortableRunner",
        "--job_endpoint=embed",
        "--environment_type=EXTERNAL",
        f"--environment_config={address}",
    )
    pool_output = pool_log.read_text(errors="replace")[-3000:]
    assert process.returncode == 0, f"exit {process.returncode}\n{process.stderr[-4000:]}\npool:\n{pool_output}"
    check_same_output(out, reference)
    check_part_files(out, model, model_64_path, pa.int64())
    assert SUMMARY.search(process.stdout)


def interpreter_under_a_hostile_path(tmp_path: Path) -> str:
    """This virtual environment's Python, reached through a folder whose path holds a space and shell characters."""
    if sys.prefix == sys.base_prefix:  # not a virtual environment: the interpreter as it is
        return sys.executable
    link = tmp_path / "my env (1) & $HOME"
    link.symlink_to(sys.prefix, target_is_directory=True)
    return str(link / Path(sys.executable).relative_to(sys.prefix))


# Two FnApiRunner SDK worker processes start, each importing Beam and loading the model: ~5-9 s here.
def test_multi_processing_equals_in_memory(parquet_run, parquet_input, model, model_64_path, tmp_path):
    """Also from a Python whose path needs quoting in a shell: Beam starts these workers through one."""
    reference, _ = parquet_run
    folder, _ = parquet_input
    out = tmp_path / "vectors"
    arguments = ["--input", str(folder / "*.parquet"), "--output", str(out), "--model", str(model_64_path)]
    arguments += ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]
    process = subprocess.run(
        [interpreter_under_a_hostile_path(tmp_path), "-m", "pipelines.embed", *arguments],
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        errors="replace",
        timeout=120,  # a worker that cannot start leaves the run waiting for it forever
        check=False,
    )
    succeeded(process)
    check_same_output(out, reference)
    check_part_files(out, model, model_64_path, pa.int64())


def test_the_counters_the_docs_name_are_the_ones_reported() -> None:
    """The ``beam_m2v`` counters the docs tell users to watch are metric names the code reports."""
    from beam_m2v.transforms import metrics

    reported = {value for name, value in vars(metrics).items() if name.isupper() and isinstance(value, str)}
    for page in ("programs.md", "scaling.md"):
        text = " ".join((REPO / "docs" / page).read_text(encoding="utf-8").split())
        named = re.search(r"`beam_m2v` counters \(([^)]*)\)", text)
        assert named, f"docs/{page} no longer lists the beam_m2v counters"
        names = re.findall(r"`([a-z_]+)`", named.group(1))
        assert names and set(names) <= reported, (page, set(names) - reported)
    assert metrics.NAMESPACE == "beam_m2v"
