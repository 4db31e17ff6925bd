"""A small event-camera simulator: still images become N-MNIST-like recordings.

N-MNIST was recorded by moving a DVS camera in front of a screen along three small saccades; a DVS
pixel fires when its log intensity has changed by a contrast threshold since it last fired. This
module replays that with numpy: each image is zero-padded to ``size``×``size``, moved (bilinear, so
sub-pixel steps are smooth) along a triangle of three saccades of ``substeps`` steps each, and after
every step each pixel emits ``⌊|log(I + log_offset) − L_ref| / threshold⌋`` events — ON (``p=1``) for
an increase, OFF (``p=0``) for a decrease. ``L_ref`` is the level at which the pixel last fired (the
starting frame at first) and moves by one threshold per event, as a DVS pixel's memorised level does,
so slow changes accumulate instead of being lost to rounding. The events of a step get timestamps
spread over that step: event ``k`` of ``n`` at ``(k + u) / n`` of the step, ``u`` uniform from a
generator seeded by ``(seed, image id)`` — the only randomness, so the output depends on the image,
its id and the seed alone (not on which other images share the batch).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from seal_exp.config import InvalidArgument, require

# Bump when the simulation changes in a way the parameters do not capture: caches keyed by
# :meth:`EventSimulator.cache_key` are then rebuilt instead of reused.
SIMULATOR_VERSION = 1


@dataclass(frozen=True)
class EventSimulator:
    """The simulator's parameters (``dataset.simulator``); call it on a batch of images."""

    threshold: float = 0.15  # contrast threshold on log(I + log_offset) per event
    amplitude: float = 2.0  # saccade amplitude in pixels (positions stay within ±amplitude)
    substeps: int = 30  # motion steps per saccade (three saccades)
    duration_ms: float = 300.0  # length of a recording (all three saccades)
    log_offset: float = 0.1  # keeps log finite on black pixels (images are in [0, 1])
    seed: int = 0  # seeds the timestamp spread within each step
    size: int = 32  # images are zero-padded (centred) to size × size

    def __post_init__(self) -> None:
        # Numbers as floats, so 300 and 300.0 (YAML int or float) give the same cache key.
        for name in ("threshold", "amplitude", "duration_ms", "log_offset"):
            value = getattr(self, name)
            require(
                isinstance(value, int | float) and not isinstance(value, bool),
                name,
                value,
                "must be a number",
            )
            object.__setattr__(self, name, float(value))
        require(self.threshold > 0, "threshold", self.threshold, "a log-intensity step, must be > 0")
        require(0 <= self.amplitude <= 8, "amplitude", self.amplitude, "saccade size in pixels, 0 to 8")
        require(
            isinstance(self.substeps, int) and self.substeps >= 1,
            "substeps",
            self.substeps,
            "motion steps per saccade, an integer >= 1",
        )
        require(self.log_offset > 0, "log_offset", self.log_offset, "must be > 0 (log(0) is undefined)")
        require(isinstance(self.seed, int) and self.seed >= 0, "seed", self.seed, "an integer >= 0")
        require(isinstance(self.size, int) and self.size >= 1, "size", self.size, "pixels, >= 1")
        require(
            self.duration_us >= 3 * self.substeps,
            "duration_ms",
            self.duration_ms,
            f"must give every one of the {3 * self.substeps} steps at least 1 µs",
        )

    @classmethod
    def from_config(cls, node: Mapping[str, Any] | None, key: str) -> EventSimulator:
        """``EventSimulator(**node)`` with unknown keys and bad values reported as ``<key>.<name>``."""
        node = dict(node or {})
        known = {f.name for f in fields(cls)}
        for name in node:
            if name not in known:
                raise InvalidArgument(
                    f"{key}.{name}", node[name], f"not a simulator parameter; use {', '.join(sorted(known))}"
                )
        try:
            return cls(**node)
        except InvalidArgument as exc:
            raise InvalidArgument(f"{key}.{exc.name}", exc.value, exc.rule) from exc

    @property
    def duration_us(self) -> int:
        return round(self.duration_ms * 1000)

    @property
    def steps(self) -> int:
        return 3 * self.substeps

    def cache_key(self, **extra: Any) -> str:
        """A short hash of every parameter (plus ``extra``): caches of simulated events are named by it."""
        identity = {"version": SIMULATOR_VERSION, **asdict(self), **extra}
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:10]

    def path(self) -> np.ndarray:
        """Image offsets ``(dx, dy)`` in pixels, ``[steps + 1, 2]``: the start, then after every step.

        A triangle: down-right to ``(A, A)``, left to ``(−A, A)``, up-right back to ``(0, 0)``. Two
        diagonal legs and one horizontal leg, so edges of every orientation move across pixels.
        """
        a = float(self.amplitude)
        corners = np.array([[0.0, 0.0], [a, a], [-a, a], [0.0, 0.0]])
        legs = [np.linspace(corners[i], corners[i + 1], self.substeps + 1)[1:] for i in range(3)]
        return np.concatenate([corners[:1], *legs])

    def __call__(
        self, images: np.ndarray, ids: Sequence[int] | np.ndarray | None = None
    ) -> list[dict[str, np.ndarray]]:
        """Events of each image ``[N, H, W]`` (intensities in [0, 1], H and W at most ``size``).

        ``ids`` (default ``0..N-1``) name the images for the timestamp generator. Each result is a dict
        ``t`` (µs, int64, sorted, within ``[0, duration)``), ``x``, ``y`` (int16, in ``[0, size)``) and
        ``p`` (uint8, 1 ON / 0 OFF).
        """
        images = np.asarray(images, dtype=np.float64)
        if images.ndim != 3:
            raise ValueError(f"images must be [N, H, W], got shape {images.shape}")
        n, h, w = images.shape
        if h > self.size or w > self.size:
            raise ValueError(f"images of {h}×{w} do not fit the {self.size}×{self.size} sensor")
        ids = np.arange(n) if ids is None else np.asarray(ids, dtype=np.int64)
        if ids.shape != (n,):
            raise ValueError(f"ids must have one entry per image ({n}), got shape {ids.shape}")
        if n == 0:
            return []
        margin = math.ceil(self.amplitude) + 1  # room for the shift and the bilinear neighbour
        top, left = (self.size - h) // 2, (self.size - w) // 2
        canvas = np.zeros((n, self.size + 2 * margin, self.size + 2 * margin))
        canvas[:, margin + top : margin + top + h, margin + left : margin + left + w] = images

        path = self.path()
        ref = np.log(self._shifted(canvas, margin, *path[0]) + self.log_offset)
        rows: list[tuple[np.ndarray, ...]] = []  # per step: image, y, x, count, polarity
        for g in range(self.steps):
            level = np.log(self._shifted(canvas, margin, *path[g + 1]) + self.log_offset)
            change = level - ref
            # The tiny tolerance keeps exact multiples of the threshold (a pixel returning to the
            # level it left) from losing an event to floating-point rounding.
            count = np.floor(np.abs(change) / self.threshold + 1e-9).astype(np.int64)
            ref += np.sign(change) * count * self.threshold
            b, y, x = np.nonzero(count)
            rows.append(
                (
                    np.full(len(b), g, np.int16),
                    b.astype(np.int32),
                    y.astype(np.int16),
                    x.astype(np.int16),
                    count[b, y, x],
                    change[b, y, x] > 0,
                )
            )
        g, b, y, x, c, on = (np.concatenate(parts) for parts in zip(*rows, strict=True))
        order = np.argsort(b, kind="stable")  # rows grouped by image, in step order within each
        g, b, y, x, c, on = (v[order] for v in (g, b, y, x, c, on))

        bounds = (np.arange(self.steps + 1) * self.duration_us) // self.steps  # integer µs per step
        ends = np.searchsorted(b, np.arange(n), side="right")
        out = []
        start = 0
        for i in range(n):
            s = slice(start, ends[i])
            start = ends[i]
            # One entry per event; k numbers the events a pixel emits within one step.
            k = _ranks(c[s])
            gi, xi, yi, oi, ci = (np.repeat(v[s], c[s]) for v in (g, x, y, on, c))
            u = np.random.default_rng([self.seed, int(ids[i])]).random(len(k))
            lo, hi = bounds[gi], bounds[gi.astype(np.int64) + 1]
            t = lo + np.floor((k + u) / ci * (hi - lo)).astype(np.int64)
            t = np.minimum(t, hi - 1)  # (k + u) / c can round up to 1
            o = np.argsort(t, kind="stable")
            out.append({"t": t[o], "x": xi[o], "y": yi[o], "p": oi[o].astype(np.uint8)})
        return out

    def _shifted(self, canvas: np.ndarray, margin: int, dx: float, dy: float) -> np.ndarray:
        """The ``size``×``size`` view of every image moved by ``(dx, dy)``: ``out[y, x] = img(y − dy,
        x − dx)``, bilinear between the four neighbouring pixels."""
        kx, ky = math.floor(dx), math.floor(dy)
        fx, fy = dx - kx, dy - ky
        n = self.size

        def crop(oy: int, ox: int) -> np.ndarray:
            y0, x0 = margin - ky - oy, margin - kx - ox
            return canvas[:, y0 : y0 + n, x0 : x0 + n]

        return (1 - fy) * ((1 - fx) * crop(0, 0) + fx * crop(0, 1)) + fy * (
            (1 - fx) * crop(1, 0) + fx * crop(1, 1)
        )


def _ranks(counts: np.ndarray) -> np.ndarray:
    """``[0, 1, …, c0−1, 0, 1, …, c1−1, …]``: each event's rank within its pixel's burst."""
    total = int(counts.sum())
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    return np.arange(total, dtype=np.int64) - starts


def simulate(image: np.ndarray, *, image_id: int = 0, **params: Any) -> dict[str, np.ndarray]:
    """The events of one image ``[H, W]`` (``params`` as in :class:`EventSimulator`)."""
    return EventSimulator(**params)(np.asarray(image)[None], [image_id])[0]
