"""python -m seal_exp.compare: the statistics of the table, and a whole small comparison."""

from __future__ import annotations

import csv
import itertools
import json
import math
import statistics
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from seal_exp.compare import main
from seal_exp.results.comparison import aggregate, distiller_options, markdown, report, write_csv


def row(distiller: str, seed: int, acc: float, last: float, per_t: list[float]) -> dict:
    return {
        "distiller_option": distiller,
        "seed": seed,
        "test_acc": acc,
        "test_acc_last": last,
        "best_test_acc_over_epochs": max(acc, last),
        "wall_s": 10.0 + seed + (40.0 if seed == 0 else 0.0),
        "student_wall_s": 10.0 + seed,  # seed 0 also trained the shared teacher: left out here
        "per_timestep_test_acc": per_t,
        "teacher_test_acc": 97.0,
    }


def test_aggregate_gives_mean_and_sample_sd_per_distiller():
    rows = [
        row("kd", 1, 95.0, 94.0, [90.0, 94.0]),
        row("kd", 0, 97.0, 96.0, [92.0, 96.0]),
        row("kd", 2, 96.0, 95.0, [91.0, 95.0]),
        row("none", 0, 93.0, 93.0, [93.0, 93.0]),
    ]
    table = aggregate(rows, ["none", "kd"])
    assert [e["distiller"] for e in table] == ["none", "kd"]
    kd = table[1]
    assert kd["seeds"] == [0, 1, 2] and kd["n"] == 3
    assert kd["test_acc"] == pytest.approx(96.0)
    assert kd["test_acc_sd"] == pytest.approx(statistics.stdev([95.0, 97.0, 96.0]))  # n − 1
    assert kd["test_acc_last"] == pytest.approx(95.0) and kd["per_timestep_test_acc"] == [91.0, 95.0]
    assert kd["student_wall_s"] == pytest.approx(11.0)
    assert math.isnan(table[0]["test_acc_sd"])  # one seed: no spread is claimed
    text = markdown(table, "ctx")
    assert "| kd | 3 | 0,1,2 | 96.00 ± 1.00 | 95.00 ± 1.00 |" in text and "| none | 1 | 0 | 93.00 |" in text


PGD_003, PGD_01 = "robust_acc_pgd_eps0.03", "robust_acc_pgd_eps0.1"


def measured(
    firing_rate: float, synops: float, energy: float, robust: dict[str, float] | None = None
) -> dict:
    """What a run measured beyond top-1, as summary.json / evaluation.json hold it."""
    figures = {"firing_rate": firing_rate, "synops": synops, "macs": 2.0e4, "energy_uj": energy}
    return figures | (robust or {})


