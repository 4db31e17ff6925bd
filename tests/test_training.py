"""Whole runs through train(cfg): every distiller, the teacher cache, MLflow records and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from seal_exp.config import ConfigError
from seal_exp.data.embedded import EmbeddedImages
from seal_exp.distillers.seal import SeAl
from seal_exp.run import checkpoint
from seal_exp.train import train
from seal_exp.training.epoch import NonFiniteLoss
from tests.conftest import SMOKE, make_cfg, tracked_runs

SUMMARY_KEYS = {
    "test_acc",
    "test_acc_last",
    "best_val_acc",
    "teacher_test_acc",
    "per_timestep_test_acc",
    "epochs",
    "wall_s",
    "mlflow_run_id",
}


@pytest.mark.parametrize("distiller", ["none", "kd", "seal"])
def test_smoke_run_of_each_distiller(shared_root, tmp_path, distiller):
    summary = train(
        make_cfg(shared_root, [*SMOKE, f"distiller={distiller}", "tracking=none"], output=tmp_path)
    )
    assert summary.keys() >= SUMMARY_KEYS
    assert len(summary["per_timestep_test_acc"]) == 4
    assert 0 <= summary["test_acc"] <= 100
    assert (summary["teacher_test_acc"] is None) == (distiller == "none")
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["test_acc"] == summary["test_acc"] and on_disk["mlflow_run_id"] is None
    for name in ("epochs.csv", "last.pt", "best.pt"):
        assert (tmp_path / name).is_file(), name
    assert not (tmp_path / "training_curves.png").exists()  # trainer.figures=false (make_cfg)


def test_last_checkpoint_loads_with_weights_only(shared_root, tmp_path):
    train(make_cfg(shared_root, [*SMOKE, "tracking=none", "trainer.epochs=2"], output=tmp_path))
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["epoch"] == 2 and {"model", "optimizer", "scheduler", "rng", "best_val_acc"} <= state.keys()
    assert not list(tmp_path.glob(".*.tmp")), "atomic writes leave no temporary files behind"


def test_none_does_not_build_or_train_a_teacher(tmp_path):
    train(make_cfg(tmp_path, [*SMOKE, "distiller=none", "tracking=none"]))
    assert not (tmp_path / ".cache" / "teachers").exists()


def test_teacher_is_trained_once_then_reused_from_the_cache(tmp_path):
    first = train(make_cfg(tmp_path, [*SMOKE, "tracking=none"], output=tmp_path / "a"))
    cached = list((tmp_path / ".cache" / "teachers").glob("digits-cnn-*.pt"))
    assert first["teacher_origin"] == "trained" and len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    second = train(make_cfg(tmp_path, [*SMOKE, "tracking=none", "distiller=kd"], output=tmp_path / "b"))
    assert second["teacher_origin"] == "cache"
    assert second["teacher_checkpoint"] == str(cached[0])
    assert cached[0].stat().st_mtime_ns == stamp
    assert second["teacher_test_acc"] == first["teacher_test_acc"]
    # a different recipe is a different teacher
    third = train(
        make_cfg(tmp_path, [*SMOKE, "tracking=none", "teacher.optim.lr=0.01"], output=tmp_path / "c")
    )
    assert third["teacher_origin"] == "trained"
    assert len(list((tmp_path / ".cache" / "teachers").glob("*.pt"))) == 2


def test_student_results_do_not_depend_on_where_the_teacher_came_from(tmp_path):
    """Same seed, same config: the run that trained the teacher and the run that reused it agree."""
    a = train(make_cfg(tmp_path, [*SMOKE, "tracking=none", "trainer.epochs=2"], output=tmp_path / "a"))
    b = train(make_cfg(tmp_path, [*SMOKE, "tracking=none", "trainer.epochs=2"], output=tmp_path / "b"))
    assert (a["teacher_origin"], b["teacher_origin"]) == ("trained", "cache")
    assert a["test_acc"] == b["test_acc"] and a["per_timestep_test_acc"] == b["per_timestep_test_acc"]
    sa, sb = torch.load(tmp_path / "a" / "last.pt"), torch.load(tmp_path / "b" / "last.pt")
    assert all(torch.equal(sa["model"][k], sb["model"][k]) for k in sa["model"])


def test_stage_teacher_trains_only_the_teacher_and_a_checkpoint_can_be_reused(tmp_path):
    summary = train(make_cfg(tmp_path, [*SMOKE, "stage=teacher", "tracking=none"], output=tmp_path / "t"))
    assert summary["stage"] == "teacher" and "test_acc" not in summary
    ckpt = Path(summary["teacher_checkpoint"])
    record = checkpoint.load(ckpt)
    assert record["arch"] == "cnn" and record["dataset"] == "digits" and record["num_classes"] == 10
    assert 0 <= record["test_acc"] <= 100 and not (tmp_path / "t" / "last.pt").exists()
    reused = train(make_cfg(tmp_path / "other", [*SMOKE, "tracking=none", f"teacher.checkpoint={ckpt}"]))
    assert reused["teacher_origin"] == "checkpoint"


def test_a_mismatching_teacher_checkpoint_is_refused_before_any_data_is_read(tmp_path, monkeypatch):
    summary = train(make_cfg(tmp_path, [*SMOKE, "stage=teacher", "tracking=none"]))
    ckpt = summary["teacher_checkpoint"]
    monkeypatch.setattr(EmbeddedImages, "load", lambda self: pytest.fail("data was read"))
    with pytest.raises(ConfigError, match=r"dataset: the checkpoint has 'digits', this run needs 'mnist5k'"):
        train(make_cfg(tmp_path, ["tracking=none", f"teacher.checkpoint={ckpt}"]))
    with pytest.raises(ConfigError, match="architecture settings"):
        train(
            make_cfg(
                tmp_path,
                [*SMOKE, "tracking=none", f"teacher.checkpoint={ckpt}", "teacher.model.channels=[8,16]"],
            )
        )
    with pytest.raises(ConfigError, match="no such file"):
        train(make_cfg(tmp_path, [*SMOKE, "tracking=none", f"teacher.checkpoint={tmp_path}/missing.pt"]))
    junk = tmp_path / "junk.pt"
    torch.save({"state_dict": {}}, junk)
    with pytest.raises(ConfigError, match="not a seal-exp teacher checkpoint"):
        train(make_cfg(tmp_path, [*SMOKE, "tracking=none", f"teacher.checkpoint={junk}"]))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("distiller.alpha=-0.3", r"distiller\.alpha=-0\.3 is invalid: the ELA weight must be >= 0"),
        ("distiller.beta=-1", r"distiller\.beta=-1 is invalid"),
        ("neuron.T=0", r"neuron\.T=0 is invalid: the number of timesteps must be an integer >= 1"),
        ("neuron.decay=1.5", r"neuron\.decay=1\.5 is invalid"),
        (
            "+distiller.gamma=1",
            r"distiller\.gamma is not a known key for seal_exp\.distillers\.seal\.SeAl.*"
            r"Accepted keys: alpha, beta, tau, hard_loss",
        ),
        ("+neuron.alpha=2", r"neuron\.alpha is not a known key"),
        ("+trainer.epoch=3", r"trainer\.epoch is not a known key"),
        ("trainer.epochs=0", r"trainer\.epochs=0 is invalid"),
        ("optim.lr=-0.1", r"optim\.lr=-0\.1 is invalid"),
        (
            "sched=step sched.step_size=0",
            r"sched\.step_size=0 is invalid: the number of epochs between decays",
        ),
        ("sched=step sched.gamma=0", r"sched\.gamma=0 is invalid"),
        ("stage=student", r"stage='student' is invalid: choose one of distill, teacher"),
        ("dataset.num_classes=7", r"dataset\.num_classes=7 is invalid"),
        ("tracking.uri=sqlite:///relative.db", r"tracking\.uri=.* is invalid: use an absolute path"),
    ],
)
def test_bad_input_is_refused_before_data_or_tracking(tmp_path, monkeypatch, override, message):
    monkeypatch.setattr(EmbeddedImages, "load", lambda self: pytest.fail("data was read"))
    with pytest.raises(ConfigError, match=message):
        train(make_cfg(tmp_path, [*SMOKE, *override.split()]))
    assert not (tmp_path / "mlflow.db").exists(), "a refused config must not leave a tracked run"


def test_the_step_schedule_multiplies_the_rate_by_gamma_every_step_size_epochs(shared_root, tmp_path):
    """sched=step (the Strong2Weak/Weak2Strong recipe): the rate each epoch trained with, from epochs.csv."""
    import csv

    overrides = [
        *SMOKE,
        "tracking=none",
        "distiller=none",
        "trainer.epochs=5",
        "trainer.limit_train_batches=1",
    ]
    overrides += ["sched=step", "sched.step_size=2", "sched.gamma=0.1", "optim.lr=0.5"]
    train(make_cfg(shared_root, overrides, output=tmp_path))
    with (tmp_path / "epochs.csv").open() as f:
        rates = [float(row["lr"]) for row in csv.DictReader(f)]
    assert rates == pytest.approx([0.5, 0.5, 0.05, 0.05, 0.005], rel=1e-12)


def test_unknown_key_without_plus_is_refused_by_hydra(tmp_path):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match=r"distiller\.gamma"):
        make_cfg(tmp_path, ["distiller.gamma=1"])


def test_run_is_tracked_in_mlflow_with_params_metrics_and_artifacts(tmp_path):
    summary = train(make_cfg(tmp_path, [*SMOKE, "trainer.epochs=2", "trainer.figures=true"]))
    (run,) = tracked_runs(tmp_path)
    assert run.info.run_id == summary["mlflow_run_id"] and run.info.status == "FINISHED"
    assert (
        run.info.run_name == "[smoke] seal α=0.6 β=0.15 τ=3 T=4 seed=0"
    )  # what differs between runs, as papers write it; [smoke]: cut short (debug=smoke), no result
    params = run.data.params
    # the method's settings under its own name; classes, not import paths; no machine paths
    assert (params["method"], params["seal.alpha"], params["seal.beta"]) == ("seal", "0.6", "0.15")
    assert (params["neuron.T"], params["dataset.name"], params["seal.class"]) == ("4", "digits", "SeAl")
    assert params["student.class"] == "SpikingConvNet" and params["seal.hard_loss.class"] == "tet_ce"
    assert not {"distiller.alpha", "distiller._target_", "teacher.cache_dir"} & set(params)
    assert not {k.split(".")[0] for k in params} & {"hydra", "paths", "tracking"}
    assert not any(str(tmp_path) in v for v in params.values())
    assert (
        run.data.tags["stage"] == "distill" and run.data.tags["spikingjelly.kernel"] == "lif=torch-reference"
    )
    assert "git.commit" in run.data.tags and run.data.tags["method"] == "seal"
    assert run.data.tags["mlflow.source.name"] == "seal_exp.train"  # the UI's Source column
    (used,) = run.inputs.dataset_inputs  # the UI's Dataset column: the data and its content fingerprint
    assert (used.dataset.name, used.dataset.digest) == ("digits", summary["data_fingerprint"])
    assert run.data.tags["mlflow.source.git.commit"] == run.data.tags["git.commit"]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    history = client.get_metric_history(run.info.run_id, "val/acc")
    assert [m.step for m in history] == [1, 2]
    for key in (
        "train/ce",
        "train/ela",
        "train/sta",
        "val/acc_t1",
        "val/acc_t4",
        "lr",
        "teacher/val/acc",
        "teacher/test/acc",
    ):
        assert key in run.data.metrics, key
    # the figures summary.json (and so every table) quotes, under the same names
    metrics = run.data.metrics
    for key in ("test_acc", "test_acc_last", "best_val_acc", "best_epoch", "best_test_acc_over_epochs"):
        assert metrics[key] == pytest.approx(summary[key]), key
    assert [metrics[f"test_acc_t{t}"] for t in (1, 2, 3, 4)] == pytest.approx(
        summary["per_timestep_test_acc"]
    )
    assert metrics["teacher_test_acc"] == pytest.approx(summary["teacher_test_acc"])
    assert metrics["wall_s"] == pytest.approx(metrics["teacher_wall_s"] + metrics["student_wall_s"], abs=0.02)
    assert 0 < summary["teacher_wall_s"] < summary["wall_s"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    figures = {
        f"{name}.{fmt}" for name in ("per_timestep_accuracy", "training_curves") for fmt in ("png", "pdf")
    }
    assert {"summary.json", "epochs.csv", "config.yaml", *figures} <= artifacts
    config = client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path))
    assert f"root: {tmp_path}" in Path(config).read_text()  # the paths are kept there, resolved
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == "seal-exp/digits"
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens on runs
    from seal_exp.results.mlflow_views import runs_tables

    # make ui's URL opens a shared view: the students, best selected test accuracy first, with the
    # headline metrics as visible columns (the UI keeps columns in the browser, a shared view in a tag)
    url = f"http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}/runs?viewStateShareKey="
    assert runs_tables(f"sqlite:///{tmp_path}/mlflow.db", "http://127.0.0.1:5000") == [
        f"seal-exp/digits: 1 students  {url}seal-exp-students"
    ]
    shared = json.loads(
        client.get_experiment(run.info.experiment_id).tags["mlflow.sharedViewState.seal-exp-students"]
    )
    assert shared["searchFilter"] == 'tags.stage = "distill"' and shared["orderByKey"] == "metrics.`test_acc`"
    assert shared["orderByAsc"] is False
    assert shared["selectedColumns"][:2] == ["metrics.`test_acc`", "metrics.`best_val_acc`"]


def test_a_crashing_run_is_marked_failed_with_its_traceback(tmp_path, monkeypatch):
    def broken(self, x, y):
        raise RuntimeError("simulated crash inside the loss")

    monkeypatch.setattr(SeAl, "forward", broken)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(make_cfg(tmp_path, [*SMOKE]))
    failed = [r for r in tracked_runs(tmp_path) if r.info.status == "FAILED"]
    assert len(failed) == 1
    assert "simulated crash inside the loss" in failed[0].data.tags["error"]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    assert "traceback.txt" in {a.path for a in client.list_artifacts(failed[0].info.run_id)}


def test_a_non_finite_loss_stops_the_run_naming_step_and_terms(tmp_path, monkeypatch):
    original = SeAl.forward

    def exploding(self, x, y):
        logits, terms = original(self, x, y)
        return logits, {**terms, "ela": terms["ela"] * float("nan")}

    monkeypatch.setattr(SeAl, "forward", exploding)
    with pytest.raises(NonFiniteLoss, match=r"epoch 1, step 0 .*ela=nan.*no checkpoint yet"):
        train(make_cfg(tmp_path, [*SMOKE, "tracking=none"]))


def test_the_value_a_sweeper_optimises_is_validation_accuracy_never_test(tmp_path):
    """``python -m seal_exp.train`` returns to Hydra (and so to an optimising sweeper such as Optuna)
    the best validation accuracy; the teacher stage returns the teacher's."""
    from seal_exp.train import main

    returned = main.__wrapped__(make_cfg(tmp_path, [*SMOKE, "trainer.epochs=2"]))
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert returned == summary["best_val_acc"]
    teacher = main.__wrapped__(make_cfg(tmp_path, [*SMOKE, "stage=teacher"], output=tmp_path / "teacher"))
    record = torch.load(summary["teacher_checkpoint"], weights_only=True)
    assert teacher == record["val_acc"]


