"""Beam's Milvus writer with Model2Vec chunks, end to end into Milvus Lite (a real Milvus in a local file).

Chunks -> ``MLTransform(Model2VecEmbeddings)`` -> ``VectorDatabaseWriteTransform(MilvusVectorWriterConfig)``
on FnApiRunner, then searched with pymilvus: the nearest chunk of a query is the one brute-force
cosine over ``load_model(...).encode`` finds, and the stored vectors are ``encode``'s bit for bit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.ml.rag.types import Chunk, Content, Embedding
from apache_beam.ml.transforms.base import MLTransform

import beam_m2v
from tests.beam_helpers import fn_api_pipeline

pymilvus = pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from apache_beam.ml.rag.ingestion.base import VectorDatabaseWriteTransform  # noqa: E402  (needs pymilvus)
from apache_beam.ml.rag.ingestion.milvus_search import (  # noqa: E402
    MilvusVectorWriterConfig,
    MilvusWriteConfig,
)
from apache_beam.ml.rag.utils import MilvusConnectionParameters  # noqa: E402

COLLECTION = "chunks"
QUERIES = ["how to configure the network driver", "memory allocation in the kernel", "usb device power management"]


def chunks_of(texts: list[str]) -> list[Chunk]:
    return [Chunk(content=Content(text=text), id=f"doc-{i}", metadata={"n": i}) for i, text in enumerate(texts)]


def write_chunks(chunks: list[Chunk], model: Path, db: Path, artifacts: Path, **config: Any) -> None:
    writer = MilvusVectorWriterConfig(
        connection_params=MilvusConnectionParameters(uri=str(db)),
        write_config=MilvusWriteConfig(collection_name=COLLECTION),
        **config,
    )
    with fn_api_pipeline() as pipeline:
        _ = (
            pipeline
            | "Chunks" >> beam.Create(chunks)
            | MLTransform(write_artifact_location=str(artifacts)).with_transform(
                beam_m2v.Model2VecEmbeddings(str(model))
            )
            | VectorDatabaseWriteTransform(writer)
        )


def test_model2vec_chunks_into_milvus_lite_nearest_chunk_is_the_expected_one(model_64_path, corpus_texts, tmp_path):
    texts = corpus_texts[:400]
    model = beam_m2v.load_model(str(model_64_path))
    db = tmp_path / "chunks.db"
    client = pymilvus.MilvusClient(uri=str(db))
    beam_m2v.create_milvus_collection(client, COLLECTION, model.dim, index_type="FLAT")
    write_chunks(
        chunks_of(texts), model_64_path, db, tmp_path / "artifacts", column_specs=beam_m2v.milvus_column_specs()
    )
    client.flush(COLLECTION)
    client.load_collection(COLLECTION)
    vectors = model.encode(texts).astype(np.float64)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    for query in QUERIES:
        q = model.encode([query])[0]
        expected = int(np.argmax(unit @ (q / np.linalg.norm(q))))
        hits = client.search(COLLECTION, data=[q.tolist()], limit=1, output_fields=["content", "metadata"])[0]
        assert hits[0]["id"] == f"doc-{expected}", query
        assert hits[0]["entity"]["content"] == texts[expected]
        assert hits[0]["entity"]["metadata"] == {"n": expected}
    stored = client.query(COLLECTION, filter='id != ""', output_fields=["embedding"], limit=len(texts))
    assert len(stored) == len(texts)
    by_id = {row["id"]: np.asarray(row["embedding"], dtype=np.float32) for row in stored}
    expected_vectors = model.encode(texts)
    for i in range(len(texts)):
        assert by_id[f"doc-{i}"].tobytes() == expected_vectors[i].tobytes()
    client.close()


def test_beams_default_column_specs_fail_on_dense_only_chunks(model_64_path, corpus_texts, tmp_path):
    db = tmp_path / "default.db"
    client = pymilvus.MilvusClient(uri=str(db))
    beam_m2v.create_milvus_collection(client, COLLECTION, 64)
    with pytest.raises(Exception, match="Expected chunk to contain sparse embedding"):
        write_chunks(chunks_of(corpus_texts[:5]), model_64_path, db, tmp_path / "artifacts")
    client.close()


def test_column_specs_can_leave_out_content_and_metadata():
    specs = beam_m2v.milvus_column_specs(
        id_field="pk", embedding_field="vector", content_field=None, metadata_field=None
    )
    assert [spec.column_name for spec in specs] == ["pk", "vector"]
    chunk = Chunk(content=Content(text="x"), id="a")
    chunk.embedding = Embedding(dense_embedding=[np.float32(0.5), 1])
    assert [spec.value_fn(chunk) for spec in specs] == ["a", [0.5, 1.0]]
