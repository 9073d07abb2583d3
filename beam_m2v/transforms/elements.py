"""Where the text of an element is, and how its vector is attached to it.

Supported elements: bare ``str`` (no ``text_field``); with a text field, ``dict``s and
records: ``beam.Row``s, NamedTuples, dataclass instances and other objects with attributes.
Outputs:

* ``str``           -> ``(text, vector)`` tuple;
* ``dict``          -> a new dict: the input's keys plus ``output_field``;
* a record          -> a ``beam.Row`` with the input's fields plus ``output_field``.

The vector is a float32 numpy array (``output_format="numpy"``, the default) or a list of
Python floats (``output_format="list"``, what JSON sinks and vector stores often want).
An element that already has ``output_field`` is not embedded (its field is never overwritten).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from apache_beam.pvalue import Row

from beam_m2v.text_checks import TextProblem, find_text_problem
from beam_m2v.transforms.dead_letters import error_text, preview

OutputFormat = Literal["numpy", "list"]


def record_fields(element: Any) -> dict[str, Any] | None:
    """The fields of a record element as a new dict (None when it has no fields to copy)."""
    if hasattr(element, "_asdict"):
        return dict(element._asdict())
    if dataclasses.is_dataclass(element) and not isinstance(element, type):
        return {field.name: getattr(element, field.name) for field in dataclasses.fields(element)}
    if hasattr(element, "__dict__") and not isinstance(element, type):
        return dict(vars(element))
    return None


@dataclass(frozen=True)
class ElementAccess:
    """Reads the text of elements and builds the embedded output elements."""

    text_field: str | None
    output_field: str
    output_format: OutputFormat = "numpy"

    def __post_init__(self) -> None:
        if self.output_format not in ("numpy", "list"):
            raise ValueError(f"output_format must be 'numpy' or 'list', got {self.output_format!r}")

    def text_of(self, element: Any) -> str | TextProblem:
        """The element's text, or why it has none that can be embedded (never raises)."""
        try:
            return self._text_of(element)
        except Exception as error:  # keys or attributes that raise when read
            return TextProblem("UnreadableElement", f"reading field {self.text_field!r} failed: {error_text(error)}")

    def _text_of(self, element: Any) -> str | TextProblem:
        """``text_of`` without the guard."""
        if self.text_field is None:
            if isinstance(element, str):
                return find_text_problem(element) or element
            return TextProblem(
                "NotAString",
                f"element is {type(element).__name__}, not str "
                "(pass text_field= to embed a field of dicts, Rows or NamedTuples)",
            )
        fields = element if isinstance(element, dict) else record_fields(element)
        if fields is None:
            return TextProblem(
                "NotARecord",
                f"element is {type(element).__name__}, which has no fields; text_field= reads dicts, "
                "beam.Rows, NamedTuples and objects with attributes",
            )
        if self.text_field not in fields:
            return TextProblem(
                "MissingField",
                f"{type(element).__name__} element has no field {self.text_field!r}; fields: {_field_names(fields)}",
            )
        if self.output_field in fields:
            return TextProblem(
                "OutputFieldExists",
                f"the element already has a field {self.output_field!r}, where the vector would go; "
                "pass another output_field=",
            )
        value = fields[self.text_field]
        return find_text_problem(value) or value

    def vector_value(self, vector: np.ndarray) -> Any:
        """The vector in the configured output format."""
        return vector.tolist() if self.output_format == "list" else vector

    def with_vector(self, element: Any, text: str, vector: np.ndarray) -> Any:
        """The output element for ``element`` and its vector."""
        value = self.vector_value(vector)
        if self.text_field is None:
            return (text, value)
        if isinstance(element, dict):
            return {**element, self.output_field: value}
        fields = record_fields(element)
        if fields is None:
            raise TypeError(f"element is {type(element).__name__}, which has no fields")
        fields[self.output_field] = value
        return Row(**fields)


def _field_names(fields: dict[Any, Any]) -> str:
    """The keys of a dict, printable whatever they are."""
    return preview(sorted(preview(key, 80) for key in fields), 500)
