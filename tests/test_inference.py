"""RunInference and MLTransform (dict columns and RAG chunks) give load_model().encode's vectors."""

from __future__ import annotations

import os

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.ml.inference.base import KeyedModelHandler, PredictionResult, RunInference
from apache_beam.ml.rag.types import Chunk, Content
from apache_beam.ml.transforms.base import MLTransform
from apache_beam.testing.util import assert_that

import beam_m2v
from tests.beam_helpers import fn_api_pipeline

TEXTS = ["the kernel schedules tasks", "memory is mapped", "", "a third sentence about drivers"]


@pytest.fixture(scope="module")
def expected(model_256_path):
    model = beam_m2v.load_model(model_256_path)
    return dict(zip(TEXTS, model.encode(TEXTS), strict=True))


def test_run_inference_plain_and_keyed(model_256_path, expected):
    handler = beam_m2v.Model2VecModelHandler(str(model_256_path), max_batch_size=3)
    with fn_api_pipeline() as p:
        plain = p | "Texts" >> beam.Create(TEXTS) | "Plain" >> RunInference(handler)
        keyed = (
            p
            | "Keyed" >> beam.Create([(i, t) for i, t in enumerate(TEXTS)])
            | "KeyedInference" >> RunInference(KeyedModelHandler(handler))
        )

        def check_plain(results):
            assert len(results) == len(TEXTS)
            for result in results:
                assert isinstance(result, PredictionResult)
                assert result.model_id == str(model_256_path)
                assert np.array_equal(result.inference, expected[result.example])

        def check_keyed(results):
            assert sorted(key for key, _ in results) == list(range(len(TEXTS)))
            for key, result in results:
                assert np.array_equal(result.inference, expected[TEXTS[key]])

        assert_that(plain, check_plain)
        assert_that(keyed, check_keyed, label="CheckKeyed")


def test_handler_contract(model_256_path):
    handler = beam_m2v.Model2VecModelHandler(str(model_256_path))
    assert handler.get_metrics_namespace() == "beam_m2v"
    assert handler.batch_elements_kwargs()["max_batch_size"] == 1024
    assert handler.get_num_bytes(["ab", "é"]) == 4
    assert not handler.share_model_across_processes()
    handler.update_model_path("/elsewhere/model")
    assert handler.spec.source == "/elsewhere/model"
    with pytest.raises(beam_m2v.InvalidTextError, match="position 1"):
        handler.run_inference(["ok", None], beam_m2v.load_model(model_256_path))


def test_run_inference_dead_letters_with_exception_handling(model_256_path, expected):
    handler = beam_m2v.Model2VecModelHandler(str(model_256_path), max_batch_size=1)
    with fn_api_pipeline() as p:
        good, bad = p | beam.Create([TEXTS[0], 5]) | RunInference(handler).with_exception_handling()  # type: ignore[misc]
        assert_that(good | beam.Map(lambda r: r.example), lambda out: out == [TEXTS[0]] or pytest.fail(str(out)))
        assert_that(
            bad.failed_inferences | beam.Map(lambda r: r[0]),
            lambda out: out == [[5]] or pytest.fail(str(out)),
            label="Bad",
        )


def test_mltransform_columns(model_256_path, expected, tmp_path):
    """Also from a model folder whose path is not ASCII: Beam keeps the handler's repr as an ASCII annotation."""
    rows = [{"id": i, "text": t} for i, t in enumerate(TEXTS)]
    model_path = tmp_path / "modèles de José"
    model_path.symlink_to(model_256_path, target_is_directory=True)
    with fn_api_pipeline() as p:
        out = (
            p
            | beam.Create(rows)
            | MLTransform(write_artifact_location=str(tmp_path / "artifacts")).with_transform(
                beam_m2v.Model2VecEmbeddings(str(model_path), columns=["text"])
            )
        )

        def check(results):
            assert len(results) == len(TEXTS)
            for row in results:
                vector = row.text if hasattr(row, "text") else row["text"]
                row_id = row.id if hasattr(row, "id") else row["id"]
                assert isinstance(vector, list)
                assert np.array_equal(np.float32(vector), expected[TEXTS[row_id]])

        assert_that(out, check)


def test_rag_chunks(model_256_path, expected, tmp_path):
    chunks = [Chunk(content=Content(text=t), id=str(i)) for i, t in enumerate(TEXTS) if t]
    with fn_api_pipeline() as p:
        out = (
            p
            | beam.Create(chunks)
            | MLTransform(write_artifact_location=str(tmp_path / "rag")).with_transform(
                beam_m2v.Model2VecEmbeddings(str(model_256_path))
            )
        )

        def check(results):
            assert len(results) == len(chunks)
            for chunk in results:
                assert np.array_equal(np.float32(chunk.embedding.dense_embedding), expected[TEXTS[int(chunk.id)]])

        assert_that(out, check)


def test_handler_passes_beams_knobs_to_model_handler(model_256_path):
    handler = beam_m2v.Model2VecModelHandler(
        str(model_256_path),
        min_batch_size=2,
        max_batch_size=10,
        max_batch_duration_secs=7,
        element_size_fn=len,
        batch_length_fn=len,
        batch_bucket_boundaries=[8, 64],
        model_copies=2,
    )
    assert handler.batch_elements_kwargs() == {
        "min_batch_size": 2,
        "max_batch_size": 10,
        "max_batch_duration_secs": 7,
        "element_size_fn": len,
        "length_fn": len,
        "bucket_boundaries": [8, 64],
    }
    assert handler.share_model_across_processes() and handler.model_copies() == 2
    assert beam_m2v.Model2VecModelHandler(str(model_256_path), large_model=True).share_model_across_processes()


def test_batches_bounded_by_characters_and_env_vars_on_the_worker(model_256_path, expected, monkeypatch):
    """Beam batches by text length (``element_size_fn``) and sets ``env_vars`` before the model loads."""
    monkeypatch.setenv("BEAM_M2V_HANDLER_TEST", "unset")
    handler = beam_m2v.Model2VecModelHandler(
        str(model_256_path),
        max_batch_size=30,
        element_size_fn=lambda text: max(1, len(text)),
        env_vars={"BEAM_M2V_HANDLER_TEST": "set by the handler"},
    )
    with fn_api_pipeline() as p:
        results = p | beam.Create(TEXTS) | RunInference(handler)
        assert_that(
            results | beam.Map(lambda r: (r.example, np.array_equal(r.inference, expected[r.example]))),
            lambda out: sorted(out) == sorted((text, True) for text in TEXTS) or pytest.fail(str(out)),
        )
    assert os.environ["BEAM_M2V_HANDLER_TEST"] == "set by the handler"  # FnApiRunner runs in this process


def test_model2vec_embeddings_takes_embeddings_manager_arguments(model_256_path):
    manager = beam_m2v.Model2VecEmbeddings(
        str(model_256_path),
        columns=["text"],
        min_batch_size=2,
        max_batch_size=5,
        large_model=True,
        inference_args={},
        load_model_args={"dimensionality": 16, "normalize": False},
        normalize=True,
    )
    assert (manager.spec.dimensionality, manager.spec.normalize) == (16, True)  # the keyword wins
    handler = manager.get_model_handler()
    assert handler.batch_elements_kwargs() == {"min_batch_size": 2, "max_batch_size": 5}
    assert handler.share_model_across_processes()
    with pytest.raises(TypeError, match="'bogus'"):
        beam_m2v.Model2VecEmbeddings(str(model_256_path), columns=["text"], load_model_args={"bogus": 1})
