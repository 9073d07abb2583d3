"""Hostile elements through EmbedText, EmbedTables and RunInference: dead letters, never failed bundles.

Every run is a real FnApiRunner pipeline with the bundled model. Each test checks that every
element is accounted for (embedded + failed == read), that good elements get exactly
``load_model(...).encode``'s vectors, and that every dead letter survives Beam's coders and
renders as JSON that a UTF-8 writer accepts.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import pickle
from typing import Any, NamedTuple

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pytest
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
from apache_beam.testing.util import BeamAssertException, assert_that

import beam_m2v
from beam_m2v import InvalidTextError
from beam_m2v.transforms.dead_letters import FailedElement, preview
from tests.beam_helpers import counter, fn_api_pipeline, vector_digest


def text_key(text: str) -> bytes:
    """A short digest of a text: what checks pickled into a pipeline carry instead of the text."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def huge_text() -> str:
    """10.5 MB of text, made where it is used: a pickled pipeline function must not carry it."""
    return "kernel memory " * 750_000


HUGE = huge_text()
GOOD_TEXTS = [
    "a normal sentence about drivers",
    "",
    "   \t\n",
    HUGE,
    "emoji \U0001f600 and Hebrew \u05e9\u05dc\u05d5\u05dd and CJK \u65e5\u672c",
    "NUL \x00 inside",
    "[CLS] special tokens typed [SEP] [UNK]",
    "x" * 200_000,
    "\ufeffbyte order mark",
    "combining e\u0301 and zero-width \u200b joiner",
]


class BadRepr:
    """An element whose repr and str raise."""

    def __repr__(self) -> str:
        raise RuntimeError("repr refused")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BadRepr)

    def __hash__(self) -> int:
        return 1


class ExplodingText:
    """An element whose ``text`` attribute raises something other than AttributeError."""

    @property
    def text(self) -> str:
        raise RuntimeError("property refused")


class SlottedDoc:
    """An element with a text attribute but neither ``_asdict`` nor ``__dict__``."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __reduce__(self) -> tuple[type[SlottedDoc], tuple[str]]:
        return (SlottedDoc, (self.text,))


@dataclasses.dataclass(frozen=True)
class Record:
    """A dataclass element: Beam pickles it, so it may carry text Beam's str coder refuses (lone surrogates)."""

    id: int
    text: Any


#: Texts with lone surrogates: not valid Unicode text. Beam's coders cannot carry them as str
#: elements (its size sampling fails on them), so pipelines meet them inside pickled records.
SURROGATE_TEXTS = ["lone \ud800 surrogate", "\udfff", "emoji then \U0001f600 then lone \udc00"]


class Doc(NamedTuple):
    id: int
    text: Any


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": "text"}
    for _ in range(depth):
        value = {"deeper": value}
    return value


BAD_BARE: list[Any] = [
    None,
    7,
    3.5,
    float("nan"),
    True,
    b"bytes are not text",
    bytearray(b"nor is this"),
    nested(200),
    ["a", "list"],
    ("a", "tuple"),
    BadRepr(),
    {"text": "a dict without text_field"},
]


@pytest.fixture(scope="module")
def model_64(model_64_path):
    return beam_m2v.load_model(model_64_path)


def create_any(p: beam.Pipeline, elements: list[Any]) -> beam.PCollection[Any]:
    """The elements as a PCollection, whatever they are.

    Beam's own coders cannot carry some of them (a str with a lone surrogate, for one), so they
    travel pickled and are unpickled in the step fused with the transform under test, as when
    a user's own DoFn makes them.
    """
    pickled = [pickle.dumps(_swap(e, HUGE, HUGE_MARK)) for e in elements]
    return p | "Pickled" >> beam.Create(pickled, reshuffle=False) | beam.Map(unpickle)


#: Stands for HUGE in a pipeline's Create: Beam takes seconds to set up a 10 MB element, so the
#: text is made in the step that unpickles the elements.
HUGE_MARK = "<the 10 MB text>"


