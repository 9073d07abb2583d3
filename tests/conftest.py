"""Shared test fixtures: where the shared models and corpus live."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BEAM_M2V_SHARED", REPO.parent / "shared"))
MODEL_256 = SHARED / "models" / "m2v-minilm-256"
MODEL_64 = SHARED / "models" / "m2v-minilm-64"
CORPUS_PARQUET = SHARED / "corpora" / "linux-doc-6.1-paragraphs.parquet"
CORPUS_JSONL = SHARED / "corpora" / "linux-doc-6.1-paragraphs.jsonl"


@pytest.fixture(scope="session")
def model_256_path() -> Path:
    return MODEL_256


@pytest.fixture(scope="session")
def model_64_path() -> Path:
    return MODEL_64


@pytest.fixture(scope="session")
def corpus_texts() -> list[str]:
    """The first 5,000 paragraphs of the shared corpus."""
    import pyarrow.parquet as pq

    return pq.read_table(CORPUS_PARQUET, columns=["text"]).column("text").to_pylist()[:5000]
