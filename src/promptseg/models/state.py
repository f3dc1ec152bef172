"""State dicts compared by key and shape: every mismatch listed in one line, not torch's traceback."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

from ..errors import InputError


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


def read_torch_file(path: str | Path, what: str = "checkpoint") -> Any:
    """A published `.pth` file's content, weights only (no code is unpickled); a missing or
    unreadable file is a one-line InputError naming it."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, f"no such {what} file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file for the user
        raise InputError(path, f"cannot read as a PyTorch checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
