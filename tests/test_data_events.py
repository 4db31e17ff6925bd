"""CIFAR10-DVS and DVS128 Gesture through spikingjelly's real classes, on tiny fake archives.

Expected frames are integrated here from the events the fixtures wrote (numpy, not spikingjelly)
and resized with torchvision; labels are also read off the pictures (each class has its own band
of rows), so a wrong label order cannot pass by construction.
"""

from __future__ import annotations

import functools
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_cfg
from filelock import FileLock
from fixtures_events import (
    CIFAR10DVS_CLASSES,
    SENSOR,
    EventFixture,
    patch_cifar10dvs_md5,
    patch_dvsgesture_md5,
    write_cifar10dvs,
    write_dvsgesture,
)
from omegaconf import OmegaConf
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from seal_exp.config import ConfigError, build
from seal_exp.data import make_loader
from seal_exp.data.neuromorphic import CIFAR10DVS, LOCK_NAME, DVSGesture, spikingjelly_datasets
from seal_exp.data.source import MissingDataset

T = 4
PER_CLASS = 10  # 100 recordings: 90 / 10 under the published 0.9 split


def integrate(events: dict[str, np.ndarray], frames: int, split_by: str) -> np.ndarray:
    """Polarity-count frames [T, 2, 128, 128]: 'number' gives frame i events i·⌊N/T⌋ … (the last
    takes the rest); 'time' cuts [t0, t_end] into T bins of ⌊(t_end − t0)/T⌋ µs (the rest to the last)."""
    t = events["t"].astype(np.int64)
    n = len(t)
    if split_by == "number":
        idx = np.minimum(np.arange(n) // (n // frames), frames - 1)
    else:
        idx = np.minimum((t - t[0]) // ((t[-1] - t[0]) // frames), frames - 1)
    out = np.zeros((frames, 2, SENSOR, SENSOR), dtype=np.float32)
    np.add.at(out, (idx, events["p"], events["y"], events["x"]), 1)
    return out


def resize(frames: np.ndarray, size: int) -> torch.Tensor:
    return TF.resize(torch.from_numpy(frames), [size, size], InterpolationMode.BILINEAR, antialias=False)


def band(frames: np.ndarray, bands: int) -> int:
    """The one band of rows holding every event of a raw [T, 2, 128, 128] sample."""
    rows = np.flatnonzero(frames.sum(axis=(0, 1, 3)))
    found = set((rows // (SENSOR // bands)).tolist())
    assert len(found) == 1, f"events in several bands {found}"
    return found.pop()


def key_of(path: str, gesture: bool) -> str:
    p = Path(path)
    return f"{p.parent.name}/{p.stem}" if gesture else p.stem


def mtimes(root: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file() and p.name != LOCK_NAME}


@functools.cache
def defaults(name: str) -> dict:
    """The keys of conf/dataset/<name>.yaml (composed once), less the target and the injected class."""
    cfg = make_cfg(Path("/nonexistent"), [f"dataset={name}", f"neuron.T={T}"])
    keys = OmegaConf.to_container(cfg.dataset, resolve=True)
    return {k: v for k, v in keys.items() if k not in ("_target_", "dataset_class")}


def c10(root: Path, **kw) -> CIFAR10DVS:
    return CIFAR10DVS(**{**defaults("cifar10dvs"), "root": str(root), **kw})


def gesture(root: Path, **kw) -> DVSGesture:
    return DVSGesture(**{**defaults("dvsgesture"), "root": str(root), **kw})


def refusing(module: str, name: str) -> type:
    """spikingjelly's class, failing the test if a run constructs it (i.e. would build a cache)."""

    class Refusing(getattr(spikingjelly_datasets(module), name)):
        def __init__(self, *args, **kwargs) -> None:
            raise AssertionError("spikingjelly was asked to build although the cache is complete")

    return Refusing


@pytest.fixture(scope="module")
def c10_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, EventFixture]:
    root = tmp_path_factory.mktemp("cifar10dvs")
    fx = write_cifar10dvs(root, per_class=PER_CLASS, events_per_file=200, seed=0)
    with pytest.MonkeyPatch.context() as mp:
        patch_cifar10dvs_md5(mp, root)
        c10(root).build_frames()
    return root, fx


@pytest.fixture(scope="module")
def gesture_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, EventFixture]:
    root = tmp_path_factory.mktemp("dvsgesture")
    fx = write_dvsgesture(root, users_train=2, users_test=1, seed=0)
    with pytest.MonkeyPatch.context() as mp:
        patch_dvsgesture_md5(mp, root)
        gesture(root).build_frames()
    return root, fx


# ------------------------------------------------------------------------------------------ CIFAR10-DVS


def test_cifar10dvs_frames_labels_and_batches(c10_data):
    root, fx = c10_data
    data = c10(root, resize_once=False).load()  # the spikingjelly cache as it is (128×128)
    assert data.time_major and data.val_is_test and data.val is data.test
    assert (len(data.train), len(data.test)) == (90, 10)
    base = data.train.base
    assert len(base) == 10 * PER_CLASS
    for path, label in base.samples:  # every recording: the label of its file and of its picture
        assert label == fx.labels[key_of(path, False)] == CIFAR10DVS_CLASSES.index(Path(path).parent.name)
    for i in range(0, len(base), 7):
        frames, label = base[i]
        assert frames.shape == (T, 2, SENSOR, SENSOR) and frames.dtype == np.float32
        assert band(frames, 10) == label
    x, y = data.train[0]
    assert x.shape == (T, 2, 48, 48) and x.dtype == torch.float32 and isinstance(y, int)
    xb, yb = next(iter(make_loader(data.train, 8, shuffle=True, seed=0, time_major=True)))
    assert xb.shape == (T, 8, 2, 48, 48) and xb.dtype == torch.float32 and yb.shape == (8,)
    # spikingjelly's own DatasetFolder lists the same files in the same order with the same labels
    sj = spikingjelly_datasets("cifar10_dvs").CIFAR10DVS(
        str(root), data_type="frame", frames_number=T, split_by="number"
    )
    assert sj.samples == base.samples


@pytest.mark.parametrize("name", ["cifar10dvs", "dvsgesture"])
def test_frames_resized_once_read_as_resizing_at_every_read(c10_data, gesture_data, name):
    """``resize_once`` (the default): the cache resized once, beside spikingjelly's, gives bit-identical
    samples to resizing at every read, for evaluation and (same draws) for augmented training."""
    root, _ = c10_data if name == "cifar10dvs" else gesture_data
    make = c10 if name == "cifar10dvs" else gesture
    once, every = make(root).load(), make(root, resize_once=False).load()
    resized = root / f"frames_number_{T}_split_by_number_resized_48"
    assert resized.is_dir() and not resized.with_name(resized.name + ".partial").exists()
    assert once.test.base.resized is not None and every.test.base.resized is None
    assert once.test.base.samples == every.test.base.samples
    files = sorted(resized.rglob("*.npy"))
    assert len(files) == len(list((root / f"frames_number_{T}_split_by_number").rglob("*.npz")))
    assert np.load(files[0]).shape == (T, 2, 48, 48) and np.load(files[0]).dtype == np.float32
    for j in range(len(once.test)):
        assert torch.equal(once.test[j][0], every.test[j][0])
    for j in range(0, len(once.train), 9):
        torch.manual_seed(j)
        a = once.train[j][0]
        torch.manual_seed(j)
        assert torch.equal(a, every.train[j][0])


@pytest.mark.parametrize("split_by", ["number", "time"])
def test_cifar10dvs_eval_is_the_resized_integration(c10_data, tmp_path, split_by):
    root, fx = c10_data
    if split_by == "time":  # a second cache from the same events_np/ (no download/ needed)
        shutil.copytree(root / "events_np", tmp_path / "events_np")
        root = tmp_path
    data = c10(root, split_by=split_by).load()
    for j in range(len(data.test)):
        x, y = data.test[j]
        path, label = data.test.base.samples[data.test.indices[j]]
        expected = resize(integrate(fx.events[key_of(path, False)], T, split_by), 48)
        torch.testing.assert_close(x, expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(data.test[j][0], x, rtol=0, atol=0)  # identical on every read
        assert y == label
    assert (root / f"frames_number_{T}_split_by_{split_by}").is_dir()


def test_cifar10dvs_training_is_augmented(c10_data):
    root, _ = c10_data
    data = c10(root).load()
    torch.manual_seed(0)
    reads = [data.train[0][0] for _ in range(10)]
    assert any(not torch.equal(reads[0], r) for r in reads[1:])
    assert data.teacher_train is None  # teacher_augment equals augment by default
    split = c10(root, teacher_augment={"flip": False, "one_of": []}).load()
    teacher = split.teacher_train
    assert teacher is not None and np.array_equal(teacher.indices, split.train.indices)
    plain = torch.from_numpy(split.train.base[int(teacher.indices[0])][0])
    torch.testing.assert_close(teacher[0][0], resize(plain.numpy(), 48), rtol=1e-5, atol=1e-5)


def test_cifar10dvs_random_split_is_torch_random_split(c10_data):
    root, _ = c10_data
    a, b = c10(root).load(), c10(root).load()
    golden = torch.utils.data.random_split(range(100), [90, 10], generator=torch.Generator().manual_seed(42))
    assert a.train.indices.tolist() == list(golden[0].indices)
    assert sorted(a.test.indices.tolist()) == sorted(golden[1].indices)
    assert a.split_id == b.split_id
    assert c10(root, split_seed=1).load().split_id != a.split_id
    first = [next(iter(make_loader(d.test, 4, shuffle=False, seed=0, time_major=True))) for d in (a, b)]
    assert torch.equal(first[0][0], first[1][0]) and torch.equal(first[0][1], first[1][1])
    batches = []
    for d in (a, b):
        torch.manual_seed(3)
        batches.append(next(iter(make_loader(d.train, 4, shuffle=True, seed=0, time_major=True))))
    assert torch.equal(batches[0][0], batches[1][0]) and torch.equal(batches[0][1], batches[1][1])


def test_cifar10dvs_stratified_split_and_validation(c10_data):
    root, _ = c10_data
    data = c10(root, split="stratified", val_fraction=0.2).load()
    labels = data.train.base.targets
    assert not data.val_is_test
    for part, per_class in ((data.train, 7), (data.val, 2), (data.test, 1)):
        assert np.bincount(labels[part.indices], minlength=10).tolist() == [per_class] * 10
    parts = [set(p.indices.tolist()) for p in (data.train, data.val, data.test)]
    assert sum(map(len, parts)) == len(set().union(*parts)) == 100
    x = data.val[0][0]  # validation is served like the test part: resize only
    torch.testing.assert_close(
        x, resize(data.val.base[int(data.val.indices[0])][0], 48), rtol=1e-5, atol=1e-5
    )
    assert data.split_id != c10(root, split="stratified").load().split_id


def test_cifar10dvs_cache_is_built_once(c10_data, tmp_path):
    root, _ = c10_data
    before = mtimes(root)
    data = c10(
        root, dataset_class=refusing("cifar10_dvs", "CIFAR10DVS")
    ).load()  # the cache is complete: never rebuilt
    assert len(data.train) == 90
    c10(root).load()
    assert mtimes(root) == before
    only_frames = tmp_path / "frames_only"  # the frame cache alone suffices (no events_np/, no download/)
    shutil.copytree(
        root / f"frames_number_{T}_split_by_number", only_frames / f"frames_number_{T}_split_by_number"
    )
    copy = c10(only_frames, dataset_class=refusing("cifar10_dvs", "CIFAR10DVS")).load()
    assert [Path(p).name for p, _ in copy.test.base.samples] == [
        Path(p).name for p, _ in data.test.base.samples
    ]


def test_event_fingerprint_is_the_frame_cache_and_unknown_before_it(c10_data, tmp_path):
    root, _ = c10_data
    frames = f"frames_number_{T}_split_by_number"
    built = c10(root).fingerprint()
    assert isinstance(built, str) and len(built) == 16
    # the same frames elsewhere (no events_np/, no download/): the same data
    shutil.copytree(root / frames, tmp_path / "copy" / frames)
    assert c10(tmp_path / "copy").fingerprint() == built
    # one sample more, or one resized: other data
    sample = next((tmp_path / "copy" / frames).rglob("*.npz"))
    shutil.copy(sample, sample.with_name("extra.npz"))
    assert c10(tmp_path / "copy").fingerprint() != built
    sample.with_name("extra.npz").unlink()
    sample.write_bytes(sample.read_bytes() + b"\0")
    assert c10(tmp_path / "copy").fingerprint() != built
    # only the archives: nothing built yet, so nothing to compare with
    write_cifar10dvs(tmp_path / "fresh", per_class=1, events_per_file=20, seed=1)
    assert c10(tmp_path / "fresh").fingerprint() is None


def test_cifar10dvs_refuses_what_spikingjelly_would_download_or_reuse(tmp_path, monkeypatch):
    write_cifar10dvs(tmp_path, per_class=1, events_per_file=20, seed=1)
    patch_cifar10dvs_md5(monkeypatch, tmp_path)
    (tmp_path / "download" / "truck.zip").rename(tmp_path / "truck.zip")
    with pytest.raises(MissingDataset, match=r"lacks truck\.zip") as exc:
        c10(tmp_path)
    msg = str(exc.value)
    assert str(tmp_path) in msg and "events_np/" in msg and "figshare.com" in msg and "download/" in msg
    (tmp_path / "truck.zip").rename(tmp_path / "download" / "truck.zip")
    (tmp_path / "download" / "notes.txt").write_text("x")
    with pytest.raises(MissingDataset, match=r"notes\.txt.*spikingjelly unpacks every file"):
        c10(tmp_path)
    (tmp_path / "download" / "notes.txt").unlink()
    with (tmp_path / "download" / "cat.zip").open("ab") as f:  # corrupt: spikingjelly would delete it
        f.write(b"junk")
    source = c10(tmp_path)
    with pytest.raises(MissingDataset, match=r"cat\.zip is corrupt"):
        source.load()
    assert (tmp_path / "download" / "cat.zip").is_file()
    assert not list(tmp_path.glob("*.building")) and not (tmp_path / "events_np").exists()


def test_unfinished_build_gives_the_clear_message(tmp_path, monkeypatch):
    write_cifar10dvs(tmp_path, per_class=1, events_per_file=20, seed=1)
    marker = tmp_path / f"frames_number_{T}_split_by_number.building"
    marker.touch()
    with pytest.raises(MissingDataset, match="interrupted cache build") as exc:
        c10(tmp_path)
    assert f"rm -rf {tmp_path / f'frames_number_{T}_split_by_number'}" in str(exc.value)
    with FileLock(str(tmp_path / LOCK_NAME)):  # a job building right now: not refused, load() waits
        c10(tmp_path)
    marker.unlink()
    (tmp_path / "events_np.building").touch()
    with pytest.raises(MissingDataset, match="interrupted") as exc:
        c10(tmp_path)
    assert f"rm -rf {tmp_path / 'extract'}" in str(exc.value)


def test_cifar10dvs_config_and_missing_dataset(tmp_path):
    cfg = make_cfg(tmp_path, ["dataset=cifar10dvs", "neuron.T=6", f"dataset.root={tmp_path / 'none'}"])
    assert cfg.dataset.frames_number == 6 and cfg.dataset.image_size == 48
    with pytest.raises(MissingDataset) as exc:
        build(cfg.dataset, "dataset")
    msg = str(exc.value)
    assert str(tmp_path / "none") in msg and "frames_number_<T>_split_by_" in msg and "figshare" in msg
    bad = make_cfg(tmp_path, ["dataset=cifar10dvs", "dataset.split=by_user"])
    with pytest.raises(ConfigError, match=r"dataset\.split='by_user' is invalid"):
        build(bad.dataset, "dataset")
    bad = make_cfg(tmp_path, ["dataset=cifar10dvs", "+dataset.augment.shear=3"])
    with pytest.raises(ConfigError, match=r"dataset\.augment\.shear"):
        build(bad.dataset, "dataset")
    bad = make_cfg(tmp_path, ["dataset=cifar10dvs", "dataset.split_by=count"])
    with pytest.raises(ConfigError, match=r"dataset\.split_by='count' is invalid"):
        build(bad.dataset, "dataset")


def test_train_stops_on_a_missing_dataset_before_reading(tmp_path):
    from seal_exp.train import train

    for name in ("cifar10dvs", "dvsgesture"):
        cfg = make_cfg(tmp_path, [f"dataset={name}", "debug=smoke", "tracking=none"])  # ${paths.data}: empty
        with pytest.raises(MissingDataset, match=rf"dataset {name}:") as exc:
            train(cfg)
        assert str(tmp_path / "data" / name) in str(exc.value)
        assert not (tmp_path / "out").exists()  # stopped in prepare(): nothing written, no data read


def test_cifar10dvs_trains_end_to_end(tmp_path, monkeypatch):
    from seal_exp.train import train

    root = tmp_path / "c10"
    write_cifar10dvs(root, per_class=5, events_per_file=100, seed=2)
    patch_cifar10dvs_md5(monkeypatch, root)
    cfg = make_cfg(
        tmp_path,
        [
            "dataset=cifar10dvs",
            f"dataset.root={root}",
            "debug=smoke",
            "tracking=none",
            f"neuron.T={T}",
            "trainer.num_workers=0",
            "trainer.limit_train_batches=1",
            "teacher.recipe.limit_train_batches=1",
        ],
    )
    summary = train(cfg)
    assert 0 <= summary["test_acc"] <= 100
    assert (root / f"frames_number_{T}_split_by_number").is_dir()


# ------------------------------------------------------------------------------------- DVS128 Gesture


def test_gesture_labels_are_the_gesture_ids(gesture_data):
    root, fx = gesture_data
    data = gesture(root, resize_once=False).load()  # the spikingjelly cache as it is (128×128)
    assert data.time_major and data.val_is_test
    assert (len(data.train), len(data.test)) == (22, 11)
    for part in (data.train, data.test):
        base = part.base
        assert np.bincount(base.targets, minlength=11).tolist() == [len(base) // 11] * 11
        for i, (path, label) in enumerate(base.samples):
            frames, y = base[i]
            assert y == label == fx.labels[key_of(path, True)] == int(Path(path).parent.name)
            assert band(frames, 11) == label  # label k: the events of CSV class k + 1
    # why the relabelling: spikingjelly's DatasetFolder numbers the folders as sorted strings
    sj = spikingjelly_datasets("dvs128_gesture").DVS128Gesture(
        str(root), train=True, data_type="frame", frames_number=T, split_by="number"
    )
    assert sj.class_to_idx["10"] == 2 and sj.class_to_idx["2"] == 3
    assert [p for p, _ in sj.samples] == [p for p, _ in data.train.base.samples]


def test_gesture_frames_and_no_augmentation_by_default(gesture_data):
    root, fx = gesture_data
    data = gesture(root).load()
    for part in (data.test, data.train):
        for j in range(0, len(part), 5):
            x, _ = part[j]
            path = part.base.samples[part.indices[j]][0]
            expected = resize(integrate(fx.events[key_of(path, True)], T, "number"), 48)
            torch.testing.assert_close(x, expected, rtol=1e-5, atol=1e-5)
    xb, yb = next(iter(make_loader(data.train, 4, shuffle=True, seed=0, time_major=True)))
    assert xb.shape == (T, 4, 2, 48, 48) and yb.shape == (4,)
    big = gesture(root, image_size=128).load()
    assert big.test[0][0].shape == (T, 2, 128, 128)


def test_gesture_validation_split_and_determinism(gesture_data):
    root, _ = gesture_data
    data = gesture(root, val_fraction=0.5).load()
    assert not data.val_is_test and (len(data.train), len(data.val), len(data.test)) == (11, 11, 11)
    labels = data.train.base.targets
    assert sorted(labels[data.val.indices].tolist()) == list(range(11))
    assert not set(data.val.indices.tolist()) & set(data.train.indices.tolist())
    again = gesture(root, val_fraction=0.5).load()
    assert again.split_id == data.split_id != gesture(root).load().split_id
    assert np.array_equal(again.val.indices, data.val.indices)


def test_gesture_cache_reused_and_missing_files_named(gesture_data, tmp_path):
    root, _ = gesture_data
    before = mtimes(root)
    gesture(root, dataset_class=refusing("dvs128_gesture", "DVS128Gesture")).load()
    assert mtimes(root) == before
    (tmp_path / "download").mkdir()
    (tmp_path / "download" / "DvsGesture.tar.gz").write_bytes(b"")
    with pytest.raises(MissingDataset, match=r"lacks gesture_mapping\.csv, LICENSE\.txt, README\.txt") as exc:
        gesture(tmp_path)
    assert "research.ibm.com/interactive/dvsgesture" in str(exc.value)
    shutil.copytree(root / "events_np", tmp_path / "events_np")  # events alone: frames for another T
    shutil.rmtree(tmp_path / "events_np" / "test" / "3")
    with pytest.raises(MissingDataset, match=r"events_np is incomplete \(no test/3\)"):
        gesture(tmp_path, frames_number=2)
    shutil.copytree(root / "events_np" / "test" / "3", tmp_path / "events_np" / "test" / "3")
    assert len(gesture(tmp_path, frames_number=2).load().test[0][0]) == 2


def test_gesture_trains_end_to_end(tmp_path, monkeypatch):
    from seal_exp.train import train

    root = tmp_path / "gesture"
    write_dvsgesture(root, users_train=1, users_test=1, seed=3, events_per_gesture=60)
    patch_dvsgesture_md5(monkeypatch, root)
    cfg = make_cfg(
        tmp_path,
        [
            "dataset=dvsgesture",
            f"dataset.root={root}",
            "debug=smoke",
            "tracking=none",
            f"neuron.T={T}",
            "trainer.num_workers=2",  # loader workers receive the frame datasets
        ],
    )
    summary = train(cfg)
    assert 0 <= summary["test_acc"] <= 100
