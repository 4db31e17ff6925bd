"""CIFAR-10 and CIFAR-100 through torchvision's own loaders, from files already on disk.

The platform never downloads: ``dataset.root`` must hold torchvision's "python version" folder
(``cifar-10-batches-py`` or ``cifar-100-python``). The loader class is a config node
(``dataset_class``), so a test or a variant (a subclass) can stand in for it without other changes.
Validation, when asked for, is a stratified hold-out of the 50 000 training images served without
augmentation; the official 10 000 test images are the test part.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from torchvision import datasets
from torchvision.transforms import AutoAugmentPolicy

from seal_exp.config import invalid, require
from seal_exp.data import fingerprint
from seal_exp.data.augment import ImageAugment, image_eval_transform, image_train_transform
from seal_exp.data.source import DatasetSource
from seal_exp.data.splits import DataSplits, TransformedSubset, hold_out, split_fingerprint

__all__ = ["CIFAR"]

IMAGE_SIZE = 32


def loader_class(dataset_class: Any) -> Any:
    """The class behind ``dataset_class`` (Hydra hands a ``_partial_`` node over as a partial)."""
    return dataset_class.func if isinstance(dataset_class, functools.partial) else dataset_class


def class_count(cls: type) -> int:
    """10 for torchvision's CIFAR10 (and subclasses), 100 for CIFAR100 (a CIFAR10 subclass)."""
    return 100 if issubclass(cls, datasets.CIFAR100) else 10


def file_names(cls: Any) -> list[str]:
    """Every file torchvision reads (and md5-checks) for this class, in its own order."""
    return [name for name, _ in [*cls.train_list, *cls.test_list]] + [cls.meta["filename"]]


def _triple(values: Sequence[float], key: str) -> tuple[float, float, float]:
    values = tuple(float(v) for v in values)
    require(len(values) == 3, key, list(values), "one value per RGB channel (3 values)")
    return values  # type: ignore[return-value]


