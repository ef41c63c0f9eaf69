"""Errors that mean "bad input". Every one subclasses `InputError`, whose message is one line: the cause and
the fix. The entry point prints it without a traceback (exit 2). This module imports nothing of the project:
each layer defines its own subclasses next to the code that raises them."""
from __future__ import annotations


class InputError(ValueError):
    """Base of every "cause; fix: ..." error: the run cannot work with this input and nothing was written."""


class ConfigError(InputError):
    """A configuration that cannot work (one line: the cause and the fix)."""


class DivergedError(InputError, RuntimeError):
    """Training produced a NaN or infinite loss (one line: where, and the fix)."""


class Terminated(BaseException):
    """SIGTERM arrived (SLURM preemption, scancel, kill): raised in the main thread by the run's handler so that
    every `finally` and temp-file cleanup runs; the entry point exits 143 with how to resume. A BaseException,
    like KeyboardInterrupt, so no `except Exception` swallows it."""
