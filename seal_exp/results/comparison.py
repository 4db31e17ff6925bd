"""A comparison of distillers: one row per distiller and combination of whatever else the sweep varied
(α, β, T, …; only seeds are averaged), mean ± sample sd over seeds of the test accuracy (selected on
validation, last epoch, the papers' best over epochs), per-timestep accuracy and wall time, and the figures
measured beyond top-1 where the runs have them (firing rate, SynOps, energy per sample, robust accuracy; a
run's evaluation.json over its summary.json).

Written into the sweep folder as comparison.md, comparison.csv and comparison.png / .pdf and attached to the
sweep's parent MLflow run. ``python -m seal_exp.compare`` runs the sweep and calls ``report``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from seal_exp import figures
from seal_exp.config import CONF_DIR
from seal_exp.notation import SMOKE, display_key
from seal_exp.results.sweep_report import SEED, SMOKE_NOTE, parse_overrides, read_overrides
from seal_exp.results.sweep_report import ReportError as SweepReportError
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
from seal_exp.run.files import UnreadableResults, read_results
from seal_exp.tracking import attach, parent_run


class ReportError(ValueError):
    """A folder that holds no sweep to tabulate; ``python -m seal_exp.compare`` exits 2 with it."""


ARTIFACTS = ("comparison.md", "comparison.csv", "comparison.png", "comparison.pdf")
ACCURACIES = ("test_acc", "test_acc_last", "best_test_acc_over_epochs")
COMPARED_MEASURES = ("firing_rate", "synops", "energy_uj")  # and every robust_acc_<attack>_eps<ε>
METHOD = "distiller"  # the override that picks the method: its own column, never a setting
FACTS = {"dataset": "dataset", "T": "neuron.T", "epochs": "trainer.epochs"}  # summary key → its override


def distiller_options() -> list[str]:
    """Every distiller the configs define (the config group is the registry)."""
    return sorted(p.stem for p in (CONF_DIR / "distiller").glob("*.yaml"))


def _distiller_of(job: Path) -> str:
    """The job's distiller option (Hydra's choice), else its ``distiller=`` override, else "?"."""
    try:
        choices = OmegaConf.load(job / ".hydra" / "hydra.yaml").hydra.runtime.choices
        return str(choices["distiller"])
    except Exception:  # no or a damaged hydra.yaml: the override, when the job was given one
        overrides = job / ".hydra" / "overrides.yaml"
        given = parse_overrides(read_overrides(overrides)) if overrides.is_file() else {}
        return given.get(METHOD, "?")


def collect(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per job folder of the sweep that finished or tried to: its distiller option, its overrides
    (``overrides``), and its results (summary.json with evaluation.json over it), or, for a job whose
    results are not JSON, ``unreadable`` saying which file and what to do."""
    rows = []
    for summary_path in sorted(sweep_dir.glob("*/summary.json"), key=lambda p: _natural(p.parent.name)):
        job = summary_path.parent
        overrides = job / ".hydra" / "overrides.yaml"
        row: dict[str, Any] = {
            "job": job.name,
            "distiller_option": _distiller_of(job),
            "overrides": parse_overrides(read_overrides(overrides)) if overrides.is_file() else {},
        }
        try:
            row |= read_results(job) or {}
        except UnreadableResults as exc:
            row["unreadable"] = str(exc)
        rows.append(row)
    return rows


def unfinished(sweep_dir: Path) -> dict[str, list[str]]:
    """Jobs that started but left no summary (crashed, killed or still running), by distiller."""
    missing: dict[str, list[str]] = {}
    for config in sorted(sweep_dir.glob("*/.hydra/hydra.yaml")):
        job = config.parent.parent
        if not (job / "summary.json").is_file():
            missing.setdefault(_distiller_of(job), []).append(job.name)
    return missing


def setting_keys(rows: Sequence[dict[str, Any]]) -> list[str]:
    """What the sweep varied besides the method and the seed: every override whose value differs between
    jobs (command-line order), then each of the summary's dataset, T and epochs that differs between the
    finished jobs without an override saying so (a preset, say). Rows are grouped by all of them."""
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row.get("overrides", {}) if k not in keys]
    swept = [
        k for k in keys if k not in (METHOD, SEED) and len({r.get("overrides", {}).get(k) for r in rows}) > 1
    ]
    done = [r for r in rows if "unreadable" not in r]
    for fact, override in FACTS.items():
        if override not in swept and len({str(r.get(fact)) for r in done}) > 1:
            swept.append(fact)
    return swept


