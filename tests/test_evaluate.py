"""Beyond top-1, for every run: a training run ends with its student's firing rates, synaptic operations,
energy and accuracy at T' = 1…T; ``python -m seal_exp.evaluate`` measures any finished run again (other
T', FGSM / PGD) into ``evaluation.json`` and the same MLflow run, which stays FINISHED. Evaluations add up:
each measurement is kept with its settings and sample count until one of the same kind replaces it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from seal_exp import evaluate as evaluate_cli
from seal_exp.config import ConfigError
from seal_exp.data.embedded import EmbeddedImages
from seal_exp.models import build_student
from seal_exp.plan import prepare
from seal_exp.results.tables import column_title, measured_columns
from seal_exp.run import checkpoint
from seal_exp.run.files import read_results
from seal_exp.train import train
from tests.conftest import SMOKE, make_cfg

# digits, trained long enough (3 epochs of 45 batches, a few seconds) to be far above chance, so that
# accuracy at fewer timesteps and under attack have something to lose
RUN = (
    *SMOKE,
    "trainer.epochs=3",
    "trainer.batch_size=32",
    "trainer.limit_train_batches=null",
    "eval.after_training=true",
    "eval.energy_samples=100",
)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluated")
    cfg = make_cfg(root, [*RUN, "trainer.figures=true"])
    return root, cfg, train(cfg)


def test_a_run_ends_with_its_students_activity_energy_and_accuracy_at_fewer_timesteps(finished):
    root, _, summary = finished
    T = summary["T"]
    assert 0 < summary["firing_rate"] < 1
    assert summary["synops"] > 0 and summary["macs"] > 0 and summary["energy_uj"] > 0
    assert summary["teacher_macs"] > 0
    assert summary["energy_ratio"] == pytest.approx(summary["teacher_energy_uj"] / summary["energy_uj"])
    assert list(summary["test_acc_at_timesteps"]) == [str(t) for t in range(1, T + 1)]
    # T' = T is the run itself: the same weights on the same test samples
    assert summary["test_acc_at_timesteps"][str(T)] == pytest.approx(summary["test_acc"])
    assert summary["test_acc"] > 50  # trained: the figures below are about a working network
    print(summary["measures"]["seconds"], summary["student_wall_s"])
    activity = summary["measures"]["measurements"]["energy"]["activity"]
    assert activity["samples"] == 100 and len(activity["firing_rate_per_timestep"]) == T
    assert "4.6 pJ" in activity["regime"] and "0.9 pJ" in activity["regime"]
    written = json.loads((root / "out" / "summary.json").read_text())
    assert written["energy_uj"] == summary["energy_uj"]
    for figure in ("firing_rates", "accuracy_at_timesteps"):
        assert (root / "out" / f"{figure}.png").is_file() and (root / "out" / f"{figure}.pdf").is_file()
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    run = client.get_run(summary["mlflow_run_id"])
    for key in ("firing_rate", "synops", "macs", "energy_uj", "teacher_energy_uj", "energy_ratio"):
        assert run.data.metrics[key] == pytest.approx(summary[key]), key
    assert run.data.metrics[f"test_acc_at_T{T}"] == pytest.approx(summary["test_acc"])
    attached = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"firing_rates.png", "accuracy_at_timesteps.pdf"} <= attached


def _accuracy_of_a_fresh_network(cfg, state, T: int) -> float:
    """The oracle: the student built anew at T timesteps, the weights loaded, the test samples of the
    run (its limit of evaluation batches) classified by the mean of the per-timestep logits."""
    at_t = cfg.copy()
    at_t.neuron.T = T
    net = build_student(at_t)
    net.load_state_dict(state)
    net.eval()
    plan = prepare(cfg)
    data = plan.dataset.load()
    loader = plan.loader(data, data.test, plan.settings.eval_batch_size, shuffle=False)
    hits = seen = 0
    for i, (x, y) in enumerate(loader):
        if i == plan.settings.limit_eval_batches:
            break
        for sample, label in zip(x, y, strict=True):
            with torch.no_grad():
                logits = net(sample.unsqueeze(0))  # [T, 1, K], one sample at a time
            for module in net.modules():
                if hasattr(module, "reset") and hasattr(module, "v"):
                    module.reset()
            hits += int(logits.mean(0).argmax(-1).item() == label.item())
            seen += 1
    return 100.0 * hits / seen


def test_evaluate_logs_into_the_finished_run_and_keeps_it_finished(finished, capsys):
    root, cfg, summary = finished
    store = f"sqlite:///{root}/mlflow.db"
    run_id = summary["mlflow_run_id"]
    record = evaluate_cli.evaluate_run(
        run_id,
        ["eval.attack=pgd", "eval.epsilons=[0.05,0.2]", "eval.timesteps=[1,2,6]", "eval.attack_samples=40"],
        tracking_uri=store,
    )
    out = root / "out"
    assert json.loads((out / "evaluation.json").read_text()) == record
    assert list(record["test_acc_at_timesteps"]) == ["1", "2", "3", "4", "6"]  # 1…T and the listed ones
    state = checkpoint.load(out / "best.pt")["model"]
    for T in (2, 6):  # a fresh network at T' on the same weights gives the same accuracy
        oracle = _accuracy_of_a_fresh_network(cfg, state, T)
        assert record["test_acc_at_timesteps"][str(T)] == pytest.approx(oracle, abs=1e-4)  # 4 decimals
    robust = record["measurements"]["attack/pgd"]
    assert robust["samples"] == 40 and robust["result"]["attack"] == "pgd"
    assert robust["settings"] | {"epsilons": None} == {
        "attack_samples": 40,
        "epsilons": None,
        "attack_seed": 0,
        "pgd_steps": 10,
        "pgd_step_size": None,
    }
    assert set(robust["result"]["acc"]) == {"0.05", "0.2"}
    eps_02, eps_005 = record["robust_acc_pgd_eps0.2"], record["robust_acc_pgd_eps0.05"]
    assert eps_02 <= eps_005 <= record["robust_acc_pgd_clean"] == robust["result"]["clean_acc"]
    client = MlflowClient(store)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["robust_acc_pgd_eps0.2"] == pytest.approx(eps_02)
    assert run.data.metrics["robust_acc_pgd_clean"] == pytest.approx(record["robust_acc_pgd_clean"])
    assert run.data.metrics["robust_samples_pgd"] == 40
    assert run.data.metrics["test_acc_at_T6"] == pytest.approx(record["test_acc_at_timesteps"]["6"])
    assert "seal.evaluated" in run.data.tags
    artifacts = {a.path for a in client.list_artifacts(run_id)} | {
        a.path for a in client.list_artifacts(run_id, "evaluation")
    }
    assert {"evaluation.json", "evaluation/robustness.png", "evaluation/accuracy_at_timesteps.pdf"} <= set(
        artifacts
    )
    printed = capsys.readouterr().out
    assert "PGD robust accuracy" in printed and "still FINISHED" in printed


def test_evaluate_by_run_folder_measures_the_same_student(finished):
    root, _, summary = finished
    record = evaluate_cli.evaluate_run(str(root / "out"), ["eval.energy_samples=100"])
    assert record["energy_uj"] == pytest.approx(summary["energy_uj"])
    assert record["firing_rate"] == pytest.approx(summary["firing_rate"])
    assert {
        k: v for k, v in record["test_acc_at_timesteps"].items() if k in summary["test_acc_at_timesteps"]
    } == (pytest.approx(summary["test_acc_at_timesteps"]))
    assert record["history"][-1]["measured"] == [
        "energy",
        *(f"timesteps/{t}" for t in range(1, summary["T"] + 1)),
    ]
    # eval.attack=none, the default: nothing attacked now


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("eval.attack=cw", r"eval\.attack='cw'.*choose one of none, fgsm, pgd"),
        ("eval.epsilons=[0]", r"eval\.epsilons=.*each in \(0, 1\]"),
        ("eval.epsilons=[]", r"eval\.epsilons=.*at least one"),
        ("eval.timesteps=[0,2]", r"eval\.timesteps=.*>= 1"),
        ("eval.pgd_steps=0", r"eval\.pgd_steps=0.*integer >= 1"),
        ("eval.energy_samples=1.5", r"eval\.energy_samples=1\.5.*integer >= 1"),
        ("eval.e_mac_pj=-1", r"eval\.e_mac_pj=-1.*> 0"),
        ("optim.lr=0.5", r"optim\.lr: evaluate measures the run as it was trained"),
    ],
)
def test_bad_eval_settings_are_refused_before_any_data_is_read(finished, monkeypatch, override, message):
    root, _, _ = finished
    monkeypatch.setattr(EmbeddedImages, "load", lambda self: pytest.fail("data was read"))
    with pytest.raises(ConfigError, match=message):
        evaluate_cli.evaluate_run(str(root / "out"), [override])


def test_evaluate_refuses_what_is_not_a_finished_run(tmp_path, monkeypatch):
    monkeypatch.setattr(EmbeddedImages, "load", lambda self: pytest.fail("data was read"))
    (tmp_path / "run").mkdir()
    with pytest.raises(ConfigError, match=r"no summary\.json in .*has not finished"):
        evaluate_cli.evaluate_run(str(tmp_path / "run"), [])
    with pytest.raises(ConfigError, match="no such run folder"):
        evaluate_cli.evaluate_run(str(tmp_path / "missing"), [])
    assert evaluate_cli.main([]) == 2


def test_an_attack_on_event_frames_is_refused_before_training(tmp_path):
    events = ["dataset=mnist5k_dvs", "eval.after_training=true", "eval.attack=fgsm", "tracking=none"]
    cfg = make_cfg(tmp_path, events)
    with pytest.raises(ConfigError, match=r"eval\.attack=fgsm: dataset=mnist5k_dvs serves event frames"):
        prepare(cfg)
    assert OmegaConf.select(cfg, "eval.attack") == "fgsm"


# ---------------------------------------------------------------- evaluations add up


def copy_of_run(root: Path, where: Path, tracking_uri: str | None = None) -> Path:
    """The finished run's folder copied to ``where`` without its evaluations, tracked in a copy of its store
    (or in ``tracking_uri``), so that each test measures it from scratch and reads back only its own
    metrics."""
    folder = where / "run"
    shutil.copytree(root / "out", folder, ignore=shutil.ignore_patterns("evaluation*"))
    if tracking_uri is None:
        shutil.copy(root / "mlflow.db", where / "mlflow.db")
        tracking_uri = f"sqlite:///{where}/mlflow.db"
    cfg = OmegaConf.load(folder / "config.yaml")
    cfg.tracking.uri = tracking_uri
    OmegaConf.save(cfg, folder / "config.yaml")
    return folder


def _clean_accuracy_of_the_first(cfg, state, samples: int) -> float:
    """The oracle of an attack's clean accuracy: the first ``samples`` test samples in stored order, one at
    a time through a network built anew with the run's weights."""
    net = build_student(cfg)
    net.load_state_dict(state)
    net.eval()
    data = prepare(cfg).dataset.load()
    hits = 0
    for i in range(samples):
        x, label = data.test[i]
        with torch.no_grad():
            logits = net(x.unsqueeze(0))
        for module in net.modules():
            if hasattr(module, "reset") and hasattr(module, "v"):
                module.reset()
        hits += int(logits.mean(0).argmax(-1).item() == int(label))
    return 100.0 * hits / samples


