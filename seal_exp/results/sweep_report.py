"""A sweep's report: every job with its swept keys and results (with the figures measured beyond top-1
when any job has them: firing rate, SynOps, energy, robust accuracy), the mean ± sd over seeds of each
combination, heatmaps of the mean test accuracy and accuracy against energy (report.md, report.csv,
report_heatmap.png / .pdf, report_energy.png / .pdf), attached to the sweep's parent MLflow run.

A job's results are its summary.json with its evaluation.json (``python -m seal_exp.evaluate``) over it.

The sweep is read from its Hydra multirun folder or from its parent MLflow run, so a report can be made
on a machine that never saw the sweep's folder. ``python -m seal_exp.report`` is the command line.
"""

from __future__ import annotations

import itertools
import math
import statistics
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from seal_exp import figures
from seal_exp.notation import display_key
from seal_exp.results.tables import (
    column_title,
    markdown_table,
    measured_cell,
    measured_columns,
    measured_note,
    measured_stat,
    metric_stats,
    num,
    pm,
    write_csv_table,
)
from seal_exp.run.files import EVALUATION, read_results, with_evaluation
from seal_exp.tracking import all_pages, attach, download_json, parent_run

METRICS = (  # every report has these; the measured figures follow when a job has them (measured_columns)
    "test_acc",
    "test_acc_last",
    "best_test_acc_over_epochs",
    "best_val_acc",
    "teacher_test_acc",
    "student_wall_s",  # the job's own time: the first job of a sweep also trains the shared teacher
    "teacher_wall_s",
)
SEED = "seed"
DEFAULT_HEATMAP = ("distiller.alpha", "distiller.beta")
REPORT_FILES = {
    "md": "report.md",
    "csv": "report.csv",
    "png": "report_heatmap.png",
    "pdf": "report_heatmap.pdf",
    "energy_png": "report_energy.png",
    "energy_pdf": "report_energy.pdf",
}
HOW_TO_CALL = (
    "pass a Hydra multirun folder (e.g. multirun/<date>/<time>, whose job folders hold .hydra/) "
    "or the id of a sweep's parent MLflow run (it is in <sweep dir>/mlflow_parent_run_id)"
)


class ReportError(Exception):
    """An input the report refuses before writing anything; the message says what to pass instead."""


@dataclass
class Job:
    """One job of a sweep: its overrides (key → value as typed) and, if it finished, its results (summary
    with its evaluation over it)."""

    name: str
    overrides: dict[str, str]
    summary: dict[str, Any] | None = None
    run_id: str | None = None
    note: str = ""  # why an unfinished job did not finish, when known (the MLflow run status)

    @property
    def status(self) -> str:
        return "finished" if self.summary is not None else "unfinished"

    def value(self, key: str) -> str | None:
        return self.overrides.get(key)

    def seed(self) -> str | None:
        if self.summary is not None and self.summary.get("seed") is not None:
            return str(self.summary["seed"])
        return self.overrides.get(SEED)


@dataclass
class Sweep:
    """The jobs of one sweep, where it came from, where its folder is and its parent MLflow run."""

    source: str
    jobs: list[Job]
    folder: Path | None = None
    parent: tuple[str, str] | None = None  # (run id, tracking URI)

    @property
    def label(self) -> str:
        """A short name for figure titles: the sweep's date/time folders, or the run id's start."""
        if self.folder is not None:
            return "/".join(self.folder.parts[-2:])
        return f"MLflow run {self.parent[0][:8]}…" if self.parent else self.source


@dataclass
class HeatmapPanel:
    """One panel as drawn, read back from the figure: title, axis values and the annotated cells."""

    title: str
    x_values: list[str]
    y_values: list[str]
    cells: dict[tuple[str, str], str]  # (x value, y value) → the annotation; blank cells are absent
    x_label: str = ""
    y_label: str = ""


@dataclass
class EnergyPlot:
    """The accuracy-against-energy figure as drawn, read back from its axes."""

    title: str
    x_label: str
    y_label: str
    x_limits: tuple[float, float]
    y_limits: tuple[float, float]
    jobs: dict[str, list[tuple[float, float]]]  # legend label → (energy, accuracy) of each finished job
    means: dict[str, tuple[float, float]]  # legend label → (mean energy, mean accuracy) over its jobs


