"""One style for every figure the platform draws (a run's plots, a sweep's heatmaps, a comparison):
each written as PDF (vector, for a paper) and PNG (200 dpi, for a screen), legends outside the data, axis
labels in the papers' notation (:mod:`seal_exp.notation`).

Accuracy axes: bars and curves over training run from 0 to 100 %, so a gap shows at its true scale. Axes
that compare finished students (per timestep, per method, against energy) are zoomed instead: SNN
results differ by tenths of a point (95.8 vs 96.8 vs a 97.6 teacher), which a 0–100 axis flattens. A
zoomed axis says so on the figure (a break mark on the axis, "axis from 95.5 %, not 0" under its label),
shows 0.5 points as at least ``MIN_GAP_FRACTION`` of its height, and leaves out values far below the
rest, which the figure then shows in an overview panel from 0 (:func:`zoom_accuracy_axis`)."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DPI = 200
FORMATS = ("png", "pdf")
STYLE = {
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "savefig.bbox": "tight",
    "pdf.fonttype": 42,  # TrueType in the PDF: text stays text, editable in a paper's figure
}
ACCURACY_LABEL = "test accuracy (%)"
# Drawing logs through the root logger, at INFO, what no one reading a run's log needs: fontTools one line
# per PDF font it subsets (hundreds per run), matplotlib and Pillow their font and plugin lookups.
QUIET_LOGGERS = ("fontTools", "matplotlib", "PIL")
VISIBLE_GAP = 0.5  # accuracy points a zoomed axis must show apart: the margins SNN papers report
MIN_GAP_FRACTION = 0.05  # ... as at least this share of the axis height
ZOOM_SPAN = VISIBLE_GAP / MIN_GAP_FRACTION  # so a zoomed axis spans at most 10 points
ZOOM_MIN_SPAN = 2.0  # and at least 2 points, so that equal values do not look like noise


@contextmanager
def style() -> Iterator[Any]:
    """``matplotlib.pyplot`` (headless) with the platform's style, for the figures drawn inside."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)

    with plt.rc_context(STYLE):
        yield plt


def save(fig: Any, path: Path) -> list[Path]:
    """Write ``fig`` as ``<path>.png`` and ``<path>.pdf`` (``path`` with either suffix, or none), then
    close it; the files written."""
    import matplotlib.pyplot as plt

    written = []
    for fmt in FORMATS:
        target = path.with_suffix(f".{fmt}")
        fig.savefig(target, dpi=DPI)
        written.append(target)
    plt.close(fig)
    return written


def accuracy_axis(ax: Any, label: str = ACCURACY_LABEL) -> None:
    """An accuracy axis from 0 to 100 %: for bars and curves over training, gaps at their true scale."""
    ax.set_ylim(0, 100)
    ax.set_ylabel(label)


@dataclass(frozen=True)
class AccuracyZoom:
    """The y range of a zoomed accuracy axis and the values it leaves out (below ``low``)."""

    low: float
    high: float
    below: tuple[float, ...]

    @property
    def from_zero(self) -> bool:
        return self.low <= 0.0


def accuracy_zoom(values: Iterable[float], keep_all: bool = False) -> AccuracyZoom:
    """The range around the highest values on which ``VISIBLE_GAP`` points show: the values within
    0.7 ``ZOOM_SPAN`` of the best one, padded by a tenth of their spread (at least a quarter
    point), at least ``ZOOM_MIN_SPAN`` wide, within 0–100 and on half points. ``keep_all``: around every
    value instead (a scatter whose every point must be on the axis), however wide."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite:
        return AccuracyZoom(0.0, 100.0, ())
    top = max(finite)
    reach = math.inf if keep_all else 0.7 * ZOOM_SPAN  # padded and rounded: at most ZOOM_SPAN
    near = [v for v in finite if v >= top - reach]
    pad = max(0.25, 0.1 * (top - min(near)))
    low, high = min(near) - pad, top + pad
    if high - low < ZOOM_MIN_SPAN:
        middle = (low + high) / 2
        low, high = middle - ZOOM_MIN_SPAN / 2, middle + ZOOM_MIN_SPAN / 2
    high = min(100.0, math.ceil(high * 2) / 2)
    low = max(0.0, math.floor(min(low, high - ZOOM_MIN_SPAN) * 2) / 2)
    return AccuracyZoom(low, high, tuple(v for v in finite if v < low))


def zoom_accuracy_axis(
    ax: Any, values: Iterable[float], label: str = ACCURACY_LABEL, keep_all: bool = False
) -> AccuracyZoom:
    """A y axis zoomed on the accuracies drawn on it (:func:`accuracy_zoom`), light grid lines to read
    half points against, and, unless it starts at 0, a break mark at its foot and "axis from X %, not 0"
    under its label. The caller shows ``below`` (values left out) in an overview from 0."""
    from matplotlib.ticker import MaxNLocator

    zoom = accuracy_zoom(values, keep_all)
    ax.set_ylim(zoom.low, zoom.high)
    ax.yaxis.set_major_locator(MaxNLocator(nbins=6, steps=[1, 2, 2.5, 5, 10]))
    ax.grid(axis="y", color="0.85", linewidth=0.5)
    ax.set_axisbelow(True)
    if zoom.from_zero:
        ax.set_ylabel(label)
        return zoom
    ax.set_ylabel(f"{label}\n{zoom_note(zoom.low)}")
    mark = {"transform": ax.transAxes, "color": "black", "linewidth": 0.8, "clip_on": False}
    for dy in (0.0, 0.025):  # two short slanted strokes across the foot of the axis: the axis is broken
        ax.plot([-0.018, 0.018], [0.01 + dy, 0.035 + dy], gid="axis-break", **mark)
    return zoom


def mark_below(ax: Any, zoom: AccuracyZoom, points: Iterable[tuple[float, float, Any]]) -> None:
    """Points ``(x, accuracy, colour)`` below a zoomed axis: a small down-pointing marker at its foot with
    the value, so nothing drawn is silently cut off (the overview panel shows them at scale)."""
    said: dict[float, list[str]] = {}
    for x, y, colour in points:
        if y >= zoom.low:
            continue
        ax.plot([x], [zoom.low], "v", ms=5, color=colour, clip_on=False, gid="below-axis")
        if f"{y:.1f}" not in said.setdefault(x, []):
            said[x].append(f"{y:.1f}")
    for x, texts in said.items():
        ax.annotate(
            "↓" + " / ".join(texts),
            (x, zoom.low),
            xytext=(0, 5),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize=7,
            gid="below-axis",
        )


def zoom_note(low: float) -> str:
    """What a zoomed accuracy axis says about itself."""
    return f"axis from {low:g} %, not 0"


def legend_above(ax: Any, ncol: int = 3) -> None:
    """The legend over the axes, where it covers no data: for axes whose long tick labels fill the space
    under them."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=ncol, frameon=False)


def legend_below(ax: Any, ncol: int = 3, **options: Any) -> None:
    """The legend under the axes, where it covers no data (``options``: more of ``ax.legend``'s)."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(
            handles,
            labels,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.22),
            ncol=ncol,
            frameon=False,
            **options,
        )
