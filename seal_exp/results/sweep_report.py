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
from seal_exp.notation import LIMITS, SMOKE, display_key, is_smoke
from seal_exp.results.tables import (
    column_title,
    markdown_table,
    mean_sd,
    measured_cell,
    measured_columns,
    measured_note,
    measured_stat,
    metric_stats,
    num,
    pm,
    write_csv_table,
)
from seal_exp.run.files import EVALUATION, UnreadableResults, read_results, with_evaluation
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
SMOKE_NOTE = (
    "cut short (debug=smoke or trainer.limit_*_batches: a few training batches, a few test samples); "
    "their numbers check that the pipeline runs and are no result"
)
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
    unreadable: bool = False  # its summary.json / evaluation.json is not JSON: ``note`` names the file
    smoke: bool = False  # cut short (debug=smoke, limit_*_batches): its numbers check the pipeline only

    @property
    def status(self) -> str:
        if self.unreadable:
            return "unreadable"
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

    @property
    def smoke(self) -> list[Job]:
        """Its finished jobs that were cut short: their numbers are no result."""
        return [j for j in self.jobs if j.summary is not None and j.smoke]

    @property
    def unreadable(self) -> list[Job]:
        return [j for j in self.jobs if j.unreadable]

    def title(self, what: str) -> str:
        """A figure title: what it shows, the sweep, and ``[smoke]`` first when its numbers are no result."""
        return f"{SMOKE + ' ' if self.smoke else ''}{what} — {self.label}"


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
    markers: dict[str, Marker] = field(default_factory=dict)  # legend label → its mean's marker
    legend: list[str] = field(default_factory=list)  # the legend's entries, in order


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
    scale: HeatmapScale | None = None  # the heatmaps' colour scale, as drawn


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
        overrides = read_overrides(job / ".hydra" / "overrides.yaml")
        try:
            summary, note, unreadable = read_results(job), "", False
        except UnreadableResults as exc:
            summary, note, unreadable = None, str(exc), True
        run_id = summary.get("mlflow_run_id") if summary else None
        smoke = summary is not None and _smoke_of(summary, job / ".hydra" / "config.yaml")
        jobs.append(Job(job.name, parse_overrides(overrides), summary, run_id, note, unreadable, smoke))
    return Sweep(str(sweep_dir), jobs, sweep_dir, parent_run(sweep_dir))


def read_overrides(path: Path) -> list[str]:
    """A job's ``.hydra/overrides.yaml`` (Hydra's list of ``key=value``); a damaged one stops the report."""
    try:
        overrides = yaml.safe_load(path.read_text()) or []
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        reason = " ".join(str(exc).split())[:120]
        raise ReportError(
            f"{path}: not readable as Hydra's list of overrides ({reason}); restore it (the job's MLflow run "
            "has it in its .hydra/ artifacts) or move that job folder out of the sweep"
        ) from None
    if not isinstance(overrides, list):
        raise ReportError(
            f"{path}: holds no list of overrides; restore it (the job's MLflow run has it in its .hydra/ "
            "artifacts) or move that job folder out of the sweep"
        )
    return [str(o) for o in overrides]


