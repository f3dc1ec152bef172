"""Errors a user sees: one line, naming the file (or thing) and the problem.

Everything promptseg raises on bad input derives from `PromptsegError`; the CLI prints
`str(err)` and exits non-zero instead of showing a traceback.
"""
from __future__ import annotations

from pathlib import Path


class PromptsegError(Exception):
    """Base class: a problem with the user's input, config or files, not a bug."""


class InputError(PromptsegError):
    """A file that cannot be used; the message names the file and the problem."""

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else Path(path)
        self.problem = problem
        where = f"{self.path}: " if self.path is not None else ""
        super().__init__(f"{where}{problem}")


class TaxonomyError(PromptsegError):
    """An unknown class name or an inconsistent class registry."""


class ConfigError(PromptsegError):
    """A run configuration (YAML) that is missing a field or has a wrong value."""


class CheckpointError(PromptsegError):
    """A checkpoint that cannot be loaded (wrong model, missing/extra keys, truncated)."""
