"""A comparison of distillers: one row per distiller, mean ± sample sd over seeds of the test accuracy
(selected on validation, last epoch, the papers' best over epochs), per-timestep accuracy and wall time,
and the figures measured beyond top-1 where the runs have them (firing rate, SynOps, energy per sample,
robust accuracy; a run's evaluation.json over its summary.json).

Written into the sweep folder as comparison.md, comparison.csv and comparison.png / .pdf and attached to the
sweep's parent MLflow run. ``python -m seal_exp.compare`` runs the sweep and calls ``report``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from seal_exp import figures
from seal_exp.config import CONF_DIR
from seal_exp.results.tables import (
    column_title,
    markdown_table,
    measured_columns,
    measured_note,
    measured_stat,
    metric_stats,
    num,
    pm,
    write_csv_table,
)
from seal_exp.run.files import read_results
from seal_exp.tracking import attach, parent_run


class ReportError(ValueError):
    """A folder that holds no sweep to tabulate; ``python -m seal_exp.compare`` exits 2 with it."""


ARTIFACTS = ("comparison.md", "comparison.csv", "comparison.png", "comparison.pdf")
ACCURACIES = ("test_acc", "test_acc_last", "best_test_acc_over_epochs")
COMPARED_MEASURES = ("firing_rate", "synops", "energy_uj")  # and every robust_acc_<attack>_eps<ε>


def distiller_options() -> list[str]:
    """Every distiller the configs define (the config group is the registry)."""
    return sorted(p.stem for p in (CONF_DIR / "distiller").glob("*.yaml"))


def _distiller_of(job: Path) -> str:
    return str(OmegaConf.load(job / ".hydra" / "hydra.yaml").hydra.runtime.choices["distiller"])


def collect(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per finished job of the sweep: its distiller option, seed and results (summary.json with
    evaluation.json over it)."""
    rows = []
    for summary_path in sorted(sweep_dir.glob("*/summary.json")):
        job = summary_path.parent
        rows.append({"job": job.name, "distiller_option": _distiller_of(job), **(read_results(job) or {})})
    return rows


def unfinished(sweep_dir: Path) -> dict[str, list[str]]:
    """Jobs that started but left no summary (crashed, killed or still running), by distiller."""
    missing: dict[str, list[str]] = {}
    for config in sorted(sweep_dir.glob("*/.hydra/hydra.yaml")):
        job = config.parent.parent
        if not (job / "summary.json").is_file():
            missing.setdefault(_distiller_of(job), []).append(job.name)
    return missing


