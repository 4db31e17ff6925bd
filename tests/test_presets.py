"""The paper presets under conf/experiment/: each reproduces its published row (the papers' tables)
("Recipes", "Headline results", "The baselines' networks and recipes"), composes from the command line,
and runs on a tiny fixture."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

import pytest
from hydra import compose, initialize_config_dir

from seal_exp.config import CONF_DIR, check_top_level_keys
from tests.conftest import make_cfg

SIGMOID = ("hard", "sigmoid", "alpha", 4.0)  # the reference LIF of SeAl, TKD (and our TSER)
TRIANGLE = ("hard", "triangle", "gamma", 1.0)  # the SAMD/NLD code's neuron
RECT = ("soft", "rect", "width", 1.0)  # the self-distillation paper's neuron


@dataclass(frozen=True)
class Row:
    """A published row as the paper's table gives it, typed in independently of the config files."""

    dataset: str
    student: str
    teacher: str | None  # None: teacher-free
    distiller: str
    T: int
    epochs: int
    batch: int
    lr: float
    wd: float
    decay: float
    neuron: tuple[str, str, str, float]  # reset, surrogate, its parameter, value
    sched: str  # cosine | step
    loss: dict[str, Any] = field(default_factory=dict)  # distiller settings
    hard_loss: str | None = None


SAMD_LOSS = {"beta": 1.0, "gamma": 1.0, "teacher_map": "cam", "norm": "batch", "mode": "code"}


def sd(direction: str) -> dict[str, Any]:
    return {"direction": direction, "lam": 1.0, "alpha_s": 2.0}


SEAL = {"alpha": 0.6, "beta": 0.15}


def tkd(tau: float) -> dict[str, Any]:
    return {"alpha": 0.2, "beta": 0.5, "tau": tau}


