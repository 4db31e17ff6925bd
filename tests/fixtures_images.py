"""Small stand-ins for CIFAR and ImageNet in their real on-disk formats, for offline tests.

The files are read by torchvision's own loaders. The one concession: torchvision checks every CIFAR
file against md5 sums stored on its classes, so :func:`patch_cifar_md5` swaps those tables (and only
those) for the sums of the written files, through a ``pytest.MonkeyPatch`` that restores them.
"""

from __future__ import annotations

import hashlib
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torchvision import datasets

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@dataclass(frozen=True)
class CifarFiles:
    """What :func:`write_cifar` wrote: images HWC uint8 in the order torchvision serves them."""

    root: Path  # dataset.root
    loader: type  # torchvision.datasets.CIFAR10 or CIFAR100
    train_images: np.ndarray  # [N, 32, 32, 3] uint8
    train_labels: np.ndarray  # [N] int64
    test_images: np.ndarray
    test_labels: np.ndarray

    @property
    def folder(self) -> Path:
        return self.root / self.loader.base_folder


def _images_and_labels(
    rng: np.random.Generator, num_classes: int, per_class: int
) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.permutation(np.repeat(np.arange(num_classes), per_class)).astype(np.int64)
    images = rng.integers(0, 256, size=(len(labels), 32, 32, 3), dtype=np.uint8)
    return images, labels


def _rows(images: np.ndarray) -> np.ndarray:
    """HWC images → CIFAR rows: 1024 red, then 1024 green, then 1024 blue values per image."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), 3072))


def _dump(path: Path, obj: dict) -> None:
    with path.open("wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar(
    root: Path, num_classes: int, per_class_train: int, per_class_test: int, seed: int = 0
) -> CifarFiles:
    """Random-pixel CIFAR-10 (``num_classes=10``) or CIFAR-100 (100) files in torchvision's layout."""
    if num_classes not in (10, 100):
        raise ValueError(f"num_classes must be 10 or 100, not {num_classes}")
    rng = np.random.default_rng(seed)
    train_x, train_y = _images_and_labels(rng, num_classes, per_class_train)
    test_x, test_y = _images_and_labels(rng, num_classes, per_class_test)
    loader = datasets.CIFAR10 if num_classes == 10 else datasets.CIFAR100
    files = CifarFiles(Path(root), loader, train_x, train_y, test_x, test_y)
    files.folder.mkdir(parents=True, exist_ok=True)
    if num_classes == 10:
        for i, part in enumerate(np.array_split(np.arange(len(train_y)), 5), start=1):
            _dump(
                files.folder / f"data_batch_{i}",
                {
                    "batch_label": f"training batch {i} of 5",
                    "labels": train_y[part].tolist(),
                    "data": _rows(train_x[part]),
                    "filenames": [f"train_{j}.png" for j in part],
                },
            )
        _dump(
            files.folder / "test_batch",
            {"batch_label": "testing batch 1 of 1", "labels": test_y.tolist(), "data": _rows(test_x)},
        )
        _dump(
            files.folder / "batches.meta",
            {"label_names": CIFAR10_NAMES, "num_cases_per_batch": len(train_y) // 5, "num_vis": 3072},
        )
    else:
        for name, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
            _dump(
                files.folder / name,
                {"fine_labels": y.tolist(), "coarse_labels": (y // 5).tolist(), "data": _rows(x)},
            )
        _dump(
            files.folder / "meta",
            {
                "fine_label_names": [f"fine_{i:03d}" for i in range(100)],
                "coarse_label_names": [f"coarse_{i:02d}" for i in range(20)],
            },
        )
    return files


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def patch_cifar_md5(monkeypatch: pytest.MonkeyPatch, files: CifarFiles) -> None:
    """Make torchvision's class accept the written files: only its md5 tables change, on the class
    itself, so direct construction and a ``train(cfg)`` run in the same process both see them."""
    cls = files.loader
    for table in ("train_list", "test_list"):
        monkeypatch.setattr(
            cls, table, [[name, _md5(files.folder / name)] for name, _ in getattr(cls, table)]
        )
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": _md5(files.folder / cls.meta["filename"])})


def write_imagenet(
    root: Path, classes: list[str], per_class_train: int, per_class_val: int, size: int = 40, seed: int = 0
) -> Path:
    """Random RGB JPEGs in ``root/{train,val}/<wnid>/*.JPEG``, named like the real files."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    for part, per_class in (("train", per_class_train), ("val", per_class_val)):
        for c, wnid in enumerate(classes):
            folder = root / part / wnid
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                # slightly non-square, as real photos are, so Resize/CenterCrop really act
                pixels = rng.integers(0, 256, size=(size, size + 8, 3), dtype=np.uint8)
                name = (
                    f"{wnid}_{i}.JPEG" if part == "train" else f"ILSVRC2012_val_{c * per_class + i:08d}.JPEG"
                )
                Image.fromarray(pixels).save(folder / name, quality=90)
    return root