def test_run_names_come_from_the_config_not_from_an_earlier_hydra_job(tmp_path):
    """Hydra's global state may still hold an earlier job's choices and overrides (a notebook, a test
    session): a config built in code is named from itself."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    from seal_exp.config import CONF_DIR
    from seal_exp.tracking import job_run_name

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        launching, earlier = (
            compose("train", ["distiller=self_distill", "optim.lr=0.5"], return_hydra_config=True)
            for _ in range(2)
        )
    earlier.hydra.runtime.output_dir = str(tmp_path / "earlier")  # an earlier job's own folder
    cfg = make_cfg(tmp_path, ["distiller=kd", "seed=3"])
    try:
        HydraConfig.instance().set_config(launching)  # a sweep's launching process: no output folder
        assert job_run_name(cfg, "distill") == "kd α=0.5 τ=4 T=4 seed=3"
        HydraConfig.instance().set_config(earlier)
        assert job_run_name(cfg, "distill") == "kd α=0.5 τ=4 T=4 seed=3"
    finally:
        HydraConfig.instance().cfg = None


def test_run_names_show_what_differs_with_full_keys_where_last_parts_clash(tmp_path):
    """Two epochs (the student's and the teacher's) are told apart; run controls (device, checkpoint
    frequency, what is measured after training) name nothing and are no params, like the identity."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    from seal_exp.config import CONF_DIR
    from seal_exp.run.identity import identity_config
    from seal_exp.tracking import job_run_name, run_params

    overrides = [
        "distiller=kd",
        "seed=3",
        "trainer.epochs=3",
        "teacher.recipe.epochs=5",
        "optim.lr=0.05",
        "trainer.checkpoint_every_steps=5",
        "trainer.device=cpu",
        "eval.attack=pgd",
    ]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        job = compose("train", overrides, return_hydra_config=True)
    job.hydra.runtime.output_dir = str(tmp_path / "job")
    cfg = make_cfg(tmp_path, overrides, output=tmp_path / "job")
    try:
        HydraConfig.instance().set_config(job)
        assert (
            job_run_name(cfg, "distill")
            == "kd α=0.5 τ=4 T=4 seed=3 trainer.epochs=3 teacher.recipe.epochs=5 lr=0.05"
        )
    finally:
        HydraConfig.instance().cfg = None
    params = run_params(cfg, "kd")
    assert params["trainer.epochs"] == "3" and params["teacher.recipe.epochs"] == "5"
    controls = ("trainer.device", "trainer.checkpoint_every_steps", "eval.attack", "trainer.progress")
    assert not any(k in params for k in controls)
    assert not any(k in identity_config(cfg) for k in controls)


