"""The taxonomy a checkpoint carries: the packaged registry's version plus the user's own classes.

Only classes the packaged registry lacks are stored (as plain records), so a model trained with
`taxonomy: my_classes.yaml` predicts and names those classes without the file.
"""
from __future__ import annotations

from dataclasses import asdict
from typing import Any

from ..errors import CheckpointError
from ..taxonomy import ClassInfo, Taxonomy, default_taxonomy


def taxonomy_record(taxonomy: Taxonomy) -> dict[str, Any]:
    """JSON-able record of `taxonomy`: its version and the classes the packaged one does not have."""
    packaged = {c.name for c in default_taxonomy().classes}
    extra = [asdict(c) for c in taxonomy.classes if c.name not in packaged]
    for rec in extra:
        rec["synonyms"] = list(rec["synonyms"])
    return {"version": taxonomy.version, "extra": extra}


def taxonomy_from_record(record: dict[str, Any] | None, source: str) -> Taxonomy:
    """The registry a checkpoint was trained with (the packaged one when it has no extra classes)."""
    base = default_taxonomy()
    extra = (record or {}).get("extra") or []
    if not extra:
        return base
    try:
        classes = [ClassInfo(**{**r, "synonyms": tuple(r.get("synonyms") or ())}) for r in extra]
    except TypeError as exc:
        raise CheckpointError(f"{source}: bad taxonomy record ({exc})") from None
    return base.extended(classes)
