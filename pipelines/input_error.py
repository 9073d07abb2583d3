"""The error of an input that cannot be read at all."""

from __future__ import annotations


class InputError(ValueError):
    """The input cannot be read at all (no files, a missing column, a damaged file): the pipeline does not start.

    The message is one line naming the file or option and the cause; the programs print it and exit with code 2.
    """