def test_system_metrics_are_sampled_into_the_run(tmp_path):
    """MLflow's system metrics (CPU, memory, disk, network; GPU where NVML sees one), with a sample at the
    end, so even a run shorter than the sampling interval (60 s here) has them."""
    summary = train(make_cfg(tmp_path, [*SMOKE, "tracking.system_metrics_every_s=60"]))
    run = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run(summary["mlflow_run_id"])
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(
        run.data.metrics
    )
    assert run.info.status == "FINISHED"


def test_a_run_under_umask_002_leaves_every_file_group_writable(tmp_path):
    """A group sharing the project (umask 002) can write all a run makes: the MLflow store (SQLite creates
    it 0o644 whatever the umask), its artifacts, the teacher cache, the run folder and its checkpoints."""
    import os
    import stat

    root = tmp_path / "shared"
    old = os.umask(0o002)
    try:
        train(make_cfg(root, [*SMOKE, "trainer.figures=true"], output=root / "outputs" / "run"))
    finally:
        os.umask(old)
    made = {p.relative_to(root): stat.S_IMODE(p.stat().st_mode) for p in root.rglob("*")}
    assert made[Path("mlflow.db")] == 0o664
    for kind in ("mlartifacts", ".cache/teachers", "outputs/run/best.pt", "outputs/run/summary.json"):
        assert any(str(p).startswith(kind) for p in made), kind
    wrong = {str(p): oct(m) for p, m in made.items() if m != (0o775 if (root / p).is_dir() else 0o664)}
    assert not wrong
