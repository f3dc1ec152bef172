"""State dicts compared by key and shape: every mismatch listed in one line, not torch's traceback."""
from __future__ import annotations

from typing import Mapping


def _shape(value) -> tuple[int, ...]:
    return tuple(getattr(value, "shape", ()))


def state_mismatch(expected: Mapping, given: Mapping, limit: int | None = None) -> str | None:
    """'missing ...; unexpected ...; mis-shaped ...' between two name -> tensor (or shape) maps, or
    None when they fit; `limit` caps the names shown per kind."""
    shape = {k: tuple(v) if isinstance(v, tuple) else _shape(v) for k, v in expected.items()}
    missing = [k for k in shape if k not in given]
    unexpected = [k for k in given if k not in shape]
    misshaped = [f"{k} {_shape(given[k])} (expected {shape[k]})" for k in shape if k in given and _shape(given[k]) != shape[k]]
    parts = []
    for kind, names in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
        if names:
            shown = names if limit is None else names[:limit]
            parts.append(f"{kind} {len(names)}: {', '.join(shown)}{' ...' if len(shown) < len(names) else ''}")
    return "; ".join(parts) or None
