"""python -m seal_exp.report: a sweep's tables and heatmaps, from its folder or its parent MLflow run.

Fake sweeps (no training): a 2×2×2 α × β × T grid × 2 seeds with known accuracies, one job unfinished;
optionally with known firing rates, SynOps and energies, and evaluation.json files over some summaries.
Every expected number is computed here from those figures, not by the code under test.
"""

from __future__ import annotations

import csv
import itertools
import json
import statistics
from pathlib import Path

import matplotlib.image
import pytest
from mlflow.entities import Param
from mlflow.tracking import MlflowClient

from seal_exp.report import main
from seal_exp.results.sweep_report import read_parent_run, read_sweep_dir, write_report

ALPHAS, BETAS, TS, SEEDS = ("0.3", "0.6"), ("0.1", "0.2"), ("2", "4"), ("0", "1")
GRID = list(itertools.product(ALPHAS, BETAS, TS, SEEDS))  # job n is GRID[n], in Hydra's order
ACC = [91.2, 92.6, 93.0, 94.4, 90.1, 0.0, 95.5, 94.7, 96.3, 95.1, 97.2, 96.8, 93.9, 95.3, 97.9, 98.6]
UNFINISHED = 5  # α=0.3, β=0.2, T=2, seed=1
METRICS = [
    "test_acc",
    "test_acc_last",
    "best_test_acc_over_epochs",
    "best_val_acc",
    "teacher_test_acc",
    "student_wall_s",
    "teacher_wall_s",
]


def overrides(n: int) -> list[str]:
    a, b, t, s = GRID[n]
    return [f"distiller.alpha={a}", f"distiller.beta={b}", f"neuron.T={t}", f"seed={s}", "trainer.epochs=3"]


def summary(n: int, acc: list[float] = ACC) -> dict:
    t, s = GRID[n][2:]
    return {
        "stage": "distill",
        "dataset": "mnist5k",
        "test_acc": acc[n],
        "test_acc_last": acc[n] - 0.5 * (n % 3),
        "best_test_acc_over_epochs": acc[n] + 0.4,
        "best_val_acc": acc[n] + 1.0,
        "teacher_test_acc": 97.8,
        "wall_s": 10.0 + n + (40.0 if n == 0 else 0.0),
        "student_wall_s": 10.0 + n,
        "teacher_wall_s": 40.0 if n == 0 else 0.5,  # the first job trained the shared teacher
        "epochs": 3,
        "T": int(t),
        "seed": int(s),
    }


def metric(n: int, key: str) -> float:
    return summary(n)[key]


REGIME = "E_MAC 4.6 pJ × MACs + E_AC 0.9 pJ × SynOps (45 nm fp32, Horowitz 2014); BatchNorm folded"
# what a later ``python -m seal_exp.evaluate`` wrote beside two summaries: job 2 measured again, with attacks
EVALUATIONS = {
    2: {
        "energy_uj": 0.111,
        "robust_attack": "pgd",
        "robust_acc_pgd_eps0.03": 41.5,
        "robust_acc_pgd_eps0.1": 12.0,
        "robust_acc_fgsm_eps0.03": 55.0,
        "activity": {"regime": "not merged into the results"},
    },
    3: {"robust_acc_pgd_eps0.03": 44.5},
}
ROBUST = ["robust_acc_fgsm_eps0.03", "robust_acc_pgd_eps0.03", "robust_acc_pgd_eps0.1"]  # attack, then ε
MEASURED = ["firing_rate", "synops", "energy_uj", "energy_ratio", *ROBUST]


def measured(n: int) -> dict:
    """The figures job n's training run measured beyond top-1 (as summary.json holds them)."""
    return {
        "firing_rate": 0.05 + 0.01 * n,
        "synops": 1.0e6 + 0.25e6 * n,
        "macs": 3.0e4,
        "energy_uj": 0.2 + 0.03 * n,
        "energy_ratio": 10.0 + n,
        "measures": {"activity": {"regime": f"{REGIME}; energy_simple_uj: spikingjelly (…)"}},
    }


def quoted(n: int, key: str) -> float | None:
    """Job n's figure as the report should quote it: evaluation.json over summary.json."""
    return EVALUATIONS.get(n, {}).get(key, (summary(n) | measured(n)).get(key))


