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
    """

    def __init__(self, table: Mapping[str, Sequence[str]] | None, class_names: Sequence[str], who: str):
        known = list(class_names)
        self.who = who
        self.datasets: list[str] = []
        self.classes: list[list[str]] = []
        if table:
            if not isinstance(table, Mapping):
                raise ConfigError(f"{who}: dataset_classes must map dataset -> [classes], got {table!r}")
            for name, classes in table.items():
                kept = [str(c) for c in dict.fromkeys(classes) if str(c) in known]
                if kept:
                    self.add(str(name), kept)
        covered = {c for cs in self.classes for c in cs}
        for c in known:
            if c not in covered:
                self.add(c, [c])

    def add(self, dataset: str, classes: Sequence[str]) -> None:
        """Append classes to a dataset (a new one goes last)."""
        if dataset not in self.datasets:
            self.datasets.append(dataset)
            self.classes.append([])
        mine = self.classes[self.datasets.index(dataset)]
        mine.extend(c for c in classes if c not in mine)

    def __len__(self) -> int:
        return len(self.datasets)

    @property
    def width(self) -> int:
        """The largest label set (UniSeg's head width)."""
        return max((len(c) for c in self.classes), default=1)

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
        return self.classes[task].index(cls)

    def as_config(self) -> dict[str, list[str]]:
        return {d: list(c) for d, c in zip(self.datasets, self.classes)}
