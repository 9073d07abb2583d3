"""Errors raised by beam-m2v, each carrying what a user needs to act on it."""

from __future__ import annotations

from collections.abc import Sequence

from beam_m2v.text_checks import find_text_problem


class ModelLoadError(ValueError):
    """A model could not be loaded: names the file (or source) and what is wrong with it."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem

    def __reduce__(self) -> tuple[type[ModelLoadError], tuple[str, str]]:
        """Pickle with both fields (dead letters and failed batches carry errors across processes)."""
        return (type(self), (self.path, self.problem))


class InvalidTextError(ValueError):
    """An input the tokenizer cannot take: names its position in the batch and why."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(f"text at position {index}: {reason}")
        self.index = index
        self.reason = reason

    def __reduce__(self) -> tuple[type[InvalidTextError], tuple[int, str]]:
        """Pickle with both fields (RunInference's failed batches carry this error across processes)."""
        return (type(self), (self.index, self.reason))

    @classmethod
    def first_in(cls, texts: Sequence[object]) -> InvalidTextError | None:
        """The error for the first element of ``texts`` that is not valid text (``find_text_problem``), or None."""
        for index, value in enumerate(texts):
            problem = find_text_problem(value)
            if problem is not None:
                return cls(index, problem.reason)
        return None


class MissingDependencyError(ImportError):
    """An optional feature was used without its package installed: says which extra to install."""

    def __init__(self, feature: str, package: str, extra: str) -> None:
        super().__init__(f"{feature} needs the {package!r} package: pip install 'beam-m2v[{extra}]'")
        self.package = package
        self.extra = extra