@dataclass
class SweepReport:
    """What ``write_report`` produced."""

    markdown: str
    swept: list[str]
    jobs: list[dict[str, Any]]
    groups: list[dict[str, Any]]
    files: list[Path]
    heatmap: tuple[str, str] | None
    panels: list[HeatmapPanel] = field(default_factory=list)
    attached_to: str | None = None
    metrics: list[str] = field(default_factory=lambda: list(METRICS))  # the tables' metric columns
    energy: EnergyPlot | None = None


def parse_overrides(items: Iterable[str]) -> dict[str, str]:
    """``key=value`` overrides → {key: value}, with ``+``/``++`` dropped (``~key`` deletions kept as such)."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        key = key.lstrip("+")
        out[key] = value if sep else "(deleted)"
    return out


def read_sweep_dir(sweep_dir: Path) -> Sweep:
    """A Hydra multirun folder: every ``<job>/.hydra/overrides.yaml``, with ``summary.json`` (and
    ``evaluation.json`` over it) when finished."""
    if not sweep_dir.is_dir():
        raise ReportError(f"{sweep_dir} is not a folder: {HOW_TO_CALL}")
    job_dirs = [p.parent.parent for p in sweep_dir.glob("*/.hydra/overrides.yaml")]
    if not job_dirs:
        single = (sweep_dir / ".hydra").is_dir()
        what = "a single run's folder, not a sweep" if single else "not a sweep folder"
        raise ReportError(f"{sweep_dir} is {what} (no <job>/.hydra/overrides.yaml under it): {HOW_TO_CALL}")
    jobs = []
    for job in sorted(job_dirs, key=lambda p: _natural(p.name)):
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()) or []
        summary = read_results(job)
        run_id = summary.get("mlflow_run_id") if summary else None
        jobs.append(Job(job.name, parse_overrides(overrides), summary, run_id))
    return Sweep(str(sweep_dir), jobs, sweep_dir, parent_run(sweep_dir))


def read_parent_run(run_id: str, uri: str) -> Sweep:
    """A sweep from its parent MLflow run: the children's ``hydra.overrides`` tags and summary.json, with
    evaluation.json over it where a run has one."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).is_file():
        raise ReportError(
            f"{run_id!r} is not a folder, and there is no MLflow store at {uri} to look it up in: "
            f"{HOW_TO_CALL}, with --tracking-uri naming the store it is in"
        )
    client = MlflowClient(uri)
    try:
        parent = client.get_run(run_id)
    except MlflowException as exc:
        raise ReportError(
            f"no MLflow run {run_id!r} in {uri} ({str(exc).splitlines()[0]}): {HOW_TO_CALL}"
        ) from exc
    experiments = [e.experiment_id for e in all_pages(client.search_experiments)]
    children = all_pages(
        client.search_runs, experiments, filter_string=f"tags.`mlflow.parentRunId` = '{run_id}'"
    )
    if not children:
        raise ReportError(
            f"MLflow run {run_id} in {uri} has no child runs (no run tagged mlflow.parentRunId={run_id}); "
            f"{HOW_TO_CALL}"
        )
    by_name: dict[str, Job] = {}
    with tempfile.TemporaryDirectory() as tmp:
        # oldest first, so a job tried twice (a requeued attempt that opened a new run) keeps its last try
        for child in sorted(children, key=lambda r: r.info.start_time or 0):
            tags = child.data.tags
            overrides = tags.get("hydra.overrides", "")
            summary = download_json(client, child.info.run_id, Path(tmp))
            if summary is not None:
                evaluation = download_json(client, child.info.run_id, Path(tmp), EVALUATION)
                summary = with_evaluation(summary, evaluation)
            job = Job(
                tags.get("hydra.job.num", child.info.run_id[:8]),
                parse_overrides([] if overrides in ("", "(none)") else overrides.split()),
                summary,
                child.info.run_id,
                "" if summary else f"MLflow status {child.info.status}",
            )
            earlier = by_name.get(job.name)
            if earlier is None or summary is not None or earlier.summary is None:
                by_name[job.name] = job
    jobs = sorted(by_name.values(), key=lambda j: _natural(j.name))
    folder = Path(parent.data.tags.get("sweep.dir", ""))
    folder_ok = parent.data.tags.get("sweep.dir") and folder.is_dir()
    return Sweep(f"MLflow run {run_id} ({uri})", jobs, folder if folder_ok else None, (run_id, uri))


