"""The files a training run leaves in its folder: summary.json, epochs.csv, the accuracy-per-timestep plot
and the training curves (each plot as PNG and PDF).

The sweep report and the comparison (:mod:`seal_exp.results`) read them back.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from seal_exp import figures


def write_summary(path: Path, summary: dict[str, Any]) -> Path:
    """The run's final numbers as JSON: what reports, comparisons and relaunches read back.

    Written beside it, then renamed into place: a job stopped while writing it leaves the earlier file
    or none, never half of one (the file gets the mode ``open()`` gives, as any other the run writes)."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        partial.write_text(json.dumps(summary, indent=2, sort_keys=False) + "\n")
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
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
ROBUST_CLEAN = "_clean"  # robust_acc_<attack>_clean: clean accuracy on the samples that attack measured


class UnreadableResults(ValueError):
    """A job's ``summary.json`` or ``evaluation.json`` that is not a JSON object (cut short while written,
    edited by hand); the message names the file and what to do. Reports list the job as unreadable."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(
            f"{path}: not a JSON object ({reason}); restore it from the job's MLflow run (its artifacts), "
            f"or delete it and train the job again"
        )
        self.path = path


def read_results(job: Path) -> dict[str, Any] | None:
    """``summary.json`` of a finished job folder with its ``evaluation.json`` over it; None: unfinished.
    Raises :class:`UnreadableResults` for a file that is not a JSON object."""
    if not (job / "summary.json").is_file():
        return None
    evaluation = job / EVALUATION
    return with_evaluation(
        _json_object(job / "summary.json"), _json_object(evaluation) if evaluation.is_file() else None
    )


def _json_object(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise UnreadableResults(path, " ".join(str(exc).split())[:120]) from None
    if not isinstance(data, dict):
        raise UnreadableResults(path, f"a JSON {type(data).__name__}")
    return data


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
    as PNG and PDF.

    The axis is zoomed on the values (:func:`seal_exp.figures.zoom_accuracy_axis`), so half a point between
    timesteps or to the teacher shows; points, not bars, since bars on an axis that does not start at 0
    would draw false ratios. A value far below the rest (timestep 1 alone, often) is shown in a second
    panel, the whole range from 0.
    """
    steps = list(range(1, len(per_timestep) + 1))
    values = [*per_timestep, *prefix_mean, *([teacher_acc] if teacher_acc is not None else [])]
    zoom = figures.accuracy_zoom(values)
    with figures.style() as plt:
        panels = 2 if zoom.below else 1
        fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.2), squeeze=False, layout="constrained")
        for ax in axes[0]:
            whole = ax is not axes[0][0]  # the overview: from 0, nothing clipped
            ax.plot(steps, per_timestep, "s", ms=5, color=ALONE, label="timestep t alone", clip_on=not whole)
            prefix = {"color": PREFIX, "label": "mean of the first t timesteps", "clip_on": not whole}
            ax.plot(steps, prefix_mean, "o-", ms=4, **prefix)
            if teacher_acc is not None:
                ax.axhline(
                    teacher_acc, color="#a50f15", ls="--", lw=1, label=f"ANN teacher ({teacher_acc:.2f}%)"
                )
            ax.set_xticks(steps)
            ax.set_xlabel("timestep t")
            ax.margins(x=0.12)
        figures.zoom_accuracy_axis(axes[0][0], values)
        below = [(t, a, ALONE) for t, a in zip(steps, per_timestep, strict=True)]
        below += [(t, a, PREFIX) for t, a in zip(steps, prefix_mean, strict=True)]
        figures.mark_below(axes[0][0], zoom, below)
        if zoom.below:
            figures.accuracy_axis(axes[0][1])
            axes[0][0].set_title("zoomed on the highest values")
            axes[0][1].set_title("the whole range, from 0")
        fig.suptitle(title)
        figures.legend_below(axes[0][0], ncol=1 if zoom.below else 2)
        return figures.save(fig, path)


ALONE, PREFIX = "#3182bd", "#08519c"  # the per-timestep figure's two series


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