def _swap(element: Any, old: str, new: str) -> Any:
    """``element`` with ``old`` (a text, or a dict value) replaced by ``new``."""
    if isinstance(element, str) and element == old:
        return new
    if isinstance(element, dict):
        return {key: _swap(value, old, new) for key, value in element.items()}
    if type(element) is tuple:
        return tuple(_swap(value, old, new) for value in element)
    return element


def unpickle(raw: bytes) -> Any:
    return _swap(pickle.loads(raw), HUGE_MARK, huge_text())


def dead_letter_is_writable(failed: FailedElement) -> None:
    """A dead letter pickles, and its JSON summary encodes to UTF-8 (what a JSON-lines writer needs)."""
    pickle.loads(pickle.dumps(failed))
    line = json.dumps(failed.to_json_dict(), ensure_ascii=False)
    line.encode("utf-8")
    assert failed.reason and failed.error_type
    failed.reason.encode("utf-8")


def check_dead_letters(expected_count: int, kinds: set[str] | None = None) -> Any:
    def check(failed: list[FailedElement]) -> None:
        if len(failed) != expected_count:
            raise BeamAssertException(f"{len(failed)} dead letters, expected {expected_count}: {failed!r:.2000}")
        for letter in failed:
            dead_letter_is_writable(letter)
        if kinds is not None and {f.error_type for f in failed} != kinds:
            raise BeamAssertException(f"kinds {sorted({f.error_type for f in failed})} != {sorted(kinds)}")

    return check


# -- EmbedText -----------------------------------------------------------------------------------


