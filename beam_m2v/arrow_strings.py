"""Arrow string arrays: text columns read as plain strings, and Python texts as one large_string array."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from beam_m2v.errors import InvalidTextError


def plain_string_type(arrow_type: pa.DataType) -> pa.DataType:
    """The plain string type a text column of ``arrow_type`` reads as (dictionary and string_view unwrapped)."""
    if pa.types.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    if pa.types.is_string_view(arrow_type):
        return pa.large_string()
    return arrow_type


def plain_strings(data: pa.Table | pa.Array | pa.ChunkedArray) -> Any:
    """Cast dictionary-encoded and string_view text (of a table: every such column) to plain strings."""
    if isinstance(data, pa.Table):
        for index, field in enumerate(data.schema):
            if plain_string_type(field.type) != field.type:
                data = data.set_column(index, field.name, data.column(index).cast(plain_string_type(field.type)))
        return data
    wanted = plain_string_type(data.type)
    return data if wanted == data.type else data.cast(wanted)


def arrow_texts(texts: Sequence[object]) -> pa.Array:
    """``texts`` as an Arrow large_string array; InvalidTextError (with the position) for a value that is not text."""
    if all(type(text) is str for text in texts):
        try:
            return pa.array(texts, type=pa.large_string())
        except (pa.ArrowException, UnicodeError):
            pass
    invalid = InvalidTextError.first_in(texts)
    if invalid is not None:
        raise invalid
    return pa.array([str(text) for text in texts], type=pa.large_string())
