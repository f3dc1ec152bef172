"""The package version, importable without the package `__init__` (so modules that record it,
like checkpoints and evaluation summaries, do not import the package root back)."""
__version__ = "0.1.0"