def _natural(name: str) -> tuple[int, int | str]:
    return (0, int(name)) if name.isdigit() else (1, name)


def _is_number(value: str | None) -> bool:
    try:
        return value is not None and math.isfinite(float(value))
    except ValueError:
        return False


def _order(value: str | None) -> tuple[int, float | str]:
    """Numbers by value, then words, then a missing override."""
    if value is None:
        return (2, "")
    return (0, float(value)) if _is_number(value) else (1, value)


def swept_keys(jobs: Sequence[Job]) -> list[str]:
    """Override keys whose value differs between jobs (in command-line order, the seed last)."""
    keys: list[str] = []
    for job in jobs:
        keys += [k for k in job.overrides if k not in keys]
    swept = [k for k in keys if len({j.value(k) for j in jobs}) > 1]
    return [k for k in swept if k != SEED] + [k for k in swept if k == SEED]


def sweep_metrics(jobs: Sequence[Job]) -> list[str]:
    """The tables' metric columns: ``METRICS``, then the measured figures some finished job has."""
    return [*METRICS, *measured_columns(j.summary for j in jobs if j.summary is not None)]


def job_rows(
    jobs: Sequence[Job], keys: Sequence[str], metrics: Sequence[str] = METRICS
) -> list[dict[str, Any]]:
    """One row per job: its swept values, status and metrics (None where unknown)."""
    rows = []
    for job in jobs:
        summary = job.summary or {}
        row: dict[str, Any] = {"job": job.name, **{k: job.value(k) for k in keys}, "status": job.status}
        row |= {m: summary.get(m) for m in metrics}
        row["mlflow_run_id"] = job.run_id
        rows.append(row)
    return rows


def seed_groups(
    jobs: Sequence[Job], keys: Sequence[str], metrics: Sequence[str] = METRICS
) -> list[dict[str, Any]]:
    """Per combination of the swept keys other than the seed: finished seeds, mean ± sd of each metric."""
    others = [k for k in keys if k != SEED]
    combos: dict[tuple[str | None, ...], list[Job]] = {}
    for job in jobs:
        combos.setdefault(tuple(job.value(k) for k in others), []).append(job)
    groups = []
    for combo in sorted(combos, key=lambda c: [_order(v) for v in c]):
        done = [j for j in combos[combo] if j.summary is not None]
        done.sort(key=lambda j: _order(j.seed()))
        entry: dict[str, Any] = dict(zip(others, combo, strict=True))
        entry |= {
            "n": len(done),
            "seeds": [j.seed() for j in done],
            "unfinished": len(combos[combo]) - len(done),
        }
        entry["stats"] = metric_stats([j.summary or {} for j in done], metrics)
        groups.append(entry)
    return groups


def choose_heatmap(
    jobs: Sequence[Job], keys: Sequence[str], requested: tuple[str, str] | None
) -> tuple[tuple[str, str] | None, str]:
    """The (x, y) pair to draw, or None with the reason; a requested pair must be swept keys."""
    if requested is not None:
        missing = [k for k in requested if k not in keys]
        if missing:
            swept = ", ".join(keys) or "none"
            raise ReportError(f"--heatmap: {', '.join(missing)} not swept in this sweep (swept: {swept})")
        return requested, ""
    numeric = [k for k in keys if k != SEED and all(_is_number(j.value(k)) for j in jobs)]
    if all(k in numeric for k in DEFAULT_HEATMAP):
        return DEFAULT_HEATMAP, ""
    if len(numeric) >= 2:
        return (numeric[0], numeric[1]), ""
    swept = ", ".join(keys) or "none"
    return None, f"No heatmap: fewer than two numeric swept keys besides the seed (swept: {swept})."


