"""One style for every figure the platform draws (a run's plots, a sweep's heatmaps, a comparison):
each written as PDF (vector, for a paper) and PNG (200 dpi, for a screen), accuracy axes from 0, legends
outside the data, axis labels in the papers' notation (:mod:`seal_exp.notation`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
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


@contextmanager
def style() -> Iterator[Any]:
    """``matplotlib.pyplot`` (headless) with the platform's style, for the figures drawn inside."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    """An accuracy axis from 0 to 100 %: gaps between methods at their true scale."""
    ax.set_ylim(0, 100)
    ax.set_ylabel(label)


def legend_below(ax: Any, ncol: int = 3) -> None:
    """The legend under the axes, where it covers no data."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=ncol, frameon=False)
