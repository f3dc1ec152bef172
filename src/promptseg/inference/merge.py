"""Merge per-class masks (which may overlap) into one label map.

Why an order: classes are independent sigmoids, so a voxel can be liver *and* liver tumour *and*
hepatic vessel. The reference post-processing (SPEC.md, "Merge to one label map") writes organs
first, then vessels, then lesions, each layer overwriting the one below (a tumour inside the
liver shows as tumour); where two classes of the same layer overlap (liver vs. stomach at their
boundary) the voxel goes to the higher probability.
Done one class at a time with a running "best probability" array, so memory stays at two
volumes whatever the number of classes.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from ..taxonomy import Taxonomy, default_taxonomy
from ..taxonomy.query import label_values as query_label_values
from ..taxonomy.query import layer_of as query_layer

def label_dtype(values: Mapping[str, int]) -> np.dtype:
    """uint8 when every label value fits, else uint16 (both read everywhere)."""
    top = max(values.values(), default=0)
    if top > np.iinfo(np.uint16).max:
        raise ValueError(f"label value {top} does not fit in uint16")
    return np.dtype(np.uint8) if top <= np.iinfo(np.uint8).max else np.dtype(np.uint16)


def label_values(names: list[str], taxonomy: Taxonomy | None = None) -> dict[str, int]:
    """Label value per class (see `taxonomy.query.label_values`); the packaged taxonomy by default."""
    return query_label_values(names, taxonomy or default_taxonomy())


def layer_of(name: str, taxonomy: Taxonomy) -> int:
    """Merge layer of a class name (organs 0, vessels 1, lesions 2)."""
    return query_layer(taxonomy.get(name))


def merge(
    masks: Mapping[str, np.ndarray],
    probs: Mapping[str, np.ndarray] | None,
    taxonomy: Taxonomy | None = None,
    values: Mapping[str, int] | None = None,
) -> np.ndarray:
    """One label map from class masks: organs, then vessels, then lesions overwrite.

    Within a layer an overlap goes to the class with the higher probability (`probs`, any real or
    integer dtype, same scale for all classes); without probabilities, the class later in `masks`
    wins. `values` maps class -> label value (default: taxonomy ids). 0 is background.
    """
    tax = taxonomy or default_taxonomy()
    names = list(masks)
    if not names:
        raise ValueError("nothing to merge: no masks")
    values = dict(values) if values is not None else label_values(names, tax)
    missing = [n for n in names if n not in values]
    if missing:
        raise ValueError(f"no label value for {missing}")
    shape = np.asarray(masks[names[0]]).shape
    out = np.zeros(shape, dtype=label_dtype({n: values[n] for n in names}))
    order = sorted(range(len(names)), key=lambda i: (layer_of(names[i], tax), i))  # stable within a layer
    best = np.empty(shape, dtype=np.float32)
    layer = -1
    for i in order:
        name = names[i]
        m = np.asarray(masks[name], dtype=bool)
        if m.shape != shape:
            raise ValueError(f"mask {name!r} has shape {m.shape}, expected {shape}")
        this_layer = layer_of(name, tax)
        if this_layer != layer:  # a new layer overwrites whatever the layers below wrote
            best.fill(-np.inf)
            layer = this_layer
        if probs is not None and name in probs:
            p = np.asarray(probs[name], dtype=np.float32)
            take = m & (p > best)
            best[take] = p[take]
        else:  # no probability: the class wins its voxels (later classes win ties)
            take = m
            best[take] = np.inf if probs is not None else 0.0
        out[take] = values[name]
    return out
