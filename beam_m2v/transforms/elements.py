"""Where the text of an element is, and how its vector is attached to it.

Supported elements: bare ``str`` (no ``text_field``); ``dict``s, ``beam.Row``s and
NamedTuples with a text field. Outputs:

* ``str``           -> ``(text, vector)`` tuple;
* ``dict``          -> a new dict: the input's keys plus ``output_field``;
* ``beam.Row`` / NamedTuple -> a ``beam.Row`` with the input's fields plus ``output_field``.

The vector is a float32 numpy array (``output_format="numpy"``, the default) or a list of
Python floats (``output_format="list"``, what JSON sinks and vector stores often want).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from apache_beam.pvalue import Row

from beam_m2v.text_checks import TextProblem, find_text_problem

OutputFormat = Literal["numpy", "list"]


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
        """The element's text, or why it has none that can be embedded."""
        if self.text_field is None:
            if isinstance(element, str):
                return find_text_problem(element) or element
            return TextProblem(
                "NotAString",
                f"element is {type(element).__name__}, not str "
                "(pass text_field= to embed a field of dicts, Rows or NamedTuples)",
            )
        field = self.text_field
        if isinstance(element, dict):
            if field not in element:
                return TextProblem("MissingField", f"missing field {field!r}; fields: {sorted(map(str, element))}")
            value = element[field]
        elif hasattr(element, field):
            value = getattr(element, field)
        else:
            return TextProblem("MissingField", f"{type(element).__name__} element has no field {field!r}")
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
        fields = element._asdict() if hasattr(element, "_asdict") else dict(vars(element))
        fields[self.output_field] = value
        return Row(**fields)