def test_evaluations_add_up_and_a_repeated_one_replaces_only_itself(finished, tmp_path, capsys):
    """FGSM on 60 samples, then PGD on 30 without energy: evaluation.json, MLflow and the report's columns
    keep both attacks, each paired with the clean accuracy of its own samples; FGSM again replaces only
    FGSM; the firing-rate figure of the first evaluation stays."""
    root, cfg, summary = finished
    folder = copy_of_run(root, tmp_path)
    T = summary["T"]
    fgsm_args = ["eval.attack=fgsm", "eval.epsilons=[0.05,0.2]", "eval.attack_samples=60"]
    first = evaluate_cli.evaluate_run(str(folder), [*fgsm_args, "eval.energy_samples=50"])
    figures = folder / "evaluation"
    firing_png = (figures / "firing_rates.png").read_bytes()
    pgd_args = ["eval.attack=pgd", "eval.epsilons=[0.05]", "eval.attack_samples=30", "eval.pgd_steps=2"]
    second = evaluate_cli.evaluate_run(str(folder), [*pgd_args, "eval.energy=false", "eval.timesteps=[6]"])
    written = json.loads((folder / "evaluation.json").read_text())
    assert written == second
    steps = [f"timesteps/{t}" for t in [*range(1, T + 1), 6]]
    assert list(second["measurements"]) == ["energy", *steps, "attack/fgsm", "attack/pgd"]
    m = second["measurements"]
    assert m["energy"] == first["measurements"]["energy"]  # not measured again: kept as it was
    assert m["energy"]["samples"] == 50 and m["energy"]["settings"]["energy_samples"] == 50
    assert m["attack/fgsm"] == first["measurements"]["attack/fgsm"]
    assert (m["attack/fgsm"]["samples"], m["attack/pgd"]["samples"]) == (60, 30)
    assert m["attack/pgd"]["settings"]["pgd_steps"] == 2 and m["attack/pgd"]["result"]["steps"] == 2
    assert m["attack/fgsm"]["evaluated_at"] == first["evaluated_at"]
    assert [h["measured"][-1] for h in second["history"]] == ["attack/fgsm", "attack/pgd"]
    # each attack's clean accuracy is that of its own samples (the first 60, the first 30), and bounds it
    state = checkpoint.load(folder / "best.pt")["model"]
    for attack, samples in (("fgsm", 60), ("pgd", 30)):
        clean = second[f"robust_acc_{attack}_clean"]
        assert clean == pytest.approx(_clean_accuracy_of_the_first(cfg, state, samples), abs=1e-9)
        assert all(second[k] <= clean for k in second if k.startswith(f"robust_acc_{attack}_eps"))
    assert second["firing_rate"] == first["firing_rate"]
    assert (figures / "firing_rates.png").read_bytes() == firing_png  # not redrawn, not removed
    assert {"robustness.png", "robustness.pdf", "accuracy_at_timesteps.png"} <= {
        p.name for p in figures.iterdir()
    }
    assert "kept from earlier evaluations: energy (50 test samples" in capsys.readouterr().out
    # MLflow: each robust figure beside its own attack's clean accuracy and sample count
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    metrics = client.get_run(summary["mlflow_run_id"]).data.metrics
    for key in (
        "robust_acc_fgsm_clean",
        "robust_acc_fgsm_eps0.2",
        "robust_acc_pgd_clean",
        "robust_acc_pgd_eps0.05",
    ):
        assert metrics[key] == pytest.approx(second[key]), key
    assert (metrics["robust_samples_fgsm"], metrics["robust_samples_pgd"]) == (60, 30)
    # the report and the comparison read the run's results: both attacks, each with its clean column
    results = read_results(folder)
    columns = measured_columns([results])
    robust = [k for k in columns if k.startswith("robust_acc_")]
    assert [column_title(k) for k in robust] == [
        "FGSM clean",
        "FGSM ε=0.05",
        "FGSM ε=0.2",
        "PGD clean",
        "PGD ε=0.05",
    ]
    assert results["robust_acc_fgsm_eps0.2"] == second["robust_acc_fgsm_eps0.2"]

    third = evaluate_cli.evaluate_run(
        str(folder),
        ["eval.attack=fgsm", "eval.epsilons=[0.1]", "eval.attack_samples=20", "eval.energy=false"],
    )
    n = third["measurements"]
    assert n["attack/pgd"] == m["attack/pgd"] and n["energy"] == m["energy"]  # untouched
    assert n["attack/fgsm"]["samples"] == 20 and list(n["attack/fgsm"]["result"]["acc"]) == ["0.1"]
    assert "robust_acc_fgsm_eps0.2" not in third and "robust_acc_fgsm_eps0.1" in third  # replaced whole
    assert third["robust_acc_fgsm_clean"] == pytest.approx(
        _clean_accuracy_of_the_first(cfg, state, 20), abs=1e-9
    )
    assert n["timesteps/6"] == m["timesteps/6"]  # T'=6 was not asked this time: kept
    assert len(third["history"]) == 3


