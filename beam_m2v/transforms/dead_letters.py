"""The dead-letter record: an input that could not be embedded, and why."""

from __future__ import annotations

import json
import reprlib
from dataclasses import dataclass
from typing import Any

#: Tag of the dead-letter output of every beam-m2v transform.
FAILED_TAG = "failed"
#: Tag of the main output.
EMBEDDED_TAG = "embedded"

_MAX_VALUE_CHARS = 1000
_MAX_REASON_CHARS = 2000


@dataclass(frozen=True)
class FailedElement:
    """An element that was not embedded: the original ``element``, an ``error_type`` and a readable ``reason``.

    ``error_type`` and ``reason`` are always printable UTF-8 text (lone surrogates escaped,
    the reason cut to a sane length), so a dead letter can always be written out.
    """

    element: Any
    error_type: str
    reason: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "error_type", preview(self.error_type, 100))
        object.__setattr__(self, "reason", preview(self.reason, _MAX_REASON_CHARS))

    def to_json_dict(self) -> dict[str, Any]:
        """A JSON-safe summary (the element as text, cut to a sane length)."""
        return {"error_type": self.error_type, "reason": self.reason, "element": preview(self.element)}


def preview(value: Any, limit: int = _MAX_VALUE_CHARS) -> str:
    """A printable, bounded rendering of any value, valid UTF-8 (lone surrogates escaped).

    Never raises: a value that JSON cannot render is shown by its repr; one whose repr
    fails, or nested too deeply to render, by a short description of its type.
    """
    if isinstance(value, str):
        text = value[: limit * 4 + 16]  # enough for the cut below, without copying a huge text whole
        length = len(value)
    else:
        text = _render(value, limit)
        length = len(text)
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= limit and length <= limit else f"{text[:limit]}... ({length} characters)"


def error_text(error: BaseException, *, with_type: bool = True) -> str:
    """``Type: message`` (or the message alone) of an exception, printable and bounded, never raising."""
    try:
        message = str(error)
    except Exception:
        return type(error).__name__
    if with_type or not message:
        message = f"{type(error).__name__}: {message}" if message else type(error).__name__
    return preview(message, _MAX_REASON_CHARS)


def _render(value: Any, limit: int) -> str:
    """``value`` as JSON text when possible, else its (bounded) repr, else a description of its type."""
    try:
        return json.dumps(value, ensure_ascii=False, default=_short_repr)
    except Exception:  # RecursionError for deep nesting, anything a repr raises
        pass
    try:
        return _short_repr(value)
    except Exception:
        return f"<{type(value).__name__} that cannot be printed>"


_bounded = reprlib.Repr()
_bounded.maxlevel = 20
_bounded.maxstring = _bounded.maxother = 200
_bounded.maxlist = _bounded.maxtuple = _bounded.maxdict = _bounded.maxset = 50


def _short_repr(value: Any) -> str:
    """A bounded repr (depth and width limited), or a description of the type when repr fails."""
    try:
        return _bounded.repr(value)
    except Exception:
        return f"<{type(value).__name__} that cannot be printed>"