def _smoke_of(summary: dict[str, Any], config: Path | dict[str, Any]) -> bool:
    """Whether a finished job was cut short: its summary says (``smoke``); an older summary, which does
    not, is judged by the job's composed config (a folder's ``.hydra/config.yaml``, an MLflow run's
    params)."""
    if isinstance(summary.get("smoke"), bool):
        return summary["smoke"]
    if isinstance(config, Path):
        try:
            config = yaml.safe_load(config.read_text()) if config.is_file() else {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            config = {}
    return isinstance(config, dict) and is_smoke(config)


def _config_of_params(params: dict[str, str], stage: str | None) -> dict[str, Any]:
    """The parts of a job's config :func:`seal_exp.notation.is_smoke` reads, from its MLflow params."""

    def value(key: str) -> str | None:
        text = params.get(key)
        return None if text in (None, "None", "null") else text

    limits = {k: value(f"trainer.{k}") for k in LIMITS}
    recipe = {k: value(f"teacher.recipe.{k}") for k in LIMITS}
    return {"stage": stage, "trainer": limits, "teacher": {"recipe": recipe}}


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
            config = _config_of_params(child.data.params, tags.get("stage"))
            job = Job(
                tags.get("hydra.job.num", child.info.run_id[:8]),
                parse_overrides([] if overrides in ("", "(none)") else overrides.split()),
                summary,
                child.info.run_id,
                "" if summary else f"MLflow status {child.info.status}",
                smoke=summary is not None and _smoke_of(summary, config),
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


MIN_COLOUR_SPAN = 1.0  # accuracy points: a narrower spread of cell means is drawn on a scale this wide


@dataclass
class HeatmapScale:
    """The heatmaps' one colour scale as drawn: its limits, the colorbar's label and tick labels, and the
    note under the title (empty unless the cells differ by little)."""

    low: float
    high: float
    label: str
    ticks: list[str]
    note: str
    title: str  # the figure's title as drawn (the note, when there is one, under it)


def cell_stats(
    jobs: Sequence[Job], x_key: str, y_key: str, panel_keys: Sequence[str]
) -> dict[tuple[str | None, ...], tuple[float, float, int]]:
    """(x, y, panel values…) → (mean, sample sd, n) of the test accuracy of its finished jobs."""
    accs: dict[tuple[str | None, ...], list[float]] = {}
    for j in jobs:
        if j.summary is None or j.summary.get("test_acc") is None:
            continue
        key = (j.value(x_key), j.value(y_key), *(j.value(k) for k in panel_keys))
        accs.setdefault(key, []).append(float(j.summary["test_acc"]))
    return {k: (*mean_sd(v), len(v)) for k, v in accs.items()}


def colour_scale(stats: Iterable[tuple[float, float, int]]) -> tuple[float, float, str]:
    """The colour limits of the heatmaps and what the figure must say about them: the cell means' range,
    widened to ``MIN_COLOUR_SPAN`` points around its middle when narrower (so that a difference of a test
    sample or two does not look like full contrast), with a note when the cells differ by little: less
    than that span, or less than the largest seed sd."""
    stats = list(stats)
    if not stats:
        return 0.0, 100.0, ""
    means = [m for m, _, _ in stats]
    low, high = min(means), max(means)
    spread = high - low
    sds = [sd for _, sd, _ in stats if not math.isnan(sd)]
    notes = []
    if spread < MIN_COLOUR_SPAN:
        middle = (low + high) / 2
        low, high = middle - MIN_COLOUR_SPAN / 2, middle + MIN_COLOUR_SPAN / 2
        notes.append(
            f"the cell means differ by only {spread:.2f} points; colours span {MIN_COLOUR_SPAN:g} point"
        )
    if sds and spread <= max(sds):
        notes.append(f"the cells differ by less than the seeds do (largest sd {max(sds):.2f})")
    return low, high, "; ".join(notes)


def plot_heatmaps(
    path: Path, jobs: Sequence[Job], keys: Sequence[str], x_key: str, y_key: str, title: str
) -> tuple[list[HeatmapPanel], HeatmapScale]:
    """Mean test accuracy over seeds on an x × y grid, one panel per value of the other swept keys; each
    cell says its mean, sd and n.

    One colour scale for every panel, so panels compare at a glance, with its limits on the colorbar
    (:func:`colour_scale`); a combination without a finished job stays blank.
    """
    import numpy as np

    panel_keys = [k for k in keys if k not in (x_key, y_key, SEED)]
    xs = sorted({j.value(x_key) for j in jobs}, key=_order)
    ys = sorted({j.value(y_key) for j in jobs}, key=_order)
    combos = sorted(
        {tuple(j.value(k) for k in panel_keys) for j in jobs}, key=lambda c: [_order(v) for v in c]
    )
    stats = cell_stats(jobs, x_key, y_key, panel_keys)
    grids = []
    for combo in combos:
        grid = np.full((len(ys), len(xs), 3), np.nan)
        for (iy, y), (ix, x) in itertools.product(enumerate(ys), enumerate(xs)):
            if (x, y, *combo) in stats:
                grid[iy, ix] = stats[(x, y, *combo)]
        grids.append(grid)
    low, high, note = colour_scale(stats.values())

    with figures.style() as plt:
        return _draw_heatmaps(
            plt, path, grids, combos, panel_keys, xs, ys, (x_key, y_key), (low, high, note), title
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
    scale: tuple[float, float, str],
    title: str,
) -> tuple[list[HeatmapPanel], HeatmapScale]:
    import numpy as np

    (x_key, y_key), (low, high, note) = axes_keys, scale
    cols = min(3, len(combos))
    rows = math.ceil(len(combos) / cols)
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(1.4 + cols * max(3.0, 1.0 * len(xs) + 1.4), 1.0 + rows * max(2.6, 0.75 * len(ys) + 1.4)),
        squeeze=False,
        layout="constrained",
    )
    cmap = plt.get_cmap("Blues").with_extremes(bad="white")
    image = None
    for ax, combo, grid in zip(axes.ravel(), combos, grids, strict=False):
        means = grid[:, :, 0]
        image = ax.imshow(np.ma.masked_invalid(means), cmap=cmap, vmin=low, vmax=high, origin="lower")
        for (iy, ix), mean in np.ndenumerate(means):
            if math.isnan(mean):
                continue
            _, sd, n = grid[iy, ix]
            dark = (mean - low) / (high - low) > 0.6
            ax.text(
                ix,
                iy,
                cell_text(mean, sd, int(n)),
                ha="center",
                va="center",
                fontsize=7,
                linespacing=1.1,
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
    ticks = np.linspace(low, high, 5)
    bar = fig.colorbar(
        image,
        ax=axes.ravel().tolist(),
        label=f"mean test accuracy (%), colours from {low:.2f} to {high:.2f}",
        shrink=0.9,
        ticks=ticks,
    )
    bar.ax.set_yticklabels([f"{t:.2f}" for t in ticks])
    fig.suptitle("\n".join([title, *note.split("; ")]) if note else title)  # each note on a line
    panels = [_read_panel(ax) for ax in axes.ravel() if ax.images]
    fig.canvas.draw()  # the tick labels as written
    drawn = HeatmapScale(
        *map(float, bar.ax.get_ylim()),
        bar.ax.get_ylabel(),
        [t.get_text() for t in bar.ax.get_yticklabels()],
        note,
        fig._suptitle.get_text(),
    )
    figures.save(fig, path)
    return panels, drawn


def cell_text(mean: float, sd: float, n: int) -> str:
    """What a heatmap cell says: its mean, its sample sd (none for one seed) and how many seeds."""
    spread = f"\n± {sd:.2f}" if not math.isnan(sd) else ""
    return f"{mean:.2f}{spread}\nn={n}"


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


SHAPES = "osD^vp<h>8Hd"  # closed outlines, one per combination (then again, in another colour), that nest
ALONE_PT, RING_PT, NEAR_PT = 9.0, 4.5, 14.0  # a lone mean's diameter; the step between nested ones; "near"


@dataclass
class Marker:
    """A combination's mean marker as drawn: shape (its path's vertices, rounded), size (pt²), whether its
    face is hollow, its edge colour (RGBA) and where it is on the figure (pixels)."""

    shape: tuple[tuple[float, float], ...]
    size: float
    hollow: bool
    edge: tuple[float, ...]
    at: tuple[float, float]


def plot_energy(path: Path, jobs: Sequence[Job], keys: Sequence[str], title: str) -> EnergyPlot | None:
    """Test accuracy against energy per sample: per combination of the swept keys, an outlined marker at
    its mean over seeds and a small filled one per job, in its own colour and shape, so the cost of
    accuracy shows across the sweep. None (nothing drawn) when no job measured its energy.

    Combinations that land on one spot (α and β barely change energy) must all stay visible: each mean
    marker is hollow, with a closed shape and a colour of its own, and the means that lie near each other
    (:func:`nest_sizes`) get sizes a ring apart, so their outlines nest rather than cover each other. The
    accuracy axis is zoomed on the jobs, every one of them on it
    (:func:`seal_exp.figures.zoom_accuracy_axis`), and says so.
    """
    points = energy_points(jobs, keys)
    if not points:
        return None
    others = [k for k in keys if k != SEED]
    accuracies = [a for pairs in points.values() for _, a in pairs]
    means = [(statistics.fmean(e for e, _ in p), statistics.fmean(a for _, a in p)) for p in points.values()]
    with figures.style() as plt:
        fig, ax = plt.subplots(figsize=(5.4, 4.0))
        colours = plt.get_cmap("tab10" if len(points) <= 10 else "tab20").colors
        highest = max(e for pairs in points.values() for e, _ in pairs)
        ax.set_xlim(0, 1.1 * highest if highest > 0 else 1.0)
        ax.set_xlabel("energy per test sample (µJ)")
        figures.zoom_accuracy_axis(ax, accuracies, keep_all=True)
        at = [(x * 72 / fig.dpi, y * 72 / fig.dpi) for x, y in ax.transData.transform(means)]  # points
        diameters = nest_sizes(at)
        for i, (combo, pairs) in enumerate(points.items()):
            colour = colours[i % len(colours)]
            shape = SHAPES[i % len(SHAPES)]
            energies, accs = zip(*pairs, strict=True)
            ax.scatter(
                [means[i][0]],
                [means[i][1]],
                s=diameters[i] ** 2,
                marker=shape,
                facecolors="none",
                edgecolors=[colour],
                linewidths=1.4,
                zorder=3,
                label=_combination(others, combo),
                gid="mean",
            )
            ax.scatter(energies, accs, s=12, marker=shape, color=colour, alpha=0.7, linewidths=0, gid="jobs")
        ax.scatter(
            [], [], s=ALONE_PT**2, marker="o", facecolors="none", edgecolors="black", label="mean over seeds"
        )
        ax.scatter([], [], s=12, marker="o", color="black", alpha=0.7, label="one job")
        ax.set_title(title)
        figures.legend_below(ax, ncol=2 if len(points) < 6 else 3)
        for handle in ax.get_legend().legend_handles[: len(points)]:  # shape and colour say which; one size
            handle.set_sizes([ALONE_PT**2])
        fig.canvas.draw()  # marker positions in pixels, as written
        drawn = _read_energy(ax)
        figures.save(fig, path)
    return drawn


def nest_sizes(at: Sequence[tuple[float, float]]) -> list[float]:
    """Marker diameters (pt) for markers at ``at`` (pt on the figure): ``ALONE_PT`` for one with no other
    within ``NEAR_PT``; markers that are near each other (transitively) a ring (``RING_PT``) apart, the
    first the largest, so every outline of a cluster shows."""
    cluster = list(range(len(at)))

    def root(i: int) -> int:
        while cluster[i] != i:
            i = cluster[i]
        return i

    for i, j in itertools.combinations(range(len(at)), 2):
        if math.dist(at[i], at[j]) < NEAR_PT:
            cluster[root(j)] = root(i)
    members: dict[int, list[int]] = {}
    for i in range(len(at)):
        members.setdefault(root(i), []).append(i)
    diameters = [ALONE_PT] * len(at)
    for group in members.values():
        if len(group) > 1:
            for rank, i in enumerate(group):
                diameters[i] = 6.0 + RING_PT * (len(group) - 1 - rank)
    return diameters


def _read_energy(ax: Any) -> EnergyPlot:
    """What the energy figure shows, read from the drawn axes (each mean comes before its jobs)."""
    jobs: dict[str, list[tuple[float, float]]] = {}
    means: dict[str, tuple[float, float]] = {}
    markers: dict[str, Marker] = {}
    label = ""
    for collection in ax.collections:
        drawn = [(float(x), float(y)) for x, y in collection.get_offsets()]
        if collection.get_gid() == "mean":
            label = collection.get_label()
            means[label] = drawn[0]
            at = ax.transData.transform(drawn[0])
            faces = collection.get_facecolors()
            markers[label] = Marker(
                _shape(collection),
                float(collection.get_sizes()[0]),
                len(faces) == 0 or all(float(f[3]) == 0.0 for f in faces),
                tuple(float(c) for c in collection.get_edgecolors()[0]),
                (float(at[0]), float(at[1])),
            )
        elif collection.get_gid() == "jobs":
            jobs[label] = drawn
    return EnergyPlot(
        ax.get_title(),
        ax.get_xlabel(),
        ax.get_ylabel(),
        tuple(map(float, ax.get_xlim())),
        tuple(map(float, ax.get_ylim())),
        jobs,
        means,
        markers,
        [t.get_text() for t in ax.get_legend().get_texts()] if ax.get_legend() else [],
    )


def _shape(collection: Any) -> tuple[tuple[float, float], ...]:
    """A scatter's marker shape, as the vertices of its path (rounded): equal shapes compare equal."""
    return tuple((round(float(x), 3), round(float(y), 3)) for x, y in collection.get_paths()[0].vertices)


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
    smoke = sweep.smoke
    facts = []
    for key, label in (("dataset", "dataset"), ("epochs", "epochs"), ("T", "T")):
        values = sorted({str(j.summary[key]) for j in done if j.summary and j.summary.get(key) is not None})
        if values:
            facts.append(f"{label} {', '.join(values)}")
    unreadable = sweep.unreadable
    lines = [
        f"# Sweep report{' ' + SMOKE if smoke else ''}: {sweep.source}",
        "",
        f"{len(sweep.jobs)} job(s), {len(done)} finished, "
        + (f"{len(unreadable)} unreadable, " if unreadable else "")
        + f"{len(sweep.jobs) - len(done) - len(unreadable)} unfinished; "
        f"swept: {', '.join(keys) or 'nothing'}" + (f"; {'; '.join(facts)}" if facts else "") + ". "
        "Accuracies in %, wall time in s; `test_acc` is the epoch selected on validation, "
        "`best_test_acc_over_epochs` the papers' optimistic figure.",
        "",
    ]
    if smoke:
        which = "all finished jobs" if len(smoke) == len(done) else f"jobs {', '.join(j.name for j in smoke)}"
        lines += [f"{SMOKE} {which}: {SMOKE_NOTE}", ""]
    lines += ["## All jobs", ""]
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
            f"Mean test accuracy (%) over seeds, {heatmap[0]} × {heatmap[1]}{per}; each cell gives the mean, "
            "the sample sd and n, the colorbar the colour range (at least "
            f"{MIN_COLOUR_SPAN:g} point wide); blank: no finished job.",
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
    if unreadable:
        notes = "; ".join(j.note for j in unreadable)
        lines += ["", f"Unreadable (left out of every table and figure): {notes}."]
    missing = [j for j in sweep.jobs if j.summary is None and not j.unreadable]
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
    scale = None
    heatmaps = [out_dir / REPORT_FILES["png"], out_dir / REPORT_FILES["pdf"]]
    if pair is not None:
        panels, scale = plot_heatmaps(
            heatmaps[0], sweep.jobs, keys, *pair, title=sweep.title("mean test accuracy (%) over seeds")
        )
        files += heatmaps
    else:
        for stale in heatmaps:  # from an earlier report of this sweep; it no longer matches the table
            stale.unlink(missing_ok=True)
    energy = None
    energy_files = [out_dir / REPORT_FILES["energy_png"], out_dir / REPORT_FILES["energy_pdf"]]
    if has_energy:
        energy = plot_energy(
            energy_files[0], sweep.jobs, keys, title=sweep.title("test accuracy against energy")
        )
        files += energy_files
    else:
        for stale in energy_files:  # no job measured its energy (any more): the figure would mislead
            stale.unlink(missing_ok=True)
    attached = None
    if sweep.parent is not None and attach(*sweep.parent, files, "report", "the sweep report"):
        attached = sweep.parent[0]
    return SweepReport(text, keys, rows, groups, files, pair, panels, attached, metrics, energy, scale)


END_COLUMNS = ("test_acc", "best_val_acc", "student_wall_s")


def end_of_sweep(sweep_dir: Path, ended: dict[int, str] | None = None) -> str:
    """What a multirun prints when its last job ends: each job's swept values, status, selected test
    accuracy, best validation accuracy and time, then the commands that report on it and follow it.

    ``ended``: the jobs the launcher saw end without a result (job number -> the scheduler's state), shown
    with that state, folder or not; the count is of all the sweep's jobs."""
    ended = ended or {}
    try:
        sweep = read_sweep_dir(sweep_dir)
        jobs, smoke = sweep.jobs, sweep.smoke
    except ReportError as exc:
        if not ended:
            return f"sweep {sweep_dir}: no job folders to summarise ({exc})"
        jobs, smoke = [], False
    keys = swept_keys(jobs)
    rows = job_rows(jobs, keys)
    for row in rows:
        if str(row["job"]).isdigit() and int(row["job"]) in ended:
            row["status"] = f"no result ({ended[int(row['job'])]})"
    listed = {int(r["job"]) for r in rows if str(r["job"]).isdigit()}
    for job_num in sorted(set(ended) - listed):
        rows.append({"job": str(job_num), **dict.fromkeys(keys), "status": f"no result ({ended[job_num]})"})
    rows.sort(key=lambda r: _natural(str(r["job"])))
    total = max(len(rows), _job_count(sweep_dir))
    done = sum(1 for r in rows if r["status"] == "finished")
    table = markdown_table(
        ["job", *keys, "status", "test acc (selected on val)", "best val acc", "student s"],
        (
            [r["job"], *(_label(r.get(k)) for k in keys), r["status"]]
            + [num(r.get(m), 0 if m.endswith("wall_s") else 2) for m in END_COLUMNS]
            for r in rows
        ),
    )
    mark = f" {SMOKE}: cut short, its numbers only check that the pipeline runs" if smoke else ""
    lines = [f"sweep {sweep_dir}: {done} of {total} jobs finished{mark}", *table]
    if done:
        lines.append(f"report (tables, heatmaps, MLflow): python -m seal_exp.report {sweep_dir}")
    if done < total and not ended:
        lines.append(
            f"what is left, and the command that trains it: python -m seal_exp.sweep status {sweep_dir}"
        )
    return "\n".join(lines)


def _job_count(sweep_dir: Path) -> int:
    """How many jobs the sweep's overrides make (0 where its multirun.yaml cannot say)."""
    from seal_exp.results.sweep_status import SweepError, expand, sweep_overrides

    try:
        return len(expand(sweep_overrides(sweep_dir)[0]))
    except (SweepError, ValueError, OSError, KeyError):
        return 0


class SweepSummaryCallback(Callback):
    """Prints :func:`end_of_sweep` when a multirun ends (also in a SLURM login node's log), then the jobs
    that ended without a result, with the scheduler's state and their own reason."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from seal_exp.results.sweep_status import relaunch_command
        from seal_exp.sweep_launch import LAUNCH, unfinished_table

        sweep_dir = Path(str(config.hydra.sweep.dir))
        print(end_of_sweep(sweep_dir, {job.num: job.state for job in LAUNCH.unfinished}), flush=True)
        if LAUNCH.unfinished:
            print(unfinished_table(LAUNCH.unfinished, relaunch_command(sweep_dir)), flush=True)