def test_an_older_single_evaluation_record_is_read(finished, tmp_path, capsys):
    """evaluation.json as written before evaluations added up: its energy and accuracies at T' are kept,
    its robust figures (counted on the attacked input alone) are not, and that is said."""
    root, _, summary = finished
    folder = copy_of_run(root, tmp_path)
    T = summary["T"]
    activity = {"samples": 40, "firing_rate": 0.125, "synops": 1e6, "macs": 2e5, "energy_uj": 1.82}
    older = {
        "format": 1,
        "trained_T": T,
        "test_samples": 360,
        "firing_rate": 0.125,
        "energy_uj": 1.82,
        "test_acc_at_timesteps": {**{str(t): 1.0 for t in range(1, T + 1)}, "8": 77.5},
        "robust_attack": "pgd",
        "robust_acc": {"0.03": 99.0},
        "robust_acc_pgd_eps0.03": 99.0,
        "activity": activity,
        "teacher_cost": None,
        "robustness": {
            "attack": "pgd",
            "samples": 40,
            "clean_acc": 90.0,
            "acc": {"0.03": 99.0},
            "steps": 10,
            "step_size": {"0.03": 0.0075},
        },
        "seconds": {"energy": 1.0},
        "settings": {"energy_samples": 40, "e_mac_pj": 4.6, "e_ac_pj": 0.9, "attack": "pgd"},
        "evaluated_at": "2026-12-01 10:00:00",
        "wall_s": 3.0,
        "mlflow_run_id": summary["mlflow_run_id"],
    }
    (folder / "evaluation.json").write_text(json.dumps(older))
    record = evaluate_cli.evaluate_run(str(folder), ["eval.energy=false"])
    m = record["measurements"]
    assert m["energy"]["activity"] == activity and m["energy"]["evaluated_at"] == "2026-12-01 10:00:00"
    assert m["energy"]["settings"] == {"energy_samples": 40, "e_mac_pj": 4.6, "e_ac_pj": 0.9}
    assert record["firing_rate"] == 0.125 and record["energy_uj"] == 1.82
    assert m["timesteps/8"]["acc"] == 77.5 and m["timesteps/8"]["samples"] is None  # kept
    assert record["test_acc_at_timesteps"][str(T)] == pytest.approx(summary["test_acc"])  # measured again
    assert not [k for k in record if k.startswith("robust_")] and not [
        k for k in m if k.startswith("attack/")
    ]
    assert (
        "the earlier PGD figures in evaluation.json counted samples misclassified" in capsys.readouterr().out
    )