def plot_heatmaps(
    path: Path, jobs: Sequence[Job], keys: Sequence[str], x_key: str, y_key: str, title: str
) -> list[HeatmapPanel]:
    """Mean test accuracy over seeds on an x × y grid, one panel per value of the other swept keys.

    One colour scale for every panel, so panels compare at a glance; a combination without a finished
    job stays blank.
    """
    import numpy as np

    panel_keys = [k for k in keys if k not in (x_key, y_key, SEED)]
    xs = sorted({j.value(x_key) for j in jobs}, key=_order)
    ys = sorted({j.value(y_key) for j in jobs}, key=_order)
    combos = sorted(
        {tuple(j.value(k) for k in panel_keys) for j in jobs}, key=lambda c: [_order(v) for v in c]
    )
    grids = []
    for combo in combos:
        grid = np.full((len(ys), len(xs)), np.nan)
        for (iy, y), (ix, x) in itertools.product(enumerate(ys), enumerate(xs)):
            accs = [
                float(j.summary["test_acc"])
                for j in jobs
                if j.summary is not None
                and j.summary.get("test_acc") is not None
                and (j.value(x_key), j.value(y_key)) == (x, y)
                and tuple(j.value(k) for k in panel_keys) == combo
            ]
            if accs:
                grid[iy, ix] = statistics.fmean(accs)
        grids.append(grid)
    finite = [v for g in grids for v in g.ravel() if not math.isnan(v)]
    low, high = (min(finite), max(finite)) if finite else (0.0, 100.0)
    if high - low < 1e-9:
        low, high = low - 0.5, high + 0.5

    with figures.style() as plt:
        return _draw_heatmaps(
            plt, path, grids, combos, panel_keys, xs, ys, (x_key, y_key), (low, high), title
        )


def _draw_heatmaps(
    plt: Any,
    path: Path,
    grids: list[Any],
    combos: list[tuple[str | None, ...]],
    panel_keys: list[str],
    xs: list[str | None],
    ys: list[str | None],
    axes_keys: tuple[str, str],
    scale: tuple[float, float],
    title: str,
) -> list[HeatmapPanel]:
    import numpy as np

    (x_key, y_key), (low, high) = axes_keys, scale
    cols = min(3, len(combos))
    rows = math.ceil(len(combos) / cols)
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(1.2 + cols * max(3.0, 0.7 * len(xs) + 1.6), 0.8 + rows * max(2.6, 0.5 * len(ys) + 1.6)),
        squeeze=False,
        layout="constrained",
    )
    cmap = plt.get_cmap("Blues").with_extremes(bad="white")
    image = None
    for ax, combo, grid in zip(axes.ravel(), combos, grids, strict=False):
        image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=low, vmax=high, origin="lower")
        for (iy, ix), value in np.ndenumerate(grid):
            if not math.isnan(value):
                dark = (value - low) / (high - low) > 0.6
                ax.text(
                    ix,
                    iy,
                    f"{value:.2f}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if dark else "black",
                )
        ax.set_xticks(range(len(xs)), [_label(v) for v in xs])
        ax.set_yticks(range(len(ys)), [_label(v) for v in ys])
        ax.set_xlabel(display_key(x_key))
        ax.set_ylabel(display_key(y_key))
        ax.set_title(
            ", ".join(f"{display_key(k)}={_label(v)}" for k, v in zip(panel_keys, combo, strict=True))
        )
    for ax in axes.ravel()[len(combos) :]:
        ax.set_axis_off()
    fig.colorbar(image, ax=axes.ravel().tolist(), label="mean test accuracy (%)", shrink=0.9)
    fig.suptitle(title)
    panels = [_read_panel(ax) for ax in axes.ravel() if ax.images]
    figures.save(fig, path)
    return panels


def _read_panel(ax: Any) -> HeatmapPanel:
    """What a panel shows, read from the drawn axes (so a test checks the figure, not our intentions)."""
    xs = [t.get_text() for t in ax.get_xticklabels()]
    ys = [t.get_text() for t in ax.get_yticklabels()]
    cells = {}
    for text in ax.texts:
        ix, iy = text.get_position()
        cells[(xs[round(ix)], ys[round(iy)])] = text.get_text()
    return HeatmapPanel(ax.get_title(), xs, ys, cells, ax.get_xlabel(), ax.get_ylabel())


