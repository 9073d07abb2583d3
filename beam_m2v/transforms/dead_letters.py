"""The dead-letter record: an input that could not be embedded, and why."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

#: Tag of the dead-letter output of every beam-m2v transform.
FAILED_TAG = "failed"
#: Tag of the main output.
EMBEDDED_TAG = "embedded"

_MAX_VALUE_CHARS = 1000


@dataclass(frozen=True)
class FailedElement:
    """An element that was not embedded: the original ``element``, an ``error_type`` and a readable ``reason``."""

    element: Any
    error_type: str
    reason: str

    def to_json_dict(self) -> dict[str, Any]:
        """A JSON-safe summary (the element as text, cut to a sane length)."""
        return {"error_type": self.error_type, "reason": self.reason, "element": preview(self.element)}


def preview(value: Any, limit: int = _MAX_VALUE_CHARS) -> str:
    """A printable, bounded rendering of any value (lone surrogates escaped)."""
    if isinstance(value, str):
        text = value
    else:
        try:
            text = json.dumps(value, ensure_ascii=False, default=repr)
        except (TypeError, ValueError):
            text = repr(value)
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"
