"""Hostile inputs through the real ``embed`` (and ``reembed``) programs: a dead letter or a one-line refusal, never a
silently wrong value, a traceback, or a good output replaced by a broken input's.

Runs are in-process (``pipelines.embed.run`` / ``main`` on FnApiRunner) unless the exit code and stderr of the real
command matter, which one subprocess per kind of refusal checks.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import beam_m2v
from pipelines import embed, reembed
from tests.conftest import corpus_table
from tests.test_pipeline_embed import dead_letters, embed_module, manifest_of, read_rows, siblings, vectors_of

TEXTS: list[str] = corpus_table().column("text").to_pylist()  # type: ignore[attr-defined]


# -- helpers -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model(model_64_path: Path) -> beam_m2v.StaticEmbedder:
    return beam_m2v.load_model(model_64_path)


def jsonl_line(record: Any) -> bytes:
    return json.dumps(record, ensure_ascii=False).encode() + b"\n"


def write_jsonl(path: Path, records: list[Any]) -> Path:
    path.write_bytes(b"".join(record if isinstance(record, bytes) else jsonl_line(record) for record in records))
    return path


def files_of(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes (to show an output was left untouched)."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def args(source: Path | str, out: Path, model_path: Path, *extra: str) -> list[str]:
    # Hostile inputs fail many rows on purpose: publish them all the same, to check their dead letters.
    return [
        "--input",
        str(source),
        "--output",
        str(out),
        "--model",
        str(model_path),
        "--max-failed-fraction",
        "1",
        *extra,
    ]


def refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``beam-m2v embed`` in-process; it must exit 2 with one error line and no traceback. Returns the line."""
    code = embed.main(argv)
    err = capsys.readouterr().err
    assert code == 2, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("beam-m2v embed: error:")]
    assert len(lines) == 1, err[-3000:]
    return lines[0]


def check_vectors(out: Path, texts_by_id: dict[Any, str], model: beam_m2v.StaticEmbedder) -> pa.Table:
    """Every id exactly once with exactly the reference vector of its text; returns the rows."""
    table = read_rows(out)
    ids = table.column("id").to_pylist()
    assert sorted(ids, key=repr) == sorted(texts_by_id, key=repr)
    assert np.array_equal(vectors_of(table), model.encode([texts_by_id[key] for key in ids]))
    return table


def reconciled(out: Path) -> dict[str, int]:
    rows: dict[str, int] = manifest_of(out)["rows"]
    assert rows["read"] == rows["embedded"] + rows["failed"], rows
    assert len(read_rows(out)) == rows["embedded"]
    assert len(dead_letters(out)) == rows["failed"]
    return rows


def failures_at(out: Path) -> dict[tuple[str, int], str]:
    """(file name, position) -> error type of every dead letter."""
    return {(Path(r["source"]).name, r["position"]): r["error_type"] for r in dead_letters(out)}


@pytest.fixture(scope="module")
def good_output(tmp_path_factory: pytest.TempPathFactory, model_64_path: Path) -> Path:
    """A finished output of 40 rows, copied by each test that shows a broken input leaves it alone."""
    folder = tmp_path_factory.mktemp("good")
    pq.write_table(corpus_table().slice(0, 40), folder / "good.parquet")  # type: ignore[attr-defined]
    out = folder / "vectors"
    embed.run(args(folder / "good.parquet", out, model_64_path))
    return out


