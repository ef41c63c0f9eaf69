"""Errors that mean "bad input": the entry point prints their one-line message (cause and fix), no traceback."""
from __future__ import annotations


class ConfigError(ValueError):
    """A configuration that cannot work (one line: the cause and the fix)."""


class DivergedError(RuntimeError):
    """Training produced a NaN or infinite loss (one line: where, and the fix)."""


def input_errors() -> tuple[type[BaseException], ...]:
    from hald.artifacts import ArtifactError
    from hald.data.distilled import DistilledError
    from hald.data.sources import SourceError
    from hald.labels.budget import LabelBudgetError

    return (ConfigError, SourceError, DistilledError, ArtifactError, LabelBudgetError, DivergedError)
