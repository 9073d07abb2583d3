"""beam-m2v: Model2Vec static embeddings in Apache Beam, equal to model2vec's own vectors."""

from __future__ import annotations

from beam_m2v.encoder import EncodingSettings, Semantics, StaticEmbedder
from beam_m2v.errors import InvalidTextError, ModelLoadError
from beam_m2v.loading import load_model

__version__ = "0.1.0"

__all__ = [
    "EncodingSettings",
    "InvalidTextError",
    "ModelLoadError",
    "Semantics",
    "StaticEmbedder",
    "__version__",
    "load_model",
]
