"""``make ui``'s URLs: shared views of ``mlflow ui`` whose visible columns say who won (the headline metrics
and every setting that differs), one per experiment and one per sweep; a folder without a store is
refused rather than given an empty one."""

from __future__ import annotations

import json

from mlflow.tracking import MlflowClient

from seal_exp.results import mlflow_views


def student(client, experiment, parent, params, acc):
    run = client.create_run(experiment, tags={"stage": "distill", "mlflow.parentRunId": parent})
    for key, value in params.items():
        client.log_param(run.info.run_id, key, value)
    client.log_metric(run.info.run_id, "test_acc", acc)
    client.log_metric(run.info.run_id, "best_val_acc", acc + 0.5)
    client.set_terminated(run.info.run_id)


def test_views_show_the_headline_metrics_and_the_settings_that_differ(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    eid = client.create_experiment("seal-exp/digits")
    sweep_a = client.create_run(eid, run_name="sweep a", tags={"sweep.parent": "true"}).info.run_id
    sweep_b = client.create_run(eid, run_name="sweep b", tags={"sweep.parent": "true"}).info.run_id
    common = {"method": "seal", "neuron.T": "4", "dataset.name": "digits", "data.fingerprint": "f0"}
    for alpha in ("0.3", "0.6"):
        student(client, eid, sweep_a, {**common, "seal.alpha": alpha, "data.fingerprint": alpha}, 90.0)
    for seed in ("0", "1"):
        student(client, eid, sweep_b, {**common, "neuron.T": "2", "seed": seed}, 91.0)
    client.create_run(eid, tags={"stage": "teacher"})  # not a student: never in a view

    assert mlflow_views.main([str(tmp_path), "http://ui:5000"]) == 0
    text = mlflow_views.runs_tables(f"sqlite:///{tmp_path}/mlflow.db", "http://ui:5000")
    assert (
        text[0]
        == f"seal-exp/digits: 4 students  http://ui:5000/#/experiments/{eid}/runs?viewStateShareKey=seal-exp-students"
    )
    assert {line.split(" (")[0].strip() for line in text[1:]} == {"sweep a", "sweep b"}
    tags = client.get_experiment(eid).tags
    everything = json.loads(tags["mlflow.sharedViewState.seal-exp-students"])
    assert everything["orderByKey"] == "metrics.`test_acc`" and everything["orderByAsc"] is False
    # alpha, T and seed differ between the students; method, dataset do not; a fingerprint is no setting
    assert everything["selectedColumns"] == [
        "metrics.`test_acc`",
        "metrics.`best_val_acc`",
        "params.`neuron.T`",
        "params.`seal.alpha`",
        "params.`seed`",
    ]
    only_a = json.loads(tags[f"mlflow.sharedViewState.seal-exp-sweep-{sweep_a}"])
    assert only_a["searchFilter"] == f"tags.`mlflow.parentRunId` = '{sweep_a}'"
    assert only_a["selectedColumns"][2:] == ["params.`seal.alpha`"]
    found = client.search_runs([eid], filter_string=only_a["searchFilter"])
    assert len(found) == 2  # the filter the view applies is one MLflow accepts


def test_a_folder_without_a_store_is_refused_not_given_one(tmp_path, capsys):
    assert mlflow_views.main([str(tmp_path), "http://ui:5000"]) == 2
    assert "no MLflow store at" in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists()
