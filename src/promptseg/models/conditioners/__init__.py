"""Conditioners: where and how a prompt enters the backbone (one file per method)."""
from .base import Conditioner, Context, PromptBatch

__all__ = ["Conditioner", "Context", "PromptBatch"]