def setting_of(row: dict[str, Any], key: str) -> str | None:
    """A row's value of a setting: its override, or (dataset, T, epochs) its summary's."""
    if key in FACTS:
        return None if row.get(key) is None else str(row[key])
    return row.get("overrides", {}).get(key)


def aggregate(
    rows: Sequence[dict[str, Any]], order: Sequence[str] | None = None, keys: Sequence[str] = ()
) -> list[dict[str, Any]]:
    """Per distiller and combination of the other swept settings (``keys``): seeds, mean ± sd of each
    accuracy, per-timestep means, mean wall time, and mean ± sd of each measured figure some of its runs
    have (listed under ``measured``; absent ones are left out). The seeds are the only thing averaged."""
    done = [r for r in rows if "unreadable" not in r]
    methods = list(order) if order else sorted({r["distiller_option"] for r in done})
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in done:
        groups.setdefault((r["distiller_option"], *(setting_of(r, k) for k in keys)), []).append(r)
    rank = {m: i for i, m in enumerate(methods)}
    table = []
    for combo in sorted(groups, key=lambda c: (rank.get(c[0], len(rank)), c[0], [_order(v) for v in c[1:]])):
        if combo[0] not in rank:
            continue
        runs = sorted(groups[combo], key=lambda r: r["seed"])
        entry: dict[str, Any] = {
            "distiller": combo[0],
            "settings": dict(zip(keys, combo[1:], strict=True)),
            "seeds": [r["seed"] for r in runs],
            "n": len(runs),
            "smoke": any(r.get("smoke") for r in runs),
        }
        for key, stats in metric_stats(runs, (*ACCURACIES, "student_wall_s")).items():
            entry[key], entry[f"{key}_sd"] = stats
        entry["measured"] = measured_columns(runs, COMPARED_MEASURES)
        for key, stats in metric_stats(runs, entry["measured"]).items():
            entry[key], entry[f"{key}_sd"] = stats
        entry["per_seed_test_acc"] = [float(r["test_acc"]) for r in runs]
        entry["per_timestep_test_acc"] = _per_timestep_means(
            [r.get("per_timestep_test_acc") or [] for r in runs]
        )
        teachers = [r["teacher_test_acc"] for r in runs if r.get("teacher_test_acc") is not None]
        entry["teacher_test_acc"] = statistics.fmean(teachers) if teachers else None
        table.append(entry)
    return table


def _per_timestep_means(per_run: list[list[float]]) -> list[float]:
    """The mean accuracy of each timestep over runs; runs of one group share T (T is a grouping key when
    it varies), so a run of another length can only be one that recorded none: it is left out."""
    lengths = [len(p) for p in per_run if p]
    if not lengths:
        return []
    common = max(set(lengths), key=lengths.count)
    return [statistics.fmean(col) for col in zip(*(p for p in per_run if len(p) == common), strict=True)]


def label_of(entry: dict[str, Any]) -> str:
    """A row's name in a figure: the distiller and its settings in the papers' notation."""
    settings = " ".join(f"{display_key(k)}={'–' if v is None else v}" for k, v in entry["settings"].items())
    return f"{entry['distiller']} {settings}".strip()


def measured_in(table: Sequence[dict[str, Any]]) -> list[str]:
    """The measured columns of the table: those at least one distiller has, in the tables' order."""
    return measured_columns(({k: e[k] for k in e.get("measured", ())} for e in table), COMPARED_MEASURES)


def markdown(table: Sequence[dict[str, Any]], context: str) -> str:
    """The table in Markdown, after one line of context (what all rows share, how many jobs finished)."""
    keys = list(table[0]["settings"]) if table else []
    header = [
        "distiller",
        *keys,
        "n",
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
            *("–" if e["settings"][k] is None else e["settings"][k] for k in keys),
            str(e["n"]),
            ",".join(map(str, e["seeds"])),
            *(pm(e[k], e[f"{k}_sd"]) for k in ACCURACIES),
            " / ".join(f"{a:.1f}" for a in e["per_timestep_test_acc"]) or "–",
            num(e["teacher_test_acc"]),
            num(None if math.isnan(e["student_wall_s"]) else e["student_wall_s"], 0),
            *(measured_stat(k, e[k], e[f"{k}_sd"]) if k in e["measured"] else "–" for k in measured),
        ]
        for e in table
    ]
    lines = [f"Test accuracy (%), mean ± sample sd over seeds. {context}", "", *markdown_table(header, rows)]
    lines += [
        "",
        "One row per distiller and combination of the swept settings; `n`: its seeds, the only thing "
        "averaged (the sd is the sample sd, n − 1). "
        "`test acc (selected on val)`: the epoch with the best validation accuracy (the platform's figure); "
        "`best test over epochs`: the papers' optimistic selection, for comparison with published tables; "
        "`student s`: the student's training and testing time per run (the shared teacher's is left out)."
        + (f" {measured_note(measured)}" if measured else ""),
    ]
    return "\n".join(lines) + "\n"


