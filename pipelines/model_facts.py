"""What identifies a run's vectors: the model facts recorded in every output, and how two records compare.

The facts go into the manifest, the Parquet key-value metadata and a Lance dataset's schema
metadata. ``reembed`` reuses a previous vector only when the facts in ``REUSE_KEYS`` are the
same as the previous run's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import apache_beam as beam

import beam_m2v
from beam_m2v import Semantics, StaticEmbedder
from beam_m2v.transforms.model_cache import ModelSpec

#: Model facts that must match for a previous vector to be reused.
REUSE_KEYS = ("model_fingerprint", "dim", "normalize", "max_length", "semantics")


@dataclass(frozen=True)
class ModelFacts:
    """The model and settings that made a run's vectors, and the versions of the code that ran it."""

    model_source: str
    model_revision: str | None
    model_fingerprint: str
    dim: int
    normalize: bool
    max_length: int | None
    semantics: str
    beam_m2v_version: str
    apache_beam_version: str

    @classmethod
    def of(cls, model: StaticEmbedder, spec: ModelSpec) -> ModelFacts:
        """The facts of a loaded model and the spec it was loaded from."""
        return cls(
            model_source=spec.source,
            model_revision=spec.revision,
            model_fingerprint=model.fingerprint,
            dim=model.dim,
            normalize=model.settings.normalize,
            max_length=model.settings.max_length,
            semantics=model.settings.semantics.value,
            beam_m2v_version=beam_m2v.__version__,
            apache_beam_version=beam.__version__,
        )

    def as_dict(self) -> dict[str, Any]:
        """The facts as written into a manifest or metadata, in field order."""
        return dataclasses.asdict(self)


def semantics_name(value: Any) -> Any:
    """The current name of a semantics value (``seed`` is an old name of ``static_backend``); others unchanged."""
    try:
        return Semantics(value).value
    except ValueError:
        return value


def changed_facts(previous: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The facts of ``REUSE_KEYS`` that differ, as ``{fact: {"previous": old, "current": new}}``.

    Semantics are compared by meaning: ``"seed"``, written by older versions, is ``"static_backend"``.
    """
    changed = {}
    for key in REUSE_KEYS:
        old, new = previous.get(key), current.get(key)
        if key == "semantics":
            old, new = semantics_name(old), semantics_name(new)
        if old != new:
            changed[key] = {"previous": old, "current": new}
    return changed


def reusable(previous: Mapping[str, Any], current: Mapping[str, Any]) -> bool:
    """Whether the previous run's vectors were made by the same model with the same settings."""
    return not changed_facts(previous, current)


def describe_changes(changed: Mapping[str, Mapping[str, Any]]) -> str:
    """``dim 64 -> 256, normalize False -> True``: what changed, for the log."""
    return ", ".join(f"{key} {change['previous']!r} -> {change['current']!r}" for key, change in changed.items())
