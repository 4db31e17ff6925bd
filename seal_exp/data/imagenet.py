"""ImageNet (ILSVRC2012) from class folders, through torchvision's ``ImageFolder``.

The official validation set (50 000 images) has public labels and serves as our *test* part, as in
the papers; our validation part, when asked for, is a small stratified hold-out of the training set
(``val_fraction``, 1 % by default: 13 images per class), served without augmentation.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torchvision import datasets
from torchvision.transforms import AutoAugmentPolicy

from seal_exp.config import invalid, require
from seal_exp.data import fingerprint
from seal_exp.data.augment import ImageAugment, image_eval_transform, image_train_transform
from seal_exp.data.source import DatasetSource
from seal_exp.data.splits import DataSplits, TransformedSubset, hold_out, split_fingerprint

__all__ = ["ImageNet"]

PARTS = ("train", "val")


def class_folders(folder: Path) -> list[str]:
    """The sub-folder names (one per class), sorted as ``ImageFolder`` sorts them; files are not read."""
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if e.is_dir())


def holds_loose_files(folder: Path) -> bool:
    """Whether ``folder`` holds at least one plain file (stops at the first one found)."""
    with os.scandir(folder) as entries:
        return any(e.is_file() for e in entries)


def _few(names: list[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (", …" if len(names) > n else "")


class ImageNet(DatasetSource):
    """ImageNet with the reference pipelines.

    Student training: RandomResizedCrop(image_size) → flip → AutoAugment(IMAGENET policy) → ToTensor
    → Cutout(112) → Normalize, each step a switch in ``augment``; the teacher uses crop + flip
    (``teacher_augment``). Evaluation: Resize(resize) → CenterCrop(image_size) → ToTensor → Normalize.
    """

    LAYOUT = (
        "<dataset.root>/\n"
        "  train/<wnid>/*.JPEG   one folder per class (n01440764, …), 1.28 M images\n"
        "  val/<wnid>/*.JPEG     the official 50 000 validation images, sorted into the same class folders"
    )
    SOURCE = (
        "https://image-net.org (ILSVRC2012: ILSVRC2012_img_train.tar, whose per-class tars are extracted "
        "into train/<wnid>/, and ILSVRC2012_img_val.tar, extracted into val/ and sorted into class "
        "folders, e.g. with the widely used valprep.sh script); the platform never downloads"
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
        resize: int = 256,
        augment: Mapping[str, Any] | None = None,
        teacher_augment: Mapping[str, Any] | None = None,
        val_fraction: float = 0.01,
        split_seed: int = 0,
    ) -> None:
        require(in_channels == 3, "in_channels", in_channels, "ImageNet images are RGB (3 channels)")
        require(
            resize >= image_size,
            "resize",
            resize,
            f"evaluation resizes the short side to this, then centre-crops image_size={image_size}: "
            "it must be >= image_size",
        )
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        require(len(self.mean) == 3, "mean", list(self.mean), "one value per RGB channel (3 values)")
        require(
            len(self.std) == 3 and all(s > 0 for s in self.std),
            "std",
            list(self.std),
            "one value > 0 per RGB channel (3 values)",
        )
        self.resize = int(resize)
        self.augment = ImageAugment.from_config(augment, "augment")
        self.teacher_augment = ImageAugment.from_config(teacher_augment, "teacher_augment")
        for key, aug in (("augment", self.augment), ("teacher_augment", self.teacher_augment)):
            require(
                aug.cutout <= image_size,
                f"{key}.cutout",
                aug.cutout,
                f"the hole must fit in the image (image_size={image_size}); 112 suits 224",
            )
        self.train_transform = self._train_transform(self.augment, image_size)
        self.teacher_transform = self._train_transform(self.teacher_augment, image_size)
        self.eval_transform = image_eval_transform(self.mean, self.std, resize=self.resize, size=image_size)
        super().__init__(name, root, num_classes, in_channels, image_size, val_fraction, split_seed)

    def _train_transform(self, aug: ImageAugment, size: int) -> Any:
        return image_train_transform(
            aug,
            size,
            self.mean,
            self.std,
            crop="resized",
            policy=AutoAugmentPolicy.IMAGENET,
            resize=self.resize,
        )

    def check_files(self) -> None:
        """train/ and val/ with the same class folders, as many as num_classes (images are not listed)."""
        absent = [f"{p}/" for p in PARTS if not (self.root / p).is_dir()]
        if absent:
            raise self.missing(f"no {' and no '.join(absent)} folder in {self.root}")
        found: dict[str, list[str]] = {}
        for part in PARTS:
            found[part] = class_folders(self.root / part)
            if not found[part]:
                hint = ""
                if holds_loose_files(self.root / part):
                    hint = (
                        f": the images lie loose in {part}/; sort them into one folder per class "
                        "(for val/, e.g. with the widely used valprep.sh script)"
                    )
                raise self.missing(f"{part}/ has no class folders{hint}")
        only_train = sorted(set(found["train"]) - set(found["val"]))
        only_val = sorted(set(found["val"]) - set(found["train"]))
        if only_train or only_val:
            raise self.missing(
                f"train/ and val/ hold different class folders: {len(only_train)} only in train/"
                f"{f' ({_few(only_train)})' if only_train else ''}, {len(only_val)} only in val/"
                f"{f' ({_few(only_val)})' if only_val else ''}"
            )
        n = len(found["train"])
        if n != self.num_classes:
            raise self.missing(
                f"found {n} class folders in train/ and val/, but dataset.num_classes={self.num_classes}; "
                f"complete the data, or set dataset.num_classes={n} if that subset is intended"
            )

    def fingerprint(self) -> str:
        """The image names in every class folder of train/ and val/ (listed, never opened)."""
        return fingerprint.of_names([self.root / part for part in PARTS])

    def _read(self, part: str) -> datasets.ImageFolder:
        try:
            return datasets.ImageFolder(str(self.root / part))
        except FileNotFoundError as exc:  # a class folder without a single image
            raise self.missing(f"{part}/: {exc}") from exc

    def load(self) -> DataSplits:
        train_base, test_base = self._read("train"), self._read("val")
        if train_base.class_to_idx != test_base.class_to_idx:  # the folders changed since check_files
            raise self.missing("train/ and val/ hold different class folders")
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
        split_id = split_fingerprint(kept, held, test_idx)
        # ImageFolder lists images class by class; the evaluation parts are served in a fixed mixed
        # order so that a run limited to a few evaluation batches (debug=smoke) still sees every class.
        mix = np.random.default_rng(self.split_seed)
        test = TransformedSubset(test_base, mix.permutation(test_idx), self.eval_transform)
        teacher_train = None
        if self.teacher_augment != self.augment:
            teacher_train = TransformedSubset(train_base, kept, self.teacher_transform)
        return DataSplits(
            train=TransformedSubset(train_base, kept, self.train_transform),
            val=test
            if self.val_fraction == 0
            else TransformedSubset(train_base, mix.permutation(held), self.eval_transform),
            test=test,
            split_id=split_id,
            teacher_train=teacher_train,
            val_is_test=self.val_fraction == 0,
            normalisation=(tuple(self.mean), tuple(self.std)),  # ToTensor: pixels in [0, 1]
        )
