"""Which reference a model's vectors reproduce, and the settings besides the matrix that decide a vector."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Semantics(str, enum.Enum):
    """Which reference a model's vectors reproduce."""

    MODEL2VEC = "model2vec"
    """model2vec's ``StaticModel.encode``: pre-truncation, unknown ids dropped, mean, ``v / (norm + 1e-32)``."""
    STATIC_BACKEND = "static_backend"
    """The Rust ``StaticBackend``: tokenizer as configured by its file, ids past the matrix skipped,
    unknown ids kept, mean, ``v / max(norm, 1e-12)``."""
    SEED = "static_backend"
    """Old name of ``STATIC_BACKEND``, kept so that code written against it keeps working."""

    @classmethod
    def _missing_(cls, value: object) -> Semantics | None:
        """Accept ``"seed"``, the value older manifests and programs use for ``"static_backend"``."""
        if isinstance(value, str) and value.strip().lower().replace("-", "_") in {"seed", "static_backend"}:
            return cls.STATIC_BACKEND
        return None


@dataclass(frozen=True)
class EncodingSettings:
    """Everything besides the matrix that decides a vector."""

    semantics: Semantics
    normalize: bool
    max_length: int | None
    """Token budget (model2vec semantics); None means no truncation."""