def energy_points(
    jobs: Sequence[Job], keys: Sequence[str]
) -> dict[tuple[str | None, ...], list[tuple[float, float]]]:
    """(energy per sample, test accuracy) of each finished job that has both, per combination of the
    swept keys other than the seed, in the tables' order; empty when no job measured its energy."""
    others = [k for k in keys if k != SEED]
    points: dict[tuple[str | None, ...], list[tuple[float, float]]] = {}
    for job in jobs:
        summary = job.summary or {}
        if summary.get("energy_uj") is None or summary.get("test_acc") is None:
            continue
        if not math.isfinite(float(summary["energy_uj"])):  # a failed count: no place on an energy axis
            continue
        combo = tuple(job.value(k) for k in others)
        points.setdefault(combo, []).append((float(summary["energy_uj"]), float(summary["test_acc"])))
    return {c: points[c] for c in sorted(points, key=lambda c: [_order(v) for v in c])}


def _combination(keys: Sequence[str], combo: tuple[str | None, ...]) -> str:
    """A combination in the papers' notation (``α=0.3, β=0.1``), for the energy figure's legend."""
    return ", ".join(f"{display_key(k)}={_label(v)}" for k, v in zip(keys, combo, strict=True)) or "all jobs"


def plot_energy(path: Path, jobs: Sequence[Job], keys: Sequence[str], title: str) -> EnergyPlot | None:
    """Test accuracy against energy per sample: a marker per finished job and a larger outlined one at
    each combination's mean, one colour per combination, so the cost of accuracy shows across the sweep.
    None (nothing drawn) when no job measured its energy."""
    points = energy_points(jobs, keys)
    if not points:
        return None
    others = [k for k in keys if k != SEED]
    with figures.style() as plt:
        fig, ax = plt.subplots(figsize=(5.0, 3.8))
        colours = plt.get_cmap("tab10" if len(points) <= 10 else "tab20").colors
        for i, (combo, pairs) in enumerate(points.items()):
            colour = colours[i % len(colours)]
            energies, accuracies = zip(*pairs, strict=True)
            ax.scatter(  # unclipped: a job near 100 % shows whole
                energies,
                accuracies,
                s=16,
                color=colour,
                alpha=0.8,
                label=_combination(others, combo),
                clip_on=False,
                gid="jobs",
            )
            ax.scatter(
                [statistics.fmean(energies)],
                [statistics.fmean(accuracies)],
                s=80,
                color=colour,
                edgecolors="black",
                linewidths=1.0,
                zorder=3,
                clip_on=False,
                gid="mean",
            )
        ax.scatter([], [], s=80, facecolors="none", edgecolors="black", label="mean over seeds")
        highest = max(e for pairs in points.values() for e, _ in pairs)
        ax.set_xlim(0, 1.1 * highest if highest > 0 else 1.0)
        ax.set_xlabel("energy per test sample (µJ)")
        figures.accuracy_axis(ax)
        ax.set_title(title)
        figures.legend_below(ax, ncol=2 if len(points) < 6 else 3)
        drawn = _read_energy(ax)
        figures.save(fig, path)
    return drawn


def _read_energy(ax: Any) -> EnergyPlot:
    """What the energy figure shows, read from the drawn axes (each mean follows its jobs' markers)."""
    jobs: dict[str, list[tuple[float, float]]] = {}
    means: dict[str, tuple[float, float]] = {}
    label = ""
    for collection in ax.collections:
        drawn = [(float(x), float(y)) for x, y in collection.get_offsets()]
        if collection.get_gid() == "jobs":
            label = collection.get_label()
            jobs[label] = drawn
        elif collection.get_gid() == "mean":
            means[label] = drawn[0]
    return EnergyPlot(
        ax.get_title(),
        ax.get_xlabel(),
        ax.get_ylabel(),
        tuple(map(float, ax.get_xlim())),
        tuple(map(float, ax.get_ylim())),
        jobs,
        means,
    )


def energy_regimes(jobs: Sequence[Job]) -> list[str]:
    """How the energies were counted (the headline regime of each distinct measurement), for the report."""
    regimes: list[str] = []
    for job in jobs:
        activity = ((job.summary or {}).get("measures") or {}).get("activity") or {}
        regime = str(activity.get("regime") or "").split("; energy_simple_uj")[0].strip()
        if regime and regime not in regimes:
            regimes.append(regime)
    return regimes


def _label(value: str | None) -> str:
    return "–" if value is None else value


def _stat(stats: tuple[float, float], digits: int = 2) -> str:
    return "–" if math.isnan(stats[0]) else pm(*stats, digits)


