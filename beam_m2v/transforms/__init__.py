"""The Beam layer: transforms, a RunInference handler and an MLTransform provider over ``load_model``."""

from __future__ import annotations

from beam_m2v.transforms.arrow_coder import ArrowTableCoder, register_arrow_table_coder
from beam_m2v.transforms.dead_letters import FailedElement
from beam_m2v.transforms.embed_tables import EmbedTables
from beam_m2v.transforms.embed_text import EmbedResult, EmbedText
from beam_m2v.transforms.inference import Model2VecModelHandler
from beam_m2v.transforms.lance_write import LanceCommit, WriteToLance
from beam_m2v.transforms.milvus import create_milvus_collection, milvus_column_specs
from beam_m2v.transforms.ml_transform import Model2VecEmbeddings
from beam_m2v.transforms.model_cache import ModelSpec, acquire_model

__all__ = [
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
    "acquire_model",
    "create_milvus_collection",
    "milvus_column_specs",
    "register_arrow_table_coder",
]
