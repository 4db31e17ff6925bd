"""A finished run's student, back as a ready network: ``seal_exp.load_student`` from a run folder, an
MLflow run id or a registered model, and the ``student`` MLflow model every run logs."""

from __future__ import annotations

import pytest
import torch
from mlflow.tracking import MlflowClient

from seal_exp import load_student
from seal_exp.config import ConfigError
from seal_exp.plan import prepare
from seal_exp.train import train
from seal_exp.training.evaluate import evaluate
from tests.conftest import SMOKE, make_cfg

RUN = (*SMOKE, "trainer.epochs=2", "tracking.log_model=true", "tracking.register_as=digits-seal")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("trained")
    cfg = make_cfg(root, RUN)
    return root, cfg, train(cfg)


def test_load_student_by_run_id_reproduces_the_runs_test_accuracy_exactly(finished):
    """What a user does with a run id alone: the network, then the run's own test split, evaluated as
    the run evaluated its selected epoch."""
    root, cfg, summary = finished
    store = f"sqlite:///{root}/mlflow.db"
    net = load_student(summary["mlflow_run_id"], tracking_uri=store)
    plan = prepare(cfg)
    data = plan.dataset.load()
    loader = plan.loader(data, data.test, plan.settings.eval_batch_size, shuffle=False)
    result = evaluate(net, loader, torch.device("cpu"), plan.settings.limit_eval_batches)
    assert result.acc == summary["test_acc"]
    assert result.per_timestep == summary["per_timestep_test_acc"]


def test_every_way_to_name_the_run_gives_the_same_network(finished):
    root, _, summary = finished
    store = f"sqlite:///{root}/mlflow.db"
    run_id = summary["mlflow_run_id"]
    x = torch.randn(3, 1, 8, 8)
    expected = load_student(root / "out")(x)  # the run folder
    assert expected.shape == (4, 3, 10)  # [T, B, classes]
    for source in (root / "out" / "best.pt", run_id, f"runs:/{run_id}", "models:/digits-seal/1"):
        assert torch.equal(load_student(source, tracking_uri=store)(x), expected), source
    net = load_student(run_id, tracking_uri=store)
    assert torch.equal(net(x), net(x))  # no state leaks from one call into the next


def test_the_run_logs_its_student_as_an_mlflow_model(finished):
    """A logged model of the run (the UI's Models column) named after the run, READY, with the run's
    params and its headline figures on its own page, registered as asked, and loadable by MLflow alone
    from ``runs:/<id>/<model name>`` or ``models:/<model id>``."""
    import mlflow.pytorch

    root, _, summary = finished
    store = f"sqlite:///{root}/mlflow.db"
    run_id = summary["mlflow_run_id"]
    client = MlflowClient(store)
    run = client.get_run(run_id)
    models = client.search_logged_models(experiment_ids=[run.info.experiment_id])
    (model,) = [m for m in models if m.source_run_id == run_id]
    # named after the run, decimals with a comma (MLflow refuses dots in model names)
    assert model.name.replace(",", ".") == run.info.run_name and "seed=0" in model.name
    assert "." not in model.name
    assert str(model.status).endswith("READY")
    assert model.params == run.data.params
    shown = {m.key: m.value for m in model.metrics or []}
    assert shown["test_acc"] == pytest.approx(summary["test_acc"])  # the figure a table quotes
    assert [o.model_id for o in run.outputs.model_outputs] == [model.model_id]
    (version,) = client.search_model_versions("name='digits-seal'")
    assert (version.run_id, version.source) == (run_id, model.artifact_location)
    x = torch.randn(5, 1, 8, 8)  # another batch size than the example's
    expected = load_student(run_id, tracking_uri=store)(x)
    mlflow.set_tracking_uri(store)
    try:
        for uri in (f"runs:/{run_id}/{model.name}", f"models:/{model.model_id}"):
            assert torch.equal(mlflow.pytorch.load_model(uri)(x), expected), uri
    finally:
        mlflow.set_tracking_uri(None)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("not-a-run", "is neither a run folder"),
        ("0123456789abcdef0123456789abcdef", "not found"),
        ("models:/nobody/1", "no such registered model"),
    ],
)
def test_a_source_that_is_no_run_is_refused_saying_what_to_give(finished, source, message):
    root, _, _ = finished
    with pytest.raises(ConfigError, match=message):
        load_student(source, tracking_uri=f"sqlite:///{root}/mlflow.db")


def test_a_folder_without_best_pt_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"no best\.pt in"):
        load_student(tmp_path)


def test_a_model_is_named_after_its_run_without_the_characters_mlflow_refuses():
    from seal_exp.tracking import model_name

    name = "seal α=0.6 β=0.15 τ=3 T=4 seed=0 trainer.epochs=3 lr=0.05"
    assert model_name(name) == "seal α=0,6 β=0,15 τ=3 T=4 seed=0 trainer_epochs=3 lr=0,05"
    assert model_name(None) == model_name("") == "student"
