"""How to load a model, defined once: ``load_model``, ``ModelSpec``, the transforms and the programs derive from it.

``ModelOptions`` is the definition (names, types, defaults, meaning). ``ModelKeywords`` is the
same list as keyword arguments, for typing ``**options`` of the transforms; a test keeps the two
equal.
"""

from __future__ import annotations

import difflib
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypedDict

from beam_m2v.semantics import Semantics

#: Columns of a raw ``vocab_matrix.bin`` unless told otherwise (the Rust StaticBackend's default).
DEFAULT_RAW_DIM = 256


class _Unset:
    """Marker for 'use the model's own value'."""

    def __repr__(self) -> str:
        return "<model's own>"

    def __reduce__(self) -> str:
        """Pickle as the module-level singleton, so ``is MODEL_DEFAULT`` survives pickling."""
        return "MODEL_DEFAULT"


MODEL_DEFAULT: Any = _Unset()
"""Default of ``max_length``: the model config's value (512 when absent)."""

#: Old keyword -> its current name; the old one still works, with a ``DeprecationWarning``.
RENAMED_OPTIONS: Mapping[str, str] = {"dim": "raw_dim"}


@dataclass(frozen=True, kw_only=True)
class ModelOptions:
    """How to load a model, besides where it is: the keywords of ``load_model`` and of every transform.

    Validated against the model source by ``beam_m2v.model_checks.check_load_options``.
    ``token`` is a secret: it is left out of ``repr``, of comparisons and of pickles (see
    ``__getstate__``), so it never reaches a pipeline graph or a log.
    """

    tokenizer: str | None = None
    """Where the tokenizer comes from when it is not beside the matrix (a file, a folder or a hub id)."""
    dimensionality: int | None = None
    """Keep only the first columns (Matryoshka / PCA truncation), as model2vec does."""
    normalize: bool | None = None
    """L2-normalise the vectors; None: the model config's value (False when absent)."""
    max_length: Any = MODEL_DEFAULT
    """Token budget per text (``int | None``); ``MODEL_DEFAULT``: the model config's (512 when absent); None: none."""
    semantics: str | None = None
    """``"model2vec"`` or ``"static_backend"`` (``"seed"``: its old name); None: chosen by the model's layout."""
    raw_dim: int = DEFAULT_RAW_DIM
    """Columns of a raw ``vocab_matrix.bin``, a headerless matrix (the only layout without its own shape)."""
    revision: str | None = None
    """Hugging Face hub revision (branch, tag or commit), as in ``huggingface_hub.snapshot_download``."""
    token: str | None = field(default=None, repr=False, compare=False)
    """Hugging Face hub access token, used in this process only; workers use ``HF_TOKEN`` or their login."""
    cache_dir: str | None = None
    """Hugging Face hub cache folder; None: huggingface_hub's (``HF_HOME``, ``HF_HUB_CACHE``)."""
    sha256: str | None = None
    """Expected SHA-256 of the matrix file of a model on a remote filesystem (``gs://``, ``s3://``...)."""

    def __post_init__(self) -> None:
        """Keep values hashable and plain: paths as ``str``, a ``Semantics`` as its name."""
        for name in ("tokenizer", "cache_dir"):
            value = getattr(self, name)
            if isinstance(value, os.PathLike):
                object.__setattr__(self, name, os.fspath(value))
        if isinstance(self.semantics, Semantics):
            object.__setattr__(self, "semantics", self.semantics.value)

    def __getstate__(self) -> dict[str, Any]:
        """The pickled state: every option but the hub token (only whether one was given)."""
        state = {option.name: getattr(self, option.name) for option in fields(self) if option.name != "token"}
        state["_token_withheld"] = self.token is not None or self.token_withheld
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restore the options; the token stays None (huggingface_hub then uses ``HF_TOKEN`` or the login)."""
        for name, value in state.items():
            object.__setattr__(self, name, value)
        object.__setattr__(self, "token", None)

    @property
    def token_withheld(self) -> bool:
        """Whether this copy came out of a pickle that left a hub token behind."""
        return bool(getattr(self, "_token_withheld", False))


class ModelKeywords(TypedDict, total=False):
    """``ModelOptions`` as keyword arguments (None: the default, except ``max_length=None``: no truncation)."""

    tokenizer: str | os.PathLike[str] | None
    dimensionality: int | None
    normalize: bool | None
    max_length: int | None
    semantics: Semantics | str | None
    raw_dim: int | None
    revision: str | None
    token: str | None
    cache_dir: str | os.PathLike[str] | None
    sha256: str | None


OPTION_NAMES: tuple[str, ...] = tuple(option.name for option in fields(ModelOptions))


def option_overrides(given: Mapping[str, Any], *, caller: str, stacklevel: int = 3) -> dict[str, Any]:
    """The options among ``given`` keywords that replace defaults: not None (but ``max_length=None`` counts).

    Old names (``dim``) are accepted with a ``DeprecationWarning`` (``stacklevel`` as in
    ``warnings.warn``, counted from here: it should point at the user's call); any other unknown
    keyword is a ``TypeError`` naming ``caller``, as Python reports a wrong keyword.
    """
    overrides: dict[str, Any] = {}
    for name, value in given.items():
        if name in RENAMED_OPTIONS:
            new = RENAMED_OPTIONS[name]
            warnings.warn(f"{caller}: {name}= is now called {new}=", DeprecationWarning, stacklevel=stacklevel)
            if new in given:
                raise TypeError(f"{caller} got both {name}= and its new name {new}=")
            name = new
        elif name not in OPTION_NAMES:
            close = difflib.get_close_matches(name, OPTION_NAMES, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise TypeError(f"{caller} got an unexpected keyword argument {name!r}{hint}")
        if value is not None or name == "max_length":
            overrides[name] = value
    return overrides