def aggregate(rows: Sequence[dict[str, Any]], order: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Per distiller: seeds, mean ± sd of each accuracy, per-timestep means, mean wall time, and mean ± sd
    of each measured figure some of its runs have (listed under ``measured``; absent ones are left out)."""
    names = list(order) if order else sorted({r["distiller_option"] for r in rows})
    table = []
    for name in names:
        runs = sorted((r for r in rows if r["distiller_option"] == name), key=lambda r: r["seed"])
        if not runs:
            continue
        entry: dict[str, Any] = {"distiller": name, "seeds": [r["seed"] for r in runs], "n": len(runs)}
        for key, stats in metric_stats(runs, (*ACCURACIES, "student_wall_s")).items():
            entry[key], entry[f"{key}_sd"] = stats
        entry["measured"] = measured_columns(runs, COMPARED_MEASURES)
        for key, stats in metric_stats(runs, entry["measured"]).items():
            entry[key], entry[f"{key}_sd"] = stats
        entry["per_seed_test_acc"] = [float(r["test_acc"]) for r in runs]
        per_t = [r["per_timestep_test_acc"] for r in runs]
        entry["per_timestep_test_acc"] = [statistics.fmean(col) for col in zip(*per_t, strict=True)]
        teachers = [r["teacher_test_acc"] for r in runs if r.get("teacher_test_acc") is not None]
        entry["teacher_test_acc"] = statistics.fmean(teachers) if teachers else None
        table.append(entry)
    return table


def measured_in(table: Sequence[dict[str, Any]]) -> list[str]:
    """The measured columns of the table: those at least one distiller has, in the tables' order."""
    return measured_columns(({k: e[k] for k in e.get("measured", ())} for e in table), COMPARED_MEASURES)


def markdown(table: Sequence[dict[str, Any]], context: str) -> str:
    """The table in Markdown, after one line of context (dataset, T, epochs, how many jobs finished)."""
    header = [
        "distiller",
        "seeds",
        "test acc (selected on val)",
        "last epoch",
        "best test over epochs (papers')",
        "per-timestep test acc",
        "teacher",
        "student s",
    ]
    measured = measured_in(table)
    header += [column_title(k) for k in measured]
    rows = [
        [
            e["distiller"],
            ",".join(map(str, e["seeds"])),
            *(pm(e[k], e[f"{k}_sd"]) for k in ACCURACIES),
            " / ".join(f"{a:.1f}" for a in e["per_timestep_test_acc"]),
            num(e["teacher_test_acc"]),
            num(None if math.isnan(e["student_wall_s"]) else e["student_wall_s"], 0),
            *(measured_stat(k, e[k], e[f"{k}_sd"]) if k in e["measured"] else "–" for k in measured),
        ]
        for e in table
    ]
    lines = [f"Test accuracy (%), mean ± sample sd over seeds. {context}", "", *markdown_table(header, rows)]
    lines += [
        "",
        "`test acc (selected on val)`: the epoch with the best validation accuracy (the platform's figure); "
        "`best test over epochs`: the papers' optimistic selection, for comparison with published tables; "
        "`student s`: the student's training and testing time per run (the shared teacher's is left out)."
        + (f" {measured_note(measured)}" if measured else ""),
    ]
    return "\n".join(lines) + "\n"


def write_csv(path: Path, table: Sequence[dict[str, Any]]) -> None:
    """The table with unrounded numbers and per-seed accuracies, for plotting or statistics elsewhere."""
    header = [
        "distiller",
        "n",
        "seeds",
        "test_acc_mean",
        "test_acc_sd",
        "test_acc_last_mean",
        "test_acc_last_sd",
        "best_test_acc_over_epochs_mean",
        "best_test_acc_over_epochs_sd",
        "per_timestep_test_acc",
        "per_seed_test_acc",
        "teacher_test_acc",
        "student_wall_s_mean",
    ]
    measured = measured_in(table)
    header += [f"{k}_{stat}" for k in measured for stat in ("mean", "sd")]
    rows = [
        [
            e["distiller"],
            e["n"],
            " ".join(map(str, e["seeds"])),
            e["test_acc"],
            e["test_acc_sd"],
            e["test_acc_last"],
            e["test_acc_last_sd"],
            e["best_test_acc_over_epochs"],
            e["best_test_acc_over_epochs_sd"],
            " ".join(f"{a:.4g}" for a in e["per_timestep_test_acc"]),
            " ".join(f"{a:.4g}" for a in e["per_seed_test_acc"]),
            e["teacher_test_acc"],
            e["student_wall_s"],
            *(e.get(k if stat == "mean" else f"{k}_sd") for k in measured for stat in ("mean", "sd")),
        ]
        for e in table
    ]
    write_csv_table(path, header, rows)


def plot(path: Path, table: Sequence[dict[str, Any]], title: str) -> list[Path]:
    """Mean test accuracy with its seed spread (left) and accuracy per timestep (right), PNG and PDF."""
    with figures.style() as plt:
        fig, (left, right) = plt.subplots(1, 2, figsize=(8.5, 3.4))
        names = [e["distiller"] for e in table]
        means = [e["test_acc"] for e in table]
        sds = [0.0 if math.isnan(e["test_acc_sd"]) else e["test_acc_sd"] for e in table]
        left.bar(names, means, yerr=sds, capsize=3, color="#9ecae1", label="mean ± sd over seeds")
        for i, e in enumerate(table):
            seeds = e["per_seed_test_acc"]
            left.plot([i] * len(seeds), seeds, "k.", ms=4, label="one seed" if i == 0 else None)
        figures.accuracy_axis(left, "test accuracy (%), selected on validation")
        left.tick_params(axis="x", rotation=45)
        figures.legend_below(left, ncol=2)
        colours = plt.get_cmap("tab20").colors  # one colour per distiller (the default cycle has ten)
        for i, e in enumerate(table):
            steps = range(1, len(e["per_timestep_test_acc"]) + 1)
            right.plot(
                steps,
                e["per_timestep_test_acc"],
                "os^vD"[i % 5] + "-",
                ms=3,
                color=colours[(2 * i) % 20 + (2 * i) // 20 % 2],
                label=e["distiller"],
            )
            right.set_xticks(list(steps))
        right.set_xlabel("timestep t")
        figures.accuracy_axis(right, "test accuracy of timestep t alone (%)")
        figures.legend_below(right, ncol=4)
        fig.suptitle(title)
        return figures.save(fig, path)


def report(sweep_dir: Path, order: Sequence[str] | None = None, expected: int | None = None) -> str:
    """Tabulate a finished (or partly finished) sweep; write the files; attach them to the parent run."""
    if not sweep_dir.is_dir():
        problem = "not a folder" if sweep_dir.exists() else "no such folder"
        raise ReportError(f"{sweep_dir}: {problem}; pass the sweep folder the comparison printed")
    rows = collect(sweep_dir)
    if not rows:
        raise ReportError(f"no finished job (no */summary.json) under {sweep_dir}")
    table = aggregate(rows, order)
    first = rows[0]
    context = (
        f"Dataset {first['dataset']}, T={first['T']}, {_epochs(first['epochs'])}; "
        f"{len(rows)} finished job(s)" + (f" of {expected}" if expected else "") + f"; sweep {sweep_dir}."
    )
    text = markdown(table, context)
    missing = unfinished(sweep_dir)
    if missing:
        text += (
            "\nDid not finish (see each job's train.log): "
            + "; ".join(f"{name} (job {', '.join(jobs)})" for name, jobs in missing.items())
            + ".\n"
        )
    (sweep_dir / "comparison.md").write_text(text)
    write_csv(sweep_dir / "comparison.csv", table)
    plot(
        sweep_dir / "comparison.png", table, f"{first['dataset']}, T={first['T']}, {_epochs(first['epochs'])}"
    )
    _attach(sweep_dir)
    return text


def _attach(sweep_dir: Path) -> None:
    """Attach the comparison files to the sweep's parent MLflow run (if the sweep was tracked)."""
    parent = parent_run(sweep_dir)
    if parent is not None:
        attach(*parent, [sweep_dir / name for name in ARTIFACTS], "comparison", "the comparison")


def _epochs(n: int) -> str:
    return f"{n} epoch" if int(n) == 1 else f"{n} epochs"