class CIFAR(DatasetSource):
    """CIFAR-10/100 with the reference pipelines.

    Student training: RandomCrop(32, pad 4) → flip → AutoAugment(CIFAR10 policy) → ToTensor →
    Cutout(16) → Normalize, each step a switch in ``augment``; the ANN teacher's recipe uses crop +
    flip only (``teacher_augment``). Evaluation: ToTensor → Normalize.
    """

    SOURCE = (
        "https://www.cs.toronto.edu/~kriz/cifar.html: download the CIFAR-10 or CIFAR-100 "
        '"python version" tarball (cifar-10-python.tar.gz / cifar-100-python.tar.gz) and extract it '
        "into dataset.root (tar xzf <file> -C <root>); the platform never downloads"
    )

    def __init__(
        self,
        name: str,
        root: str,
        num_classes: int,
        in_channels: int,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        dataset_class: Callable[..., Any] = datasets.CIFAR10,
        augment: Mapping[str, Any] | None = None,
        teacher_augment: Mapping[str, Any] | None = None,
        val_fraction: float = 0.1,
        split_seed: int = 0,
    ) -> None:
        cls = loader_class(dataset_class)
        require(
            isinstance(cls, type) and issubclass(cls, datasets.CIFAR10),
            "dataset_class",
            getattr(cls, "__name__", cls),
            "a torchvision CIFAR loader: {_target_: torchvision.datasets.CIFAR10 (or CIFAR100, or a "
            "subclass of either), _partial_: true}",
        )
        expected = class_count(cls)
        require(
            num_classes == expected,
            "num_classes",
            num_classes,
            f"{cls.__module__}.{cls.__name__} has {expected} classes; set dataset.num_classes={expected} "
            f"or pick the matching dataset_class",
        )
        require(in_channels == 3, "in_channels", in_channels, "CIFAR images are RGB (3 channels)")
        require(
            image_size == IMAGE_SIZE,
            "image_size",
            image_size,
            f"CIFAR images are {IMAGE_SIZE}×{IMAGE_SIZE} (they are not resized)",
        )
        self.dataset_class = dataset_class
        self.loader = cls
        self.mean, self.std = _triple(mean, "mean"), _triple(std, "std")
        require(all(s > 0 for s in self.std), "std", list(self.std), "must be > 0 per channel")
        self.augment = ImageAugment.from_config(augment, "augment")
        self.teacher_augment = ImageAugment.from_config(teacher_augment, "teacher_augment")
        for key, aug in (("augment", self.augment), ("teacher_augment", self.teacher_augment)):
            require(
                aug.cutout <= IMAGE_SIZE,
                f"{key}.cutout",
                aug.cutout,
                f"the hole must fit in a {IMAGE_SIZE}×{IMAGE_SIZE} image",
            )
        self.train_transform = self._train_transform(self.augment)
        self.teacher_transform = self._train_transform(self.teacher_augment)
        self.eval_transform = image_eval_transform(self.mean, self.std)
        self.folder_name = str(cls.base_folder)
        self.SOURCE = (
            f'https://www.cs.toronto.edu/~kriz/cifar.html: the "python version" tarball ({cls.filename}), '
            f"extracted into dataset.root (tar xzf {cls.filename} -C <root>); the platform never downloads"
        )
        self.LAYOUT = f"<dataset.root>/\n  {self.folder_name}/\n" + "".join(
            f"    {f}\n" for f in file_names(cls)
        )
        super().__init__(name, root, num_classes, in_channels, image_size, val_fraction, split_seed)

    def _train_transform(self, aug: ImageAugment) -> Any:
        return image_train_transform(
            aug, IMAGE_SIZE, self.mean, self.std, crop="pad", policy=AutoAugmentPolicy.CIFAR10
        )

    def check_files(self) -> None:
        folder = self.root / self.folder_name
        if not folder.is_dir():
            raise self.missing(f"no folder {self.folder_name}/ in {self.root}")
        absent = [f for f in file_names(self.loader) if not (folder / f).is_file()]
        if absent:
            raise self.missing(f"{folder} is incomplete: missing {', '.join(absent)}")

    def fingerprint(self) -> str:
        """The bytes of every file torchvision reads (about 180 MB: under a second)."""
        folder = self.root / self.folder_name
        return fingerprint.of_files(folder, [folder / f for f in file_names(self.loader)])

    def _read(self, train: bool) -> Any:
        try:
            return self.dataset_class(str(self.root), train=train, download=False)
        except RuntimeError as exc:  # torchvision's md5 check failed
            raise self.missing(
                f"the files in {self.root / self.folder_name} fail torchvision's checksum test "
                f"({exc}); they are corrupted or not the official release: extract the tarball again"
            ) from exc

    def load(self) -> DataSplits:
        train_base, test_base = self._read(train=True), self._read(train=False)
        for part, base in (("train", train_base), ("test", test_base)):
            labels = np.asarray(base.targets)
            if len(labels) and (labels.min() < 0 or labels.max() >= self.num_classes):
                raise invalid(
                    "dataset.num_classes",
                    self.num_classes,
                    f"the {part} labels in {self.root / self.folder_name} run from {labels.min()} to "
                    f"{labels.max()}",
                )
        labels = np.asarray(train_base.targets, dtype=np.int64)
        if self.val_fraction > 0:
            kept, held = hold_out(labels, self.val_fraction, self.split_seed)
            if len(held) == 0:
                raise invalid(
                    "dataset.val_fraction",
                    self.val_fraction,
                    f"holds out no image ({len(labels)} training images in {self.num_classes} classes); "
                    "raise it, or use 0 to select on the test part",
                )
        else:
            kept, held = np.arange(len(labels), dtype=np.int64), np.empty(0, dtype=np.int64)
        test_idx = np.arange(len(test_base), dtype=np.int64)
        test = TransformedSubset(test_base, test_idx, self.eval_transform)
        teacher_train = None
        if self.teacher_augment != self.augment:
            teacher_train = TransformedSubset(train_base, kept, self.teacher_transform)
        return DataSplits(
            train=TransformedSubset(train_base, kept, self.train_transform),
            val=test if self.val_fraction == 0 else TransformedSubset(train_base, held, self.eval_transform),
            test=test,
            split_id=split_fingerprint(kept, held, test_idx),
            teacher_train=teacher_train,
            val_is_test=self.val_fraction == 0,
            normalisation=(tuple(self.mean), tuple(self.std)),  # ToTensor: pixels in [0, 1]
        )
