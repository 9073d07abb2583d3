"""What makes a value unusable as text, checked the same way by every layer.

``find_text_problem`` checks one value; ``InvalidTextError.first_in`` finds the first unusable text of a batch.
"""

from __future__ import annotations

from typing import NamedTuple


class TextProblem(NamedTuple):
    """Why a value is not embeddable text: a short ``kind`` (for dead letters) and a readable ``reason``."""

    kind: str
    reason: str


def find_text_problem(value: object) -> TextProblem | None:
    """Return why ``value`` cannot be embedded as text, or None when it can.

    A valid text is a ``str`` that UTF-8 can encode (so no lone surrogates). Empty and
    whitespace-only strings are valid: they embed to a zero vector, as in model2vec.
    """
    if value is None:
        return TextProblem("NullText", "text is null")
    if not isinstance(value, str):
        return TextProblem("NotAString", f"text is {type(value).__name__}, not str")
    if value.isascii():
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        return TextProblem(
            "InvalidUnicode",
            f"text contains a lone surrogate U+{ord(value[error.start]):04X} at character {error.start}, "
            "which is not valid Unicode text",
        )
    return None
