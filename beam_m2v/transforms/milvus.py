"""Beam's Milvus writer for Model2Vec chunks: the column specs and a matching collection.

``VectorDatabaseWriteTransform(MilvusVectorWriterConfig(...))`` maps every chunk to a Milvus
record through column specs. Its default specs include a sparse-embedding column and fail on
chunks that have only a dense vector (``ValueError: Expected chunk to contain sparse
embedding``), which is what ``Model2VecEmbeddings`` makes. ``milvus_column_specs`` gives the
specs for such chunks (id, dense vector, content, metadata) and ``create_milvus_collection``
a collection they fit (cosine index on the vector)::

    from apache_beam.ml.rag.ingestion.base import VectorDatabaseWriteTransform
    from apache_beam.ml.rag.ingestion.milvus_search import MilvusVectorWriterConfig, MilvusWriteConfig
    from apache_beam.ml.rag.utils import MilvusConnectionParameters

    config = MilvusVectorWriterConfig(
        connection_params=MilvusConnectionParameters(uri="http://milvus:19530"),
        write_config=MilvusWriteConfig(collection_name="docs"),
        column_specs=beam_m2v.milvus_column_specs(),
    )
    embedded_chunks | VectorDatabaseWriteTransform(config)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from beam_m2v.errors import MissingDependencyError

#: Longest content and id strings the collection made by ``create_milvus_collection`` holds by default.
CONTENT_MAX_LENGTH = 65_535
ID_MAX_LENGTH = 512


def _floats(values: Iterable[float]) -> list[float]:
    """A dense vector as the list of Python floats Milvus takes."""
    return [float(value) for value in values]


def _metadata(values: Mapping[str, Any]) -> dict[str, Any]:
    """Chunk metadata as a plain dict (a Milvus JSON field)."""
    return dict(values)


def milvus_column_specs(
    *,
    id_field: str = "id",
    embedding_field: str = "embedding",
    content_field: str | None = "content",
    metadata_field: str | None = "metadata",
) -> list[Any]:
    """Column specs of Beam's Milvus writer for chunks with a dense vector only (Model2Vec's).

    ``content_field`` / ``metadata_field`` = None leaves that column out. The names must be
    fields of the collection (``create_milvus_collection`` makes one with these defaults).
    """
    from apache_beam.ml.rag.ingestion.postgres_common import ColumnSpecsBuilder

    builder = (
        ColumnSpecsBuilder()
        .with_id_spec(column_name=id_field)
        .with_embedding_spec(column_name=embedding_field, convert_fn=_floats)
    )
    if content_field:
        builder = builder.with_content_spec(column_name=content_field)
    if metadata_field:
        builder = builder.with_metadata_spec(column_name=metadata_field, convert_fn=_metadata)
    specs: list[Any] = builder.build()
    return specs


def create_milvus_collection(
    client: Any,
    name: str,
    dim: int,
    *,
    id_field: str = "id",
    embedding_field: str = "embedding",
    content_field: str | None = "content",
    metadata_field: str | None = "metadata",
    metric: str = "COSINE",
    index_type: str = "AUTOINDEX",
) -> None:
    """Create a collection that ``milvus_column_specs`` (same arguments) writes into, with a vector index.

    ``client`` is a ``pymilvus.MilvusClient`` (``MilvusClient(uri="docs.db")`` is Milvus Lite,
    a local file). Ids are strings (Beam chunk ids), the vector ``FLOAT_VECTOR[dim]``, content
    a string, metadata JSON.
    """
    try:
        from pymilvus import DataType, MilvusClient
    except ImportError as error:
        raise MissingDependencyError("Milvus collections", "pymilvus", "milvus") from error
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field(id_field, DataType.VARCHAR, is_primary=True, max_length=ID_MAX_LENGTH)
    schema.add_field(embedding_field, DataType.FLOAT_VECTOR, dim=dim)
    if content_field:
        schema.add_field(content_field, DataType.VARCHAR, max_length=CONTENT_MAX_LENGTH)
    if metadata_field:
        schema.add_field(metadata_field, DataType.JSON)
    index = client.prepare_index_params()
    index.add_index(field_name=embedding_field, index_type=index_type, metric_type=metric)
    client.create_collection(collection_name=name, schema=schema, index_params=index)
