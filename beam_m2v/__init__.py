"""beam-m2v: Model2Vec static embeddings in Apache Beam, equal to model2vec's own vectors."""

from __future__ import annotations

from typing import TYPE_CHECKING

from beam_m2v.encoder import StaticEmbedder
from beam_m2v.errors import InvalidTextError, MissingDependencyError, ModelLoadError
from beam_m2v.loading import load_model
from beam_m2v.semantics import EncodingSettings, Semantics

if TYPE_CHECKING:  # for type checkers; at run time ``__getattr__`` imports them on first use
    from beam_m2v.transforms import ArrowTableCoder as ArrowTableCoder
    from beam_m2v.transforms import EmbedResult as EmbedResult
    from beam_m2v.transforms import EmbedTables as EmbedTables
    from beam_m2v.transforms import EmbedText as EmbedText
    from beam_m2v.transforms import FailedElement as FailedElement
    from beam_m2v.transforms import LanceCommit as LanceCommit
    from beam_m2v.transforms import Model2VecEmbeddings as Model2VecEmbeddings
    from beam_m2v.transforms import Model2VecModelHandler as Model2VecModelHandler
    from beam_m2v.transforms import ModelSpec as ModelSpec
    from beam_m2v.transforms import WriteToLance as WriteToLance
    from beam_m2v.transforms import create_milvus_collection as create_milvus_collection
    from beam_m2v.transforms import milvus_column_specs as milvus_column_specs
    from beam_m2v.transforms import register_arrow_table_coder as register_arrow_table_coder

__version__ = "0.1.0"

#: The names of the Beam layer (``beam_m2v.transforms``), imported on first use.
BEAM_NAMES = (
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
)


def __getattr__(name: str) -> object:
    """Import the Beam layer lazily, so that ``import beam_m2v`` for encoding stays light."""
    if name in BEAM_NAMES:
        from beam_m2v import transforms

        return getattr(transforms, name)
    raise AttributeError(f"module 'beam_m2v' has no attribute {name!r}")


__all__ = [
    "EncodingSettings",
    "InvalidTextError",
    "MissingDependencyError",
    "ModelLoadError",
    "Semantics",
    "StaticEmbedder",
    "__version__",
    "load_model",
    *BEAM_NAMES,
]
