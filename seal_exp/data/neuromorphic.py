"""Event-camera datasets through spikingjelly's own pipeline: CIFAR10-DVS and DVS128 Gesture.

spikingjelly turns the published archives into decoded events (``root/events_np/``) and those into
count frames (``root/frames_number_<T>_split_by_<number|time>/``), once; later runs read the frame
cache directly. Its dataset class is injectable (``dataset.dataset_class``), so tests run the real
pipeline on tiny archives. Three spikingjelly behaviours are guarded against here:

- a missing or corrupt archive makes it *download* (CIFAR10-DVS; it deletes the corrupt file first)
  or stop after deleting it (DVS128 Gesture): :meth:`check_files` refuses an incomplete
  ``download/`` and :meth:`load` checks the checksums itself before spikingjelly sees them;
- an interrupted build leaves ``<dir>.building`` and a half-written folder: refused with what to
  delete, unless another job holds the build lock (it is building: this job waits for it);
- DVS128 Gesture's class folders ``0 … 10`` sort as strings ('0', '1', '10', '2', …), so the label
  a ``DatasetFolder`` gives is not the gesture: labels here are the folder numbers, i.e. label
  ``k`` is gesture ``k + 1`` of ``gesture_mapping.csv``.

Samples are ``[T, 2, H, W]`` float32 (polarity counts), resized to ``image_size`` and, for training,
augmented by :class:`~seal_exp.data.augment.FrameTransform`; batches are time-major ``[T, B, …]``.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import importlib
import importlib.util
import logging
import shutil
import sys
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from filelock import FileLock, Timeout
from torch.utils.data import Dataset
from torchvision.datasets.folder import make_dataset
from torchvision.datasets.utils import check_integrity
from tqdm.auto import tqdm

from seal_exp.config import require
from seal_exp.data import fingerprint
from seal_exp.data.augment import FrameAugment, FrameTransform
from seal_exp.data.frame_cache import build_progress, count_files, refuse_unfinished_builds
from seal_exp.data.source import DatasetSource, MissingDataset
from seal_exp.data.splits import (
    DataSplits,
    TransformedSubset,
    hold_out,
    random_split_indices,
    split_fingerprint,
    stratified_split,
)

__all__ = ["CIFAR10DVS", "DVSGesture", "EventFrames", "spikingjelly_datasets"]

log = logging.getLogger(__name__)

SPLIT_BY = ("number", "time")
LOCK_NAME = ".seal_exp_build.lock"


def spikingjelly_datasets(module: str) -> ModuleType:
    """``spikingjelly.datasets.<module>``, importable even where the package's ``__init__`` fails.

    That ``__init__`` imports every dataset, the audio one included, so a torchaudio built for
    another CUDA than torch (as installed here: torch 2.15, torchaudio 2.11) breaks *every*
    ``spikingjelly.datasets`` import. The event-camera modules need none of it: when the full
    import fails, the package is registered without running its ``__init__`` and the modules load
    on their own (a Hydra ``_target_`` such as ``spikingjelly.datasets.cifar10_dvs.CIFAR10DVS``
    then resolves too, as this module is imported first).
    """
    if "spikingjelly.datasets" not in sys.modules:
        try:
            importlib.import_module("spikingjelly.datasets")
        except Exception as exc:
            import spikingjelly

            spec = importlib.util.find_spec("spikingjelly.datasets")
            if spec is None:  # pragma: no cover - spikingjelly itself is broken
                raise
            package = importlib.util.module_from_spec(spec)  # __path__ set, __init__ not run
            sys.modules["spikingjelly.datasets"] = package
            spikingjelly.datasets = package  # type: ignore[attr-defined]
            log.debug("spikingjelly.datasets loaded without its __init__ (%s: %s)", type(exc).__name__, exc)
    return importlib.import_module(f"spikingjelly.datasets.{module}")


# Imported now, so that the configs' ``dataset_class`` targets under spikingjelly.datasets resolve.
spikingjelly_datasets("cifar10_dvs")
spikingjelly_datasets("dvs128_gesture")


def _class_of(dataset_class: Callable[..., Any]) -> Any:
    """The class behind a ``functools.partial`` (Hydra's ``_partial_: true``)."""
    while isinstance(dataset_class, functools.partial):
        dataset_class = dataset_class.func
    return dataset_class


def _marker(folder: Path) -> Path:
    """The file spikingjelly keeps beside a folder while it builds it."""
    return folder.with_name(folder.name + ".building")


def _augment(node: Mapping[str, Any] | None, key: str) -> FrameAugment | None:
    """``None`` (no augmentation) for a null node, else the switches (unknown keys are refused)."""
    return None if node is None else FrameAugment.from_config(node, key)


class EventFrames(Dataset):
    """A spikingjelly frame cache folder read as ``(frames [T, 2, H, W] float32 numpy, label)``.

    The samples are listed exactly as spikingjelly's ``DatasetFolder`` lists them (torchvision's
    ``make_dataset``: class folders, then files, sorted), but with the labels given by
    ``class_to_idx``; holding only paths keeps it cheap to send to loader workers. With ``resized``
    (the resized copy of ``folder``) each sample is read from its ``.npy`` there instead.
    """

    def __init__(self, folder: Path, class_to_idx: Mapping[str, int], resized: Path | None = None) -> None:
        self.folder = Path(folder)
        self.resized = None if resized is None else Path(resized)
        self.class_to_idx = dict(class_to_idx)
        self.samples = make_dataset(str(self.folder), self.class_to_idx, extensions=(".npz",))
        self.targets = np.array([label for _, label in self.samples], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.samples)

    def resized_path(self, path: str) -> Path:
        assert self.resized is not None
        return self.resized / Path(path).relative_to(self.folder).with_suffix(".npy")

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        path, label = self.samples[i]
        if self.resized is not None:
            return np.load(self.resized_path(path)), label
        with np.load(path) as cached:  # spikingjelly stores integrated frames under "frames"
            return cached["frames"].astype(np.float32), label


class _FrameCacheSource(DatasetSource):
    """What both event datasets share: the three accepted states of ``root``, the checked build of
    the frame cache (locked, with progress bars), and the frame transforms."""

    SJ_MODULE = ""
    SJ_CLASS = ""
    RECORDINGS = 0  # recordings of the full dataset (progress bar total when they cannot be counted)

    def __init__(
        self,
        name: str,
        root: str,
        num_classes: int,
        in_channels: int,
        image_size: int,
        frames_number: int,
        split_by: str,
        augment: Mapping[str, Any] | None,
        teacher_augment: Mapping[str, Any] | None,
        val_fraction: float,
        split_seed: int,
        dataset_class: Callable[..., Any] | None,
        resize_once: bool = True,
    ) -> None:
        require(
            isinstance(frames_number, int) and not isinstance(frames_number, bool) and frames_number > 0,
            "frames_number",
            frames_number,
            "frames per sample, an integer >= 1 that must equal the student's T (keep ${neuron.T})",
        )
        require(
            split_by in SPLIT_BY,
            "split_by",
            split_by,
            "number (equal event counts per frame) or time (equal durations)",
        )
        require(in_channels == 2, "in_channels", in_channels, "event frames have 2 channels (polarities)")
        self.frames_number, self.split_by = frames_number, split_by
        self.resize_once = bool(resize_once)
        self.augment = _augment(augment, "augment")
        self.teacher_augment = _augment(teacher_augment, "teacher_augment")
        self.dataset_class = dataset_class or getattr(spikingjelly_datasets(self.SJ_MODULE), self.SJ_CLASS)
        super().__init__(name, root, num_classes, in_channels, image_size, val_fraction, split_seed)

    # -- where things are -------------------------------------------------------------------------
    @property
    def frames_dir(self) -> Path:
        return self.root / f"frames_number_{self.frames_number}_split_by_{self.split_by}"

    @property
    def resized_dir(self) -> Path:
        """The frame cache resized to ``image_size`` (built once, beside it, when ``resize_once``)."""
        return self.root / f"{self.frames_dir.name}_resized_{self.image_size}"

    @property
    def events_dir(self) -> Path:
        return self.root / "events_np"

    @property
    def download_dir(self) -> Path:
        return self.root / "download"

    def resources(self) -> list[tuple[str, str, str]]:
        """spikingjelly's ``(file, url, md5)`` table of the published archives."""
        return list(_class_of(self.dataset_class).resource_url_md5())

    @abc.abstractmethod
    def class_folders(self) -> list[str]:
        """Sub-folders (relative to events_np/ or the frames folder) that a complete cache holds."""

    def _incomplete(self, folder: Path) -> list[str]:
        return [c for c in self.class_folders() if not (folder / c).is_dir()]

    # -- the check ----------------------------------------------------------------------------------
    def _lock(self) -> FileLock:
        return FileLock(str(self.root / LOCK_NAME))

    def _build_running(self) -> bool:
        """Whether another process holds the build lock (its ``*.building`` markers are not stale)."""
        lock = self._lock()
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return True
        except OSError:  # a read-only root: nobody can be building there
            return False
        lock.release()
        return False

    def _refuse_unfinished(self) -> None:
        try:
            refuse_unfinished_builds(self.root, self.name)
        except MissingDataset as exc:
            if (self.root / "events_np.building").exists():
                raise MissingDataset(
                    f"{exc}\n  the extraction it started may be incomplete too (spikingjelly would "
                    f"reuse it unchecked): also rm -rf {self.root / 'extract'}"
                ) from None
            raise

    def check_files(self) -> None:
        if not self.root.is_dir():
            raise self.missing(f"the folder {self.root} does not exist")
        if any(self.root.glob("*.building")) and not self._build_running():
            self._refuse_unfinished()
        for folder, what in ((self.frames_dir, "the frame cache"), (self.events_dir, "the decoded events")):
            if folder.is_dir() and not _marker(folder).exists():  # (a marked one is being built)
                absent = self._incomplete(folder)
                if absent:
                    raise self.missing(
                        f"{what} {folder} is incomplete (no {', '.join(absent)}); delete the folder "
                        f"to rebuild it from {'events_np/' if folder == self.frames_dir else 'download/'}"
                    )
                return
        found = f"found neither the frame cache {self.frames_dir.name}/ nor events_np/"
        if not self.download_dir.is_dir():
            raise self.missing(f"{found} nor download/")
        absent = [n for n, _, _ in self.resources() if not (self.download_dir / n).is_file()]
        if absent:
            raise self.missing(f"{found}, and {self.download_dir} lacks {', '.join(absent)}")
        self._check_download_extras()

    def _check_download_extras(self) -> None:
        """Hook: refuse files in ``download/`` that would break the extraction."""

    # -- the build ------------------------------------------------------------------------------------
    def _frames_ready(self) -> bool:
        folder = self.frames_dir
        return folder.is_dir() and not _marker(folder).exists() and not self._incomplete(folder)

    def fingerprint(self) -> str | None:
        """Names and sizes of the frame cache's files, which every read comes from (a resized copy is
        made from them); ``None`` until the cache is built."""
        return fingerprint.of_listing(self.frames_dir, ".npz") if self._frames_ready() else None

    def _verify_download(self) -> None:
        """Checksums of the archives, before spikingjelly would delete a bad one (and download it)."""
        log.info("%s: checking the checksums of the files in %s (once)", self.name, self.download_dir)
        for file_name, _, md5 in self.resources():
            if not check_integrity(str(self.download_dir / file_name), md5):
                raise self.missing(
                    f"{self.download_dir / file_name} is corrupt or incomplete (md5 is not {md5}); "
                    f"download it again"
                )

    def _count_recordings(self) -> int:
        return self.RECORDINGS

    @abc.abstractmethod
    def _construct(self, data_type: str, **frames: Any) -> Any:
        """Construct spikingjelly's dataset class on ``root`` (which builds its caches)."""

    def build_frames(self) -> None:
        """Make sure the frame cache for this ``frames_number``/``split_by`` exists (built once:
        download/ → extract/ → events_np/ → frames folder, by spikingjelly), waiting for a job that
        is building it already; then, with ``resize_once``, its copy resized to ``image_size``."""
        self._build_spikingjelly_frames()
        self._build_resized()

    def _build_spikingjelly_frames(self) -> None:
        if self._frames_ready():
            return
        with self._lock():
            if self._frames_ready():  # another job built it while this one waited
                return
            self._refuse_unfinished()
            if not self.events_dir.is_dir():
                self._verify_download()
                with build_progress(self.events_dir, self._count_recordings(), f"{self.name}: events"):
                    self._construct("event")
            total = count_files(self.events_dir)
            desc = f"{self.name}: frames T={self.frames_number} by {self.split_by}"
            with build_progress(self.frames_dir, total, desc):
                self._construct("frame", frames_number=self.frames_number, split_by=self.split_by)
        if not self._frames_ready():  # pragma: no cover - spikingjelly changed its layout
            raise self.missing(f"spikingjelly did not build {self.frames_dir} as expected")

    def _resize_needed(self) -> bool:
        if not self.resize_once:
            return False
        first = next(self.frames_dir.rglob("*.npz"), None)
        if first is None:
            return False
        with np.load(first) as cached:
            return tuple(cached["frames"].shape[-2:]) != (self.image_size, self.image_size)

    def _build_resized(self) -> None:
        """Resize every cached sample once (the evaluation transform's bilinear resize, so a read is
        bit-identical to resizing at every read) into float32 ``.npy`` files: at 48×48 a sample is
        1/7 of the pixels to read and nothing to interpolate per epoch. Built into ``*.partial`` and
        renamed when complete, so an interrupted build is never taken for a finished one."""
        if self.resized_dir.is_dir() or not self._resize_needed():
            return
        with self._lock():
            if self.resized_dir.is_dir():  # another job built it while this one waited
                return
            partial = self.resized_dir.with_name(self.resized_dir.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            files = sorted(self.frames_dir.rglob("*.npz"))
            resize = FrameTransform(self.image_size)
            log.info(
                "%s: resizing %d cached samples to %d×%d once (%s)",
                self.name,
                len(files),
                self.image_size,
                self.image_size,
                self.resized_dir,
            )
            for file in tqdm(
                files, desc=f"{self.name}: resize to {self.image_size}", unit="file", disable=None
            ):
                with np.load(file) as cached:
                    frames = cached["frames"].astype(np.float32)
                out = partial / file.relative_to(self.frames_dir).with_suffix(".npy")
                out.parent.mkdir(parents=True, exist_ok=True)
                np.save(out, resize(frames).numpy())
            partial.rename(self.resized_dir)

    def frames(self, part: str = "") -> EventFrames:
        """The cached frames of ``part`` (a sub-folder, '' for all), labelled by ``class_to_idx``;
        read from the resized copy when there is one."""
        resized = self.resized_dir / part if self.resize_once and self.resized_dir.is_dir() else None
        try:
            return EventFrames(self.frames_dir / part, self.class_to_idx(), resized)
        except FileNotFoundError as exc:
            raise self.missing(f"{self.frames_dir / part}: {exc} Delete the folder to rebuild it") from exc

    @abc.abstractmethod
    def class_to_idx(self) -> dict[str, int]:
        """Frame-cache sub-folder name → label."""

    # -- the transforms ---------------------------------------------------------------------------------
    def transforms(self) -> tuple[FrameTransform, FrameTransform, FrameTransform | None]:
        """Training, evaluation and (when it differs from training) the teacher's training transform."""
        train = FrameTransform(self.image_size, self.augment)
        teacher = None
        if self.teacher_augment != self.augment:
            teacher = FrameTransform(self.image_size, self.teacher_augment)
        return train, FrameTransform(self.image_size), teacher

    def _cut(
        self, train_set: EventFrames, train_idx: np.ndarray, test_set: EventFrames, test_idx: np.ndarray
    ) -> tuple[DataSplits, np.ndarray, np.ndarray]:
        """Hold out validation from the training indices (stratified, when ``val_fraction`` > 0),
        attach the transforms. Evaluation parts come in a fixed mixed order (the folders are sorted
        by class), so a run that evaluates a few batches only still sees every class."""
        val_idx = np.zeros(0, dtype=np.int64)
        if self.val_fraction > 0:
            kept, held = hold_out(train_set.targets[train_idx], self.val_fraction, self.split_seed)
            train_idx, val_idx = train_idx[kept], train_idx[held]
        mix = np.random.default_rng(self.split_seed)
        train_tf, eval_tf, teacher_tf = self.transforms()
        test = TransformedSubset(test_set, mix.permutation(test_idx), eval_tf)
        val = TransformedSubset(train_set, mix.permutation(val_idx), eval_tf) if len(val_idx) else test
        splits = DataSplits(
            train=TransformedSubset(train_set, train_idx, train_tf),
            val=val,
            test=test,
            split_id="",
            teacher_train=None if teacher_tf is None else TransformedSubset(train_set, train_idx, teacher_tf),
            time_major=True,
            val_is_test=not len(val_idx),
        )
        return splits, train_idx, val_idx


class CIFAR10DVS(_FrameCacheSource):
    """CIFAR10-DVS (10 000 recordings, 10 classes, 128×128), cut by index into train/test.

    The dataset ships no split. ``split='random'``: the published protocol, a
    ``random_split(range(N), [round(N·train_fraction), …])`` with generator seed ``split_seed``
    (9000 / 1000 with 0.9 and 42); ``'stratified'``: ``1 − train_fraction`` of every class tests.
    spikingjelly's ``CIFAR10DVSTEBNSplit`` is avoided (it links files by number, dangling unless every
    class has exactly 1000). Labels follow CIFAR-10's order (airplane = 0 … truck = 9).
    """

    SJ_MODULE, SJ_CLASS = "cifar10_dvs", "CIFAR10DVS"
    RECORDINGS = 10_000
    LAYOUT = """
<root>/ holding any one of (spikingjelly builds each from the next, once):
  frames_number_<T>_split_by_<number|time>/<class>/cifar10_<class>_<i>.npz   the frame cache
  events_np/<class>/cifar10_<class>_<i>.npz     decoded events
  download/airplane.zip automobile.zip bird.zip cat.zip deer.zip dog.zip frog.zip horse.zip
           ship.zip truck.zip                   the 10 published archives, as downloaded
           (each holds <class>/cifar10_<class>_<i>.aedat; nothing else may be in download/)
The first build also writes extract/ (the unzipped .aedat files): about twice the archives' size.
"""
    SOURCE = (
        "https://figshare.com/articles/dataset/CIFAR10-DVS_New/4724671 : download the 10 class "
        "archives (airplane.zip … truck.zip) into <root>/download/ (spikingjelly checks their md5; it "
        "is never left to download them)"
    )

    def __init__(
        self,
        name: str,
        root: str,
        num_classes: int = 10,
        in_channels: int = 2,
        image_size: int = 48,
        frames_number: int = 10,
        split_by: str = "number",
        augment: Mapping[str, Any] | None = None,
        teacher_augment: Mapping[str, Any] | None = None,
        split: str = "random",
        train_fraction: float = 0.9,
        val_fraction: float = 0.0,
        split_seed: int = 42,
        dataset_class: Callable[..., Any] | None = None,
        resize_once: bool = True,
    ) -> None:
        require(num_classes == 10, "num_classes", num_classes, "CIFAR10-DVS has 10 classes")
        require(
            split in ("random", "stratified"),
            "split",
            split,
            "random (the published random_split protocol) or stratified (the same share of every class)",
        )
        require(
            0 < train_fraction < 1, "train_fraction", train_fraction, "the training share, between 0 and 1"
        )
        self.split, self.train_fraction = split, train_fraction
        super().__init__(
            name,
            root,
            num_classes,
            in_channels,
            image_size,
            frames_number,
            split_by,
            augment,
            teacher_augment,
            val_fraction,
            split_seed,
            dataset_class,
            resize_once,
        )

    def class_folders(self) -> list[str]:
        return [n.removesuffix(".zip") for n, _, _ in self.resources()]

    def class_to_idx(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(sorted(self.class_folders()))}

    def _check_download_extras(self) -> None:
        expected = {n for n, _, _ in self.resources()}
        extra = sorted(p.name for p in self.download_dir.iterdir() if p.name not in expected)
        if extra:
            raise self.missing(
                f"{self.download_dir} holds files other than the 10 archives: {', '.join(extra)}; move "
                f"them elsewhere (spikingjelly unpacks every file there)"
            )

    def _count_recordings(self) -> int:
        try:
            total = 0
            for n, _, _ in self.resources():
                with zipfile.ZipFile(self.download_dir / n) as zf:  # reads the listing only
                    total += sum(i.filename.endswith(".aedat") for i in zf.infolist())
            return total
        except (OSError, zipfile.BadZipFile):
            return self.RECORDINGS

    def _construct(self, data_type: str, **frames: Any) -> Any:
        return self.dataset_class(root=str(self.root), data_type=data_type, **frames)

    def load(self) -> DataSplits:
        self.build_frames()
        data = self.frames()
        n = len(data)
        if self.split == "random":
            train_idx, test_idx = random_split_indices(n, round(n * self.train_fraction), self.split_seed)
        else:
            train_idx, _, test_idx = stratified_split(
                data.targets, 0.0, 1 - self.train_fraction, self.split_seed
            )
        splits, train_idx, val_idx = self._cut(data, train_idx, data, test_idx)
        split_id = split_fingerprint(np.sort(train_idx), np.sort(val_idx), np.sort(test_idx))
        return dataclasses.replace(splits, split_id=split_id)


class DVSGesture(_FrameCacheSource):
    """DVS128 Gesture (11 gestures, 128×128) with its own split by subject: spikingjelly cuts the
    122 trials of users 1-23 (train) and 24-29 (test) at the label CSVs' times into 1176 + 288
    samples. Label ``k`` is gesture ``k + 1`` of ``gesture_mapping.csv``."""

    SJ_MODULE, SJ_CLASS = "dvs128_gesture", "DVS128Gesture"
    RECORDINGS = 1464
    LAYOUT = """
<root>/ holding any one of (spikingjelly builds each from the next, once):
  frames_number_<T>_split_by_<number|time>/{train,test}/<0..10>/<user>_<lighting>_<n>.npz   the frame cache
  events_np/{train,test}/<0..10>/<user>_<lighting>_<n>.npz     decoded events, one file per gesture
  download/DvsGesture.tar.gz gesture_mapping.csv LICENSE.txt README.txt   the published files
The first build also writes extract/DvsGesture/ (the unpacked .aedat trials and label CSVs).
"""
    SOURCE = (
        "https://research.ibm.com/interactive/dvsgesture/ (manual download after accepting the "
        "licence; spikingjelly cannot fetch it): put DvsGesture.tar.gz, gesture_mapping.csv, "
        "LICENSE.txt and README.txt into <root>/download/"
    )

    def __init__(
        self,
        name: str,
        root: str,
        num_classes: int = 11,
        in_channels: int = 2,
        image_size: int = 48,
        frames_number: int = 16,
        split_by: str = "number",
        augment: Mapping[str, Any] | None = None,
        teacher_augment: Mapping[str, Any] | None = None,
        val_fraction: float = 0.0,
        split_seed: int = 0,
        dataset_class: Callable[..., Any] | None = None,
        resize_once: bool = True,
    ) -> None:
        require(num_classes == 11, "num_classes", num_classes, "DVS128 Gesture has 11 classes")
        super().__init__(
            name,
            root,
            num_classes,
            in_channels,
            image_size,
            frames_number,
            split_by,
            augment,
            teacher_augment,
            val_fraction,
            split_seed,
            dataset_class,
            resize_once,
        )

    def class_folders(self) -> list[str]:
        return [f"{part}/{k}" for part in ("train", "test") for k in range(11)]

    def class_to_idx(self) -> dict[str, int]:
        # the folder *number* is the label (a DatasetFolder would number '10' as 2, sorting strings)
        return {str(k): k for k in range(11)}

    def _construct(self, data_type: str, **frames: Any) -> Any:
        # the first construction builds both parts (spikingjelly walks all of events_np/)
        return self.dataset_class(root=str(self.root), train=True, data_type=data_type, **frames)

    def load(self) -> DataSplits:
        self.build_frames()
        train_set, test_set = self.frames("train"), self.frames("test")
        test_idx = np.arange(len(test_set))
        splits, train_idx, val_idx = self._cut(train_set, np.arange(len(train_set)), test_set, test_idx)
        split_id = split_fingerprint(np.sort(train_idx), np.sort(val_idx), test_idx)
        return dataclasses.replace(splits, split_id=split_id)
