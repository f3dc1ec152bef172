"""Conditioners: where and how a prompt enters the backbone (one file per method)."""
from .base import ClassPart, Conditioner, Context, PromptBatch

__all__ = ["ClassPart", "Conditioner", "Context", "PromptBatch"]
