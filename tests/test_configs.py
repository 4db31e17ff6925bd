"""Every option of every config group composes and builds (nothing trained, no data read)."""

from __future__ import annotations

import pytest

from seal_exp.config import CONF_DIR
from seal_exp.data.embedded import EmbeddedImages
from seal_exp.data.source import MissingDataset
from seal_exp.plan import prepare
from tests.conftest import make_cfg

# Datasets a user downloads; the embedded ones (mnist5k, digits, mnist5k_dvs) ship with the packages.
DOWNLOADED = {"cifar10", "cifar100", "cifar10dvs", "dvsgesture", "imagenet"}
GROUPS = sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name not in ("local", "hydra"))
# Nested groups too (neuron/surrogate): every option file under every group directory.
OPTIONS = [
    (f.parent.relative_to(CONF_DIR).as_posix(), f.stem)
    for g in GROUPS
    for f in sorted((CONF_DIR / g).rglob("*.yaml"))
]


def test_the_groups_of_the_defaults_list_exist():
    assert {
        "dataset",
        "teacher",
        "student",
        "neuron",
        "distiller",
        "optim",
        "sched",
        "trainer",
        "tracking",
        "debug",
        "teacher_recipe",
    } <= set(GROUPS)
    neuron_options = {f"{g}/{o}".removeprefix("neuron/") for g, o in OPTIONS if g.startswith("neuron")}
    assert {"lif", "plif", "if"} | {f"surrogate/{s}" for s in ("sigmoid", "atan", "triangle", "rect")} <= (
        neuron_options
    )


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes_and_builds(tmp_path, monkeypatch, group, option):
    monkeypatch.setattr(EmbeddedImages, "load", lambda self: pytest.fail("data was read"))
    cfg = make_cfg(tmp_path, [f"{group}={option}"])
    if cfg.dataset.name in DOWNLOADED:  # nothing under tmp_path: the run must stop with the data message
        with pytest.raises(MissingDataset, match="looked in: " + str(tmp_path / "data")):
            prepare(cfg)
        return
    plan = prepare(cfg)
    if plan.stage == "distill":
        assert (
            plan.student is not None
            and plan.student.distiller is not None
            and plan.student.optimizer is not None
        )
    assert plan.tracker is not None


def test_the_default_run_is_seal_on_mnist5k_with_the_published_weights(tmp_path):
    cfg = make_cfg(tmp_path)
    assert cfg.dataset.name == "mnist5k"
    assert (cfg.distiller.alpha, cfg.distiller.beta, cfg.distiller.tau) == (0.6, 0.15, 3.0)
    assert (cfg.neuron.decay, cfg.neuron.v_threshold, cfg.neuron.reset, cfg.neuron.detach_reset) == (
        0.5,
        1.0,
        "hard",
        False,
    )
    assert cfg.neuron.surrogate.alpha == 4.0
    assert (cfg.optim.momentum, cfg.optim.nesterov, cfg.optim.decay_all_params) == (0.9, False, False)
    assert cfg.sched.T_max == cfg.trainer.epochs and cfg.sched.eta_min == 0.0
    assert cfg.tracking.uri == f"sqlite:///{tmp_path}/mlflow.db"


def test_smoke_overlay_shrinks_both_loops(tmp_path):
    cfg = make_cfg(tmp_path, ["debug=smoke"])
    assert cfg.trainer.epochs == 1 and cfg.trainer.limit_train_batches == 3
    assert cfg.teacher.recipe.epochs == 1 and cfg.teacher.recipe.limit_train_batches == 3
