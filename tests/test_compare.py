"""python -m seal_exp.compare: the statistics of the table, and a whole small comparison."""

from __future__ import annotations

import csv
import json
import math
import statistics

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
    assert "| kd | 0,1,2 | 96.00 ± 1.00 | 95.00 ± 1.00 |" in text and "| none | 0 | 93.00 |" in text


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
            f"paths.root={tmp_path}",
        ]
    )
    assert code == 0
    for name in ("comparison.md", "comparison.csv", "comparison.png", "comparison.pdf"):
        assert (sweep / name).is_file()
    text = (sweep / "comparison.md").read_text()
    assert "| none | 0 |" in text and "| kd | 0 |" in text and "2 finished job(s) of 2" in text
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
    assert "| kd | 0 | 96.00 |" in text and "1 finished job(s) of 3" in text
    assert "Did not finish (see each job's train.log): kdsnn (job 1, 2)." in text
    assert (tmp_path / "comparison.csv").is_file() and (tmp_path / "comparison.png").is_file()
