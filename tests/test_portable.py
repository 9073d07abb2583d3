"""EmbedText on PortableRunner: pickled DoFns in separate SDK worker processes, as on Flink or Dataflow."""

from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineState
from apache_beam.testing.util import assert_that, equal_to

import beam_m2v
from tests.beam_helpers import assert_vectors, beam_worker_pool, counter, private_model_copy


@pytest.fixture(scope="module")
def worker_pool():
    """A Beam Python worker pool on loopback: each SDK worker it starts is a separate process."""
    with beam_worker_pool() as address:
        yield address


def portable_pipeline(worker_pool: str, *extra: str) -> beam.Pipeline:
    return beam.Pipeline(
        options=PipelineOptions(
            [
                "--runner=PortableRunner",
                "--job_endpoint=embed",
                "--environment_type=EXTERNAL",
                f"--environment_config={worker_pool}",
                *extra,
            ]
        )
    )


def test_portable_runner_with_external_workers(worker_pool, model_64_path, corpus_texts, tmp_path):
    model_path = private_model_copy(model_64_path, tmp_path)
    texts = corpus_texts[:1500]
    expected = dict(zip(texts, beam_m2v.load_model(model_path).encode(texts), strict=True))
    p = portable_pipeline(worker_pool, "--sdk_worker_parallelism=1")
    embedded, failed = (
        p | beam.Create(texts) | beam.Reshuffle() | beam_m2v.EmbedText(model_path, batch_size=50, min_batch_size=50)
    )
    assert_vectors(embedded, expected)
    assert_that(failed, equal_to([]), label="NoFailures")
    result = p.run()
    assert result.wait_until_finish(duration=300_000) == PipelineState.DONE
    loads = counter(result, "model_loads")
    assert 1 <= loads <= 2, loads  # once per SDK worker process, never per bundle (30 batches)
    assert counter(result, "texts_embedded") == len(texts)
