"""The paper presets under conf/experiment/: each reproduces its row of the Recipes table
(reference-setups.md) exactly, composes from the command line, and runs on a tiny fixture."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir

from seal_exp.config import CONF_DIR
from tests.conftest import REPO

# The Recipes table of reference-setups.md, typed in independently of the config files.
STUDENT_RECIPES = {
    # preset: (dataset, student, teacher, T, epochs, batch, lr, wd, decay, alpha, beta, distiller)
    "seal_cifar10": ("cifar10", "resnet18", "resnet34", 4, 300, 128, 0.1, 5e-4, 0.5, 0.6, 0.15, "seal"),
    "seal_cifar100": ("cifar100", "resnet18", "resnet34", 4, 300, 128, 0.1, 5e-4, 0.5, 0.6, 0.15, "seal"),
    "seal_cifar10dvs": ("cifar10dvs", "resnet18", "resnet19", 10, 300, 32, 0.1, 5e-4, 0.5, 0.6, 0.15, "seal"),
    "seal_imagenet": (
        "imagenet",
        "preact_resnet34",
        "resnet34",
        4,
        100,
        512,
        0.2,
        2e-5,
        0.2,
        0.6,
        0.15,
        "seal",
    ),
    "tkd_cifar": ("cifar10", "resnet18", "resnet34", 6, 300, 128, 0.1, 5e-4, 0.5, 0.2, 0.5, "tkd"),
}
TEACHER_RECIPES = {
    # preset: (dataset, teacher, epochs, batch (None: unpublished), lr, wd, T (frames) or None)
    "teacher_cifar": ("cifar10", "resnet34", 300, 128, 0.1, 5e-4, None),
    "teacher_cifar10dvs": ("cifar10dvs", "resnet19", 300, None, 0.2, 5e-4, 10),
    "teacher_imagenet": ("imagenet", "resnet34", 100, 512, 0.1, 1e-4, None),
}
# Which teacher recipe each student preset trains (or finds cached) its teacher with.
TEACHER_OF = {
    "seal_cifar10": "teacher_cifar",
    "seal_cifar100": "teacher_cifar",
    "tkd_cifar": "teacher_cifar",
    "seal_cifar10dvs": "teacher_cifar10dvs",
    "seal_imagenet": "teacher_imagenet",
}
PRESETS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


def compose_preset(name: str, overrides: tuple[str, ...] = ()):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=[f"experiment={name}", *overrides], return_hydra_config=True)


def test_there_is_one_preset_per_recipe_row():
    assert set(PRESETS) == set(STUDENT_RECIPES) | set(TEACHER_RECIPES)


@pytest.mark.parametrize("name", sorted(STUDENT_RECIPES))
def test_student_preset_is_the_published_command(name):
    dataset, student, teacher, T, epochs, batch, lr, wd, decay, alpha, beta, distiller = STUDENT_RECIPES[name]
    cfg = compose_preset(name)
    choices = cfg.hydra.runtime.choices
    assert (choices.dataset, choices.student, choices.teacher, choices.distiller) == (
        dataset,
        student,
        teacher,
        distiller,
    )
    assert cfg.stage == "distill"
    assert (cfg.neuron.T, cfg.neuron.decay) == (T, decay)
    assert (cfg.trainer.epochs, cfg.trainer.batch_size) == (epochs, batch)
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.momentum) == (lr, wd, 0.9)
    assert cfg.optim.nesterov is False and cfg.optim.decay_all_params is False  # BN and biases get no decay
    assert cfg.sched.T_max == epochs and cfg.sched.eta_min == 0.0
    assert (cfg.distiller.alpha, cfg.distiller.beta) == (alpha, beta)
    # The reference LIF: hard reset, reset not detached, threshold 1, sigmoid surrogate alpha 4.
    assert (cfg.neuron.reset, cfg.neuron.detach_reset, cfg.neuron.v_threshold) == ("hard", False, 1.0)
    assert (choices["neuron/surrogate"], cfg.neuron.surrogate.alpha) == ("sigmoid", 4.0)
    # The teacher is trained with (so found in the cache under) its published recipe.
    _, t_arch, t_epochs, t_batch, t_lr, t_wd, _ = TEACHER_RECIPES[TEACHER_OF[name]]
    assert cfg.teacher.arch == t_arch and cfg.teacher.recipe.epochs == t_epochs
    if t_batch is not None:
        assert cfg.teacher.recipe.batch_size == t_batch
    assert (cfg.teacher.optim.lr, cfg.teacher.optim.weight_decay) == (t_lr, t_wd)


def test_student_presets_use_the_published_augmentation_and_split():
    c10 = compose_preset("seal_cifar10").dataset
    assert dict(c10.augment) == {"crop": True, "flip": True, "autoaugment": True, "cutout": 16}
    assert dict(c10.teacher_augment) == {"crop": True, "flip": True, "autoaugment": False, "cutout": 0}
    dvs = compose_preset("seal_cifar10dvs").dataset
    assert (dvs.frames_number, dvs.split_by, dvs.image_size) == (10, "number", 48)
    assert (dvs.split, dvs.train_fraction, dvs.split_seed) == ("random", 0.9, 42)
    assert dvs.augment.flip is True and list(dvs.augment.one_of) == ["roll", "rotate", "cutout"]
    assert (dvs.augment.roll, dvs.augment.rotate, dvs.augment.cutout) == (5, 30, 16)
    inet = compose_preset("seal_imagenet").dataset
    assert (inet.image_size, inet.resize) == (224, 256)
    assert dict(inet.augment) == {"crop": True, "flip": True, "autoaugment": True, "cutout": 112}


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
    from seal_exp.teacher import cache_key

    paths = (f"paths.root={tmp_path}", f"paths.output={tmp_path / 'out'}")
    student = compose_preset(name, paths)
    teacher = compose_preset(TEACHER_OF[name], (*paths, f"dataset={student.hydra.runtime.choices.dataset}"))
    assert cache_key(student) == cache_key(teacher)


def test_every_preset_composes_from_the_command_line():
    """``python -m seal_exp.train experiment=<name> --cfg job`` for every preset (run side by side)."""
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-m", "seal_exp.train", f"experiment={name}", "--cfg", "job"],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in PRESETS
    }
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{name}: {err[-2000:]}"
        assert "_target_" in out and f"stage: {'teacher' if name.startswith('teacher') else 'distill'}" in out


# ------------------------------------------------------------------------------- smoke runs on fixtures
# Each preset as published, shrunk only in how much it runs (batches, batch size) and, for ImageNet,
# in image size and class count, on a tiny format-correct fixture loaded through the real loaders.
TINY = (
    "debug=smoke",
    "tracking=none",
    "trainer.num_workers=0",
    "trainer.batch_size=4",
    "trainer.eval_batch_size=8",
    "trainer.limit_train_batches=1",
    "trainer.limit_eval_batches=1",
    "teacher.recipe.batch_size=4",
    "teacher.recipe.eval_batch_size=8",
    "teacher.recipe.limit_train_batches=1",
    "teacher.recipe.limit_eval_batches=1",
)
WNIDS = ["n01440764", "n01443537", "n01484850"]
DATA_OF = {
    "seal_cifar10": "cifar10",
    "tkd_cifar": "cifar10",
    "teacher_cifar": "cifar10",
    "seal_cifar100": "cifar100",
    "seal_cifar10dvs": "cifar10dvs",
    "teacher_cifar10dvs": "cifar10dvs",
    "seal_imagenet": "imagenet",
    "teacher_imagenet": "imagenet",
}


@pytest.fixture(scope="module")
def fixture_roots(tmp_path_factory):
    from fixtures_events import write_cifar10dvs
    from fixtures_images import write_cifar, write_imagenet

    base = tmp_path_factory.mktemp("preset-data")
    return {
        "cifar10": write_cifar(base / "cifar10", 10, per_class_train=2, per_class_test=1),
        "cifar100": write_cifar(base / "cifar100", 100, per_class_train=1, per_class_test=1),
        "cifar10dvs": (
            write_cifar10dvs(base / "cifar10dvs", per_class=2, events_per_file=200),
            base / "cifar10dvs",
        ),
        "imagenet": write_imagenet(base / "imagenet", WNIDS, per_class_train=2, per_class_val=1),
    }


def test_every_preset_has_a_fixture_smoke_run():
    assert set(DATA_OF) == set(PRESETS)


@pytest.mark.slow
@pytest.mark.parametrize("name", PRESETS)
def test_preset_smoke_runs_on_its_fixture(name, fixture_roots, tmp_path, monkeypatch):
    from fixtures_events import patch_cifar10dvs_md5
    from fixtures_images import patch_cifar_md5

    from seal_exp.train import train
    from tests.conftest import make_cfg

    data = DATA_OF[name]
    extra: tuple[str, ...] = ()
    if data in ("cifar10", "cifar100"):
        files = fixture_roots[data]
        patch_cifar_md5(monkeypatch, files)
        root = files.root
    elif data == "cifar10dvs":
        root = fixture_roots[data][1]
        patch_cifar10dvs_md5(monkeypatch, root)
    else:
        root = fixture_roots[data]
        extra = (
            f"dataset.num_classes={len(WNIDS)}",
            "dataset.image_size=32",
            "dataset.resize=36",
            "dataset.augment.cutout=16",
        )
    cfg = make_cfg(tmp_path, [f"experiment={name}", f"dataset.root={root}", *TINY, *extra])
    summary = train(cfg)
    assert summary["dataset"] == data and summary["stage"] == cfg.stage
    assert 0 <= summary["teacher_test_acc"] <= 100
    if cfg.stage == "distill":
        assert 0 <= summary["test_acc"] <= 100 and summary["T"] == cfg.neuron.T
        assert summary["selected_on"] == "test"  # the presets follow the papers: no validation part