STUDENT_RECIPES: dict[str, Row] = {
    # SeAl-KD (Recipes table)
    "seal_cifar10": Row("cifar10", "resnet18", "resnet34", "seal", 4, 300, 128, 0.1, 5e-4, 0.5,
                        SIGMOID, "cosine", SEAL),
    "seal_cifar100": Row("cifar100", "resnet18", "resnet34", "seal", 4, 300, 128, 0.1, 5e-4, 0.5,
                         SIGMOID, "cosine", SEAL),
    "seal_cifar10dvs": Row("cifar10dvs", "resnet18", "resnet19", "seal", 10, 300, 32, 0.1, 5e-4, 0.5,
                           SIGMOID, "cosine", SEAL),
    "seal_imagenet": Row("imagenet", "preact_resnet34", "resnet34", "seal", 4, 100, 512, 0.2, 2e-5, 0.2,
                         SIGMOID, "cosine", SEAL),
    # TKD: the code's default command, then the published rows (τ = 3; τ = 1 on ImageNet)
    "tkd_cifar": Row("cifar10", "resnet18", "resnet34", "tkd", 6, 300, 128, 0.1, 5e-4, 0.5,
                     SIGMOID, "cosine", tkd(3.0)),
    "tkd_cifar10": Row("cifar10", "resnet19", "resnet34", "tkd", 6, 300, 128, 0.1, 5e-4, 0.5,
                       SIGMOID, "cosine", tkd(3.0)),
    "tkd_cifar100": Row("cifar100", "resnet19", "resnet34", "tkd", 6, 300, 128, 0.1, 5e-4, 0.5,
                        SIGMOID, "cosine", tkd(3.0)),
    "tkd_cifar10dvs": Row("cifar10dvs", "resnet18", "resnet19", "tkd", 10, 300, 32, 0.1, 5e-4, 0.5,
                          SIGMOID, "cosine", tkd(3.0)),
    "tkd_imagenet": Row("imagenet", "preact_resnet34", "resnet34", "tkd", 4, 100, 512, 0.2, 2e-5, 0.2,
                        SIGMOID, "cosine", tkd(1.0)),
    # TSER (paper only; T = 4 our choice)
    "tser_cifar10": Row("cifar10", "resnet18", "resnet34", "tser", 4, 300, 128, 0.1, 5e-4, 0.5,
                        SIGMOID, "cosine"),
    "tser_cifar100": Row("cifar100", "resnet18", "resnet34", "tser", 4, 300, 128, 0.1, 5e-4, 0.5,
                         SIGMOID, "cosine"),
    "tser_imagenet": Row("imagenet", "sew_resnet18", "resnet34", "tser", 4, 100, 512, 0.2, 2e-5, 0.2,
                         SIGMOID, "cosine"),
    # SAMD + NLD (the code's CIFAR recipe: lr 0.1, wd 1e-4, cosine over 400 epochs, batch 128)
    "samd_nld_cifar10": Row("cifar10", "ckdsnn_resnet19", "ckdsnn_resnet19", "samd_nld", 4, 400, 128,
                            0.1, 1e-4, 0.5, TRIANGLE, "cosine", SAMD_LOSS, "mean_ce"),
    "samd_nld_cifar100": Row("cifar100", "ckdsnn_resnet19", "ckdsnn_resnet19", "samd_nld", 4, 400, 128,
                             0.1, 1e-4, 0.5, TRIANGLE, "cosine", SAMD_LOSS, "mean_ce"),
    "samd_nld_cifar10dvs": Row("cifar10dvs", "resnet20", "ckdsnn_resnet19", "samd_nld", 10, 300, 32,
                               0.1, 1e-4, 0.5, TRIANGLE, "cosine", SAMD_LOSS, "mean_ce"),
    "samd_nld_imagenet": Row("imagenet", "sew_resnet34", "resnet34", "samd_nld", 4, 100, 512,
                             0.1, 1e-4, 0.5, TRIANGLE, "cosine", SAMD_LOSS, "mean_ce"),
    # Strong2Weak / Weak2Strong (100 epochs, ×0.1 every 30, batch 64; wd 1e-4 static, 1e-3 neuromorphic)
    **{
        f"{d}_{suffix}": Row(dataset, student, None, "self_distill", T, 100, 64, 0.1, wd, 0.5,
                             RECT, "step", sd(d), "mean_ce")
        for d in ("s2w", "w2s")
        for suffix, dataset, student, T, wd in (
            ("cifar10", "cifar10", "resnet19", 4, 1e-4),
            ("cifar100", "cifar100", "resnet19", 4, 1e-4),
            ("cifar10dvs", "cifar10dvs", "vggsnn", 10, 1e-3),
            ("imagenet", "imagenet", "sew_resnet34", 4, 1e-4),
            ("vgg9_cifar10dvs", "cifar10dvs", "vgg9", 5, 1e-3),
            ("vgg9_dvsgesture", "dvsgesture", "vgg9", 5, 1e-3),
        )
    },
    "vanilla_vgg9_cifar10": Row("cifar10", "vgg9", None, "none", 4, 100, 64, 0.1, 1e-4, 0.5,
                                RECT, "step", hard_loss="mean_ce"),
    "vanilla_vgg9_cifar100": Row("cifar100", "vgg9", None, "none", 4, 100, 64, 0.1, 1e-4, 0.5,
                                 RECT, "step", hard_loss="mean_ce"),
}  # fmt: skip
TEACHER_RECIPES = {
    # preset: (dataset, teacher, epochs, batch (None: unpublished), lr, wd, T (frames) or None)
    "teacher_cifar": ("cifar10", "resnet34", 300, 128, 0.1, 5e-4, None),
    "teacher_cifar10dvs": ("cifar10dvs", "resnet19", 300, None, 0.2, 5e-4, 10),
    "teacher_imagenet": ("imagenet", "resnet34", 100, 512, 0.1, 1e-4, None),
    "teacher_ckdsnn_cifar": ("cifar10", "ckdsnn_resnet19", 300, 128, 0.1, 5e-4, None),
    "teacher_ckdsnn_cifar10dvs": ("cifar10dvs", "ckdsnn_resnet19", 300, None, 0.2, 5e-4, 10),
}
# Which teacher preset trains (so caches) the teacher of each student preset that has one.
TEACHER_OF = {
    **dict.fromkeys(
        ["seal_cifar10", "seal_cifar100", "tkd_cifar", "tkd_cifar10", "tkd_cifar100"], "teacher_cifar"
    ),
    **dict.fromkeys(["tser_cifar10", "tser_cifar100"], "teacher_cifar"),
    **dict.fromkeys(["seal_cifar10dvs", "tkd_cifar10dvs"], "teacher_cifar10dvs"),
    **dict.fromkeys(
        ["seal_imagenet", "tkd_imagenet", "tser_imagenet", "samd_nld_imagenet"], "teacher_imagenet"
    ),
    **dict.fromkeys(["samd_nld_cifar10", "samd_nld_cifar100"], "teacher_ckdsnn_cifar"),
    "samd_nld_cifar10dvs": "teacher_ckdsnn_cifar10dvs",
}
PRESETS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


