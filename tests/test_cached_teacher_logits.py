"""trainer.cache_teacher_logits: the same losses and gradients as running the teacher at every step,
the teacher not run at all while training, and refusals where the cache would be wrong."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import SMOKE, make_cfg
from torch.utils.data import TensorDataset

from seal_exp.config import ConfigError
from seal_exp.data.augment import FrameAugment, ImageAugment, augments
from seal_exp.data.loaders import make_loader, time_major_collate
from seal_exp.plan import prepare
from seal_exp.teacher import cached_logits as cache
from seal_exp.train import train
from seal_exp.training.epoch import train_step

SMALL = ["student.channels=[4,8]", "teacher.model.channels=[4,8]", "neuron.T=2", "trainer.device=cpu"]
LOGIT_ONLY = ["kd", "seal", "tkd", "tser", "nld"]


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(8, 1, 28, 28, generator=generator), torch.randint(0, 10, (8,), generator=generator)


def _one_step(tmp_path: Path, distiller: str, cached: bool) -> tuple[dict, dict, int]:
    """Loss terms, student gradients and the teacher's forward count of one step on a fixed batch."""
    plan = prepare(make_cfg(tmp_path, [*SMALL, f"distiller={distiller}", "seed=3"]), data=False)
    x, y = _batch()
    extra = ()
    if cached:  # as the cache computes them: the teacher alone, in its own pass
        extra = (plan.student.distiller.teacher_logits(x),)
    calls = []
    plan.teacher.model.register_forward_hook(lambda *_: calls.append(1))
    plan.student.optimizer.param_groups[0]["lr"] = 0.0
    _, terms, _ = train_step(plan.student.distiller, plan.student.optimizer, x, y, *extra)
    grads = {n: p.grad.clone() for n, p in plan.student.model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in terms.items()}, grads, len(calls)


@pytest.mark.parametrize("distiller", LOGIT_ONLY)
def test_cached_logits_give_the_same_step_without_running_the_teacher(tmp_path: Path, distiller: str) -> None:
    terms, grads, calls = _one_step(tmp_path, distiller, cached=False)
    cached_terms, cached_grads, cached_calls = _one_step(tmp_path, distiller, cached=True)
    assert calls == 1 and cached_calls == 0
    assert terms.keys() == cached_terms.keys()
    for name in terms:
        torch.testing.assert_close(cached_terms[name], terms[name], rtol=1e-6, atol=1e-7, msg=name)
    assert grads.keys() == cached_grads.keys() and grads
    for name in grads:
        torch.testing.assert_close(cached_grads[name], grads[name], rtol=1e-6, atol=1e-7, msg=name)


def test_the_cache_serves_each_sample_its_own_logits_in_any_order() -> None:
    """Computed batched and unshuffled, served shuffled: every row is the teacher on that sample."""
    torch.manual_seed(0)
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5)).eval()
    distiller = SimpleNamespace(teacher_logits=lambda x: teacher(x))
    data = TensorDataset(torch.randn(23, 3, 4), torch.arange(23))
    logits = cache.compute(distiller, make_loader(data, 7, shuffle=False, seed=0), torch.device("cpu"), False)
    assert logits.shape == (23, 5)
    served = cache.WithTeacherLogits(data, logits)
    seen = []
    for x, y, t in make_loader(served, 4, shuffle=True, seed=1):
        with torch.no_grad():
            torch.testing.assert_close(t, teacher(x), rtol=1e-6, atol=1e-6)
        seen += y.tolist()
    assert sorted(seen) == list(range(23)) and seen != list(range(23))
    with pytest.raises(ValueError, match="3 cached teacher logits for 23 samples"):
        cache.WithTeacherLogits(data, logits[:3])


def test_time_major_batches_carry_the_logits_as_they_are() -> None:
    samples = [(torch.full((3, 2, 4, 4), float(i)), i, torch.full((5,), float(i))) for i in range(2)]
    x, y, t = time_major_collate(samples)
    assert x.shape == (3, 2, 2, 4, 4) and y.tolist() == [0, 1] and t.shape == (2, 5)
    assert t[1].eq(1).all() and x[:, 1].eq(1).all()