def test_measured_figures_get_mean_and_sd_per_distiller_and_columns_only_where_measured(tmp_path):
    kd = [  # seed 2 was never attacked: its robust accuracy is averaged over the seeds that were
        row("kd", 0, 97.0, 96.0, [92.0, 96.0]) | measured(0.12, 1.5e6, 0.31, {PGD_003: 40.0, PGD_01: 9.0}),
        row("kd", 1, 95.0, 94.0, [90.0, 94.0]) | measured(0.16, 1.9e6, 0.37, {PGD_003: 46.0}),
        row("kd", 2, 96.0, 95.0, [91.0, 95.0]) | measured(0.11, 1.3e6, 0.28),
    ]
    none = [row("none", 0, 93.0, 93.0, [93.0, 93.0]), row("none", 1, 92.0, 92.0, [92.0, 92.0])]
    table = aggregate([*kd, *none], ["none", "kd"])
    plain, distilled = table
    for key, values in (
        ("firing_rate", [0.12, 0.16, 0.11]),
        ("synops", [1.5e6, 1.9e6, 1.3e6]),
        ("energy_uj", [0.31, 0.37, 0.28]),
        (PGD_003, [40.0, 46.0]),
    ):
        assert distilled[key] == pytest.approx(statistics.fmean(values))
        assert distilled[f"{key}_sd"] == pytest.approx(statistics.stdev(values))
    assert distilled[PGD_01] == 9.0 and math.isnan(distilled[f"{PGD_01}_sd"])
    assert "macs" not in distilled  # measured, but not compared
    assert not any(k in plain for k in ("firing_rate", "energy_uj", "synops", PGD_003))

    text = markdown(table, "ctx")
    header = next(line for line in text.splitlines() if line.startswith("| distiller"))
    measured_titles = ["firing rate", "SynOps (M)", "energy (µJ)", "PGD ε=0.03", "PGD ε=0.1"]
    assert header.endswith(" | student s | " + " | ".join(measured_titles) + " |")
    energy = f"{statistics.fmean([0.31, 0.37, 0.28]):.3f} ± {statistics.stdev([0.31, 0.37, 0.28]):.3f}"
    synops = f"{statistics.fmean([1.5, 1.9, 1.3]):.2f} ± {statistics.stdev([1.5, 1.9, 1.3]):.2f}"
    pgd = f"{statistics.fmean([40.0, 46.0]):.2f} ± {statistics.stdev([40.0, 46.0]):.2f}"
    assert f"| {synops} | {energy} | {pgd} | 9.00 |" in text
    assert text.count("| – | – | – | – | – |") == 1  # the distiller that measured nothing
    assert "`energy (µJ)`: per test sample" in text

    write_csv(tmp_path / "comparison.csv", table)
    with (tmp_path / "comparison.csv").open() as f:
        rows = list(csv.DictReader(f))
    keys = ["firing_rate", "synops", "energy_uj", PGD_003, PGD_01]
    assert list(rows[0])[-10:] == [f"{k}_{stat}" for k in keys for stat in ("mean", "sd")]
    assert float(rows[1]["synops_mean"]) == pytest.approx(statistics.fmean([1.5e6, 1.9e6, 1.3e6]))  # raw
    assert rows[0]["energy_uj_mean"] == ""

    # nothing measured anywhere: the table and the CSV are as before, with no measured column
    text = markdown(aggregate(none), "ctx")
    assert "energy" not in text and "SynOps" not in text and "firing rate" not in text
    write_csv(tmp_path / "plain.csv", aggregate(none))
    assert (
        (tmp_path / "plain.csv").read_text().splitlines()[0].endswith(",teacher_test_acc,student_wall_s_mean")
    )


def test_the_report_quotes_a_later_evaluation_over_the_summary(tmp_path):
    for job, seed in (("0", 0), ("1", 1)):
        (tmp_path / job / ".hydra").mkdir(parents=True)
        (tmp_path / job / ".hydra" / "hydra.yaml").write_text(
            "hydra:\n  runtime:\n    choices:\n      distiller: kd\n"
        )
        summary = row("kd", seed, 96.0, 95.0, [95.0, 96.0]) | measured(0.1, 1.0e6, 0.5 + seed)
        (tmp_path / job / "summary.json").write_text(
            json.dumps(summary | {"dataset": "mnist5k", "T": 2, "epochs": 3})
        )
    # job 1 measured again later, now with an attack: its energy and robust accuracy are the ones quoted
    (tmp_path / "1" / "evaluation.json").write_text(
        json.dumps({"energy_uj": 0.7, "robust_acc_fgsm_eps0.03": 61.0})
    )
    text = report(tmp_path, ["kd"])
    energy = f"{statistics.fmean([0.5, 0.7]):.3f} ± {statistics.stdev([0.5, 0.7]):.3f}"
    assert f"| {energy} | 61.00 |" in text and "FGSM ε=0.03" in text