def compose_preset(name: str, overrides: tuple[str, ...] = ()):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=[f"experiment={name}", *overrides], return_hydra_config=True)


def test_there_is_one_preset_per_published_row():
    assert set(PRESETS) == set(STUDENT_RECIPES) | set(TEACHER_RECIPES)
    assert set(TEACHER_OF) == {name for name, row in STUDENT_RECIPES.items() if row.teacher is not None}


@pytest.mark.parametrize("name", sorted(STUDENT_RECIPES))
def test_student_preset_is_the_published_command(name):
    row = STUDENT_RECIPES[name]
    cfg = compose_preset(name)
    choices = cfg.hydra.runtime.choices
    assert (choices.dataset, choices.student, choices.distiller) == (row.dataset, row.student, row.distiller)
    assert cfg.stage == "distill"
    assert (cfg.neuron.T, cfg.neuron.decay, cfg.neuron.v_threshold) == (row.T, row.decay, 1.0)
    reset, surrogate, key, value = row.neuron
    assert (cfg.neuron.reset, choices["neuron/surrogate"], cfg.neuron.surrogate[key]) == (
        reset,
        surrogate,
        value,
    )
    assert choices.neuron == "lif" and cfg.neuron.detach_reset is False
    assert (cfg.trainer.epochs, cfg.trainer.batch_size) == (row.epochs, row.batch)
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.momentum) == (row.lr, row.wd, 0.9)
    assert cfg.optim.nesterov is False
    assert choices.sched == row.sched
    if row.sched == "cosine":
        assert cfg.sched.T_max == row.epochs and cfg.sched.eta_min == 0.0
    else:  # ×0.1 every 30 epochs
        assert (cfg.sched.step_size, cfg.sched.gamma) == (30, 0.1)
    for key, value in row.loss.items():
        assert cfg.distiller[key] == value, key
    if row.hard_loss is not None:
        assert choices["distiller/hard_loss"] == row.hard_loss
    if row.teacher is None:
        return
    assert choices.teacher == row.teacher
    # The teacher is trained with (so found in the cache under) its teacher preset's recipe.
    _, t_arch, t_epochs, t_batch, t_lr, t_wd, _ = TEACHER_RECIPES[TEACHER_OF[name]]
    assert cfg.teacher.arch == t_arch and cfg.teacher.recipe.epochs == t_epochs
    if t_batch is not None:
        assert cfg.teacher.recipe.batch_size == t_batch
    assert (cfg.teacher.optim.lr, cfg.teacher.optim.weight_decay) == (t_lr, t_wd)


def test_student_presets_use_the_published_augmentation_and_split():
    off = {"erasing": 0.0, "erasing_scale": [0.02, 0.33]}
    c10 = compose_preset("seal_cifar10").dataset
    assert dict(c10.augment) == {"crop": True, "flip": True, "autoaugment": True, "cutout": 16, **off}
    assert dict(c10.teacher_augment) == {"crop": True, "flip": True, "autoaugment": False, "cutout": 0}
    dvs = compose_preset("seal_cifar10dvs").dataset
    assert (dvs.frames_number, dvs.split_by, dvs.image_size) == (10, "number", 48)
    assert (dvs.split, dvs.train_fraction, dvs.split_seed) == ("random", 0.9, 42)
    assert dvs.augment.flip is True and list(dvs.augment.one_of) == ["roll", "rotate", "cutout"]
    assert (dvs.augment.roll, dvs.augment.rotate, dvs.augment.cutout) == (5, 30, 16)
    inet = compose_preset("seal_imagenet").dataset
    assert (inet.image_size, inet.resize) == (224, 256)
    assert dict(inet.augment) == {"crop": True, "flip": True, "autoaugment": True, "cutout": 112, **off}
    # SAMD/NLD code: crop → flip → AutoAugment → Normalize → RandomErasing(scale 0.02–0.2), no Cutout
    for name in ("samd_nld_cifar10", "samd_nld_cifar100"):
        aug = compose_preset(name).dataset.augment
        assert (aug.crop, aug.flip, aug.autoaugment, aug.cutout) == (True, True, True, 0)
        assert aug.erasing > 0 and list(aug.erasing_scale) == [0.02, 0.2]
    # self-distillation: DVS frames 48×48, a random 90/10 split drawn anew for every run (its seed)
    for name in ("s2w_cifar10dvs", "w2s_vgg9_cifar10dvs"):
        d = compose_preset(name, ("seed=3",)).dataset
        assert (d.image_size, d.split, d.train_fraction, d.split_seed) == (48, "random", 0.9, 3)
    gesture = compose_preset("w2s_vgg9_dvsgesture").dataset
    assert (
        gesture.image_size == 48 and gesture.augment.flip is False
    )  # a flip would swap left and right hands
    assert compose_preset("s2w_cifar10").dataset.augment.autoaugment is True


