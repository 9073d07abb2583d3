"""One loaded model per worker process, shared by every DoFn instance and thread.

A pipeline carries only a small ``ModelSpec`` (what to load and how); each worker process
resolves it once, on first use, into a memory-mapped ``StaticEmbedder``.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypedDict

if TYPE_CHECKING:
    from typing_extensions import Unpack

from beam_m2v.encoder import Semantics, StaticEmbedder
from beam_m2v.loading import MODEL_DEFAULT, load_model
from beam_m2v.model_checks import check_load_options
from beam_m2v.thread_budget import check_settings
from beam_m2v.transforms import thread_options  # noqa: F401  (registers --m2v_threads_per_worker with Beam)


class ModelOptions(TypedDict, total=False):
    """The model options every beam-m2v transform takes, passed on to ``load_model`` on the workers.

    ``tokenizer``, ``dimensionality``, ``normalize``, ``max_length`` (None: no truncation),
    ``semantics`` (``"model2vec"`` or ``"static_backend"``), ``dim`` (columns of a raw ``vocab_matrix.bin``),
    ``revision``/``token``/``cache_dir`` (hub),
    ``sha256`` (remote filesystems); see ``beam_m2v.load_model``.
    """

    tokenizer: str | None
    dimensionality: int | None
    normalize: bool | None
    max_length: int | None
    semantics: Semantics | str | None
    dim: int | None
    revision: str | None
    token: str | None
    cache_dir: str | None
    sha256: str | None


@dataclass(frozen=True)
class ModelSpec:
    """What to load, as ``load_model`` takes it: small, hashable and cheap to pickle."""

    source: str
    tokenizer: str | None = None
    dimensionality: int | None = None
    normalize: bool | None = None
    max_length: Any = MODEL_DEFAULT
    semantics: str | None = None
    dim: int = 256
    revision: str | None = None
    token: str | None = None
    cache_dir: str | None = None
    sha256: str | None = None

    def __post_init__(self) -> None:
        """Refuse bad options where the pipeline is built, not later on the workers."""
        options = {name: getattr(self, name) for name in self.__dataclass_fields__ if name != "source"}
        if options["max_length"] is MODEL_DEFAULT:
            options["max_length"] = None
        check_load_options(self.source, **options)

    @classmethod
    def of(cls, model: ModelSpec | str | os.PathLike[str], **options: Unpack[ModelOptions]) -> ModelSpec:
        """A spec from a source (or another spec); each option given (and not None) overrides the spec's."""
        base = model if isinstance(model, ModelSpec) else cls(source=os.fspath(model))
        overrides: dict[str, Any] = {key: value for key, value in options.items() if value is not None}
        if "max_length" in options:
            overrides["max_length"] = options["max_length"]  # None is meaningful here: no truncation
        if isinstance(overrides.get("semantics"), Semantics):
            overrides["semantics"] = overrides["semantics"].value
        return replace(base, **overrides)

    def load(self) -> StaticEmbedder:
        """Load the model this spec names (in this process, uncached)."""
        return load_model(
            self.source,
            tokenizer=self.tokenizer,
            dimensionality=self.dimensionality,
            normalize=self.normalize,
            max_length=self.max_length,
            semantics=self.semantics,
            dim=self.dim,
            revision=self.revision,
            token=self.token,
            cache_dir=self.cache_dir,
            sha256=self.sha256,
        )


@dataclass(frozen=True)
class AcquiredModel:
    """A model from the process cache, and whether this call loaded it (and how long that took)."""

    model: StaticEmbedder
    loaded_now: bool
    load_seconds: float


_models: weakref.WeakValueDictionary[ModelSpec, StaticEmbedder] = weakref.WeakValueDictionary()
_lock = threading.Lock()


def acquire_model(spec: ModelSpec) -> AcquiredModel:
    """The process-wide model for ``spec``: loaded on first use, then shared while anyone holds it.

    A thread setting that is not valid fails here, in the DoFn's setup, rather than row by row.
    """
    check_settings()
    with _lock:
        model = _models.get(spec)
        if model is not None:
            return AcquiredModel(model, loaded_now=False, load_seconds=0.0)
        started = time.perf_counter()
        model = spec.load()
        _models[spec] = model
        return AcquiredModel(model, loaded_now=True, load_seconds=time.perf_counter() - started)