def _cell(metric: str, value: Any) -> str:
    """A job's metric for the Markdown table: accuracies 2 decimals, wall times 1, measured figures in
    the unit their header names."""
    if metric not in METRICS:
        return measured_cell(metric, value)
    return num(value, 1 if metric.endswith("wall_s") else 2)


def _stat_cell(metric: str, stats: tuple[float, float]) -> str:
    if metric not in METRICS:
        return measured_stat(metric, *stats)
    return _stat(stats, 1 if metric.endswith("wall_s") else 2)


def sweep_markdown(
    sweep: Sweep,
    keys: Sequence[str],
    rows: Sequence[dict[str, Any]],
    groups: Sequence[dict[str, Any]],
    heatmap: tuple[str, str] | None,
    no_heatmap: str,
    metrics: Sequence[str] = METRICS,
    energy: bool = False,
) -> str:
    """The report in Markdown: context, all jobs, mean ± sd over seeds, the heatmap, accuracy against
    energy (``energy``: when it was drawn), what did not finish."""
    done = [j for j in sweep.jobs if j.summary is not None]
    facts = []
    for key, label in (("dataset", "dataset"), ("epochs", "epochs"), ("T", "T")):
        values = sorted({str(j.summary[key]) for j in done if j.summary and j.summary.get(key) is not None})
        if values:
            facts.append(f"{label} {', '.join(values)}")
    lines = [
        f"# Sweep report: {sweep.source}",
        "",
        f"{len(sweep.jobs)} job(s), {len(done)} finished, {len(sweep.jobs) - len(done)} unfinished; "
        f"swept: {', '.join(keys) or 'nothing'}" + (f"; {'; '.join(facts)}" if facts else "") + ". "
        "Accuracies in %, wall time in s; `test_acc` is the epoch selected on validation, "
        "`best_test_acc_over_epochs` the papers' optimistic figure.",
        "",
        "## All jobs",
        "",
    ]
    titles = [m if m in METRICS else column_title(m) for m in metrics]
    header = ["job", *keys, "status", *titles]
    lines += markdown_table(
        header,
        (
            [r["job"], *(_label(r[k]) for k in keys), r["status"]] + [_cell(m, r[m]) for m in metrics]
            for r in rows
        ),
    )
    others = [k for k in keys if k != SEED]
    lines += ["", "## Mean ± sample sd over seeds", ""]
    lines += markdown_table(
        [*others, "n", "seeds", *titles],
        (
            [*(_label(g[k]) for k in others), str(g["n"]), ",".join(s or "–" for s in g["seeds"]) or "–"]
            + [_stat_cell(m, g["stats"][m]) for m in metrics]
            for g in groups
        ),
    )
    units = measured_note([m for m in metrics if m not in METRICS])
    lines += [
        "",
        "`n`: finished seeds of the combination (the sd is the sample sd, n − 1)."
        + (f" {units}" if units else ""),
        "",
        "## Heatmap",
        "",
    ]
    if heatmap is None:
        lines.append(no_heatmap)
    else:
        panel_keys = [k for k in keys if k not in (*heatmap, SEED)]
        per = f", one panel per {' × '.join(panel_keys)}" if panel_keys else ""
        lines += [
            f"Mean test accuracy (%) over seeds, {heatmap[0]} × {heatmap[1]}{per}; blank: no finished job.",
            "",
            f"![mean test accuracy]({REPORT_FILES['png']})",
        ]
    if energy:
        regimes = energy_regimes(done)
        how = f"; {' / '.join(regimes)}" if regimes else ""
        lines += [
            "",
            "## Accuracy against energy",
            "",
            f"Test accuracy (%) against energy per test sample (µJ{how}), one marker per finished job and a "
            "larger outlined one at each combination's mean over seeds.",
            "",
            f"![accuracy against energy]({REPORT_FILES['energy_png']})",
        ]
    missing = [j for j in sweep.jobs if j.summary is None]
    if missing:
        lines += [
            "",
            "Did not finish (no summary.json; see each job's train.log): "
            + ", ".join(f"job {j.name}" + (f" ({j.note})" if j.note else "") for j in missing)
            + ".",
        ]
    return "\n".join(lines) + "\n"


