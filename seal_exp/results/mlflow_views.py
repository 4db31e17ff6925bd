"""Runs tables in ``mlflow ui`` that say who won: what ``make ui`` prints before it starts the UI.

The UI keeps its visible columns in the browser, not in the URL; what a URL can carry is a *shared
view*: an experiment tag ``mlflow.sharedViewState.<key>`` holding the view's filter, sort order and
columns, opened by ``#/experiments/<id>/runs?viewStateShareKey=<key>``. One view per experiment shows
every trained student, best selected test accuracy first, with the headline metrics and every setting
that differs between its runs as columns; one view per sweep (its parent's children) does the same for
that sweep alone. Writing the tags changes no run.
"""

from __future__ import annotations

import json
from typing import Any

from seal_exp.tracking import all_pages

VIEW_TAG = "mlflow.sharedViewState."
STUDENTS_VIEW = "seal-exp-students"
SWEEP_VIEW = "seal-exp-sweep-"  # + the parent run's id
# The metrics a table quotes (the UI shows metric columns in name order), where some run has them.
HEADLINE = ("test_acc", "best_val_acc")  # the selected test accuracy and the one it was selected on
MAX_SETTINGS = 12  # differing settings shown as columns (the UI scrolls sideways beyond a screen)
SWEEPS_SHOWN = 10  # the newest sweeps get a URL each
# Settings that differ between any two runs without saying what was compared.
NOT_SETTINGS = frozenset({"data.fingerprint"})


def differing_settings(runs: list[Any]) -> list[str]:
    """The params whose value is not the same in every run (missing counts as a value), the method
    first, then the rest in name order."""
    keys = sorted({k for r in runs for k in r.data.params} - NOT_SETTINGS)
    differ = [k for k in keys if len({r.data.params.get(k) for r in runs}) > 1]
    return sorted(differ, key=lambda k: (k != "method", k))


def view(runs: list[Any], search_filter: str) -> dict[str, Any]:
    """A shared view's state: the filter, best selected test accuracy first, the columns."""
    metrics = [m for m in HEADLINE if any(m in r.data.metrics for r in runs)]
    columns = [f"metrics.`{m}`" for m in metrics]
    columns += [f"params.`{k}`" for k in differing_settings(runs)[:MAX_SETTINGS]]
    return {
        "searchFilter": search_filter,
        "orderByKey": "metrics.`test_acc`",
        "orderByAsc": False,
        "selectedColumns": columns,
    }


def _share(client: Any, experiment_id: str, key: str, state: dict[str, Any], base_url: str) -> str:
    client.set_experiment_tag(experiment_id, VIEW_TAG + key, json.dumps(state))
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs?viewStateShareKey={key}"


def runs_tables(uri: str, base_url: str) -> list[str]:
    """One line per experiment of the store (its name, how many students, the URL of its view), then one
    per recent sweep (its parent's name and the URL of a view of its jobs)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    lines = []
    for experiment in all_pages(client.search_experiments):
        eid = experiment.experiment_id
        students = all_pages(client.search_runs, [eid], filter_string='tags.stage = "distill"')
        if not students:
            continue
        url = _share(client, eid, STUDENTS_VIEW, view(students, 'tags.stage = "distill"'), base_url)
        lines.append(f"{experiment.name}: {len(students)} students  {url}")
        parents = client.search_runs(
            [eid],
            filter_string='tags.`sweep.parent` = "true"',
            order_by=["attributes.start_time DESC"],
            max_results=SWEEPS_SHOWN,
        )
        for parent in parents:
            pid = parent.info.run_id
            jobs = [r for r in students if r.data.tags.get("mlflow.parentRunId") == pid]
            if jobs:
                where = f"tags.`mlflow.parentRunId` = '{pid}'"
                url = _share(client, eid, SWEEP_VIEW + pid, view(jobs, where), base_url)
                lines.append(f"  {parent.info.run_name} ({len(jobs)} jobs, {parent.info.status}): {url}")
    return lines or [f"no trained students yet in {uri}: `make train` makes one"]


def main(argv: list[str] | None = None) -> int:
    """``python -m seal_exp.results.mlflow_views <paths.root> <UI base URL>`` (``make ui``): the URLs, or
    exit 2 where the folder holds no store (rather than create an empty one)."""
    import sys
    from pathlib import Path

    root, base_url = argv if argv is not None else sys.argv[1:]
    store = Path(root).expanduser().resolve() / "mlflow.db"
    if not store.is_file():
        print(
            f"seal-exp: no MLflow store at {store}: give the paths.root of your runs (make ui ROOT=<folder>)",
            file=sys.stderr,
        )
        return 2
    print(*runs_tables(f"sqlite:///{store}", base_url), sep="\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