def write_csv(path: Path, table: Sequence[dict[str, Any]]) -> None:
    """The table with unrounded numbers and per-seed accuracies, for plotting or statistics elsewhere."""
    keys = list(table[0]["settings"]) if table else []
    header = [
        "distiller",
        *keys,
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
            *("" if e["settings"][k] is None else e["settings"][k] for k in keys),
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
    """Mean test accuracy ± sd with each seed (left) and accuracy per timestep (right), PNG and PDF.

    Both accuracy axes are zoomed on the values (:func:`seal_exp.figures.zoom_accuracy_axis`), so half a
    point between rows shows, and say so; means are points with error bars, not bars, which would draw
    false ratios on an axis that does not start at 0. Values far below the rest are marked at the foot of
    the zoomed axes and drawn to scale in a second row, from 0.
    """
    names = [label_of(e) for e in table]
    means = [e["test_acc"] for e in table]
    sds = [0.0 if math.isnan(e["test_acc_sd"]) else e["test_acc_sd"] for e in table]
    left_values = [
        v for e, sd in zip(table, sds, strict=True) for v in (e["test_acc"] - sd, e["test_acc"] + sd)
    ]
    left_values += [a for e in table for a in e["per_seed_test_acc"]]
    right_values = [a for e in table for a in e["per_timestep_test_acc"]]
    zooms = (figures.accuracy_zoom(left_values), figures.accuracy_zoom(right_values))
    overview = any(z.below for z in zooms)
    with figures.style() as plt:
        colours = plt.get_cmap("tab20").colors  # one colour per row (the default cycle has ten)
        colour = [colours[(2 * i) % 20 + (2 * i) // 20 % 2] for i in range(len(table))]
        width = max(8.5, 2.0 + 0.45 * len(table) + 4.2)
        fig, axes = plt.subplots(
            2 if overview else 1,
            2,
            figsize=(width, 6.4 if overview else 3.6),
            squeeze=False,
            layout="constrained",
        )
        for row, (left, right) in enumerate(axes):
            zoomed = row == 0
            left.errorbar(
                range(len(table)),
                means,
                yerr=sds,
                fmt="D",
                ms=5,
                color="#3182bd",
                capsize=3,
                label="mean ± sd over seeds",
                clip_on=zoomed,  # the overview (from 0) clips nothing
            )
            for i, e in enumerate(table):
                seeds = e["per_seed_test_acc"]
                left.plot([i] * len(seeds), seeds, "k.", ms=4, label="one seed" if i == 0 else None)
            left.set_xticks(range(len(table)), names, rotation=45, ha="right")
            left.margins(x=0.5 / max(1, len(table)))
            for i, e in enumerate(table):
                steps = range(1, len(e["per_timestep_test_acc"]) + 1)
                right.plot(
                    steps,
                    e["per_timestep_test_acc"],
                    "os^vD"[i % 5] + "-",
                    ms=3,
                    color=colour[i],
                    label=names[i],
                    clip_on=zoomed,  # the overview (from 0) clips nothing
                )
            longest = max((len(e["per_timestep_test_acc"]) for e in table), default=1)
            right.set_xticks(list(range(1, longest + 1)))
            right.set_xlabel("timestep t")
            if zoomed:
                figures.zoom_accuracy_axis(left, left_values, "test accuracy (%), selected on validation")
                figures.zoom_accuracy_axis(right, right_values, "test accuracy of timestep t alone (%)")
                figures.mark_below(left, zooms[0], [(i, m, "#3182bd") for i, m in enumerate(means)])
                figures.mark_below(
                    right,
                    zooms[1],
                    [
                        (t + 1, a, colour[i])
                        for i, e in enumerate(table)
                        for t, a in enumerate(e["per_timestep_test_acc"])
                    ],
                )
                figures.legend_above(left, ncol=2)  # under it: the rows' names
                figures.legend_below(right, ncol=2 if len(table) > 6 else 1)
            else:
                figures.accuracy_axis(left, "test accuracy (%), selected on validation")
                figures.accuracy_axis(right, "test accuracy of timestep t alone (%)")
                left.set_title("the whole range, from 0")
                right.set_title("the whole range, from 0")
        fig.suptitle(title)
        return figures.save(fig, path)


def report(
    sweep_dir: Path,
    order: Sequence[str] | None = None,
    expected: int | None = None,
    warn: Callable[[str], None] | None = None,
) -> str:
    """Tabulate a finished (or partly finished) sweep; write the files; attach them to the parent run.

    Rows are grouped by the distiller and every other swept setting, so only seeds are averaged; the
    context line quotes only what all rows share (dataset, T, epochs). A job whose summary.json or
    evaluation.json is not JSON is named (``warn`` too gets the line) and left out; the rest is reported.
    """
    if not sweep_dir.is_dir():
        problem = "not a folder" if sweep_dir.exists() else "no such folder"
        raise ReportError(f"{sweep_dir}: {problem}; pass the sweep folder the comparison printed")
    try:
        rows = collect(sweep_dir)
    except SweepReportError as exc:
        raise ReportError(str(exc)) from None
    broken = [r for r in rows if "unreadable" in r]
    done = [r for r in rows if "unreadable" not in r]
    if not done:
        why = f" ({broken[0]['unreadable']})" if broken else ""
        raise ReportError(f"no finished job (no readable */summary.json) under {sweep_dir}{why}")
    for r in broken:
        if warn is not None:
            warn(f"job {r['job']} left out: {r['unreadable']}")
    keys = setting_keys(rows)
    table = aggregate(done, order, keys)
    common = _common(done, keys)
    smoke = [r for r in done if r.get("smoke")]
    mark = f"{SMOKE} " if smoke else ""
    context = (
        mark
        + (f"{common}; " if common else "")
        + (f"swept: {', '.join(keys)}; " if keys else "")
        + f"{len(done)} finished job(s)"
        + (f" of {expected}" if expected else "")
        + f"; sweep {sweep_dir}."
    )
    text = markdown(table, context)
    if smoke:
        which = "every job" if len(smoke) == len(done) else f"jobs {', '.join(r['job'] for r in smoke)}"
        text += f"\n{SMOKE} {which}: {SMOKE_NOTE}.\n"
    if broken:
        text += (
            "\nUnreadable (left out): "
            + "; ".join(f"job {r['job']}: {r['unreadable']}" for r in broken)
            + "\n"
        )
    missing = unfinished(sweep_dir)
    if missing:
        text += (
            "\nDid not finish (see each job's train.log): "
            + "; ".join(f"{name} (job {', '.join(jobs)})" for name, jobs in missing.items())
            + ".\n"
        )
    (sweep_dir / "comparison.md").write_text(text)
    write_csv(sweep_dir / "comparison.csv", table)
    plot(sweep_dir / "comparison.png", table, f"{mark}{common or sweep_dir.name}")
    _attach(sweep_dir)
    return text


def _common(rows: Sequence[dict[str, Any]], keys: Sequence[str]) -> str:
    """What every row shares, for the header: dataset, T and epochs where they are the same for all (a
    swept one is a column instead)."""
    said = []
    for fact, words in (("dataset", "dataset {}"), ("T", "T={}"), ("epochs", "{}")):
        values = {str(r.get(fact)) for r in rows if r.get(fact) is not None}
        if fact not in keys and FACTS[fact] not in keys and len(values) == 1:
            (value,) = values
            said.append(_epochs(int(value)) if fact == "epochs" else words.format(value))
    return ", ".join(said)


def _attach(sweep_dir: Path) -> None:
    """Attach the comparison files to the sweep's parent MLflow run (if the sweep was tracked)."""
    parent = parent_run(sweep_dir)
    if parent is not None:
        attach(*parent, [sweep_dir / name for name in ARTIFACTS], "comparison", "the comparison")


def _epochs(n: int) -> str:
    return f"{n} epoch" if int(n) == 1 else f"{n} epochs"


def _natural(name: str) -> tuple[int, int | str]:
    return (0, int(name)) if name.isdigit() else (1, name)


def _order(value: str | None) -> tuple[int, float | str]:
    """Numbers by value, then words, then a missing setting."""
    if value is None:
        return (2, "")
    try:
        return (0, float(value))
    except ValueError:
        return (1, value)
