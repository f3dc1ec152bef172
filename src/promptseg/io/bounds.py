"""Bound an image by its header before a single voxel is allocated.

Why: a header is a promise the file may not keep. A NIfTI/NRRD/MHA header that declares
30000^3 voxels (54 TB) made numpy raise MemoryError (or the kernel kill the process) deep in a
reader; a truncated file was only noticed after the allocation. Here the declared size is
checked against what the file can hold and against the memory available, in one line each:
- raw data: the bytes after the header must hold every declared voxel;
- gzip/zlib data (.nii.gz, NRRD `encoding: gzip`, MHA `CompressedData = True`): deflate cannot
  expand a byte into more than ~1032 bytes, so the declared size must stay under that ratio;
- other encodings (bzip2, ascii, hex): no safe ratio, only the memory bound applies.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import InputError

#: deflate's largest expansion (a 258-byte match per 2 bits, RFC 1951), rounded up.
DEFLATE_MAX_RATIO = 1100


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000.0
    return f"{n:.1f} PB"


def available_memory() -> int | None:
    """Bytes the kernel says can be allocated without swapping (MemAvailable); None if unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def _describe(shape, itemsize: int) -> str:
    n = 1
    for s in shape:
        n *= int(s)
    return f"{'x'.join(str(int(s)) for s in shape)} voxels of {itemsize} byte{'s' if itemsize != 1 else ''} " \
           f"({human_bytes(n * itemsize)})"


def check_memory(path: Path, shape, itemsize: int) -> None:
    """The decoded array must fit in the memory available now."""
    need = itemsize
    for s in shape:
        need *= int(s)
    free = available_memory()
    if free is not None and need > free:
        raise InputError(path, f"header declares {_describe(shape, itemsize)}, more than the "
                               f"{human_bytes(free)} of memory available")


def check_declared_size(path: Path, shape, itemsize: int, stored: int | None, encoding: str,
                        out_itemsize: int | None = None) -> None:
    """Refuse a header whose voxels cannot be in `stored` bytes of `encoding` data, or in memory.

    `encoding` is 'raw', 'gzip' or anything else (unbounded ratio); `stored` None skips the file
    check (data spread over several files). `out_itemsize` is the decoded voxel size when the
    reader widens the values (e.g. NIfTI scaling to float64).
    """
    path = Path(path)
    declared = itemsize
    for s in shape:
        declared *= int(s)
    if stored is not None:
        if encoding == "raw" and stored < declared:
            raise InputError(path, f"header declares {_describe(shape, itemsize)} but the file holds "
                                   f"{human_bytes(max(stored, 0))} of voxel data (truncated, or a wrong header)")
        if encoding == "gzip" and declared > max(stored, 1) * DEFLATE_MAX_RATIO:
            raise InputError(path, f"header declares {_describe(shape, itemsize)} but {human_bytes(max(stored, 0))} "
                                   f"of compressed data cannot expand past {DEFLATE_MAX_RATIO}:1 (wrong header)")
    check_memory(path, shape, max(itemsize, out_itemsize or 0))


def _header_text(path: Path, limit: int = 1 << 16) -> tuple[str, bytes]:
    with open(path, "rb") as f:
        head = f.read(limit)
    return head.decode("latin-1"), head


def text_header_storage(path: Path, fmt: str) -> tuple[int | None, str]:
    """(bytes of voxel data on disk, encoding) of an NRRD or MetaImage file, from its text header.

    Detached data (`.nhdr` / `.mhd`) is measured in its data file; a list or pattern of data
    files gives None (the memory bound still applies).
    """
    path = Path(path)
    text, raw = _header_text(path)
    fields: dict[str, str] = {}
    header_len = len(raw)
    pos = 0
    for line in text.splitlines(keepends=True):
        pos += len(line.encode("latin-1"))
        s = line.strip()
        if fmt == "NRRD":
            if not s:  # a blank line ends an NRRD header
                header_len = pos
                break
            if s.startswith("#") or ":" not in s:
                continue
            key, _, value = s.partition(":")
            fields[key.strip().lower().replace(" ", "")] = value.lstrip("=").strip()
        else:
            key, sep, value = s.partition("=")
            if not sep:
                continue
            fields[key.strip().lower()] = value.strip()
            if key.strip() == "ElementDataFile":  # the last header line of a MetaImage
                header_len = pos
                break
    if fmt == "NRRD":
        enc = fields.get("encoding", "raw").lower()
        encoding = {"raw": "raw", "gzip": "gzip", "gz": "gzip"}.get(enc, enc)
        data = fields.get("datafile")
    else:
        encoding = "gzip" if fields.get("compresseddata", "false").lower() == "true" else "raw"
        data = fields.get("elementdatafile")
        if data is not None and data.upper() == "LOCAL":
            data = None
    if data is None:
        return os.path.getsize(path) - header_len, encoding
    if data.upper().startswith("LIST") or " " in data or "%" in data:
        return None, encoding
    data_path = path.parent / data
    return (os.path.getsize(data_path) if data_path.is_file() else None), encoding
