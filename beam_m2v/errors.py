"""Errors raised by beam-m2v, each carrying what a user needs to act on it."""

from __future__ import annotations


class ModelLoadError(ValueError):
    """A model could not be loaded: names the file (or source) and what is wrong with it."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


class InvalidTextError(ValueError):
    """An input the tokenizer cannot take: names its position in the batch and why."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(f"text at position {index}: {reason}")
        self.index = index
        self.reason = reason


class MissingDependencyError(ImportError):
    """An optional feature was used without its package installed: says which extra to install."""

    def __init__(self, feature: str, package: str, extra: str) -> None:
        super().__init__(f"{feature} needs the {package!r} package: pip install 'beam-m2v[{extra}]'")
        self.package = package
        self.extra = extra
