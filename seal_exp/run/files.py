"""The files a training run leaves in its folder: summary.json, epochs.csv, the accuracy-per-timestep plot
and the training curves (each plot as PNG and PDF).

The sweep report and the comparison (:mod:`seal_exp.results`) read them back.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from seal_exp import figures


def write_summary(path: Path, summary: dict[str, Any]) -> Path:
    """The run's final numbers as JSON: what reports, comparisons and relaunches read back."""
    path.write_text(json.dumps(summary, indent=2, sort_keys=False) + "\n")
    return path


def read_summary(path: Path) -> dict[str, Any]:
    """A ``summary.json`` as ``write_summary`` left it."""
    return json.loads(path.read_text())


EVALUATION = "evaluation.json"  # written by ``python -m seal_exp.evaluate`` beside summary.json


def with_evaluation(summary: dict[str, Any], evaluation: dict[str, Any] | None) -> dict[str, Any]:
    """A run's results: its summary, with the figures of a later evaluation (``evaluation.json``) over
    those measured after training, so tables quote the latest measurement."""
    if not evaluation:
        return summary
    keys = [k for k in evaluation if k in MEASURED or k.startswith(ROBUST_PREFIX)]
    return summary | {k: evaluation[k] for k in keys}


# The flat figures a measurement adds to summary.json / evaluation.json (seal_exp.measures.evaluation).
MEASURED = (
    "firing_rate",
    "synops",
    "macs",
    "energy_uj",
    "teacher_macs",
    "teacher_energy_uj",
    "energy_ratio",
    "test_acc_at_timesteps",
    "robust_attack",
    "robust_acc",
)
ROBUST_PREFIX = "robust_acc_"  # robust_acc_<attack>_eps<ε>: one flat figure per attack and budget


def read_results(job: Path) -> dict[str, Any] | None:
    """``summary.json`` of a finished job folder with its ``evaluation.json`` over it; None: unfinished."""
    if not (job / "summary.json").is_file():
        return None
    evaluation = job / EVALUATION
    return with_evaluation(
        read_summary(job / "summary.json"), read_summary(evaluation) if evaluation.is_file() else None
    )


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
) -> list[Path]:
    """Accuracy of each timestep alone and of the mean of the first t timesteps (accuracy vs latency),
    as PNG and PDF."""
    steps = list(range(1, len(per_timestep) + 1))
    with figures.style() as plt:
        fig, ax = plt.subplots(figsize=(4.2, 3.2))
        ax.bar(steps, per_timestep, width=0.6, color="#9ecae1", label="timestep t alone")
        ax.plot(steps, prefix_mean, "o-", color="#08519c", label="mean of the first t timesteps")
        if teacher_acc is not None:
            ax.axhline(teacher_acc, color="#a50f15", ls="--", lw=1, label=f"ANN teacher ({teacher_acc:.2f}%)")
        figures.accuracy_axis(ax)
        ax.set_xticks(steps)
        ax.set_xlabel("timestep t")
        ax.set_title(title)
        figures.legend_below(ax, ncol=2)
        return figures.save(fig, path)


def plot_training_curves(path: Path, history: Sequence[dict[str, float]], title: str) -> list[Path]:
    """Every training loss term (left) and the train / validation / test accuracy (right) over epochs,
    as PNG and PDF."""
    epochs = [int(row["epoch"]) for row in history]
    terms = [k for k in history[0] if k.startswith("train/") and k not in ("train/acc", "train/loss")]
    with figures.style() as plt:
        fig, (losses, accuracies) = plt.subplots(1, 2, figsize=(7.5, 3.0))
        for key in terms:
            losses.plot(
                epochs, [row.get(key, math.nan) for row in history], "o-", ms=3, label=key[len("train/") :]
            )
        losses.set_xlabel("epoch")
        values = [row[k] for row in history for k in terms if math.isfinite(row.get(k, math.nan))]
        if values and min(values) > 0 and max(values) > 20 * min(values):  # terms of other magnitudes
            losses.set_yscale("log")
            losses.set_ylabel("training loss term (log scale)")
        else:
            losses.set_ylabel("training loss term")
            losses.set_ylim(bottom=min(0.0, *values))
        for key, label in (("train/acc", "train"), ("val/acc", "validation"), ("test/acc", "test")):
            if any(key in row for row in history):
                accuracies.plot(epochs, [row.get(key, math.nan) for row in history], "o-", ms=3, label=label)
        figures.accuracy_axis(accuracies, "accuracy (%)")
        accuracies.set_xlabel("epoch")
        for ax in (losses, accuracies):
            ax.set_xticks(epochs if len(epochs) <= 12 else ax.get_xticks())
            figures.legend_below(ax, ncol=3)
        fig.suptitle(title)
        return figures.save(fig, path)