def make_sweep(
    folder: Path,
    unfinished: set[int] = frozenset({UNFINISHED}),
    with_measures: bool = False,
    acc: list[float] = ACC,
    extra: dict | None = None,
) -> Path:
    """A Hydra multirun folder as ``python -m seal_exp.train -m …`` leaves it (the files the report reads);
    ``with_measures``: the summaries carry ``measured`` figures and jobs 2 and 3 an evaluation.json;
    ``acc``: each job's test accuracy; ``extra``: more keys for every summary."""
    for n in range(len(GRID)):
        hydra = folder / str(n) / ".hydra"
        hydra.mkdir(parents=True)
        (hydra / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides(n)))
        (hydra / "config.yaml").write_text("seed: 0\n")
        (hydra / "hydra.yaml").write_text("hydra:\n  runtime:\n    choices:\n      distiller: seal\n")
        if n not in unfinished:
            figures = summary(n, acc) | (measured(n) if with_measures else {}) | (extra or {})
            (folder / str(n) / "summary.json").write_text(json.dumps(figures))
            if with_measures and n in EVALUATIONS:
                (folder / str(n) / "evaluation.json").write_text(json.dumps(EVALUATIONS[n]))
    return folder


def finished(a: str, b: str, t: str) -> list[int]:
    return [n for n, g in enumerate(GRID) if g[:3] == (a, b, t) and n != UNFINISHED]


def cell(jobs: list[int], acc: list[float] = ACC) -> str:
    """A heatmap cell as it should read: mean, sample sd (for two seeds or more) and n, computed here."""
    values = [acc[n] for n in jobs]
    spread = f"\n± {statistics.stdev(values):.2f}" if len(values) > 1 else ""
    return f"{statistics.fmean(values):.2f}{spread}\nn={len(values)}"