@pytest.mark.slow
def test_a_small_comparison_writes_its_table_and_attaches_it_to_the_parent_run(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    code = main(
        [
            "--distillers",
            "none,kd",
            "--seeds",
            "0",  # the seed statistics are tested on made-up rows above; here: the command end to end
            "--sweep-dir",
            str(sweep),
            "dataset=digits",
            "debug=smoke",
            "trainer.progress=false",
            "trainer.figures=false",  # each job's own figures and model: tested with the runs
            "tracking.log_model=false",
            f"paths.root={tmp_path}",
        ]
    )
    assert code == 0
    for name in ("comparison.md", "comparison.csv", "comparison.png", "comparison.pdf"):
        assert (sweep / name).is_file()
    text = (sweep / "comparison.md").read_text()
    assert "| none | 1 | 0 |" in text and "| kd | 1 | 0 |" in text and "2 finished job(s) of 2" in text
    assert text.startswith("Test accuracy (%), mean ± sample sd over seeds. [smoke] dataset digits, T=4")
    assert "| firing rate | SynOps (M) | energy (µJ) |" in text  # measured after training, by default
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    parent = (sweep / "mlflow_parent_run_id").read_text().strip()
    assert {a.path for a in client.list_artifacts(parent, "comparison")} == {
        "comparison/comparison.md",
        "comparison/comparison.csv",
        "comparison/comparison.png",
        "comparison/comparison.pdf",
    }
    assert "wall time of the whole comparison" in capsys.readouterr().out


def test_unknown_distiller_or_bad_seeds_are_refused_before_anything_runs(tmp_path, capsys):
    assert main(["--distillers", "none,nope", "--sweep-dir", str(tmp_path / "s")]) == 2
    assert "unknown nope" in capsys.readouterr().err
    assert main(["--seeds", "0,x", "--sweep-dir", str(tmp_path / "s")]) == 2
    assert not (tmp_path / "s").exists()
    assert {"none", "kd", "seal"} <= set(distiller_options())


def test_the_report_names_jobs_that_did_not_finish(tmp_path):
    for job, distiller, finished in (("0", "kd", True), ("1", "kdsnn", False), ("2", "kdsnn", False)):
        hydra_dir = tmp_path / job / ".hydra"
        hydra_dir.mkdir(parents=True)
        (hydra_dir / "hydra.yaml").write_text(
            f"hydra:\n  runtime:\n    choices:\n      distiller: {distiller}\n"
        )
        if finished:
            summary = row(distiller, 0, 96.0, 95.0, [95.0, 96.0]) | {
                "dataset": "mnist5k",
                "T": 2,
                "epochs": 3,
            }
            (tmp_path / job / "summary.json").write_text(json.dumps(summary))
    text = report(tmp_path, ["kd", "kdsnn"], expected=3)
    assert "| kd | 1 | 0 | 96.00 |" in text and "1 finished job(s) of 3" in text
    assert "Did not finish (see each job's train.log): kdsnn (job 1, 2)." in text
    assert (tmp_path / "comparison.csv").is_file() and (tmp_path / "comparison.png").is_file()


ALPHAS, BETAS, TS, SEEDS = ("0.3", "0.6"), ("0.05", "0.15"), ("2", "4"), (0, 1, 2)
SPREAD = (0.0, 0.7, -0.4)  # what each seed adds to a combination's accuracy


def accuracy(a: str, b: str, t: str, seed: int) -> float:
    return 90.0 + 4 * float(a) + 10 * float(b) + float(t) / 2 + SPREAD[seed] * (1 + float(a))


def alpha_beta_T_sweep(folder: Path, extra: dict | None = None) -> Path:
    """An α × β × T × seed multirun folder as Hydra and the runs leave it (overrides, choices, summary)."""
    grid = itertools.product(ALPHAS, BETAS, TS, SEEDS)
    for n, (a, b, t, seed) in enumerate(grid):
        hydra = folder / str(n) / ".hydra"
        hydra.mkdir(parents=True)
        overrides = [f"distiller.alpha={a}", f"distiller.beta={b}", f"neuron.T={t}", f"seed={seed}"]
        (hydra / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
        (hydra / "hydra.yaml").write_text("hydra:\n  runtime:\n    choices:\n      distiller: seal\n")
        acc = accuracy(a, b, t, seed)
        summary = row("seal", seed, acc, acc - 0.5, [acc - 1.0] * (int(t) - 1) + [acc])
        summary |= {"dataset": "mnist5k", "T": int(t), "epochs": 3} | (extra or {})
        (folder / str(n) / "summary.json").write_text(json.dumps(summary))
    return folder


def table_rows(text: str) -> list[dict[str, str]]:
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header, _, *body = ([c.strip() for c in line.strip("|").split("|")] for line in lines)
    return [dict(zip(header, cells, strict=True)) for cells in body]


def test_report_on_an_alpha_beta_T_sweep_averages_only_the_seeds(tmp_path, capsys):
    sweep = alpha_beta_T_sweep(tmp_path / "sweep")
    assert main(["--report", str(sweep)]) == 0
    text = (sweep / "comparison.md").read_text()
    rows = table_rows(text)
    assert len(rows) == 8  # one per (α, β, T), not one per distiller
    for r, (a, b, t) in zip(rows, itertools.product(ALPHAS, BETAS, TS), strict=True):
        assert (r["distiller"], r["distiller.alpha"], r["distiller.beta"], r["neuron.T"]) == ("seal", a, b, t)
        assert r["n"] == "3" and r["seeds"] == "0,1,2"
        accs = [accuracy(a, b, t, seed) for seed in SEEDS]
        assert (
            r["test acc (selected on val)"] == f"{statistics.fmean(accs):.2f} ± {statistics.stdev(accs):.2f}"
        )
        assert len(r["per-timestep test acc"].split(" / ")) == int(t)
    # the context quotes what all rows share, not the first job's T
    context = text.splitlines()[0]
    assert "dataset mnist5k, 3 epochs; swept: distiller.alpha, distiller.beta, neuron.T;" in context
    assert "T=" not in context and "24 finished job(s)" in context
    with (sweep / "comparison.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [(r["distiller.alpha"], r["distiller.beta"], r["neuron.T"], r["n"]) for r in table] == [
        (a, b, t, "3") for a, b, t in itertools.product(ALPHAS, BETAS, TS)
    ]
    assert float(table[0]["test_acc_sd"]) == pytest.approx(
        statistics.stdev(accuracy("0.3", "0.05", "2", s) for s in SEEDS)
    )


def test_a_setting_varied_without_an_override_still_splits_the_rows(tmp_path):
    """Two presets with different T (no neuron.T override): T becomes a column, never averaged over."""
    sweep = alpha_beta_T_sweep(tmp_path / "sweep")
    for job in sweep.iterdir():  # the overrides no longer say T; only the summaries do
        path = job / ".hydra" / "overrides.yaml"
        path.write_text("".join(line for line in path.read_text().splitlines(True) if "neuron.T" not in line))
    rows = table_rows(report(sweep))
    assert len(rows) == 8 and {r["T"] for r in rows} == {"2", "4"} and all(r["n"] == "3" for r in rows)


def test_a_job_whose_summary_is_not_json_is_named_and_left_out(tmp_path, capsys):
    sweep = alpha_beta_T_sweep(tmp_path / "sweep")
    broken = sweep / "1" / "summary.json"  # α=0.3, β=0.05, T=2, seed 1
    broken.write_text("")
    assert main(["--report", str(sweep)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        f"seal-exp: warning: job 1 left out: {broken}: not a JSON object"
    )
    text = (sweep / "comparison.md").read_text()
    first = table_rows(text)[0]
    accs = [accuracy("0.3", "0.05", "2", s) for s in (0, 2)]
    assert first["n"] == "2" and first["seeds"] == "0,2"
    assert (
        first["test acc (selected on val)"] == f"{statistics.fmean(accs):.2f} ± {statistics.stdev(accs):.2f}"
    )
    assert f"Unreadable (left out): job 1: {broken}: not a JSON object" in text


def test_smoke_runs_are_marked_in_the_table_and_the_figure(tmp_path, monkeypatch):
    from seal_exp import figures

    titles = []
    real_save = figures.save

    def keep(fig, path):
        titles.append(fig._suptitle.get_text())
        return real_save(fig, path)

    monkeypatch.setattr(figures, "save", keep)
    sweep = alpha_beta_T_sweep(tmp_path / "sweep", extra={"smoke": True})
    text = report(sweep)
    assert text.startswith("Test accuracy (%), mean ± sample sd over seeds. [smoke] dataset mnist5k")
    assert "[smoke] every job: cut short (debug=smoke" in text
    assert titles == ["[smoke] dataset mnist5k, 3 epochs"]


def test_the_sweep_goes_under_paths_root(tmp_path, monkeypatch, capsys):
    """Not into the checkout: paths.root decides where everything is written, sweeps included."""
    import seal_exp.compare

    commands = []
    monkeypatch.setattr(seal_exp.compare.subprocess, "call", lambda command: commands.append(command) or 0)
    assert main(["--distillers", "none", "--seeds", "0", "dataset=digits", f"paths.root={tmp_path}"]) == 1
    (sweep_dir,) = [c.split("=", 1)[1] for c in commands[0] if c.startswith("hydra.sweep.dir=")]
    assert Path(sweep_dir).parent == tmp_path / "multirun" / "compare"
    assert "the sweep finished no job" in capsys.readouterr().err  # nothing ran: the call was replaced
    # what `make sweep` asks for its folder
    assert main(["--print-multirun-root", f"paths.root={tmp_path / 'r'}", "seed=0,1"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "r" / "multirun")
    assert main(["--print-multirun-root", "paths.rooot=/x"]) == 2
    assert "paths.rooot" in capsys.readouterr().err