def test_embed_text_bare_hostile_elements(model_64, model_64_path):
    digests = {text_key(t): vector_digest(v) for t, v in zip(GOOD_TEXTS, model_64.encode(GOOD_TEXTS), strict=True)}
    elements = [item for pair in zip(BAD_BARE, GOOD_TEXTS * 2, strict=False) for item in pair]
    elements += GOOD_TEXTS[len(BAD_BARE) // 2 :]
    good_count = sum(isinstance(e, str) and text_key(e) in digests for e in elements)
    bad_count = len(elements) - good_count
    with fn_api_pipeline() as p:
        embedded, failed = create_any(p, elements) | beam_m2v.EmbedText(str(model_64_path), batch_size=4)

        def check_embedded(pairs):
            if len(pairs) != good_count:
                raise BeamAssertException(f"{len(pairs)} embedded, expected {good_count}")
            for text, vector in pairs:
                if vector_digest(vector) != digests[text_key(text)]:
                    raise BeamAssertException(f"vector differs for {text[:40]!r}")

        assert_that(embedded, check_embedded)
        assert_that(failed, check_dead_letters(bad_count, {"NotAString"}), label="Failed")
    assert counter(p.result, "texts_embedded") == good_count
    assert counter(p.result, "failures") == bad_count


def test_embed_text_fields_hostile_elements(model_64, model_64_path):
    good = [{"id": i, "text": text} for i, text in enumerate(GOOD_TEXTS)]
    good += [beam.Row(id=100, text="a row"), Doc(101, "a named tuple"), Record(102, "a dataclass")]
    bad = [
        {"id": 200, "text": None},
        {"id": 201, "text": b"\xff\xfe bytes"},
        Record(202, "surrogate \ud83d alone"),
        Record(211, SURROGATE_TEXTS[2]),
        {"id": 203, "text": nested(300)},
        {"id": 204, "body": "text in the wrong field"},
        {"id": 205, BadRepr(): "a key that cannot be printed"},
        {"id": 206, "text": BadRepr()},
        {"id": 207, "text": ["list"]},
        {"id": 208, "text": "fine text", "embedding": "an input field named like the output"},
        Doc(209, 12),
        beam.Row(id=210, text=None),
        ExplodingText(),
        SlottedDoc("text on an object that cannot be copied"),
        "a bare string where a field is expected",
        None,
        BadRepr(),
    ]
    texts = [e["text"] if isinstance(e, dict) else e.text for e in good]
    digests = {text_key(t): vector_digest(v) for t, v in zip(texts, model_64.encode(texts), strict=True)}
    with fn_api_pipeline() as p:
        embedded, failed = create_any(p, good + bad) | beam_m2v.EmbedText(
            str(model_64_path), text_field="text", batch_size=5
        )

        good_count = len(good)  # the checks are pickled into the pipeline: they must not carry 10 MB of text

        def check_embedded(outputs):
            if len(outputs) != good_count:
                raise BeamAssertException(f"{len(outputs)} embedded, expected {good_count}")
            for out in outputs:
                text, vector = (out["text"], out["embedding"]) if isinstance(out, dict) else (out.text, out.embedding)
                if vector_digest(vector) != digests[text_key(text)]:
                    raise BeamAssertException(f"vector differs for {text[:40]!r}")

        assert_that(embedded, check_embedded)
        assert_that(failed, check_dead_letters(len(bad)), label="Failed")

        def check_kinds(failed_letters):
            by_id = {
                f.element.get("id") if isinstance(f.element, dict) else getattr(f.element, "id", None): f.error_type
                for f in failed_letters
            }
            assert by_id[204] == "MissingField" and by_id[208] == "OutputFieldExists", by_id
            assert by_id[200] == "NullText" and by_id[202] == "InvalidUnicode" and by_id[201] == "NotAString", by_id

        assert_that(failed, check_kinds, label="Kinds")
    assert counter(p.result, "texts_embedded") + counter(p.result, "failures") == len(good) + len(bad)


# -- EmbedTables ---------------------------------------------------------------------------------


def string_array(values: list[bytes | None], arrow_type: pa.DataType | None = None) -> pa.Array:
    """A string array built from raw bytes, invalid UTF-8 included (pyarrow does not check at construction)."""
    arrow_type = arrow_type or pa.string()
    offset_type = np.int64 if arrow_type == pa.large_string() else np.int32
    offsets = np.zeros(len(values) + 1, dtype=offset_type)
    np.cumsum([len(v or b"") for v in values], out=offsets[1:])
    validity = pa.array([v is not None for v in values]).buffers()[1]
    data = b"".join(v or b"" for v in values)
    return pa.Array.from_buffers(
        arrow_type, len(values), [validity, pa.py_buffer(offsets.tobytes()), pa.py_buffer(data)]
    )


def _utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


RAW_TEXTS = [
    b"first good text",
    b"\xff\xfe invalid UTF-8",
    None,
    "Gr\u00fc\u00dfe good".encode(),
    b"\xed\xa0\x80 an encoded lone surrogate",
    b"",
    b"<the 10 MB text>",
    b"truncated \xe2\x82",
    b"last good text",
]
TABLE_COUNT = 11


def hostile_table(index: int) -> pa.Table | pa.RecordBatch:
    """Table ``index`` of the hostile tables, built in the pipeline (Beam is slow to set up 10 MB elements)."""
    return hostile_tables()[index]


@functools.cache
def hostile_tables() -> list[pa.Table | pa.RecordBatch]:
    raw = [huge_text().encode() if value == b"<the 10 MB text>" else value for value in RAW_TEXTS]
    invalid_other = string_array([b"ok", b"\xff", b"ok", b"ok", b"ok", b"ok", b"ok", b"ok", b"ok"])
    tables = [
        pa.table({"id": pa.array(range(9)), "text": string_array(raw), "note": invalid_other}),
        pa.table({"id": pa.array(range(100, 109)), "text": string_array(raw, pa.large_string())}),
        pa.table({"id": pa.array(range(200, 209)), "text": string_array(raw).dictionary_encode()}),
        pa.table({"id": pa.array(range(300, 309)), "text": string_array(raw).cast(pa.string_view())}),
        pa.table({"id": pa.array([400, 401]), "text": pa.array([b"binary", b"\xff"], pa.binary())}),
        pa.table({"id": pa.array([500, 501]), "text": pa.array([None, None], pa.null())}),
        pa.table({"id": pa.array([600]), "text": ["fine"], "embedding": [1.0]}),
        pa.Table.from_arrays([pa.array([700]), pa.array(["a"]), pa.array(["b"])], names=["id", "text", "text"]),
        pa.table({"id": pa.array([800]), "text": ["fine"], "when": pa.array([10**12], pa.timestamp("s"))}),
        pa.table({"id": pa.array([], pa.int64()), "text": pa.array([], pa.string())}),
        pa.table({"id": pa.array([900]), "text": ["a batch"]}).to_batches()[0],
    ]
    assert len(tables) == TABLE_COUNT
    return tables


def test_embed_tables_hostile_rows(model_64, model_64_path):
    raw = [HUGE.encode() if value == b"<the 10 MB text>" else value for value in RAW_TEXTS]
    good_rows = [i for i, value in enumerate(raw) if value is not None and _utf8(value)]
    good_texts = [raw[i].decode() for i in good_rows]  # type: ignore[union-attr]
    digests = {i: vector_digest(v) for i, v in zip(good_rows, model_64.encode(good_texts), strict=True)}
    bad_rows = 4 * (len(raw) - len(good_rows)) + 2 + 2 + 1 + 1
    good_count = 4 * len(good_rows) + 1 + 1  # the timestamp table's row and the record batch's
    with fn_api_pipeline() as p:
        tables = p | beam.Create(list(range(TABLE_COUNT)), reshuffle=False) | beam.Map(hostile_table)
        embedded, failed = tables | beam_m2v.EmbedTables(str(model_64_path))

        def check_embedded(outputs):
            rows = sum(len(t) for t in outputs)
            if rows != good_count:
                raise BeamAssertException(f"{rows} embedded rows, expected {good_count}")
            for table in outputs:
                vectors = table.column("embedding").combine_chunks().values.to_numpy().reshape(len(table), -1)
                for row_id, vector in zip(table.column("id").to_pylist(), vectors, strict=True):
                    if row_id % 100 in digests and row_id < 400 and vector_digest(vector) != digests[row_id % 100]:
                        raise BeamAssertException(f"vector differs for row {row_id}")

        def check_kinds(letters):
            kinds = {}
            for letter in letters:
                kinds.setdefault(letter.error_type, set()).add(letter.element.get("id"))
            assert kinds["InvalidUnicode"] == {r + base for base in (0, 100, 200, 300) for r in (1, 4, 7)}, kinds
            assert kinds["NullText"] == {2, 102, 202, 302, 500, 501}, kinds
            assert kinds["NotAString"] == {400, 401}, kinds
            assert kinds["OutputFieldExists"] == {600} and kinds["AmbiguousColumn"] == {700}, kinds

        assert_that(embedded, check_embedded)
        assert_that(failed, check_dead_letters(bad_rows), label="Failed")
        assert_that(failed, check_kinds, label="Kinds")
    assert counter(p.result, "texts_embedded") == good_count
    assert counter(p.result, "failures") == bad_rows


def test_embed_tables_elements_that_are_not_tables(model_64_path):
    with fn_api_pipeline() as p:
        embedded, failed = create_any(p, [{"text": "a dict"}, "a string", None, 5]) | beam_m2v.EmbedTables(
            str(model_64_path)
        )
        assert_that(embedded, lambda out: out == [] or pytest.fail(str(out)))
        assert_that(failed, check_dead_letters(4, {"NotATable"}), label="Failed")


# -- RunInference --------------------------------------------------------------------------------


def test_run_inference_hostile_elements(model_64, model_64_path):
    digests = {text_key(t): vector_digest(v) for t, v in zip(GOOD_TEXTS, model_64.encode(GOOD_TEXTS), strict=True)}
    elements = GOOD_TEXTS + BAD_BARE
    expected_texts = sorted(text_key(text) for text in GOOD_TEXTS)
    handler = beam_m2v.Model2VecModelHandler(str(model_64_path), max_batch_size=1)
    with fn_api_pipeline() as p:
        good, dead = create_any(p, elements) | RunInference(handler).with_exception_handling()

        def check_good(results):
            if sorted(text_key(r.example) for r in results) != expected_texts:
                raise BeamAssertException(f"{len(results)} results for {len(expected_texts)} good texts")
            for result in results:
                if vector_digest(result.inference) != digests[text_key(result.example)]:
                    raise BeamAssertException(f"vector differs for {result.example[:40]!r}")

        def check_failed(batches):
            if sum(len(batch) for batch, _ in batches) != len(BAD_BARE):
                raise BeamAssertException(f"{len(batches)} failed batches for {len(BAD_BARE)} bad elements")
            for batch, (error_type, message, _) in batches:
                assert error_type is beam_m2v.InvalidTextError, (error_type, message)
                preview(batch).encode("utf-8")

        assert_that(good, check_good)
        assert_that(dead.failed_inferences, check_failed, label="Failed")


def test_run_inference_batches_account_for_every_element(model_64, model_64_path):
    # In a batch holding a bad element, RunInference fails the whole batch: all of it goes to
    # failed_inferences, so embedded + elements of failed batches == read.
    elements = [(i, text) for i, text in enumerate(GOOD_TEXTS + BAD_BARE[:6])]
    expected = model_64.encode(GOOD_TEXTS)
    digests = {i: vector_digest(v) for i, v in enumerate(expected)}
    handler = KeyedModelHandler(beam_m2v.Model2VecModelHandler(str(model_64_path), max_batch_size=4))
    with fn_api_pipeline() as p:
        good, dead = create_any(p, elements) | RunInference(handler).with_exception_handling()
        keys_out = good | beam.Map(lambda kv: kv[0])
        keys_failed = dead.failed_inferences | beam.FlatMap(lambda failure: [key for key, _ in failure[0]])

        def check_vectors(results):
            for key, result in results:
                if vector_digest(result.inference) != digests[key]:
                    raise BeamAssertException(f"vector differs for key {key}")

        count, bad_keys = len(elements), set(range(len(GOOD_TEXTS), len(elements)))  # no 10 MB text in the checks

        def check_all(keys):
            if sorted(keys) != list(range(count)):
                raise BeamAssertException(f"keys accounted for: {sorted(keys)}")

        def check_bad(keys):
            if not bad_keys <= set(keys):
                raise BeamAssertException(f"bad keys {sorted(bad_keys - set(keys))} were embedded")

        assert_that(good, check_vectors)
        assert_that((keys_out, keys_failed) | beam.Flatten(), check_all, label="All")
        assert_that(keys_failed, check_bad, label="Bad")


# -- dead letters can always be written ----------------------------------------------------------


def deep_list(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    "element",
    [
        b"\xff\xfe raw bytes",
        "lone \ud800 surrogate",
        {"text": "key \udc80", "\udfff": b"\x00\xff"},
        nested(100_000),
        deep_list(100_000),
        BadRepr(),
        {"bad": BadRepr()},
        [BadRepr(), "x" * 5000],
        float("nan"),
        "x" * 10_000_000,
    ],
)
def test_preview_and_json_of_any_element(element):
    text = preview(element)
    assert len(text) <= 1100
    text.encode("utf-8")
    failed = FailedElement(element, "Kind \ud800", "reason with \udc00 surrogate and bytes b'\\xff'")
    line = json.dumps(failed.to_json_dict(), ensure_ascii=False)
    line.encode("utf-8")
    failed.reason.encode("utf-8")
    failed.error_type.encode("utf-8")


def test_lone_surrogates_outside_beams_coders(model_64):
    """Where Beam cannot carry them, the layers below still refuse lone surrogates element by element."""
    from beam_m2v.transforms.elements import ElementAccess
    from beam_m2v.transforms.embed_text import encode_isolating_failures

    texts = ["good one", *SURROGATE_TEXTS, "good two"]
    vectors, _, rejected = encode_isolating_failures(model_64, texts)
    assert sorted(rejected) == [1, 2, 3]
    assert np.array_equal(vectors[[0, 4]], model_64.encode(["good one", "good two"]))
    for text in SURROGATE_TEXTS:
        assert ElementAccess(None, "embedding").text_of(text).kind == "InvalidUnicode"  # type: ignore[union-attr]
    handler = beam_m2v.Model2VecModelHandler("unused")
    with pytest.raises(InvalidTextError, match=r"position 1.*surrogate"):
        handler.run_inference(["good", SURROGATE_TEXTS[0]], model_64)


def test_hostile_text_columns_are_really_invalid():
    """The tables above hold what they claim: Arrow's full validation rejects their text columns."""
    for table in hostile_tables()[:4]:
        with pytest.raises(pa.ArrowInvalid, match="UTF8"):
            table.column("text").combine_chunks().cast(pa.large_string()).validate(full=True)
