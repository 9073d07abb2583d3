"""Generated mixes of good and hostile JSONL lines and Parquet rows, through the real ``embed`` program.

For every mix: ``read == embedded + failed``; every good row is embedded once with exactly the vector
``load_model(bundled).encode`` gives its text; every hostile row is one dead letter naming its file and
line (or row); nothing reaches stderr as a traceback.

Each example is a whole pipeline run (about 1 s in-process on FnApiRunner, 3 s as a subprocess), so the
examples are few: 4 JSONL mixes (the first one through ``python -m pipelines.embed``) and 4 Parquet mixes,
10-15 s in all on an idle 2-core machine (up to about a minute when other work shares it).
"""

from __future__ import annotations

import gzip
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import beam_m2v
from pipelines import embed
from tests.conftest import corpus_table
from tests.test_pipeline_embed import dead_letters, embed_module, manifest_of, read_rows, vectors_of

TEXTS: list[str] = corpus_table().column("text").to_pylist()  # type: ignore[attr-defined]
FEW = settings(
    max_examples=4,
    deadline=None,
    database=None,
    phases=(Phase.explicit, Phase.reuse, Phase.generate),  # no shrinking: each example is a whole pipeline run
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)

#: Kinds of JSONL line: good ones, blank ones (not rows), and hostile ones with the dead letters they give.
GOOD_LINES = ["good", "good-int-score", "good-float-score", "good-escaped-pair", "good-empty-text"]
HOSTILE_LINES = {
    "broken-json": {"InvalidJson"},
    "bom": {"InvalidJson"},
    "not-an-object": {"NotAnObject"},
    "null-text": {"NullText"},
    "missing-text": {"MissingField"},
    "number-text": {"NotAString"},
    "object-text": {"NotAString"},
    "lone-surrogate": {"InvalidUnicode"},
    "invalid-utf8": {"InvalidUtf8"},
    "null-id": {"MissingId"},
    "missing-id": {"MissingId"},
    "fractional-id": {"BadValueType"},
    "huge-int-score": {"BadValueType"},
    "huge-float": {"BadNumber"},
    "deep": {"TooDeep"},
}
LINE_KINDS = [*GOOD_LINES, "blank", *HOSTILE_LINES]


@pytest.fixture(scope="module")
def model(model_64_path: Path) -> beam_m2v.StaticEmbedder:
    return beam_m2v.load_model(model_64_path)


def texts() -> st.SearchStrategy[str]:
    """Corpus paragraphs, or any Unicode text (no lone surrogates: those are hostile lines)."""
    return st.sampled_from(TEXTS[:500]) | st.text(max_size=60)


