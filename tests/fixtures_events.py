"""Tiny event-camera recordings in the published raw formats, for spikingjelly's real pipeline.

``write_cifar10dvs`` writes ``download/<class>.zip`` (AEDAT 2.0 ``.aedat`` files) and
``write_dvsgesture`` writes ``download/DvsGesture.tar.gz`` (AEDAT 3.1) plus its three side files.
Both return the events each recording should decode to, so tests can integrate frames on their
own and compare. The only thing patched is the class's ``resource_url_md5`` table (the checksums
of these fakes instead of the real archives): extraction, decoding, ``events_np/`` and the frame
cache all run for real. Every class's events sit in its own band of rows, so a label can also be
checked from the picture alone.
"""

from __future__ import annotations

import csv
import hashlib
import io
import struct
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from seal_exp.data.neuromorphic import spikingjelly_datasets  # imports spikingjelly.datasets robustly

CIFAR10DVS_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
GESTURE_FILES = ("DvsGesture.tar.gz", "gesture_mapping.csv", "LICENSE.txt", "README.txt")
GESTURE_NAMES = (
    "hand_clapping",
    "right_hand_wave",
    "left_hand_wave",
    "right_arm_clockwise",
    "right_arm_counter_clockwise",
    "left_arm_clockwise",
    "left_arm_counter_clockwise",
    "arm_roll",
    "air_drums",
    "air_guitar",
    "other_gestures",
)
SENSOR = 128  # DVS128: 128×128 pixels
URL = "file:///nowhere (test fixture; never downloaded)"


@dataclass
class EventFixture:
    """What a fixture wrote: ``resources`` is the ``(file, url, md5)`` table for
    ``resource_url_md5``; ``events[key]`` the decoded events ``t, x, y, p`` a sample must yield and
    ``labels[key]`` its class index. Keys: CIFAR10-DVS the file stem (``cifar10_<class>_<i>``);
    gesture ``<CSV class − 1>/<trial>_0``, the sample file spikingjelly cuts from a trial."""

    resources: list[tuple[str, str, str]]
    events: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)


def band_events(
    rng: np.random.Generator, n: int, band: int, bands: int, t0: int, duration: int
) -> dict[str, np.ndarray]:
    """``n`` events with rows in band ``band`` of ``bands`` equal bands, spread evenly over
    ``[t0, t0 + duration)`` (every time bin gets events, as ``split_by='time'`` requires)."""
    rows = SENSOR // bands
    t = t0 + (np.arange(n, dtype=np.int64) * duration) // n
    return {
        "t": t,
        "x": rng.integers(0, SENSOR, n),
        "y": band * rows + rng.integers(0, rows, n),
        "p": rng.integers(0, 2, n),
    }


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------- CIFAR10-DVS


def cifar10dvs_aedat(events: dict[str, np.ndarray]) -> bytes:
    """An AEDAT 2.0 file as in CIFAR10-DVS: '#' header lines, then big-endian uint32 pairs
    (address, timestamp µs). The address holds polarity in bit 0, x in bits 1-7, y in bits 8-14 of
    the sensor's own axes, which the dataset reads back transposed and mirrored:
    x = 127 − y_raw, y = 127 − x_raw, p = 1 − p_raw."""
    x_raw = SENSOR - 1 - events["y"]
    y_raw = SENSOR - 1 - events["x"]
    p_raw = 1 - events["p"]
    address = (p_raw | (x_raw << 1) | (y_raw << 8)).astype(np.uint32)
    body = np.empty(2 * len(address), dtype=">u4")
    body[0::2] = address
    body[1::2] = events["t"].astype(np.uint32)
    header = (
        b"#!AER-DAT2.0\r\n"
        b"# This is a raw AE data file - do not edit\r\n"
        b"# Data format is int32 address, int32 timestamp (8 bytes total), repeated for each event\r\n"
        b"# Timestamps tick is 1 us\r\n"
        b"# created by the seal-exp test fixture\r\n"
    )
    return header + body.tobytes()


def write_cifar10dvs(
    root: Path, per_class: int = 3, events_per_file: int = 200, seed: int = 0
) -> EventFixture:
    """``root/download/<class>.zip`` holding ``<class>/cifar10_<class>_<i>.aedat`` for the 10 classes."""
    rng = np.random.default_rng(seed)
    download = Path(root) / "download"
    download.mkdir(parents=True, exist_ok=True)
    fixture = EventFixture(resources=[])
    for label, name in enumerate(CIFAR10DVS_CLASSES):
        archive = download / f"{name}.zip"
        with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for i in range(per_class):
                stem = f"cifar10_{name}_{i}"
                events = band_events(rng, events_per_file, label, 10, 1000 * i, 1_000_000)
                zf.writestr(f"{name}/{stem}.aedat", cifar10dvs_aedat(events))
                fixture.events[stem], fixture.labels[stem] = events, label
        fixture.resources.append((archive.name, URL, md5_of(archive)))
    return fixture


def _resources(download: Path, names: tuple[str, ...]) -> list[tuple[str, str, str]]:
    return [(n, URL, md5_of(download / n)) for n in names]