def previous_output(good_output: Path, tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    out = tmp_path / "vectors"
    shutil.copytree(good_output, out)
    return out, files_of(out)


# -- silent wrong values -------------------------------------------------------------------------

LATE = 1100  # past any sample of the first lines


def typed_records() -> tuple[list[Any], dict[int, str], dict[int, str]]:
    """Lines whose types only the whole file shows; returns (records, good id -> text, bad line -> error type)."""
    records: list[Any] = []
    good: dict[int, str] = {}
    bad: dict[int, str] = {}
    for number in range(1, LATE + 1):
        record: dict[str, Any] = {"id": number, "text": TEXTS[number], "score": number, "meta": {"a": number}}
        record |= {"count": number, "flag": number % 2 == 0, "ratio": number + 0.5}
        records.append(record)
        good[number] = TEXTS[number]
    late = records[LATE - 1]
    late["score"] = 2.75  # turns score into float64: every integer score is exact there
    late["meta"] = {"a": 1, "b": "a field only the last line has"}
    records[1049]["ratio"] = 2**53 + 1  # an integer float64 cannot hold, in a float64 column: dead letter
    records.append({"id": 5.5, "text": "a fractional id among integer ids"})  # line LATE + 1
    records.append({"id": 2**64, "text": "an id beyond int64"})
    records.append({"id": 7007, "text": "a count beyond int64", "count": 2**63})
    records.append({"id": 7008, "text": "a flag that is a number", "flag": 1})
    records.append({"id": None, "text": "a null id"})
    records.append({"id": 7010, "text": "a nested field of another type", "meta": {"a": "one"}})
    for line, kind in zip(
        range(LATE + 1, LATE + 7),
        ["BadValueType", "BadValueType", "BadValueType", "BadValueType", "MissingId", "BadValueType"],
        strict=True,
    ):
        bad[line] = kind
    bad[1050] = "BadValueType"
    del good[1050]
    return records, good, bad


def test_jsonl_types_come_from_every_line_and_nothing_is_rounded(model, model_64_path, tmp_path):
    records, good, bad = typed_records()
    source = write_jsonl(tmp_path / "typed.jsonl", records)
    out = tmp_path / "vectors"
    embed.run(args(source, out, model_64_path, "--keep-columns", "score,meta,count,flag,ratio"))
    assert failures_at(out) == {("typed.jsonl", line): kind for line, kind in bad.items()}
    table = check_vectors(out, good, model)
    schema = table.schema
    assert schema.field("id").type == pa.int64()
    assert schema.field("score").type == pa.float64()
    assert schema.field("count").type == pa.int64()
    assert schema.field("flag").type == pa.bool_()
    assert schema.field("ratio").type == pa.float64()
    assert schema.field("meta").type == pa.struct([("a", pa.int64()), ("b", pa.string())])
    by_id = {row["id"]: row for row in table.to_pylist()}
    for number in good:
        source_record = records[number - 1]
        for column in ("score", "count", "flag", "ratio"):
            assert by_id[number][column] == source_record[column], (number, column)
        assert {k: v for k, v in by_id[number]["meta"].items() if v is not None} == source_record["meta"]
    assert by_id[LATE]["score"] == 2.75
    assert by_id[LATE]["meta"]["b"] == "a field only the last line has"
    reasons = {r["position"]: r["reason"] for r in dead_letters(out)}
    assert "2.0" not in reasons[LATE + 1] and "5.5" in reasons[LATE + 1], reasons
    assert "int64" in reasons[LATE + 2] and "int64" in reasons[LATE + 3], reasons
    assert str(2**53 + 1) in reasons[1050], reasons
    assert reconciled(out) == {"read": len(records), "embedded": len(good), "failed": len(bad)}


def test_parquet_null_ids_are_dead_letters(model, model_64_path, tmp_path):
    ids = pa.array([10, None, 12, None, 14], pa.int64())
    pq.write_table(pa.table({"id": ids, "text": TEXTS[:5]}), tmp_path / "ids.parquet", row_group_size=2)
    out = tmp_path / "vectors"
    embed.run(args(tmp_path / "ids.parquet", out, model_64_path))
    assert failures_at(out) == {("ids.parquet", 1): "MissingId", ("ids.parquet", 3): "MissingId"}
    check_vectors(out, {10: TEXTS[0], 12: TEXTS[2], 14: TEXTS[4]}, model)
    assert reconciled(out) == {"read": 5, "embedded": 3, "failed": 2}


def test_a_truncated_gzip_is_refused_naming_the_file_and_the_output_stays(good_output, model_64_path, tmp_path):
    """Through ``python -m pipelines.embed``: the input refusal as the real process shows it (the others here
    call ``main`` in-process)."""
    data = gzip.compress(b"".join(jsonl_line({"id": i, "text": TEXTS[i]}) for i in range(3000)))
    source = tmp_path / "cut.jsonl.gz"
    source.write_bytes(data[: len(data) // 2])
    out, before = previous_output(good_output, tmp_path)
    process = embed_module(*args(source, out, model_64_path))
    assert process.returncode == 2, process.stderr[-3000:]
    assert "Traceback" not in process.stderr
    (line,) = [line for line in process.stderr.splitlines() if "error:" in line]
    assert str(source) in line and "cut short" in line, line
    assert files_of(out) == before
    assert not siblings(out)


def test_a_corrupt_gzip_is_refused(good_output, model_64_path, tmp_path, capsys):
    data = bytearray(gzip.compress(b"".join(jsonl_line({"id": i, "text": TEXTS[i]}) for i in range(3000))))
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)
    source = tmp_path / "bent.jsonl.gz"
    source.write_bytes(bytes(data))
    out, before = previous_output(good_output, tmp_path)
    line = refused(args(source, out, model_64_path), capsys)
    assert str(source) in line, line
    assert files_of(out) == before


# -- crashes that must be dead letters or refusals -----------------------------------------------


def invalid_utf8(values: list[bytes | None]) -> pa.Array:
    """A string array holding exactly these bytes (Arrow does not validate them)."""
    raw = pa.array(values, pa.binary())
    return pa.StringArray.from_buffers(len(raw), raw.buffers()[1], raw.buffers()[2], raw.buffers()[0])


def test_parquet_strings_that_are_not_utf8_are_dead_letters(model, model_64_path, tmp_path):
    texts = [TEXTS[0].encode(), b"bad \xff text", TEXTS[2].encode(), TEXTS[3].encode(), TEXTS[4].encode()]
    ids = [b"a", b"b", b"c\xfe", b"d", b"e"]
    tags = [b"x", b"y", b"z", b"\xc3(", b"w"]
    table = pa.table({"id": invalid_utf8(ids), "text": invalid_utf8(texts), "tag": invalid_utf8(tags)})  # type: ignore[arg-type]
    pq.write_table(table, tmp_path / "bytes.parquet")
    out = tmp_path / "vectors"
    embed.run(args(tmp_path / "bytes.parquet", out, model_64_path, "--keep-columns", "tag"))
    records = dead_letters(out)
    assert sorted((r["position"], r["error_type"]) for r in records) == [(row, "InvalidUtf8") for row in (1, 2, 3)]
    assert all(isinstance(r["value"], str) and isinstance(r["id"], str) for r in records), records
    check_vectors(out, {"a": TEXTS[0], "e": TEXTS[4]}, model)
    assert reconciled(out) == {"read": 5, "embedded": 2, "failed": 3}


def test_a_line_nested_100000_deep_is_one_dead_letter(model, model_64_path, tmp_path):
    deep = b'{"id": 3, "text": "deep", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n"
    object_deep = b'{"id": 4, "text": "deep too", "x": ' + b'{"a": ' * 150 + b"1" + b"}" * 150 + b"}\n"
    records = [{"id": 1, "text": TEXTS[1]}, {"id": 2, "text": TEXTS[2]}, deep, object_deep, {"id": 5, "text": TEXTS[5]}]
    source = write_jsonl(tmp_path / "deep.jsonl", records)
    out = tmp_path / "vectors"
    embed.run(args(source, out, model_64_path))
    assert failures_at(out) == {("deep.jsonl", 3): "TooDeep", ("deep.jsonl", 4): "TooDeep"}
    check_vectors(out, {1: TEXTS[1], 2: TEXTS[2], 5: TEXTS[5]}, model)
    reconciled(out)


def test_parquet_files_whose_id_types_differ_are_refused_naming_both(model_64_path, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    pq.write_table(pa.table({"id": pa.array([1, 2], pa.int64()), "text": TEXTS[:2]}), folder / "a.parquet")
    pq.write_table(pa.table({"id": ["3", "4"], "text": TEXTS[2:4]}), folder / "b.parquet")
    line = refused(args(folder / "*.parquet", tmp_path / "vectors", model_64_path), capsys)
    assert "a.parquet" in line and "b.parquet" in line and "int64" in line and "string" in line, line
    assert not (tmp_path / "vectors").exists()


def test_parquet_integer_widths_are_unified_without_loss(model, model_64_path, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    pq.write_table(pa.table({"id": pa.array([1, 2], pa.int32()), "text": TEXTS[1:3]}), folder / "a.parquet")
    big = 2**40
    pq.write_table(pa.table({"id": pa.array([big], pa.int64()), "text": TEXTS[3:4]}), folder / "b.parquet")
    out = tmp_path / "vectors"
    embed.run(args(folder / "*.parquet", out, model_64_path))
    table = check_vectors(out, {1: TEXTS[1], 2: TEXTS[2], big: TEXTS[3]}, model)
    assert table.schema.field("id").type == pa.int64()


def test_jsonl_files_whose_id_kinds_differ_are_refused_naming_both(model_64_path, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", [{"id": i, "text": TEXTS[i]} for i in range(5)])
    write_jsonl(folder / "b.jsonl", [{"id": f"doc-{i}", "text": TEXTS[i]} for i in range(5)])
    line = refused(args(folder / "*.jsonl", tmp_path / "vectors", model_64_path), capsys)
    assert "a.jsonl" in line and "b.jsonl" in line and "integers" in line and "strings" in line, line


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_damaged_parquet_file_among_good_ones_is_refused_naming_it(damage, model_64_path, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    for name, start in (("a", 0), ("b", 10), ("c", 20)):
        pq.write_table(corpus_table().slice(start, 10), folder / f"{name}.parquet")  # type: ignore[attr-defined]
    broken = folder / "b.parquet"
    data = broken.read_bytes()
    broken.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"not parquet at all " * 100)
    line = refused(args(folder / "*.parquet", tmp_path / "vectors", model_64_path), capsys)
    assert str(broken) in line and "a.parquet" not in line, line


def test_input_naming_a_folder_is_refused_with_a_pattern(model_64_path, tmp_path, capsys):
    folder = tmp_path / "corpus"
    folder.mkdir()
    write_jsonl(folder / "part-1.jsonl", [{"id": 1, "text": "a"}])
    line = refused(args(folder, tmp_path / "vectors", model_64_path), capsys)
    assert "is a folder" in line and f"{folder}/*.jsonl" in line, line


@pytest.mark.parametrize("kind", ["parquet", "jsonl", "blank-jsonl"])
def test_an_input_without_rows_is_refused(kind, good_output, model_64_path, tmp_path, capsys):
    if kind == "parquet":
        source = tmp_path / "empty.parquet"
        pq.write_table(pa.table({"id": pa.array([], pa.int64()), "text": pa.array([], pa.string())}), source)
    else:
        source = tmp_path / "empty.jsonl"
        source.write_bytes(b"" if kind == "jsonl" else b"\n  \n\t\n")
    out, before = previous_output(good_output, tmp_path)
    line = refused(args(source, out, model_64_path), capsys)
    assert "no rows" in line, line
    assert files_of(out) == before


# -- --batch-size and numeric options ------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_batch_size_caps_the_rows_per_table(fmt, model, model_64_path, tmp_path):
    texts = {i: TEXTS[i] for i in range(50)}
    if fmt == "parquet":
        source = tmp_path / "in.parquet"
        pq.write_table(corpus_table().slice(0, 50), source, row_group_size=20)  # type: ignore[attr-defined]
    else:
        source = write_jsonl(tmp_path / "in.jsonl", [{"id": i, "text": t} for i, t in texts.items()])
    out = tmp_path / "vectors"
    embed.run(args(source, out, model_64_path, "--batch-size", "7"))
    check_vectors(out, texts, model)
    sizes = [
        pq.ParquetFile(part).metadata.row_group(group).num_rows
        for part in sorted(out.glob("*.parquet"))
        for group in range(pq.ParquetFile(part).metadata.num_row_groups)
    ]
    assert sum(sizes) == 50 and max(sizes) <= 7, sizes


@pytest.mark.parametrize(
    "option",
    [["--batch-size", "0"], ["--dimensionality", "0"], ["--dim", "-3"], ["--raw-dim", "0"], ["--batch-size", "-1"]],
)
def test_numeric_options_below_one_are_refused(option, model_64_path, tmp_path, capsys):
    source = write_jsonl(tmp_path / "in.jsonl", [{"id": 1, "text": "a"}])
    line = refused(args(source, tmp_path / "vectors", model_64_path, *option), capsys)
    assert option[0] in line and option[1] in line, line


# -- a missing text column, a missing id column --------------------------------------------------


def test_a_jsonl_text_field_in_no_line_is_refused_and_the_output_stays(good_output, model_64_path, tmp_path, capsys):
    source = write_jsonl(tmp_path / "body.jsonl", [{"id": i, "body": TEXTS[i]} for i in range(20)])
    out, before = previous_output(good_output, tmp_path)
    line = refused(args(source, out, model_64_path), capsys)
    assert "'text'" in line and "--text-column" in line, line
    assert files_of(out) == before


def test_a_parquet_text_column_null_in_every_row_is_refused(good_output, model_64_path, tmp_path, capsys):
    source = tmp_path / "nulls.parquet"
    pq.write_table(pa.table({"id": [1, 2, 3], "text": pa.array([None, None, None], pa.string())}), source)
    out, before = previous_output(good_output, tmp_path)
    line = refused(args(source, out, model_64_path), capsys)
    assert "'text'" in line and "null" in line, line
    assert files_of(out) == before


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_without_an_id_column_rows_get_stable_position_ids(fmt, model, model_64_path, tmp_path, caplog):
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    if fmt == "parquet":
        pq.write_table(pa.table({"text": TEXTS[:30]}), folder / "a.parquet", row_group_size=8)
        pq.write_table(pa.table({"text": TEXTS[30:35]}), folder / "sub" / "b.parquet")
        expected = {f"a.parquet:{row}": TEXTS[row] for row in range(30)}
        expected |= {f"sub/b.parquet:{row}": TEXTS[30 + row] for row in range(5)}
        pattern = folder / "**.parquet"
    else:
        write_jsonl(folder / "a.jsonl", [{"text": t} for t in TEXTS[:30]])
        write_jsonl(folder / "sub" / "b.jsonl", [b"\n", *[{"text": t} for t in TEXTS[30:35]]])
        expected = {f"a.jsonl:{line}": TEXTS[line - 1] for line in range(1, 31)}
        expected |= {f"sub/b.jsonl:{line}": TEXTS[30 + line - 2] for line in range(2, 7)}
        pattern = folder / "**.jsonl"
    out = tmp_path / "vectors"
    with caplog.at_level("INFO", logger="beam_m2v"):
        manifest = embed.run(args(pattern, out, model_64_path))
    assert any("position" in record.getMessage() for record in caplog.records), caplog.text
    assert manifest["id_source"] == "position" and manifest["id_column"] == "id"
    assert manifest_of(out)["id_source"] == "position"
    table = check_vectors(out, expected, model)
    assert table.schema.field("id").type == pa.string()
    # The same input again, from another working folder: the same ids, so reembed reuses every vector.
    again = tmp_path / "again"
    result = reembed.run([*args(pattern, again, model_64_path), "--previous", str(out)])
    assert result["rows"]["unchanged"] == len(expected) and result["rows"]["encoded"] == 0, result["rows"]
    assert sorted(read_rows(again).column("id").to_pylist()) == sorted(expected)


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_an_explicit_id_column_that_is_missing_is_refused(fmt, model_64_path, tmp_path, capsys):
    if fmt == "parquet":
        source = tmp_path / "in.parquet"
        pq.write_table(pa.table({"id": [1, 2], "text": TEXTS[:2]}), source)
    else:
        source = write_jsonl(tmp_path / "in.jsonl", [{"id": 1, "text": TEXTS[1]}])
    line = refused(args(source, tmp_path / "vectors", model_64_path, "--id-column", "doc_id"), capsys)
    assert "'doc_id'" in line, line


@pytest.mark.parametrize("folder_name", ["day [1]", "[draft] notes?"])
def test_a_pattern_in_a_folder_whose_name_has_pattern_characters_says_how_to_write_it(
    tmp_path: Path, folder_name: str
) -> None:
    from pipelines.inputs import InputError, match_files

    folder = tmp_path / folder_name
    folder.mkdir()
    pq.write_table(corpus_table().slice(0, 3), folder / "part.parquet")  # type: ignore[attr-defined]
    decoy = tmp_path / "day 1"  # what 'day [1]' means as a pattern: a folder with no Parquet file
    decoy.mkdir(exist_ok=True)
    with pytest.raises(InputError) as refused:
        match_files(str(folder / "*.parquet"))
    message = str(refused.value)
    assert "matches no files" in message and "\n" not in message
    suggested = message.rsplit("pattern characters: ", 1)[1].removesuffix(" looks in it")[1:-1]
    assert match_files(suggested) == [str(folder / "part.parquet")]