def write_jobs_csv(
    path: Path, rows: Sequence[dict[str, Any]], keys: Sequence[str], metrics: Sequence[str] = METRICS
) -> None:
    """Every job with its raw numbers (empty where unknown), for plotting elsewhere."""
    columns = ["job", *keys, "status", *metrics, "mlflow_run_id"]
    write_csv_table(path, columns, [["" if r.get(c) is None else r[c] for c in columns] for r in rows])


def write_report(sweep: Sweep, out_dir: Path, heatmap: tuple[str, str] | None = None) -> SweepReport:
    """Tabulate the sweep into ``out_dir`` and attach the files to its parent MLflow run, if one is known."""
    keys = swept_keys(sweep.jobs)
    pair, no_heatmap = choose_heatmap(sweep.jobs, keys, heatmap)  # may refuse: before anything is written
    metrics = sweep_metrics(sweep.jobs)
    rows, groups = job_rows(sweep.jobs, keys, metrics), seed_groups(sweep.jobs, keys, metrics)
    has_energy = bool(energy_points(sweep.jobs, keys))
    out_dir.mkdir(parents=True, exist_ok=True)
    text = sweep_markdown(sweep, keys, rows, groups, pair, no_heatmap, metrics, has_energy)
    files = [out_dir / REPORT_FILES["md"], out_dir / REPORT_FILES["csv"]]
    files[0].write_text(text)
    write_jobs_csv(files[1], rows, keys, metrics)
    panels: list[HeatmapPanel] = []
    heatmaps = [out_dir / REPORT_FILES["png"], out_dir / REPORT_FILES["pdf"]]
    if pair is not None:
        panels = plot_heatmaps(
            heatmaps[0], sweep.jobs, keys, *pair, title=f"mean test accuracy (%) over seeds — {sweep.label}"
        )
        files += heatmaps
    else:
        for stale in heatmaps:  # from an earlier report of this sweep; it no longer matches the table
            stale.unlink(missing_ok=True)
    energy = None
    energy_files = [out_dir / REPORT_FILES["energy_png"], out_dir / REPORT_FILES["energy_pdf"]]
    if has_energy:
        energy = plot_energy(
            energy_files[0], sweep.jobs, keys, title=f"test accuracy against energy — {sweep.label}"
        )
        files += energy_files
    else:
        for stale in energy_files:  # no job measured its energy (any more): the figure would mislead
            stale.unlink(missing_ok=True)
    attached = None
    if sweep.parent is not None and attach(*sweep.parent, files, "report", "the sweep report"):
        attached = sweep.parent[0]
    return SweepReport(text, keys, rows, groups, files, pair, panels, attached, metrics, energy)


END_COLUMNS = ("test_acc", "best_val_acc", "student_wall_s")


def end_of_sweep(sweep_dir: Path) -> str:
    """What a multirun prints when its last job ends: each job's swept values, status, selected test
    accuracy, best validation accuracy and time, then the commands that report on it and follow it."""
    try:
        sweep = read_sweep_dir(sweep_dir)
    except ReportError as exc:
        return f"sweep {sweep_dir}: no job folders to summarise ({exc})"
    keys = swept_keys(sweep.jobs)
    rows = job_rows(sweep.jobs, keys)
    done = sum(1 for r in rows if r["status"] == "finished")
    table = markdown_table(
        ["job", *keys, "status", "test acc (selected on val)", "best val acc", "student s"],
        (
            [r["job"], *(_label(r[k]) for k in keys), r["status"]]
            + [num(r[m], 0 if m.endswith("wall_s") else 2) for m in END_COLUMNS]
            for r in rows
        ),
    )
    lines = [f"sweep {sweep_dir}: {done} of {len(rows)} jobs finished", *table]
    lines.append(f"report (tables, heatmaps, MLflow): python -m seal_exp.report {sweep_dir}")
    if done < len(rows):
        lines.append(
            f"what is left, and the command that trains it: python -m seal_exp.sweep status {sweep_dir}"
        )
    return "\n".join(lines)


class SweepSummaryCallback(Callback):
    """Prints :func:`end_of_sweep` when a multirun ends (also in a SLURM login node's log)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        print(end_of_sweep(Path(str(config.hydra.sweep.dir))), flush=True)
