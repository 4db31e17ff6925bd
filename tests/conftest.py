"""Shared helpers: tests compose the real conf/ and shrink it with overrides, as users do."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from seal_exp.config import CONF_DIR

REPO = CONF_DIR.parent
# the suite's own dataset class (tests/paced_data.py), trusted when runs' files are read back, in this
# process and the ones it starts
os.environ["SEAL_EXP_TRUSTED_TARGETS"] = "tests.paced_data.PacedMNIST5k"
if os.environ.get("PYTEST_XDIST_WORKER"):
    # make test runs one worker per core (pytest-xdist): each worker, and the runs it starts, computes on
    # one thread, so the workers do not take each other's cores (the suite's tensors are small)
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


def make_cfg(root: Path, overrides: Sequence[str] = (), output: Path | None = None) -> DictConfig:
    """The composed ``train`` config with every path under ``root`` (no project files are touched).

    Neither the figures (about a second a run), the MLflow model (``torch.export`` of a ResNet takes
    seconds) nor the measurements after training (``eval.after_training``) are made here, on every run of
    the suite; the tests of each turn it on and check it."""
    quiet = [] if any(o.startswith("tracking=") for o in overrides) else ["tracking.log_model=false"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(
            "train",
            overrides=[
                f"paths.root={root}",
                f"paths.output={output or root / 'out'}",
                "trainer.progress=false",
                "trainer.figures=false",
                "eval.after_training=false",
                *quiet,
                *overrides,
            ],
        )


def shaped_cfg(
    root: Path, *overrides: str, classes: int = 10, channels: int = 3, size: int = 32, T: int = 2
) -> DictConfig:
    """The composed config for networks of one input shape, class count and T (what the networks read)."""
    return make_cfg(
        root,
        [
            f"dataset.num_classes={classes}",
            f"dataset.in_channels={channels}",
            f"dataset.image_size={size}",
            f"neuron.T={T}",
            *overrides,
        ],
    )


def tracked_runs(root: Path, stage: str | None = None) -> list:
    """The active MLflow runs of every experiment in ``root``'s SQLite store (``stage``: only those tagged
    with it, e.g. the students' ``distill`` runs, leaving out sweep parents)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    found = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    return [r for r in found if stage is None or r.data.tags.get("stage") == stage]


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def run_cli(
    args: Sequence[str],
    cwd: Path,
    timeout: int = 300,
    module: str = "seal_exp.train",
    *,
    env: dict[str, str] | None = None,
    launcher: Sequence[str] = (),
    measure: bool = False,
    outputs: bool = False,
) -> subprocess.CompletedProcess:
    """``python -m <module> ARGS`` (default seal_exp.train) in a fresh interpreter, as a user runs it.

    ``launcher``: what runs the module instead of the plain interpreter (``python -m
    torch.distributed.run --nproc_per_node=2``); ``env``: extra environment variables. Training runs skip
    the measurements after training (``eval.after_training``, seconds per job) unless ``measure``, and
    the figures and the MLflow model (seconds per job: PDF fonts, ``torch.export``) unless ``outputs``.
    """
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0", **(env or {})}
    if (
        module == "seal_exp.train"
        and not measure
        and not any(a.startswith("eval.after_training=") for a in args)
    ):
        args = [*args, "eval.after_training=false"]
    if module == "seal_exp.train" and not outputs:
        given = {a.split("=", 1)[0] for a in args}
        quiet = ["trainer.figures"] + ([] if "tracking=none" in args else ["tracking.log_model"])
        args = [*args, *(f"{k}=false" for k in quiet if k not in given)]
    return subprocess.run(
        [*(launcher or [sys.executable]), "-m", module, *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="session", autouse=True)
def migrated_mlflow_schema(tmp_path_factory: pytest.TempPathFactory):
    """MLflow builds a new SQLite store by running its schema migrations, seconds each time, and the
    suite's runs open hundreds of new stores: in this process each new store gets a copy (SQLite's
    backup) of one store MLflow migrated once. The runs the tests start as commands build theirs as
    users' runs do."""
    import sqlite3

    import mlflow.store.db.utils as db_utils
    import sqlalchemy

    migrate = db_utils._initialize_tables
    template = tmp_path_factory.mktemp("mlflow_schema") / "mlflow.db"

    def initialize(engine: sqlalchemy.engine.Engine) -> None:
        path = engine.url.database if engine.url.get_backend_name() == "sqlite" else None
        if not path or path == ":memory:":
            return migrate(engine)
        if not template.exists():
            fresh = sqlalchemy.create_engine(f"sqlite:///{template}")
            migrate(fresh)
            fresh.dispose()
        with sqlite3.connect(template) as source, sqlite3.connect(path) as target:
            source.backup(target)
        return None

    db_utils._initialize_tables = initialize
    yield
    db_utils._initialize_tables = migrate


@pytest.fixture(scope="session")
def shared_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One project root for the session, so smoke runs share the teacher cache and MLflow store."""
    return tmp_path_factory.mktemp("project")


SMOKE = ("dataset=digits", "debug=smoke")


class Fixed(torch.nn.Module):
    """A 'network' returning given logits, with one parameter so gradients can be compared."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = torch.nn.Parameter(logits.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits


# What a resumed job must reproduce exactly: every figure of summary.json a table would quote.
RESULT_KEYS = (
    "test_acc",
    "test_acc_last",
    "best_val_acc",
    "best_epoch",
    "best_test_acc_over_epochs",
    "per_timestep_test_acc",
    "prefix_mean_test_acc",
    "teacher_test_acc",
    "epochs",
)


def result_figures(summary: dict) -> dict:
    return {k: summary.get(k) for k in RESULT_KEYS}


def same_weights(a: Path, b: Path) -> bool:
    """Two checkpoints hold bit-identical model weights."""
    from seal_exp.run import checkpoint

    sa, sb = checkpoint.load(a)["model"], checkpoint.load(b)["model"]
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