@pytest.mark.parametrize("name", sorted(TEACHER_RECIPES))
def test_teacher_preset_is_the_published_recipe(name):
    dataset, arch, epochs, batch, lr, wd, T = TEACHER_RECIPES[name]
    cfg = compose_preset(name)
    assert cfg.stage == "teacher" and cfg.hydra.runtime.choices.dataset == dataset
    assert cfg.teacher.arch == arch
    assert cfg.teacher.recipe.epochs == epochs and cfg.teacher.sched.T_max == epochs
    if batch is not None:
        assert cfg.teacher.recipe.batch_size == batch
    assert (cfg.teacher.optim.lr, cfg.teacher.optim.weight_decay, cfg.teacher.optim.momentum) == (lr, wd, 0.9)
    assert cfg.teacher.optim.decay_all_params is True
    if T is not None:
        assert cfg.neuron.T == T and cfg.dataset.frames_number == T


@pytest.mark.parametrize("name", sorted(TEACHER_OF))
def test_a_student_preset_finds_the_teacher_its_teacher_preset_trains(tmp_path, name):
    """Same dataset, architecture, recipe and seed → the same teacher cache file."""
    from seal_exp.teacher.cache import cache_key

    paths = (f"paths.root={tmp_path}", f"paths.output={tmp_path / 'out'}")
    student = compose_preset(name, paths)
    teacher = compose_preset(TEACHER_OF[name], (*paths, f"dataset={student.hydra.runtime.choices.dataset}"))
    assert cache_key(student) == cache_key(teacher)


def test_every_preset_names_its_source_and_marks_its_settings():
    """The header names the published figure; presets beyond SeAl's mark settings as code/paper/ours."""
    for name in PRESETS:
        text = (CONF_DIR / "experiment" / f"{name}.yaml").read_text()
        header = text.split("defaults:")[0]
        assert "python -m seal_exp.train" in header, name
        if name.startswith("teacher_"):
            continue
        assert "Published" in header, name
        if name.split("_")[0] in ("samd", "s2w", "w2s", "vanilla", "tser"):
            assert "(code)" in text or "(paper)" in text, name
            assert "(ours)" in text, name


def test_every_preset_keeps_to_the_known_top_level_keys(tmp_path):
    """A preset may set any key, but adds no top-level one: those are refused as typos."""
    for name in PRESETS:
        check_top_level_keys(make_cfg(tmp_path, [f"experiment={name}"]))


def test_every_preset_family_composes_from_the_command_line(monkeypatch, capsys):
    """``python -m seal_exp.train experiment=<name> --cfg job``, one preset of each family (every preset
    composes through the same API in the tests above and runs in the smoke runs below). Run in this
    process through runpy, as ``python -m`` runs it: tests/test_cli.py covers fresh interpreters."""
    import runpy

    from hydra.core.global_hydra import GlobalHydra

    families: dict[str, str] = {}
    for name in PRESETS:
        families.setdefault(name.split("_")[0], name)
    assert len(families) >= 8
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    for name in families.values():
        monkeypatch.setattr(sys, "argv", ["seal_exp.train", f"experiment={name}", "--cfg", "job"])
        GlobalHydra.instance().clear()
        code = 0
        try:  # Hydra returns after printing the config, or exits non-zero on a composition error
            runpy.run_module("seal_exp.train", run_name="__main__", alter_sys=True)
        except SystemExit as exited:
            code = exited.code
        finally:
            GlobalHydra.instance().clear()
        out, err = capsys.readouterr()
        assert code in (0, None), f"{name}: {err[-2000:]}"
        assert "_target_" in out and f"stage: {'teacher' if name.startswith('teacher') else 'distill'}" in out