def patch_cifar10dvs_md5(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    """Make spikingjelly's CIFAR10DVS accept the fixture's archives (their checksums, no URL)."""
    cls = spikingjelly_datasets("cifar10_dvs").CIFAR10DVS
    table = _resources(Path(root) / "download", tuple(f"{c}.zip" for c in CIFAR10DVS_CLASSES))
    monkeypatch.setattr(cls, "resource_url_md5", classmethod(lambda cls: list(table)))


# ------------------------------------------------------------------------------------ DVS128 Gesture


def aedat31(events: dict[str, np.ndarray], per_packet: int = 50) -> bytes:
    """An AEDAT 3.1 file: ASCII header ending ``#!END-HEADER\\r\\n``, then packets of a 28-byte
    little-endian header (type, source, size, ts offset, ts overflow, capacity, number, valid) and
    8-byte polarity events (uint32 data: valid bit 0, polarity bit 1, y bits 2-16, x bits 17-31;
    int32 timestamp). A special-event packet (type 0) comes first; readers must skip it."""
    out = io.BytesIO()
    out.write(
        b"#!AER-DAT3.1\r\n#Format: RAW\r\n#Source 1: DVS128\r\n"
        b"#Start-Time: 2017-01-01 00:00:00 (TZ+0000)\r\n#!END-HEADER\r\n"
    )
    special = struct.pack("<Ii", (2 << 1) | 1, 0)  # a timestamp-reset special event
    out.write(struct.pack("<hhiiiiii", 0, 1, 8, 4, 0, 1, 1, 1) + special)
    n = len(events["t"])
    for start in range(0, n, per_packet):
        sl = slice(start, min(start + per_packet, n))
        x, y, p, t = (events[k][sl].astype(np.int64) for k in ("x", "y", "p", "t"))
        data = np.empty(len(t), dtype=[("a", "<u4"), ("t", "<i4")])
        data["a"] = (x << 17) | (y << 2) | (p << 1) | 1
        data["t"] = t
        out.write(struct.pack("<hhiiiiii", 1, 1, 8, 4, 0, len(t), len(t), len(t)))
        out.write(data.tobytes())
    return out.getvalue()


def write_dvsgesture(
    root: Path, users_train: int = 2, users_test: int = 1, seed: int = 0, events_per_gesture: int = 120
) -> EventFixture:
    """``root/download/`` with ``DvsGesture.tar.gz`` (one ``userNN_fluorescent`` trial per user:
    all 11 gestures, 1 s each with gaps of off-gesture noise, plus its label CSV, and the train/test
    trial lists), ``gesture_mapping.csv``, ``LICENSE.txt`` and ``README.txt``. Gesture ``g`` (CSV
    class, 1-11) puts its events in row band ``g − 1`` of 11."""
    rng = np.random.default_rng(seed)
    download = Path(root) / "download"
    download.mkdir(parents=True, exist_ok=True)
    fixture = EventFixture(resources=[])
    users = [f"user{u:02d}" for u in range(1, users_train + users_test + 1)]
    members: dict[str, bytes] = {}
    for u, user in enumerate(users):
        trial = f"{user}_fluorescent"
        order = rng.permutation(11) + 1  # gestures in a random order per trial, as performed
        parts, rows = [], []
        t = 500_000
        for k, gesture in enumerate(order):
            noise = band_events(rng, 20, int(rng.integers(11)), 11, t - 400_000, 300_000)
            events = band_events(rng, events_per_gesture + 7 * u + k, gesture - 1, 11, t, 1_000_000)
            parts += [noise, events]
            rows.append((int(gesture), t, t + 1_000_000))
            # spikingjelly's sample file: events_np/<split>/<gesture − 1>/<trial>_<n-th of that gesture>.npz
            key = f"{gesture - 1}/{trial}_0"
            fixture.events[key], fixture.labels[key] = events, int(gesture) - 1
            t += 1_500_000
        stream = {key: np.concatenate([p[key] for p in parts]) for key in ("t", "x", "y", "p")}
        members[f"DvsGesture/{trial}.aedat"] = aedat31(stream)
        table = io.StringIO()
        writer = csv.writer(table, lineterminator="\n")
        writer.writerow(["class", "startTime_usec", "endTime_usec"])
        writer.writerows(rows)
        members[f"DvsGesture/{trial}_labels.csv"] = table.getvalue().encode()
    trials = [f"{user}_fluorescent.aedat" for user in users]
    members["DvsGesture/trials_to_train.txt"] = "\n".join(trials[:users_train]).encode() + b"\n"
    members["DvsGesture/trials_to_test.txt"] = "\n".join(trials[users_train:]).encode() + b"\n"
    with tarfile.open(download / "DvsGesture.tar.gz", "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    mapping = "action,label\n" + "".join(f"{n},{i + 1}\n" for i, n in enumerate(GESTURE_NAMES))
    (download / "gesture_mapping.csv").write_text(mapping)
    (download / "LICENSE.txt").write_text("test fixture, not the IBM licence\n")
    (download / "README.txt").write_text("DVS128 Gesture test fixture: fake recordings\n")
    fixture.resources = _resources(download, GESTURE_FILES)
    return fixture


def patch_dvsgesture_md5(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    """Make spikingjelly's DVS128Gesture accept the fixture's four files (their checksums)."""
    cls = spikingjelly_datasets("dvs128_gesture").DVS128Gesture
    table = _resources(Path(root) / "download", GESTURE_FILES)
    monkeypatch.setattr(cls, "resource_url_md5", classmethod(lambda cls: list(table)))
