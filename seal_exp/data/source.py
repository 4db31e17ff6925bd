"""What every dataset config builds: an object that checks its files when constructed (reading no
data) and loads its splits on demand.

A dataset whose files are missing stops the run in :func:`seal_exp.plan.prepare`, before any data is
read or any GPU touched, with a :class:`MissingDataset` message naming the folder it looked in, the
layout it expects and where the data comes from.
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any

from seal_exp.config import ConfigError, require
from seal_exp.data.augment import augments
from seal_exp.data.splits import DataSplits


class MissingDataset(ConfigError):
    """The dataset is not where ``dataset.root`` points (or is incomplete)."""


def missing_dataset(name: str, root: Path, problem: str, layout: str, source: str) -> MissingDataset:
    """The one message shape for absent or incomplete data."""
    return MissingDataset(
        f"dataset {name}: {problem}\n"
        f"  looked in: {root}\n"
        f"  expected layout:\n{_indent(layout, 4)}\n"
        f"  where the data comes from: {source}\n"
        f"  put the data there, or point dataset.root at the folder that holds it "
        f"(e.g. dataset.root=/data/{name})"
    )


def _indent(text: str, n: int) -> str:
    return "\n".join(" " * n + line for line in text.strip("\n").splitlines())


class DatasetSource(abc.ABC):
    """Base of the file-backed datasets: shape fields, the validation hold-out, and the file check.

    Subclasses describe their layout and source, implement :meth:`check_files` (cheap: existence of
    folders and archives, never a full read) and :meth:`load`.
    """

    LAYOUT: str = ""
    augment: Any = None  # the student's training augmentation (ImageAugment / FrameAugment / None)
    SOURCE: str = ""

    def __init__(
        self,
        name: str,
        root: str,
        num_classes: int,
        in_channels: int,
        image_size: int,
        val_fraction: float = 0.0,
        split_seed: int = 0,
    ) -> None:
        require(num_classes >= 2, "num_classes", num_classes, "must be >= 2")
        require(in_channels >= 1, "in_channels", in_channels, "must be >= 1")
        require(image_size >= 8, "image_size", image_size, "must be >= 8 pixels")
        require(
            0 <= val_fraction < 1,
            "val_fraction",
            val_fraction,
            "the share of the training set held out for model selection: 0 (none; the test set "
            "selects, as in the papers) up to below 1",
        )
        self.name = name
        self.root = Path(str(root)).expanduser()
        self.num_classes, self.in_channels, self.image_size = num_classes, in_channels, image_size
        self.val_fraction, self.split_seed = val_fraction, split_seed
        self.check_files()

    @property
    def augments_training(self) -> bool:
        """Whether the student's training pipeline (``augment``) draws at random."""
        return augments(self.augment)

    def missing(self, problem: str) -> MissingDataset:
        return missing_dataset(self.name, self.root, problem, self.LAYOUT, self.SOURCE)

    @abc.abstractmethod
    def check_files(self) -> None:
        """Raise :meth:`missing` unless the files a load needs are present (no data is read)."""

    @abc.abstractmethod
    def fingerprint(self) -> str | None:
        """The content's hash (:mod:`seal_exp.data.fingerprint`); ``None`` while the files it covers are
        not built yet (an event dataset before its first frame cache)."""

    @abc.abstractmethod
    def load(self) -> DataSplits:
        """Read (building caches on first use) and cut the data."""
