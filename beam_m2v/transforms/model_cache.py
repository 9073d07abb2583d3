"""One loaded model per worker process, shared by every DoFn instance and thread.

A pipeline carries only a small ``ModelSpec`` (what to load and how); each worker process
resolves it once, on first use, into a memory-mapped ``StaticEmbedder``.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing_extensions import Unpack

from beam_m2v.encoder import StaticEmbedder
from beam_m2v.errors import ModelLoadError
from beam_m2v.loading import load_with_options
from beam_m2v.model_checks import check_load_options
from beam_m2v.model_options import ModelKeywords, ModelOptions, option_overrides
from beam_m2v.thread_budget import check_settings
from beam_m2v.transforms import thread_options  # noqa: F401  (registers --m2v_threads_per_worker with Beam)


@dataclass(frozen=True, repr=False)
class ModelSpec(ModelOptions):
    """What to load: a model source and its ``ModelOptions``; small, hashable and cheap to pickle.

    Built where the pipeline is built (bad options are refused there), loaded on the workers.
    A hub ``token`` is not part of the pickle: workers authenticate through huggingface_hub's
    own ``HF_TOKEN`` or login (see ``ModelOptions``).
    """

    source: str

    def __post_init__(self) -> None:
        """Refuse bad options where the pipeline is built, not later on the workers."""
        super().__post_init__()
        check_load_options(self.source, self)

    def __repr__(self) -> str:
        """``ModelSpec('models/m2v-minilm-64', dimensionality=32)``: the source and the options that are set."""
        defaults = ModelOptions()
        options = [
            f"{option.name}={getattr(self, option.name)!r}"
            for option in fields(ModelOptions)
            if option.repr and getattr(self, option.name) != getattr(defaults, option.name)
        ]
        return f"ModelSpec({', '.join([repr(self.source), *options])})"

    @classmethod
    def of(cls, model: ModelSpec | str | os.PathLike[str], **options: Unpack[ModelKeywords]) -> ModelSpec:
        """A spec from a source (or another spec); each option given (and not None) overrides the spec's."""
        return cls.from_keywords(model, options, caller="ModelSpec.of()")

    @classmethod
    def from_keywords(
        cls, model: ModelSpec | str | os.PathLike[str], options: Mapping[str, Any], *, caller: str
    ) -> ModelSpec:
        """``of`` for a transform's ``**model_options``: an unknown keyword is a ``TypeError`` naming ``caller``."""
        overrides = option_overrides(options, caller=caller, stacklevel=4)  # here, of() or __init__, the user
        if isinstance(model, ModelSpec):
            return replace(model, **overrides)
        return cls(source=os.fspath(model), **overrides)

    def load(self) -> StaticEmbedder:
        """Load the model this spec names (in this process, uncached)."""
        try:
            return load_with_options(self.source, self)
        except ModelLoadError as error:
            from huggingface_hub import get_token

            if not self.token_withheld or get_token():  # HF_TOKEN, or the machine's huggingface-cli login
                raise
            raise ModelLoadError(
                error.path,
                f"{error.problem} (a hub token given to the pipeline is not sent to the workers: "
                "set HF_TOKEN there, see docs/models.md)",
            ) from None


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
