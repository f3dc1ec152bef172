"""Atomic file writes: a reader never sees a half-written manifest, metrics table, report, image or
bench result, and a killed job leaves at most a hidden temporary beside the destination.

Every file promptseg writes goes through here: `atomic_write` for bytes/text, `atomic_path` for
libraries that write to a path themselves (SimpleITK, safetensors, matplotlib, numpy),
`atomic_directory` for a folder that must appear whole.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .formats import image_ending


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a hidden temporary path in `path`'s folder that ends like `path` (so writers that pick
    the format by the name still do); when the block ends it is moved onto `path`, on any error
    it is deleted. Parent folders are made."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ending = image_ending(path) or path.suffix
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".partial{ending}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: str | Path, data: str | bytes) -> Path:
    """Write text (UTF-8) or bytes to `path` through `atomic_path`."""
    path = Path(path)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_path(path) as tmp:
        tmp.write_bytes(raw)
    return path


@contextmanager
def atomic_directory(final: str | Path) -> Iterator[Path]:
    """Yield a new hidden sibling folder of `final` to fill; when the block ends without error it
    replaces `final` (an older `final` is removed), and on any error it is deleted. A killed
    run leaves at most a hidden `.name.*` folder, never a half-built `final`."""
    final = Path(final)
    work = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        yield work
        if final.exists():
            shutil.rmtree(final)
        os.replace(work, final)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def refuse_foreign(final: str | Path, tag: str, what: str) -> None:
    """Raise `InputError` when `final` exists and is not a folder promptseg built: its
    dataset.json `description` must start with `tag` (so a rebuild never deletes user data)."""
    import json

    from ..errors import InputError

    final = Path(final)
    if not final.exists():
        return
    try:
        desc = json.loads((final / "dataset.json").read_text(encoding="utf-8")).get("description", "")
    except (OSError, ValueError, AttributeError):
        desc = ""
    if not str(desc).startswith(tag):
        raise InputError(final, f"exists and is not {what}; refusing to overwrite")
