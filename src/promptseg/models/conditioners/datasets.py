"""Which classes each training dataset annotates: the table behind dataset-level tasks.

Why a table of its own: UniSeg's task is a dataset (one output channel per class of that
dataset) and Hermes' context is the sample's own dataset's tasks. Both read the same fact, which
the trainer takes from the dataset manifests and stores in the run config's `conditioner:`
section (`dataset_classes`), so a checkpoint rebuilds the same tasks without the datasets.
"""
from __future__ import annotations

from typing import Mapping, Sequence

from ...errors import ConfigError


class DatasetTable:
    """Ordered datasets -> their classes (only classes the model has), and each class's default
    dataset (the first one annotating it: what a prompt without a dataset is answered by).

    Without a table every class is a dataset of its own (named after the class), so a model built
    from a class list alone still has one task per class.

    Channels (a dataset's classes are channels of one head, UniSeg): `layout` "position" gives
    class c of dataset t the channel of c's place in t's list (UniSeg's code), so one channel means
    the spleen in one dataset and the liver in the next, and only the task prompt tells them apart.
    "aligned" gives a class ONE channel in every dataset that annotates it, the classes of one
    dataset distinct channels (greedy colouring of the classes that share a dataset, in order of
    first appearance): the first dataset keeps its positions, a class shared by datasets never
    changes meaning, and the head is as wide as the colouring needs (>= the largest label set);
    a channel may still mean different classes in datasets that never label them together.
    "class" gives every class a channel of its own (the head is as wide as the class list), so
    no channel ever means two classes.
    """

    LAYOUTS = ("position", "aligned", "class")

    def __init__(self, table: Mapping[str, Sequence[str]] | None, class_names: Sequence[str], who: str,
                 layout: str = "position"):
        known = list(class_names)
        self.who = who
        if layout not in self.LAYOUTS:
            raise ConfigError(f"{who}: channel_layout must be one of {list(self.LAYOUTS)}, got {layout!r}")
        self.layout = layout
        self.datasets: list[str] = []
        self.classes: list[list[str]] = []
        self.slots: dict[str, int] = {}                 # aligned / class: each class's channel
        self.moved: dict[tuple[int, str], int] = {}     # aligned: (task, class) whose slot a later add took
        if table:
            if not isinstance(table, Mapping):
                raise ConfigError(f"{who}: dataset_classes must map dataset -> [classes], got {table!r}")
            for name, classes in table.items():
                kept = [str(c) for c in dict.fromkeys(classes) if str(c) in known]
                if kept:
                    self._append(str(name), kept)
        covered = {c for cs in self.classes for c in cs}
        for c in known:
            if c not in covered:
                self._append(c, [c])
        self._assign()

    def add(self, dataset: str, classes: Sequence[str]) -> None:
        """Append classes to a dataset (a new one goes last); existing channels never change."""
        self._append(dataset, classes)
        self._assign()

    def _append(self, dataset: str, classes: Sequence[str]) -> None:
        if dataset not in self.datasets:
            self.datasets.append(dataset)
            self.classes.append([])
        mine = self.classes[self.datasets.index(dataset)]
        mine.extend(c for c in classes if c not in mine)

    def _assign(self) -> None:
        """Aligned slots for classes without one (the smallest channel no class sharing a dataset
        with it holds); a class joining a dataset where its slot is taken gets a free channel there."""
        if self.layout == "position":
            return
        if self.layout == "class":
            for classes in self.classes:
                for c in classes:
                    self.slots.setdefault(c, len(self.slots))
            return
        for t, classes in enumerate(self.classes):
            for c in classes:
                if c not in self.slots:
                    used = {self.channel(u, o) for u, cs in enumerate(self.classes) if c in cs
                            for o in cs if o in self.slots}
                    self.slots[c] = next(s for s in range(len(used) + 1) if s not in used)
        for t, classes in enumerate(self.classes):
            taken: dict[int, str] = {}
            for c in classes:
                s = self.channel(t, c)
                if s in taken and taken[s] != c:
                    s = next(k for k in range(len(classes) + len(taken) + 1) if k not in taken)
                    self.moved[(t, c)] = s
                taken[s] = c

    def __len__(self) -> int:
        return len(self.datasets)

    @property
    def width(self) -> int:
        """Channels of the head: the largest label set ("position"), or one past the highest
        channel ("aligned", "class")."""
        return max((max((self.channel(t, c) for c in cs), default=0) + 1 for t, cs in enumerate(self.classes)),
                   default=1)

    def index(self, dataset: str | None) -> int | None:
        return self.datasets.index(dataset) if dataset in self.datasets else None

    def default(self, cls: str) -> int:
        for t, classes in enumerate(self.classes):
            if cls in classes:
                return t
        raise ConfigError(f"{self.who}: class {cls!r} belongs to no dataset")

    def task_of(self, cls: str, dataset: str | None) -> int:
        """The sample's own dataset when it annotates `cls`, else the class's default dataset."""
        t = self.index(dataset)
        return t if t is not None and cls in self.classes[t] else self.default(cls)

    def channel(self, task: int, cls: str) -> int:
        """The head channel of `cls` in dataset `task` (see the class docstring's layouts)."""
        if self.layout != "position":
            return self.moved.get((task, cls), self.slots[cls])
        return self.classes[task].index(cls)

    def as_config(self) -> dict[str, list[str]]:
        return {d: list(c) for d, c in zip(self.datasets, self.classes)}