def panels_cells_say_mean_sd_and_n(panels) -> bool:
    return all(text.splitlines()[-1].startswith("n=") for p in panels for text in p.cells.values())


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, MlflowClient, str]:
    """One temporary SQLite MLflow store for the module (creating one takes seconds)."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(uri)
    experiment = client.create_experiment("seal-exp/mnist5k", artifact_location=str(root / "mlartifacts"))
    return uri, client, experiment


def report_artifacts(client: MlflowClient, run_id: str) -> set[str]:
    return {a.path for a in client.list_artifacts(run_id, "report")}


def markdown_rows(text: str, heading: str) -> list[dict[str, str]]:
    """The first pipe table after ``heading``, one {header: cell} per row."""
    lines = text[text.index(heading) :].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    table = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        table.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    header, _, *body = table
    return [dict(zip(header, cells, strict=True)) for cells in body]


def mean_pm_sd(values: list[float], digits: int, scale: float = 1.0, suffix: str = "") -> str:
    values = [v / scale for v in values]
    if not values:
        return "–"
    mean = statistics.fmean(values)
    spread = f" ± {statistics.stdev(values):.{digits}f}" if len(values) > 1 else ""
    return f"{mean:.{digits}f}{spread}{suffix}"


def test_a_sweep_folder_gives_every_job_the_seed_means_and_one_heatmap_panel_per_T(tmp_path, store, capsys):
    uri, client, experiment = store
    sweep = make_sweep(tmp_path / "multirun" / "2026-11-21" / "10-00-00")
    parent = client.create_run(experiment, run_name="sweep", tags={"sweep.parent": "true"}).info.run_id
    (sweep / "mlflow_parent_run_id").write_text(parent)
    (sweep / "mlflow_tracking_uri").write_text(uri)

    result = write_report(read_sweep_dir(sweep), sweep)

    # every job, one row each, the swept keys (not the constant trainer.epochs) and the metrics as columns
    with (sweep / "report.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == [
        "job",
        "distiller.alpha",
        "distiller.beta",
        "neuron.T",
        "seed",
        "status",
        *METRICS,
        "mlflow_run_id",
    ]
    assert [r["job"] for r in rows] == [str(n) for n in range(16)]
    for n, r in enumerate(rows):
        assert (r["distiller.alpha"], r["distiller.beta"], r["neuron.T"], r["seed"]) == GRID[n]
        if n == UNFINISHED:
            assert r["status"] == "unfinished" and all(r[m] == "" for m in METRICS)
        else:
            assert r["status"] == "finished"
            assert all(float(r[m]) == pytest.approx(metric(n, m)) for m in METRICS)
    text = (sweep / "report.md").read_text()
    assert "| 5 | 0.3 | 0.2 | 2 | 1 | unfinished | – | – |" in text
    assert f"| 0 | 0.3 | 0.1 | 2 | 0 | finished | {ACC[0]:.2f} | {metric(0, 'test_acc_last'):.2f} |" in text
    assert (
        "16 job(s), 15 finished, 1 unfinished; swept: distiller.alpha, distiller.beta, neuron.T, seed" in text
    )
    assert "Did not finish (no summary.json; see each job's train.log): job 5." in text

    # the mean ± sample sd over seeds of each (α, β, T), computed here
    for a, b, t in itertools.product(ALPHAS, BETAS, TS):
        jobs = finished(a, b, t)
        cells = []
        for m in ("test_acc", "test_acc_last"):
            values = [metric(n, m) for n in jobs]
            mean = statistics.fmean(values)
            cells.append(f"{mean:.2f} ± {statistics.stdev(values):.2f}" if len(values) > 1 else f"{mean:.2f}")
        seeds = ",".join(GRID[n][3] for n in jobs)
        assert f"| {a} | {b} | {t} | {len(jobs)} | {seeds} | {cells[0]} | {cells[1]} |" in text
    assert "| 0.3 | 0.2 | 2 | 1 | 0 | 90.10 | 89.60 |" in text  # the unfinished seed is left out

    # one panel per T, α across, β up, each cell the mean test accuracy over its finished seeds
    assert result.heatmap == ("distiller.alpha", "distiller.beta")
    assert [p.title for p in result.panels] == ["T=2", "T=4"]  # in the papers' notation
    assert all((p.x_label, p.y_label) == ("α", "β") for p in result.panels)
    for panel, t in zip(result.panels, TS, strict=True):
        assert panel.x_values == list(ALPHAS) and panel.y_values == list(BETAS)
        assert panel.cells == {(a, b): cell(finished(a, b, t)) for a, b in itertools.product(ALPHAS, BETAS)}
    assert panels_cells_say_mean_sd_and_n(result.panels)
    # one colour scale, its limits on the colorbar: the lowest and highest cell mean (they differ by 7 points)
    cell_means = [
        statistics.fmean(ACC[n] for n in finished(*g)) for g in itertools.product(ALPHAS, BETAS, TS)
    ]
    assert result.scale.low == pytest.approx(min(cell_means)) and result.scale.high == pytest.approx(
        max(cell_means)
    )
    assert (
        result.scale.ticks[0] == f"{min(cell_means):.2f}"
        and result.scale.ticks[-1] == f"{max(cell_means):.2f}"
    )
    assert f"colours from {min(cell_means):.2f} to {max(cell_means):.2f}" in result.scale.label
    assert result.scale.note == ""
    height, width, _ = matplotlib.image.imread(sweep / "report_heatmap.png").shape
    assert width > 1.5 * height  # the two panels side by side
    assert width >= 1000 and (sweep / "report_heatmap.pdf").read_bytes().startswith(b"%PDF")  # 200 dpi
    assert "![mean test accuracy](report_heatmap.png)" in text

    # no job measured anything beyond top-1: no measured column (the CSV header above), no energy figure
    assert result.energy is None and "Accuracy against energy" not in text and "energy (µJ)" not in text
    assert not list(sweep.glob("report_energy.*"))

    assert result.attached_to == parent
    assert report_artifacts(client, parent) == {
        "report/report.md",
        "report/report.csv",
        "report/report_heatmap.png",
        "report/report_heatmap.pdf",
    }

    # the command line prints the Markdown and says where the files are
    capsys.readouterr()
    assert main([str(sweep)]) == 0
    out = capsys.readouterr().out
    assert "## Mean ± sample sd over seeds" in out
    assert f"report files: report.md, report.csv, report_heatmap.png, report_heatmap.pdf in {sweep}" in out
    assert f"attached to MLflow run {parent} under report/" in out


def test_the_heatmap_leaves_combinations_without_a_finished_job_blank(tmp_path):
    gone = {n for n, g in enumerate(GRID) if g[:3] == ("0.6", "0.2", "4")}  # both seeds of one cell
    sweep = make_sweep(tmp_path / "sweep", unfinished=gone)
    result = write_report(read_sweep_dir(sweep), tmp_path / "out")
    t4 = result.panels[1]
    assert t4.title == "T=4" and ("0.6", "0.2") not in t4.cells and len(t4.cells) == 3
    assert t4.cells[("0.6", "0.1")] == cell(finished("0.6", "0.1", "4"))
    assert len(result.panels[0].cells) == 4
    text = (tmp_path / "out" / "report.md").read_text()
    assert "| 0.6 | 0.2 | 4 | 0 | – | – |" in text  # n = 0, no mean
    assert result.attached_to is None  # the sweep was not tracked
    assert not (sweep / "report.md").exists()  # --out DIR: the sweep folder is left alone

    # any other pair of swept keys: T across, α up, one panel per β
    other = write_report(read_sweep_dir(sweep), tmp_path / "out", heatmap=("neuron.T", "distiller.alpha"))
    assert [p.title for p in other.panels] == ["β=0.1", "β=0.2"]
    assert other.panels[0].x_values == list(TS) and other.panels[0].y_values == list(ALPHAS)


def test_measured_figures_add_columns_seed_means_and_an_accuracy_against_energy_plot(tmp_path):
    sweep = make_sweep(tmp_path / "multirun" / "2026-11-22" / "09-30-00", with_measures=True)
    result = write_report(read_sweep_dir(sweep), sweep)
    done = [n for n in range(len(GRID)) if n != UNFINISHED]

    # report.csv: the measured figures after the base metrics, raw, evaluation.json over summary.json
    with (sweep / "report.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[-len(MEASURED) - 1 :] == [*MEASURED, "mlflow_run_id"]
    assert "macs" not in rows[0]  # measured, but not a column the tables show
    for n, r in enumerate(rows):
        for key in MEASURED:
            expected = None if n == UNFINISHED else quoted(n, key)
            assert (r[key] == "") if expected is None else float(r[key]) == pytest.approx(expected)
    assert float(rows[2]["energy_uj"]) == 0.111 and float(rows[2]["synops"]) == 1.5e6

    # the job table: readable headers, each figure in its unit
    text = (sweep / "report.md").read_text()
    jobs = markdown_rows(text, "## All jobs")
    titles = ["firing rate", "SynOps (M)", "energy (µJ)", "energy ratio (ANN/SNN)"]
    robust_titles = ["FGSM ε=0.03", "PGD ε=0.03", "PGD ε=0.1"]
    assert list(jobs[0])[-7:] == [*titles, *robust_titles]
    for n in done:
        row = jobs[n]
        assert row["firing rate"] == f"{0.05 + 0.01 * n:.3f}"
        assert row["SynOps (M)"] == f"{(1.0e6 + 0.25e6 * n) / 1e6:.2f}"
        assert row["energy (µJ)"] == (f"{0.2 + 0.03 * n:.3f}" if n != 2 else "0.111")  # the evaluation's
        assert row["energy ratio (ANN/SNN)"] == f"{10.0 + n:.1f}×"
    assert [jobs[2][t] for t in robust_titles] == ["55.00", "41.50", "12.00"]
    assert [jobs[3][t] for t in robust_titles] == ["–", "44.50", "–"]
    assert all(jobs[UNFINISHED][t] == "–" for t in titles)

    # mean ± sample sd over the finished seeds of each (α, β, T)
    groups = markdown_rows(text, "## Mean ± sample sd over seeds")
    assert len(groups) == 8
    for group, (a, b, t) in zip(groups, itertools.product(ALPHAS, BETAS, TS), strict=True):
        seeds = finished(a, b, t)
        assert (group["distiller.alpha"], group["distiller.beta"], group["neuron.T"]) == (a, b, t)
        energies = [0.111 if n == 2 else 0.2 + 0.03 * n for n in seeds]
        assert group["energy (µJ)"] == mean_pm_sd(energies, 3)
        assert group["SynOps (M)"] == mean_pm_sd([1.0e6 + 0.25e6 * n for n in seeds], 2, scale=1e6)
        assert group["energy ratio (ANN/SNN)"] == mean_pm_sd([10.0 + n for n in seeds], 1, suffix="×")
        pgd = [EVALUATIONS[n]["robust_acc_pgd_eps0.03"] for n in seeds if n in EVALUATIONS]
        assert group["PGD ε=0.03"] == mean_pm_sd(pgd, 2)
    assert (
        groups[1]["PGD ε=0.03"]
        == f"{statistics.fmean([41.5, 44.5]):.2f} ± {statistics.stdev([41.5, 44.5]):.2f}"
    )
    assert groups[1]["FGSM ε=0.03"] == "55.00" and groups[0]["PGD ε=0.03"] == "–"

    # accuracy against energy: one marker per finished job, one colour per (α, β, T), a mean per colour
    drawn = result.energy
    assert drawn is not None and drawn.title == "test accuracy against energy — 2026-11-22/09-30-00"
    assert drawn.x_limits[0] == 0 and drawn.x_limits[1] >= 0.2 + 0.03 * 15
    # the accuracy axis is zoomed on the jobs (90.1 … 98.6), says so, and half a point shows on it
    low, high = drawn.y_limits
    assert low <= min(ACC[n] for n in done) and high >= max(ACC[n] for n in done) and low > 0
    assert high - low < 12 and drawn.y_label == f"test accuracy (%)\naxis from {low:g} %, not 0"
    assert drawn.x_label == "energy per test sample (µJ)"
    labels = [f"α={a}, β={b}, T={t}" for a, b, t in itertools.product(ALPHAS, BETAS, TS)]
    assert list(drawn.jobs) == labels and list(drawn.means) == labels
    assert sum(len(points) for points in drawn.jobs.values()) == len(done)
    for label, (a, b, t) in zip(labels, itertools.product(ALPHAS, BETAS, TS), strict=True):
        points = [(quoted(n, "energy_uj"), ACC[n]) for n in finished(a, b, t)]
        assert [pytest.approx(p) for p in drawn.jobs[label]] == points
        mean = (statistics.fmean(e for e, _ in points), statistics.fmean(acc for _, acc in points))
        assert drawn.means[label] == pytest.approx(mean)
    assert (sweep / "report_energy.png").is_file()
    assert (sweep / "report_energy.pdf").read_bytes().startswith(b"%PDF")
    assert [p.name for p in result.files][-2:] == ["report_energy.png", "report_energy.pdf"]
    assert "## Accuracy against energy" in text and "![accuracy against energy](report_energy.png)" in text
    assert f"against energy per test sample (µJ; {REGIME}), one marker per finished job" in text

    # the same sweep without its evaluations' attacks: no robust column at all
    for n in EVALUATIONS:
        (sweep / str(n) / "evaluation.json").unlink()
    again = write_report(read_sweep_dir(sweep), tmp_path / "again")
    assert again.metrics[-4:] == ["firing_rate", "synops", "energy_uj", "energy_ratio"]
    assert "PGD" not in again.markdown


def test_a_parent_mlflow_run_reads_each_jobs_evaluation_json_too(tmp_path, store):
    uri, client, experiment = store
    parent = client.create_run(experiment, run_name="sweep c", tags={"sweep.parent": "true"}).info.run_id
    for n in (2, 3, 4):  # job 2 was evaluated again later (evaluation.json at the run's root)
        tags = {
            "mlflow.parentRunId": parent,
            "hydra.job.num": str(n),
            "hydra.overrides": " ".join(overrides(n)),
        }
        child = client.create_run(experiment, tags=tags).info.run_id
        folder = tmp_path / "artifacts" / str(n)
        folder.mkdir(parents=True)
        (folder / "summary.json").write_text(json.dumps(summary(n) | measured(n)))
        client.log_artifact(child, str(folder / "summary.json"))
        if n == 2:
            (folder / "evaluation.json").write_text(json.dumps(EVALUATIONS[2]))
            client.log_artifact(child, str(folder / "evaluation.json"))
        client.set_terminated(child, "FINISHED")

    result = write_report(read_parent_run(parent, uri), tmp_path / "report")
    jobs = {r["job"]: r for r in result.jobs}
    assert jobs["2"]["energy_uj"] == 0.111 and jobs["2"]["robust_acc_pgd_eps0.03"] == 41.5
    assert (
        jobs["3"]["energy_uj"] == pytest.approx(0.2 + 0.03 * 3)
        and jobs["3"]["robust_acc_pgd_eps0.03"] is None
    )
    assert result.metrics[len(METRICS) :] == MEASURED
    assert report_artifacts(client, parent) >= {"report/report_energy.png", "report/report_energy.pdf"}


def test_a_parent_mlflow_run_gives_the_same_tables_as_its_folder(tmp_path, store, capsys):
    uri, client, experiment = store
    parent = client.create_run(experiment, run_name="sweep b", tags={"sweep.parent": "true"}).info.run_id
    first_try = {"mlflow.parentRunId": parent, "hydra.job.num": "3", "hydra.overrides": "seed=1"}
    client.set_terminated(client.create_run(experiment, start_time=1, tags=first_try).info.run_id, "FAILED")
    for n in range(len(GRID)):
        tags = {
            "mlflow.parentRunId": parent,
            "hydra.job.num": str(n),
            "hydra.overrides": " ".join(overrides(n)),
        }
        child = client.create_run(experiment, run_name="distill:SeAl", tags=tags).info.run_id
        a, b, t, s = GRID[n]
        params = {"distiller.alpha": a, "distiller.beta": b, "neuron.T": t, "seed": s, "trainer.epochs": "3"}
        client.log_batch(child, params=[Param(k, v) for k, v in params.items()])
        if n == UNFINISHED:
            client.set_terminated(child, "FAILED")
            continue
        path = tmp_path / "artifacts" / str(n) / "summary.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(summary(n)))
        client.log_artifact(child, str(path))
        client.set_terminated(child, "FINISHED")

    # no sweep folder on this machine: --out is required, and nothing is written without it
    assert main([parent, "--tracking-uri", uri]) == 2
    assert "pass --out DIR" in capsys.readouterr().err
    assert report_artifacts(client, parent) == set()

    out = tmp_path / "report"
    assert main([parent, "--tracking-uri", uri, "--out", str(out)]) == 0
    assert f"in {out}" in capsys.readouterr().out
    folder = write_report(read_sweep_dir(make_sweep(tmp_path / "sweep")), tmp_path / "from-folder")

    def tables(text: str) -> str:
        return text[text.index("## All jobs") : text.index("## Heatmap")]

    from_run = (out / "report.md").read_text()
    assert tables(from_run) == tables(folder.markdown)
    assert "job 5 (MLflow status FAILED)" in from_run
    with (out / "report.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 16  # the failed first try of job 3 gives way to its finished run
    assert [float(r["test_acc"]) for r in rows if r["status"] == "finished"] == [
        a for n, a in enumerate(ACC) if n != UNFINISHED
    ]
    assert report_artifacts(client, parent) == {
        "report/report.md",
        "report/report.csv",
        "report/report_heatmap.png",
        "report/report_heatmap.pdf",
    }


def test_fewer_than_two_numeric_swept_keys_means_no_heatmap_and_the_report_says_so(tmp_path):
    for n, (distiller, seed) in enumerate(itertools.product(("kd", "none"), (0, 1))):
        (tmp_path / str(n) / ".hydra").mkdir(parents=True)
        (tmp_path / str(n) / ".hydra" / "overrides.yaml").write_text(
            f"- distiller={distiller}\n- seed={seed}\n"
        )
        (tmp_path / str(n) / "summary.json").write_text(json.dumps({"test_acc": 90.0 + n, "seed": seed}))
    (tmp_path / "report_heatmap.png").write_bytes(b"from an earlier report")
    (tmp_path / "report_heatmap.pdf").write_bytes(b"from an earlier report")
    (tmp_path / "report_energy.png").write_bytes(b"from an earlier report")
    (tmp_path / "report_energy.pdf").write_bytes(b"from an earlier report")
    result = write_report(read_sweep_dir(tmp_path), tmp_path)
    assert result.heatmap is None and result.panels == []
    assert "No heatmap: fewer than two numeric swept keys besides the seed (swept: distiller, seed)." in (
        result.markdown
    )
    assert "| kd | 2 | 0,1 | 90.50 ± 0.71 |" in result.markdown
    assert not (tmp_path / "report_heatmap.png").exists()  # a stale one would contradict the table
    assert not (tmp_path / "report_heatmap.pdf").exists()
    assert not (tmp_path / "report_energy.png").exists() and not (tmp_path / "report_energy.pdf").exists()


def test_bad_inputs_are_refused_with_what_to_pass_before_anything_is_written(tmp_path, store, capsys):
    uri, client, experiment = store
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("not a job")
    before = sorted(tmp_path.rglob("*"))
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path} is not a sweep folder" in err and "pass a Hydra multirun folder" in err
    assert "mlflow_parent_run_id" in err

    (tmp_path / "one-run" / ".hydra").mkdir(parents=True)
    assert main([str(tmp_path / "one-run")]) == 2
    assert "a single run's folder, not a sweep" in capsys.readouterr().err

    assert main(["0123456789abcdef0123456789abcdef", "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err
    assert f"no MLflow run '0123456789abcdef0123456789abcdef' in {uri}" in err and "multirun" in err

    missing_store = tmp_path / "elsewhere" / "mlflow.db"
    assert main(["0123456789abcdef", "--tracking-uri", f"sqlite:///{missing_store}"]) == 2
    assert "no MLflow store at" in capsys.readouterr().err and not missing_store.parent.exists()

    lonely = client.create_run(experiment, run_name="alone").info.run_id
    assert main([lonely, "--tracking-uri", uri, "--out", str(tmp_path / "r")]) == 2
    assert f"MLflow run {lonely} in {uri} has no child runs" in capsys.readouterr().err

    sweep = make_sweep(tmp_path / "sweep")
    assert main([str(sweep), "--heatmap", "neuron.T,optim.lr"]) == 2
    assert "--heatmap: optim.lr not swept in this sweep" in capsys.readouterr().err
    assert not (sweep / "report.md").exists()
    assert sorted(p for p in tmp_path.rglob("*") if p.parent == tmp_path / "notes") == [
        p for p in before if p.parent == tmp_path / "notes"
    ]
    assert not (tmp_path / "r").exists() and not (tmp_path / "report.md").exists()


def test_combinations_on_one_spot_of_the_energy_plot_all_stay_visible(tmp_path):
    """α and β barely move energy or accuracy: here four combinations share each of two spots exactly.
    Each combination's mean marker must still show: hollow, its own shape and colour, and of a size
    that differs from every other marker on its spot, so the outlines nest instead of covering each other."""
    same = [95.0 if GRID[n][2] == "2" else 96.0 for n in range(len(GRID))]
    sweep = make_sweep(tmp_path / "sweep", unfinished=set(), acc=same)
    for n in range(len(GRID)):
        path = sweep / str(n) / "summary.json"
        energy = 0.2 if GRID[n][2] == "2" else 0.4
        path.write_text(json.dumps(json.loads(path.read_text()) | {"energy_uj": energy}))
    drawn = write_report(read_sweep_dir(sweep), tmp_path / "out").energy
    labels = [f"α={a}, β={b}, T={t}" for a, b, t in itertools.product(ALPHAS, BETAS, TS)]
    assert list(drawn.markers) == labels and drawn.legend[: len(labels)] == labels  # each in the legend
    markers = list(drawn.markers.values())
    assert all(m.hollow for m in markers)  # a filled marker would hide whatever lies under it
    assert len({m.shape for m in markers}) == len(labels) and len({m.edge for m in markers}) == len(labels)
    spots: dict[tuple[int, int], list] = {}
    for m in markers:
        spots.setdefault((round(m.at[0]), round(m.at[1])), []).append(m)
    assert sorted(len(on) for on in spots.values()) == [4, 4]  # the data do coincide
    for on in spots.values():
        diameters = sorted(m.size**0.5 for m in on)  # points
        assert all(b - a >= 1.0 for a, b in itertools.pairwise(diameters)), diameters


def test_cell_means_that_differ_by_little_get_a_one_point_colour_scale_and_a_note(tmp_path):
    """Means 0.2 points apart (a test sample or two) must not span the whole colour map."""
    close = [96.0 + 0.1 * (n % 3) for n in range(len(GRID))]
    sweep = make_sweep(tmp_path / "sweep", unfinished=set(), acc=close)
    result = write_report(read_sweep_dir(sweep), tmp_path / "out")
    means = [
        statistics.fmean(close[n] for n, g in enumerate(GRID) if g[:3] == c)
        for c in itertools.product(ALPHAS, BETAS, TS)
    ]
    sds = [
        statistics.stdev(close[n] for n, g in enumerate(GRID) if g[:3] == c)
        for c in itertools.product(ALPHAS, BETAS, TS)
    ]
    middle, spread = (min(means) + max(means)) / 2, max(means) - min(means)
    assert spread < 0.2
    scale = result.scale
    assert (scale.low, scale.high) == (pytest.approx(middle - 0.5), pytest.approx(middle + 0.5))
    assert scale.ticks[0] == f"{middle - 0.5:.2f}" and scale.ticks[-1] == f"{middle + 0.5:.2f}"
    assert f"the cell means differ by only {spread:.2f} points; colours span 1 point" in scale.note
    assert f"less than the seeds do (largest sd {max(sds):.2f})" in scale.note
    assert scale.title.splitlines()[1:] == scale.note.split("; ")  # said on the figure, under its title


def test_smoke_runs_are_marked_in_the_report_and_its_figures(tmp_path, capsys):
    sweep = make_sweep(tmp_path / "multirun" / "d" / "t", with_measures=True, extra={"smoke": True})
    result = write_report(read_sweep_dir(sweep), sweep)
    assert result.markdown.startswith(f"# Sweep report [smoke]: {sweep}")
    assert "[smoke] all finished jobs: cut short (debug=smoke" in result.markdown
    assert result.scale.title.startswith("[smoke] mean test accuracy")
    assert result.energy.title.startswith("[smoke] test accuracy against energy")

    # a summary written before runs recorded it: the job's composed config says it was cut short
    older = make_sweep(tmp_path / "older")
    for n in (0, 1):
        (older / str(n) / ".hydra" / "config.yaml").write_text(
            "stage: distill\ntrainer:\n  limit_train_batches: 3\n  limit_eval_batches: 2\n"
        )
    text = write_report(read_sweep_dir(older), tmp_path / "older-report").markdown
    assert "# Sweep report [smoke]" in text and "[smoke] jobs 0, 1: cut short" in text
    real = write_report(read_sweep_dir(make_sweep(tmp_path / "real")), tmp_path / "real-report")
    assert "[smoke]" not in real.markdown and not real.scale.title.startswith("[smoke]")


def test_a_job_whose_summary_is_not_json_is_named_and_the_report_goes_on(tmp_path, capsys):
    sweep = make_sweep(tmp_path / "sweep")
    broken = sweep / "3" / "summary.json"
    broken.write_text('{"test_acc": 94.4, "seed"')  # cut short while written
    assert main([str(sweep)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        f"seal-exp: warning: job 3 left out: {broken}: not a JSON object"
    )
    assert "restore it from the job's MLflow run" in err[0] and "delete it and train the job again" in err[0]
    text = (sweep / "report.md").read_text()
    assert "16 job(s), 14 finished, 1 unreadable, 1 unfinished" in text
    assert f"Unreadable (left out of every table and figure): {broken}: not a JSON object" in text
    assert "| 3 | 0.3 | 0.1 | 4 | 1 | unreadable | – |" in text
    assert "| 0.3 | 0.1 | 4 | 1 | 0 |" in text  # its combination: one seed left, its mean that seed's
    with (sweep / "report.csv").open() as f:
        assert [r["status"] for r in csv.DictReader(f)][3] == "unreadable"

    # a damaged overrides.yaml cannot be placed in the sweep: one line, exit 2, nothing written
    (sweep / "report.md").unlink()
    (sweep / "4" / ".hydra" / "overrides.yaml").write_text("- distiller.alpha=0.3\n- [unclosed\n")
    assert main([str(sweep)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{sweep / '4' / '.hydra' / 'overrides.yaml'}: not readable" in err[0]
    assert not (sweep / "report.md").exists()
