"""Label tables: which label value of a label map means which class, read from any of the JSON /
YAML shapes datasets and tools write.

Why one parser: dataset scanning (nnU-Net `labels`, MSD `labels`, plain labels files), the
evaluator (prediction and ground-truth folders), the benchmark splits and the demo all read the
same tables; each had its own reader with its own idea of what a value or the background is.
Accepted shapes, optionally under a `labels` / `classes` / `label_map` key:
- value -> name (`{"1": "spleen"}`, MSD, TotalSegmentator, promptseg's own labels.json), the
  name may be `{"name": ...}`;
- name -> value or list of values (nnU-Net v2; a list is a region of several values);
- a list of `{"name": ..., "value": ...}` entries.
Values are non-negative integers; 0 and background names mean background.
"""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from ..errors import InputError

BACKGROUND_NAMES = {"background", "bg", "clear label", "unlabeled", "unlabelled"}


def _int_value(v, source: Path) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise InputError(source, f"label value {v!r} is not an integer")
    try:
        f = float(v)
    except ValueError:
        raise InputError(source, f"label value {v!r} is not an integer") from None
    if f != int(f) or f < 0:
        raise InputError(source, f"label value {v!r} is not a non-negative integer")
    return int(f)


def _is_int_like(v) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, int):
        return True
    if isinstance(v, str):
        return v.strip().lstrip("+").isdigit()
    return False


def label_entries(doc, source: Path) -> list[tuple[str, tuple[int, ...]]]:
    """(name, values) per entry of a table, in the table's order, background included."""
    if isinstance(doc, dict):
        for key in ("labels", "classes", "label_map"):
            if isinstance(doc.get(key), (dict, list)):
                doc = doc[key]
                break
    pairs: list[tuple[str, tuple[int, ...]]] = []
    if isinstance(doc, list):
        for item in doc:
            if not isinstance(item, dict) or "name" not in item:
                raise InputError(source, "label list entries need 'name' and 'value'")
            value = item.get("value", item.get("label", item.get("id")))
            vals = value if isinstance(value, list) else [value]
            pairs.append((str(item["name"]), tuple(_int_value(v, source) for v in vals)))
    elif isinstance(doc, dict):
        if doc and all(_is_int_like(k) for k in doc):  # value -> name
            for k, v in doc.items():
                name = v.get("name") if isinstance(v, dict) else v
                if not isinstance(name, str):
                    raise InputError(source, f"label {k} has no name")
                pairs.append((name, (_int_value(k, source),)))
        else:  # name -> value(s)
            for k, v in doc.items():
                vals = v if isinstance(v, list) else [v]
                if not vals:
                    raise InputError(source, f"label {k!r} lists no values")
                pairs.append((str(k), tuple(_int_value(x, source) for x in vals)))
    else:
        raise InputError(source, "expected a JSON object mapping label values to class names")
    return pairs


def parse_label_mapping(doc, source: Path) -> dict[str, tuple[int, ...]]:
    """Class name -> its sorted label values (background dropped, repeated names merged)."""
    out: dict[str, tuple[int, ...]] = {}
    for name, vals in label_entries(doc, source):
        vals = tuple(sorted(set(v for v in vals if v != 0)))
        if not vals or name.strip().lower() in BACKGROUND_NAMES:
            continue
        out[name] = tuple(sorted(set(out.get(name, ()) + vals)))
    return out


def load_table(path: str | Path):
    """The document of a label-table file: JSON for .json, else YAML; one-line errors."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(path, "label table not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, f"cannot read label names ({exc})") from None
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(path, f"not valid JSON ({exc.msg} at line {exc.lineno})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InputError(path, f"not valid JSON/YAML ({str(exc).splitlines()[0]})") from None


def read_label_json(path: str | Path) -> dict[str, tuple[int, ...]]:
    """`parse_label_mapping` of a label-table file."""
    return parse_label_mapping(load_table(path), Path(path))