def jsonl_line(kind: str, key: int, text: str, score: float) -> bytes:
    """One line of the given kind, with id ``key``."""
    good = {"id": key, "text": text}
    dump = lambda value: json.dumps(value, ensure_ascii=False).encode()  # noqa: E731
    lines = {
        "good": dump(good),
        "good-int-score": dump({**good, "score": int(score)}),
        "good-float-score": dump({**good, "score": score}),
        "good-escaped-pair": b'{"id": %d, "text": "pair \\ud83d\\ude00 ok"}' % key,
        "good-empty-text": dump({"id": key, "text": ""}),
        "blank": b"  \t",
        "broken-json": b'{"id": %d, "text": "unterminated' % key,
        "bom": b"\xef\xbb\xbf" + dump(good),
        "not-an-object": dump([key, text]),
        "null-text": dump({"id": key, "text": None}),
        "missing-text": dump({"id": key, "body": text}),
        "number-text": dump({"id": key, "text": score}),
        "object-text": dump({"id": key, "text": {"nested": text}}),
        "lone-surrogate": b'{"id": %d, "text": "lone \\udc00 surrogate"}' % key,
        "invalid-utf8": b'{"id": %d, "text": "bad \xff\xfe bytes"}' % key,
        "null-id": dump({"id": None, "text": text}),
        "missing-id": dump({"text": text}),
        "fractional-id": dump({"id": key + 0.5, "text": text}),
        "huge-int-score": dump({**good, "score": 10**30}),
        "huge-float": dump({**good, "other": 1}).replace(b'"other": 1', b'"other": 1e400'),
        "deep": dump(good)[:-1] + b', "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    }
    return lines[kind]


def check_run(out: Path, expected_good: dict[int, str], failing: dict[tuple[str, int], set[str]], model: Any) -> None:
    """Reconciliation, exact vectors for the good rows, one dead letter per hostile row at its file and position."""
    rows = manifest_of(out)["rows"]
    assert rows["read"] == rows["embedded"] + rows["failed"], rows
    assert rows["embedded"] == len(expected_good) and rows["failed"] == len(failing), rows
    table = read_rows(out)
    ids = table.column("id").to_pylist()
    assert sorted(ids) == sorted(expected_good)
    assert np.array_equal(vectors_of(table), model.encode([expected_good[key] for key in ids]))
    records = dead_letters(out)
    found = {(r["source"], r["position"]): r["error_type"] for r in records}
    assert len(found) == len(records), records
    assert set(found) == set(failing), (sorted(found), sorted(failing))
    for place, error_type in found.items():
        assert error_type in failing[place], (place, error_type, failing[place])


@FEW
@given(data=st.data())
def test_generated_jsonl_mixes(data: st.DataObject, model: beam_m2v.StaticEmbedder, model_64_path: Path) -> None:
    kinds = data.draw(st.lists(st.sampled_from(LINE_KINDS), min_size=1, max_size=30), label="kinds")
    kinds = [*kinds, "good"]  # at least one good line, so the input has a text field
    # Fractional ids are dead letters because most ids are integers: keep them the minority.
    good_count = sum(kind in GOOD_LINES for kind in kinds)
    kinds = [kind for kind in kinds if kind != "fractional-id"] + ["fractional-id"] * min(
        kinds.count("fractional-id"), good_count - 1
    )
    # Most scores fractional: the column is float64, small integer scores fit it exactly, 10**30 does not.
    integer_scores = kinds.count("good-int-score") + kinds.count("huge-int-score")
    kinds += ["good-float-score"] * (integer_scores + 1 - kinds.count("good-float-score"))
    compressed = data.draw(st.booleans(), label="gzip")
    lines: list[bytes] = []
    expected_good: dict[int, str] = {}
    expected_scores: dict[int, float] = {}
    failing: dict[int, set[str]] = {}
    for number, kind in enumerate(kinds, start=1):
        text = data.draw(texts(), label="text")
        score = data.draw(st.floats(-1e6, 1e6, allow_nan=False).map(lambda x: round(x, 2)), label="score")
        lines.append(jsonl_line(kind, number, text, score))
        if kind in HOSTILE_LINES:
            failing[number] = HOSTILE_LINES[kind]
        elif kind != "blank":
            if kind.endswith("-score"):
                expected_scores[number] = int(score) if kind == "good-int-score" else score
            expected_good[number] = {
                "good-escaped-pair": "pair \U0001f600 ok",
                "good-empty-text": "",
            }.get(kind, text)
    payload = b"\n".join(lines) + data.draw(st.sampled_from([b"", b"\n"]), label="last newline")
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / ("mix.jsonl.gz" if compressed else "mix.jsonl")
        source.write_bytes(gzip.compress(payload) if compressed else payload)
        out = Path(folder) / "vectors"
        argv = ["--input", str(source), "--output", str(out), "--model", str(model_64_path), "--keep-columns", "score"]
        argv += ["--max-failed-fraction", "1"]  # hostile mixes fail many rows on purpose
        if not getattr(test_generated_jsonl_mixes, "ran_subprocess", False):
            test_generated_jsonl_mixes.ran_subprocess = True  # type: ignore[attr-defined]
            process = embed_module(*argv)
            assert process.returncode == 0, process.stderr[-3000:]
            assert "Traceback" not in process.stderr, process.stderr[-3000:]
        else:
            embed.run(argv)
        check_run(out, expected_good, {(str(source), line): kinds for line, kinds in failing.items()}, model)
        table = read_rows(out)
        assert table.schema.field("score").type == pa.float64()
        scores = dict(zip(table.column("id").to_pylist(), table.column("score").to_pylist(), strict=True))
        assert {key: scores[key] for key in expected_scores} == expected_scores


#: Kinds of Parquet row, with the dead letters the hostile ones give.
GOOD_ROWS = ["good", "good-long-text", "good-null-tag"]
HOSTILE_ROWS = {
    "null-id": {"MissingId"},
    "null-text": {"NullText"},
    "invalid-utf8-text": {"InvalidUtf8"},
    "invalid-utf8-tag": {"InvalidUtf8"},
    "encoded-surrogate-text": {"InvalidUtf8"},
}


def string_array(values: list[bytes | None]) -> pa.Array:
    """A string array holding exactly these bytes (Arrow does not validate them)."""
    raw = pa.array(values, pa.binary())
    return pa.StringArray.from_buffers(len(raw), raw.buffers()[1], raw.buffers()[2], raw.buffers()[0])


@FEW
@given(data=st.data())
def test_generated_parquet_mixes(data: st.DataObject, model: beam_m2v.StaticEmbedder, model_64_path: Path) -> None:
    files = data.draw(st.integers(1, 2), label="files")
    expected_good: dict[int, str] = {}
    failing: dict[tuple[str, int], set[str]] = {}
    with tempfile.TemporaryDirectory() as folder:
        key = 0
        for index in range(files):
            kinds = data.draw(st.lists(st.sampled_from([*GOOD_ROWS, *HOSTILE_ROWS]), min_size=1, max_size=25))
            kinds = [*kinds, "good"]
            ids: list[int | None] = []
            row_texts: list[bytes | None] = []
            tags: list[bytes | None] = []
            path = Path(folder) / f"part-{index}.parquet"
            for row, kind in enumerate(kinds):
                key += 1
                text = data.draw(texts(), label="text")
                if kind == "good-long-text":
                    text = " ".join(TEXTS[:60])
                ids.append(None if kind == "null-id" else key)
                encoded: bytes | None = text.encode()
                if kind == "null-text":
                    encoded = None
                elif kind == "invalid-utf8-text":
                    encoded = b"bad \xff bytes " + encoded  # type: ignore[operator]
                elif kind == "encoded-surrogate-text":
                    encoded = b"surrogate \xed\xa0\x80"
                row_texts.append(encoded)
                tags.append(None if kind == "good-null-tag" else b"tag \xc3(" if kind == "invalid-utf8-tag" else b"t")
                if kind in HOSTILE_ROWS:
                    failing[(str(path), row)] = HOSTILE_ROWS[kind]
                else:
                    expected_good[key] = text
            table = pa.table(
                {"id": pa.array(ids, pa.int64()), "text": string_array(row_texts), "tag": string_array(tags)}
            )
            pq.write_table(table, path, row_group_size=data.draw(st.integers(1, 10), label="row group"))
        out = Path(folder) / "vectors"
        pattern = str(Path(folder) / "*.parquet")
        embed.run(
            [
                "--input",
                pattern,
                "--output",
                str(out),
                "--model",
                str(model_64_path),
                "--keep-columns",
                "tag",
                "--max-failed-fraction",
                "1",
            ]
        )
        check_run(out, expected_good, failing, model)
