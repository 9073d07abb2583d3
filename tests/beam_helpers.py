"""Helpers for running real Beam pipelines in tests and reading their metrics."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import BeamAssertException

from beam_m2v.transforms.metrics import NAMESPACE


def fn_api_pipeline(*args: str) -> beam.Pipeline:
    """A pipeline on FnApiRunner with the given extra options."""
    return beam.Pipeline(runner="FnApiRunner", options=PipelineOptions(list(args)))


def counter(result: Any, name: str) -> int:
    """Sum of a beam_m2v counter over all steps (0 when never incremented)."""
    query = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE).with_name(name))
    return sum(item.committed or 0 for item in query["counters"])


def private_model_copy(model_dir: Path, tmp_path: Path) -> str:
    """A copy of a model folder at a fresh path, so no process has it cached yet."""
    target = tmp_path / f"model-{model_dir.name}"
    shutil.copytree(model_dir, target)
    return str(target)


def vector_digest(vector: Any) -> bytes:
    """A short digest of a float32 vector's exact bytes: equal digests mean bit-identical vectors."""
    return hashlib.blake2b(np.ascontiguousarray(vector, dtype=np.float32).tobytes(), digest_size=16).digest()


def vectors_match(expected: dict[str, np.ndarray]) -> Any:
    """A matcher for (text, vector) pairs: every text present once with exactly its expected vector.

    The matcher is pickled into the pipeline (and compressed by Beam), so it carries digests
    of the expected vectors rather than the vectors themselves.
    """
    digests = {text: vector_digest(vector) for text, vector in expected.items()}

    def check(actual: list[tuple[str, Any]]) -> None:
        if sorted(text for text, _ in actual) != sorted(digests):
            raise BeamAssertException(f"texts differ: {len(actual)} out, {len(digests)} expected")
        for text, vector in actual:
            if vector_digest(vector) != digests[text]:
                raise BeamAssertException(f"vector differs for {text[:60]!r}")

    return check
