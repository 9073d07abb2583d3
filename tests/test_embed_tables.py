"""EmbedTables: the Arrow path, whole tables in, tables with a vector column out."""

from __future__ import annotations

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pytest
from apache_beam.testing.util import assert_that, equal_to

import beam_m2v
from tests.beam_helpers import counter, fn_api_pipeline, vector_digest


@pytest.fixture(scope="module")
def model_256(model_256_path):
    return beam_m2v.load_model(model_256_path)


def test_tables_get_a_fixed_size_vector_column(model_256, model_256_path, corpus_texts):
    texts = corpus_texts[:2500]
    table = pa.table({"id": pa.array(range(len(texts)), pa.int64()), "text": texts})
    expected = model_256.encode(texts)
    # The check is pickled into the pipeline: it must not capture the model (its whole matrix).
    expected_digest, dim, rows = vector_digest(expected), model_256.dim, len(texts)
    batches = table.to_batches(max_chunksize=1000)
    with fn_api_pipeline() as p:
        result = p | beam.Create(batches, reshuffle=False) | beam_m2v.EmbedTables(str(model_256_path))

        def check(tables):
            out = pa.concat_tables(tables).sort_by("id")
            assert out.column_names == ["id", "text", "embedding"]
            assert out.schema.field("embedding").type == pa.list_(pa.float32(), dim)
            vectors = out.column("embedding").combine_chunks().values.to_numpy().reshape(len(out), -1)
            assert out.column("id").to_pylist() == list(range(rows))
            assert vector_digest(vectors) == expected_digest

        assert_that(result.embedded, check)
        assert_that(result.failed, lambda failed: failed == [] or pytest.fail(str(failed)), label="NoFailures")
    assert counter(p.result, "texts_embedded") == len(texts)


def test_null_wrong_type_and_missing_column_rows_are_dead_letters(model_256_path):
    good = pa.table({"id": [1, 2, 3], "text": ["first text", None, ""]})
    numbers = pa.table({"id": [4], "text": pa.array([5], pa.int64())})
    no_text = pa.table({"id": [5, 6], "body": ["x", "y"]})
    large = pa.table({"id": [7], "text": pa.array(["large string"], pa.large_string())})
    with fn_api_pipeline() as p:
        embedded, failed = (
            p
            | beam.Create([good, numbers, no_text, large], reshuffle=False)
            | beam_m2v.EmbedTables(str(model_256_path))
        )

        def check_embedded(tables):
            ids = sorted(i for t in tables for i in t.column("id").to_pylist())
            assert ids == [1, 3, 7], ids

        def check_failed(records):
            found = sorted((r.element["id"], r.error_type) for r in records)
            assert found == [(2, "NullText"), (4, "NotAString"), (5, "MissingField"), (6, "MissingField")], found

        assert_that(embedded, check_embedded)
        assert_that(failed, check_failed, label="CheckFailed")
    assert counter(p.result, "texts_embedded") + counter(p.result, "failures") == 7
    assert counter(p.result, "empty_texts") == 1


# -- the Arrow table coder -----------------------------------------------------------------------


def test_arrow_table_coder_round_trips_and_estimates_without_encoding():
    from beam_m2v.transforms.arrow_coder import ArrowTableCoder

    coder = ArrowTableCoder()
    table = pa.table(
        {
            "id": pa.array([1, 2, 3], pa.int64()),
            "text": pa.array(["a", None, "ü"]),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(np.arange(6, dtype=np.float32)), 2),
        }
    )
    sliced = pa.concat_tables([table, table]).slice(2, 3)
    for value in (table, sliced, table.slice(0, 0)):
        decoded = coder.decode(coder.encode(value))
        assert decoded.equals(value)
        assert decoded.schema == value.schema
    batch = table.to_batches()[0]
    assert coder.decode(coder.encode(batch)).equals(table)
    assert coder.estimate_size(table) == table.nbytes
    assert not coder.is_deterministic()


def test_registered_coder_carries_tables_across_a_shuffle():
    from beam_m2v.transforms.arrow_coder import ArrowTableCoder, register_arrow_table_coder

    register_arrow_table_coder()
    assert isinstance(beam.coders.registry.get_coder(pa.Table), ArrowTableCoder)
    tables = [pa.table({"k": [i] * 3, "v": pa.array([float(i)] * 3, pa.float32())}) for i in range(6)]

    def values(item):
        key, grouped = item
        return key, sorted(value for table in grouped for value in table.column("v").to_pylist())

    with fn_api_pipeline() as pipeline:
        keyed = (
            pipeline
            | beam.Create(tables)
            | beam.Map(lambda t: (t.column("k")[0].as_py() % 2, t)).with_output_types(
                beam.typehints.Tuple[int, pa.Table]
            )
        )
        rows = keyed | beam.GroupByKey() | beam.Map(values)
        assert_that(rows, equal_to([(0, [0.0] * 3 + [2.0] * 3 + [4.0] * 3), (1, [1.0] * 3 + [3.0] * 3 + [5.0] * 3)]))
