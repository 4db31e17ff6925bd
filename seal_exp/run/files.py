"""The files a training run leaves in its folder: summary.json, epochs.csv and the accuracy-per-timestep plot.

The sweep report and the comparison (:mod:`seal_exp.results`) read them back.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def write_summary(path: Path, summary: dict[str, Any]) -> Path:
    """The run's final numbers as JSON: what reports, comparisons and relaunches read back."""
    path.write_text(json.dumps(summary, indent=2, sort_keys=False) + "\n")
    return path


def read_summary(path: Path) -> dict[str, Any]:
    """A ``summary.json`` as ``write_summary`` left it."""
    return json.loads(path.read_text())


def write_epochs_csv(path: Path, history: Sequence[dict[str, float]]) -> Path:
    """One row per epoch with every logged metric: the boring table next to the richer tracker."""
    columns: list[str] = []
    for row in history:
        columns += [k for k in row if k not in columns]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(history)
    return path


def plot_accuracy_per_timestep(
    path: Path,
    per_timestep: Sequence[float],
    prefix_mean: Sequence[float],
    teacher_acc: float | None,
    title: str,
) -> Path:
    """Accuracy of each timestep alone and of the mean of the first t timesteps (accuracy vs latency)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = list(range(1, len(per_timestep) + 1))
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=120)
    ax.bar(steps, per_timestep, width=0.6, color="#9ecae1", label="timestep t alone")
    ax.plot(steps, prefix_mean, "o-", color="#08519c", label="mean of the first t steps")
    if teacher_acc is not None:
        ax.axhline(teacher_acc, color="#a50f15", ls="--", lw=1, label=f"ANN teacher ({teacher_acc:.2f}%)")
    low = min([*per_timestep, *prefix_mean, *([teacher_acc] if teacher_acc is not None else [])])
    ax.set_ylim(max(0.0, math.floor(low / 5) * 5 - 5), 100)
    ax.set_xticks(steps)
    ax.set_xlabel("timestep t")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