# ------------------------------------------------------------------------------- smoke runs on fixtures
# Each preset as published, shrunk only in how much it runs (batches, batch size, T = 2 timesteps:
# the published T is checked above, and the networks' cost grows with it) and, for ImageNet, in
# image size and class count, on a tiny format-correct fixture loaded through the real loaders.
TINY = (
    "debug=smoke",
    "tracking=none",
    "neuron.T=2",
    "trainer.num_workers=0",
    "trainer.batch_size=2",
    "trainer.eval_batch_size=4",
    "trainer.limit_train_batches=1",
    "trainer.limit_eval_batches=1",
    "teacher.recipe.batch_size=2",
    "teacher.recipe.eval_batch_size=4",
    "teacher.recipe.limit_train_batches=1",
    "teacher.recipe.limit_eval_batches=1",
)
WNIDS = ["n01440764", "n01443537", "n01484850"]


@pytest.fixture(scope="module")
def fixture_roots(tmp_path_factory):
    from fixtures_events import write_cifar10dvs, write_dvsgesture
    from fixtures_images import write_cifar, write_imagenet

    base = tmp_path_factory.mktemp("preset-data")
    write_dvsgesture(base / "dvsgesture", users_train=2, users_test=1, events_per_gesture=60)
    return {
        "cifar10": write_cifar(base / "cifar10", 10, per_class_train=2, per_class_test=1),
        "cifar100": write_cifar(base / "cifar100", 100, per_class_train=1, per_class_test=1),
        "cifar10dvs": (
            write_cifar10dvs(base / "cifar10dvs", per_class=2, events_per_file=200),
            base / "cifar10dvs",
        ),
        "dvsgesture": base / "dvsgesture",
        "imagenet": write_imagenet(base / "imagenet", WNIDS, per_class_train=2, per_class_val=1),
    }


@pytest.fixture(scope="module")
def preset_root(tmp_path_factory):
    """One project root for the smoke runs: presets that share a teacher train it once."""
    return tmp_path_factory.mktemp("preset-project")


@pytest.mark.slow
@pytest.mark.parametrize("name", PRESETS)
def test_preset_smoke_runs_on_its_fixture(name, fixture_roots, preset_root, tmp_path, monkeypatch):
    from fixtures_events import patch_cifar10dvs_md5, patch_dvsgesture_md5
    from fixtures_images import patch_cifar_md5

    from seal_exp.train import train
    from tests.conftest import make_cfg

    data = compose_preset(name).hydra.runtime.choices.dataset
    extra: tuple[str, ...] = ()
    if data in ("cifar10", "cifar100"):
        files = fixture_roots[data]
        patch_cifar_md5(monkeypatch, files)
        root = files.root
    elif data == "cifar10dvs":
        root = fixture_roots[data][1]
        patch_cifar10dvs_md5(monkeypatch, root)
    elif data == "dvsgesture":
        root = fixture_roots[data]
        patch_dvsgesture_md5(monkeypatch, root)
    else:
        root = fixture_roots[data]
        extra = (
            f"dataset.num_classes={len(WNIDS)}",
            "dataset.image_size=32",
            "dataset.resize=36",
            "dataset.augment.cutout=16",
        )
    cfg = make_cfg(
        preset_root, [f"experiment={name}", f"dataset.root={root}", *TINY, *extra], output=tmp_path
    )
    summary = train(cfg)
    assert summary["dataset"] == data and summary["stage"] == cfg.stage
    if name in STUDENT_RECIPES and STUDENT_RECIPES[name].teacher is None:
        assert summary.get("teacher_test_acc") is None  # teacher-free: no teacher was trained
    else:
        assert 0 <= summary["teacher_test_acc"] <= 100
    if cfg.stage == "distill":
        assert 0 <= summary["test_acc"] <= 100 and summary["T"] == cfg.neuron.T
        assert summary["selected_on"] == "test"  # the presets follow the papers: no validation part
        assert len(summary["per_timestep_test_acc"]) == cfg.neuron.T
