"""python -m seal_exp.compare: the statistics of the table, and a whole small comparison."""

from __future__ import annotations

import json
import math
import statistics

import pytest
from mlflow.tracking import MlflowClient

from seal_exp.compare import main
from seal_exp.results.comparison import aggregate, distiller_options, markdown, report


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


@pytest.mark.slow
def test_a_small_comparison_writes_its_table_and_attaches_it_to_the_parent_run(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    code = main(
        [
            "--distillers",
            "none,kd",
            "--seeds",
            "0,1",
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
    assert "| none | 0,1 |" in text and "| kd | 0,1 |" in text and "4 finished job(s) of 4" in text
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