def test_a_training_run_is_the_same_with_and_without_the_cache(tmp_path: Path) -> None:
    runs = {}
    for setting in ("true", "false"):
        cfg = make_cfg(
            tmp_path,
            [*SMOKE, "distiller=seal", "tracking=none", f"trainer.cache_teacher_logits={setting}"],
            output=tmp_path / setting,
        )
        runs[setting] = train(cfg)
    assert runs["true"]["teacher_logits"] == "cached" and runs["false"]["teacher_logits"] == "per step"
    lines = {s: (tmp_path / s / "epochs.csv").read_text().splitlines() for s in runs}
    header = lines["true"][0].split(",")
    for a, b in zip(lines["true"][1:], lines["false"][1:], strict=True):
        for name, u, v in zip(header, a.split(","), b.split(","), strict=True):
            if name.endswith("loss") or name.startswith(("train/", "val/", "test/")):
                assert float(u) == pytest.approx(float(v), rel=1e-5, abs=1e-6), name
    assert runs["true"]["test_acc"] == runs["false"]["test_acc"]


@pytest.mark.parametrize(
    ("distiller", "reason"),
    [
        ("samd", "SAMD reads the teacher's stage outputs"),
        ("kdsnn", "KDSNN reads the teacher's stage outputs"),
        ("self_distill", "SelfDistill has no teacher"),
        ("none", "NoDistillation has no teacher"),
    ],
)
def test_true_is_refused_where_the_teacher_itself_is_needed(
    tmp_path: Path, distiller: str, reason: str
) -> None:
    overrides = [*SMOKE, f"distiller={distiller}", "tracking=none", "trainer.cache_teacher_logits=true"]
    with pytest.raises(ConfigError, match=f"trainer.cache_teacher_logits=true cannot be honoured: {reason}"):
        prepare(make_cfg(tmp_path, overrides))
    auto = prepare(make_cfg(tmp_path, [*SMOKE, f"distiller={distiller}", "tracking=none"]))
    assert auto.student.cache_teacher_logits is False


def test_augmented_training_data_is_refused_and_auto_declines(tmp_path: Path) -> None:
    plan = prepare(make_cfg(tmp_path, [*SMOKE, "distiller=kd", "tracking=none"]))
    assert plan.student.cache_teacher_logits is True  # digits: served as they are
    augmented = SimpleNamespace(augments_training=True)
    with pytest.raises(ConfigError, match=r"training augmentation is on \(dataset.augment\)"):
        cache.resolve(True, augmented, plan.student.distiller)
    assert cache.resolve("auto", augmented, plan.student.distiller) is False
    assert cache.resolve(False, None, plan.student.distiller) is False
    with pytest.raises(ConfigError, match=r"trainer\.cache_teacher_logits"):
        prepare(make_cfg(tmp_path, [*SMOKE, "tracking=none", "trainer.cache_teacher_logits=yes"]))


def test_auto_caches_only_where_it_saves_teacher_forwards() -> None:
    assert cache.pays("auto", samples=1000, num_classes=10, teacher_forwards=8000)
    assert not cache.pays("auto", samples=1000, num_classes=10, teacher_forwards=1000)  # one epoch
    assert not cache.pays("auto", samples=1000, num_classes=10, teacher_forwards=48)  # limited batches
    assert not cache.pays("auto", samples=1_281_167, num_classes=1000, teacher_forwards=10**9)  # 4.8 GiB
    assert cache.pays(True, samples=1000, num_classes=10, teacher_forwards=10)


def test_which_pipelines_draw_at_random() -> None:
    off = ImageAugment(crop=False, flip=False, autoaugment=False, cutout=0)
    assert not augments(off) and not augments(None)
    for on in ({"crop": True}, {"flip": True}, {"autoaugment": True}, {"cutout": 8}):
        assert augments(ImageAugment(**{**off.__dict__, **on}))
    assert not augments(FrameAugment(flip=False, one_of=()))
    assert augments(FrameAugment(flip=False, one_of=("roll",))) and augments(FrameAugment(one_of=()))
