"""Layering, checked on the source (ast walk, function-level imports included): lower stages never
import promptseg.train, and the checkpoint/config layer sits in no import circle."""
from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "src" / "promptseg"
LOWER = ("inference", "models", "data", "preprocess", "io", "text", "taxonomy", "checkpoint")


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


def test_checkpoint_and_config_layers_are_in_no_import_circle():
    g = graph()
    roots = [m for m in g if m.startswith(("promptseg.checkpoint", "promptseg.config", "promptseg.models.official",
                                           "promptseg.models.state", "promptseg.train.trainer",
                                           "promptseg.inference.predictor"))]
    # a package's __init__ re-exporting its modules is not a circle of modules
    g = {m: {d for d in deps if not (m.startswith(d + ".") or d.startswith(m + "."))} for m, deps in g.items()}
    assert cycles_through(g, roots) == []
