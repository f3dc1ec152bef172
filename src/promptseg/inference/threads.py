"""Per-class work side by side on the machine's threads.

After the network, each class's resampling, largest-component labelling and gzip writing are
independent and run in C code that releases the GIL (torch, numpy, cc3d, zlib), so plain
threads use the cores without copying the volumes into other processes.
"""
from __future__ import annotations

from collections import deque
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def ordered_thread_map(fn: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[R]:
    """fn over items, results in the items' order, `workers` threads at a time. At most
    2 x workers results are held before the caller takes them, so memory stays bounded however
    many classes there are (each result may be a class's box of a whole CT)."""
    if workers <= 1:
        for item in items:
            yield fn(item)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