# ---------------------------------------------------------------- bad input: one line, exit 2


@pytest.mark.parametrize("keep", [0.5, 0.0])
def test_a_cut_short_best_pt_is_refused_in_one_line(finished, tmp_path, monkeypatch, capsys, keep):
    root, _, _ = finished
    folder = copy_of_run(root, tmp_path)
    best = folder / "best.pt"
    best.write_bytes(best.read_bytes()[: int(keep * best.stat().st_size)])
    monkeypatch.setattr(EmbeddedImages, "load", lambda self: pytest.fail("data was read"))
    assert evaluate_cli.main([str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith(f"seal-exp: cannot read {best} (") and "cut short or damaged" in err
    assert not (folder / "evaluation.json").exists()


def test_a_run_id_is_looked_up_only_in_a_store_that_exists(finished, tmp_path, monkeypatch, capsys):
    """No $MLFLOW_TRACKING_URI and no store where the default one would be: one line, exit 2, and no
    empty mlflow.db is left behind; with $MLFLOW_TRACKING_URI naming the store, the run is found."""
    root, _, summary = finished
    run_id = summary["mlflow_run_id"]
    default = tmp_path / "checkout" / "mlflow.db"
    default.parent.mkdir()
    monkeypatch.setattr("seal_exp.tracking.default_tracking_uri", lambda: f"sqlite:///{default}")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(EmbeddedImages, "load", lambda self: pytest.fail("data was read"))
    assert evaluate_cli.main([run_id, "eval.attack=fgsm"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"seal-exp: no MLflow store at {default}; set MLFLOW_TRACKING_URI or pass the run folder"
    assert not default.exists()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
    found = evaluate_cli.locate(run_id, None)
    assert found.folder == (root / "out").resolve() and found.tracking_uri == f"sqlite:///{root}/mlflow.db"


def test_a_run_folder_away_from_its_store_is_measured_without_creating_one(finished, tmp_path, capsys):
    root, _, summary = finished
    gone = tmp_path / "elsewhere" / "mlflow.db"
    folder = copy_of_run(root, tmp_path, tracking_uri=f"sqlite:///{gone}")
    record = evaluate_cli.evaluate_run(str(folder), ["eval.energy=false"])
    assert json.loads((folder / "evaluation.json").read_text()) == record
    captured = capsys.readouterr()
    assert (
        f"MLflow run {summary['mlflow_run_id']} is not logged into: no MLflow store at {gone}" in captured.err
    )
    assert "not logged into (no store here)" in captured.out
    assert not gone.exists() and not gone.parent.exists()
