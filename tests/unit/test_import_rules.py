"""Layering, checked on the source (ast walk, function-level imports included): lower stages never
import promptseg.train (not even by an importlib string), no module of the package sits in an
import circle, and method knowledge stays in models/: no conditioner's name in train/ or
inference/ code (identifiers, strings, help text, comments and docstrings alike)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "src" / "promptseg"
LOWER = ("inference", "models", "data", "preprocess", "io", "text", "taxonomy", "checkpoint",
         # the shared single modules below train/ and inference/ (issue 15) and evaluation
         "config", "runtime", "masks", "errors", "evaluation")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every promptseg module `path` imports, at any depth (`from . import x` resolved to modules)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("promptseg")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not mod.startswith("promptseg"):
                continue
            out.add(mod)
            out |= {f"{mod}.{a.name}" for a in node.names}
    return out


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PKG.rglob("*.py")}
    return {m: {i for i in imports_of(p) if i in files and i != m} for m, p in files.items()}


def cycles_through(g: dict[str, set[str]], roots) -> list[list[str]]:
    """Import circles that pass through one of `roots` (each found once, as a path)."""
    found = []
    for root in roots:
        stack = [(root, [root])]
        seen = set()
        while stack:
            node, path = stack.pop()
            for nxt in g.get(node, ()):
                if nxt == root:
                    found.append(path + [root])
                elif nxt not in seen and not nxt.endswith("__init__"):
                    seen.add(nxt)
                    stack.append((nxt, path + [nxt]))
    return found


def test_lower_stages_never_import_train():
    g = graph()
    bad = {m: sorted(i for i in deps if i.startswith("promptseg.train"))
           for m, deps in g.items() if m.split(".")[1:2] and m.split(".")[1] in LOWER}
    assert not {m: d for m, d in bad.items() if d}


def test_lower_stages_name_no_train_module_in_strings():
    """`importlib.import_module("promptseg.train...")` would dodge the import check above."""
    bad = []
    for p in PKG.rglob("*.py"):
        parts = module_name(p).split(".")
        if len(parts) > 1 and parts[1] in LOWER:
            for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                        and re.match(r"promptseg\.train(\.|$)", node.value):
                    bad.append(f"{module_name(p)}: {node.value!r}")
    assert bad == []


def test_no_import_circle_among_modules():
    g = graph()
    # a package's __init__ re-exporting its modules is not a circle of modules
    g = {m: {d for d in deps if not (m.startswith(d + ".") or d.startswith(m + "."))} for m, deps in g.items()}
    assert cycles_through(g, sorted(g)) == []


def test_cycle_finder_sees_a_circle():
    """The circle check above can fail: a two-module loop is found."""
    assert cycles_through({"a": {"b"}, "b": {"a"}}, ["a"]) == [["a", "b", "a"]]


#: conditioner names (file names under models/conditioners and their usual spellings). `one_hot`
#: stays allowed: it is torch's label encoding, not the conditioner.
CONDITIONER_NAMES = re.compile(r"(?<![a-z])(universal|onehot|hermes|(med)?uniseg|sat|swin_?vit)(?![a-z])", re.I)


def test_no_conditioner_name_in_train_or_inference():
    bad = []
    for stage in ("train", "inference"):
        for p in sorted((PKG / stage).rglob("*.py")):
            for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
                if CONDITIONER_NAMES.search(line):
                    bad.append(f"{p.relative_to(PKG)}:{n}: {line.strip()}")
    assert bad == [], "\n".join(bad)


def test_conditioner_name_pattern_matches_what_it_should():
    hits = ["cond = 'hermes'", "swinViT.layers", "# the Universal Model", "sat_queries", "MedUniSeg"]
    misses = ["UniversalSegmenter(backbone, cond)", "F.one_hot(y)", "saturation", "np.clip(x, 0, 1)"]
    assert all(CONDITIONER_NAMES.search(h) for h in hits)
    assert not any(CONDITIONER_NAMES.search(m) for m in misses)
