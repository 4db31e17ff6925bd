"""Beyond top-1, for every run: a training run ends with its student's firing rates, synaptic operations,
energy and accuracy at T' = 1…T; ``python -m seal_exp.evaluate`` measures any finished run again (other
T', FGSM / PGD) into ``evaluation.json`` and the same MLflow run, which stays FINISHED."""

from __future__ import annotations

import json

import pytest
import torch
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from seal_exp import evaluate as evaluate_cli
from seal_exp.config import ConfigError
from seal_exp.data.embedded import EmbeddedImages
from seal_exp.models import build_student
from seal_exp.plan import prepare
from seal_exp.run import checkpoint
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
    activity = summary["measures"]["activity"]
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
    robust = record["robustness"]
    assert robust["attack"] == "pgd" and robust["samples"] == 40
    assert set(record["robust_acc"]) == {"0.05", "0.2"}
    assert record["robust_acc"]["0.2"] <= record["robust_acc"]["0.05"] <= robust["clean_acc"]
    client = MlflowClient(store)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["robust_acc_pgd_eps0.2"] == pytest.approx(record["robust_acc"]["0.2"])
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
    assert record["test_acc_at_timesteps"] == pytest.approx(summary["test_acc_at_timesteps"])
    assert record["robustness"] is None  # eval.attack=none, the default


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
