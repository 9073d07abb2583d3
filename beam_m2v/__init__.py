"""beam-m2v: Model2Vec static embeddings in Apache Beam, equal to model2vec's own vectors."""

from __future__ import annotations

from beam_m2v.encoder import EncodingSettings, Semantics, StaticEmbedder
from beam_m2v.errors import InvalidTextError, MissingDependencyError, ModelLoadError
from beam_m2v.loading import load_model

__version__ = "0.1.0"

_BEAM_NAMES = {
    "ArrowTableCoder",
    "EmbedResult",
    "EmbedTables",
    "EmbedText",
    "FailedElement",
    "LanceCommit",
    "Model2VecEmbeddings",
    "Model2VecModelHandler",
    "ModelSpec",
    "WriteToLance",
    "create_milvus_collection",
    "milvus_column_specs",
    "register_arrow_table_coder",
}


def __getattr__(name: str) -> object:
    """Import the Beam layer lazily, so that ``import beam_m2v`` for encoding stays light."""
    if name in _BEAM_NAMES:
        from beam_m2v import transforms

        return getattr(transforms, name)
    raise AttributeError(f"module 'beam_m2v' has no attribute {name!r}")


__all__ = [
    "ArrowTableCoder",
    "EmbedResult",
    "EmbedTables",
    "EmbedText",
    "EncodingSettings",
    "FailedElement",
    "InvalidTextError",
    "LanceCommit",
    "MissingDependencyError",
    "Model2VecEmbeddings",
    "Model2VecModelHandler",
    "ModelLoadError",
    "ModelSpec",
    "Semantics",
    "StaticEmbedder",
    "WriteToLance",
    "__version__",
    "create_milvus_collection",
    "load_model",
    "milvus_column_specs",
    "register_arrow_table_coder",
]
