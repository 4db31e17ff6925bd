"""Job identities and teacher cache keys: pinned for the default run and every preset, and independent
of where a class lives (a moved module must not orphan earlier runs, checkpoints or cached teachers).

The pinned values change only when what a job computes changes. After such a change, regenerate them
with ``python tests/test_identity.py`` and say in the README that earlier runs are trained again.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import make_cfg

from seal_exp.config import CONF_DIR
from seal_exp.models import build_teacher
from seal_exp.run import checkpoint
from seal_exp.run.identity import config_differences, identity_config, job_identity
from seal_exp.teacher import cache as teachers

PINNED = Path(__file__).with_name("identities.json")
PRESETS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


def _keys(root: Path, preset: str | None) -> list[str]:
    cfg = make_cfg(root, [f"experiment={preset}"] if preset else [])
    return [job_identity(cfg), teachers.cache_key(cfg)]


def test_every_preset_is_pinned():
    pinned = json.loads(PINNED.read_text())
    assert sorted(pinned) == sorted(["default", *PRESETS]), "regenerate: python tests/test_identity.py"


@pytest.mark.parametrize("preset", [None, *PRESETS], ids=lambda p: p or "default")
def test_identity_and_teacher_cache_key_are_pinned(tmp_path, preset):
    expected = json.loads(PINNED.read_text())[preset or "default"]
    assert _keys(tmp_path, preset) == expected
    assert _keys(tmp_path / "elsewhere", preset) == expected  # the checkout's location is not part of it


def test_a_moved_module_keeps_identity_and_cache_key_a_renamed_class_does_not(tmp_path):
    base = make_cfg(tmp_path)
    moved = make_cfg(
        tmp_path,
        [
            "student._target_=some.other.place.SpikingConvNet",
            "teacher.model._target_=some.other.place.ConvNet",
            "distiller._target_=methods.SeAl",
        ],
    )
    assert job_identity(moved) == job_identity(base)
    assert teachers.cache_key(moved) == teachers.cache_key(base)
    renamed = make_cfg(tmp_path, ["teacher.model._target_=seal_exp.models.ann_cnn.OtherNet"])
    assert job_identity(renamed) != job_identity(base)
    assert teachers.cache_key(renamed) != teachers.cache_key(base)
    assert identity_config(base)["student._target_"] == "SpikingConvNet"


def test_a_last_pt_config_with_full_module_paths_still_matches(tmp_path):
    now = identity_config(make_cfg(tmp_path))
    recorded = dict(now, **{"student._target_": "seal_exp.old.module.SpikingConvNet"})
    assert config_differences(recorded, now) == []
    recorded["student._target_"] = "seal_exp.old.module.OtherNet"
    assert config_differences(recorded, now) == ["student._target_: OtherNet -> SpikingConvNet"]


def test_a_cached_teacher_recorded_with_full_module_paths_still_loads(tmp_path):
    cfg = make_cfg(tmp_path)
    teacher = build_teacher(cfg)
    path = tmp_path / "teacher.pt"
    record = teachers.save(teacher, path, cfg, test_acc=1.0)
    old = json.loads(record["model"])
    assert old["_target_"] == "ConvNet"
    old["_target_"] = "seal_exp.some_old_home.ConvNet"
    saved = checkpoint.load(path)
    checkpoint.atomic_save(saved | {"model": json.dumps(old, sort_keys=True)}, path)
    fresh = build_teacher(cfg)
    loaded = teachers.load_into(fresh, teachers.TeacherSource(path, "checkpoint", False), cfg)
    assert loaded["test_acc"] == 1.0
    pairs = zip(fresh.state_dict().values(), teacher.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)


if __name__ == "__main__":  # regenerate the pinned values (only after a deliberate change)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        values = {p or "default": _keys(Path(tmp), p) for p in [None, *PRESETS]}
    PINNED.write_text(json.dumps(values, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(values)} pinned identities to {PINNED}")
