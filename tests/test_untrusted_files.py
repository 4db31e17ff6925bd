"""Shared run folders, checkpoints and sweeps are untrusted: whatever they hold, reading them builds only
the classes the installed config groups name. Each payload below would run a pickle (creating a marker
file) if its ``_target_: torch.load`` node were built; it is refused in one line, before anything is
built, and the CLIs exit 2. Legitimate files still load."""

from __future__ import annotations

import json
import pickle
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from seal_exp import evaluate as evaluate_cli
from seal_exp import load_student, sweep
from seal_exp.config import CONF_DIR, ConfigError
from seal_exp.config_targets import allowed_targets, check_file_config, interpolation_problem, refusal
from seal_exp.models import build_teacher
from seal_exp.teacher import cache as teacher_cache
from seal_exp.train import train
from tests.conftest import SMOKE, make_cfg


class Payload:
    """Unpickled, it creates its marker file: what any code run by loading would look like."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished smoke run (digits, one epoch, no tracking): its folder and config."""
    root = tmp_path_factory.mktemp("untrusted")
    cfg = make_cfg(root, [*SMOKE, "tracking=none", "distiller=none"])  # no teacher to train
    train(cfg)
    return root / "out", cfg


@pytest.fixture
def payload(tmp_path):
    """(the node that would run the pickle if built, the marker file it would create)."""
    marker = tmp_path / "MARKER"
    pkl = tmp_path / "payload.pkl"
    pkl.write_bytes(pickle.dumps(Payload(marker)))
    return {"_target_": "torch.load", "f": str(pkl), "weights_only": False}, marker


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


# ---- best.pt: seal_exp.load_student ----------------------------------------------------------------

PLACES = {  # where in the architecture record the payload goes, and the key path the refusal names
    "nested": (lambda r, p: r["student"].__setitem__("evil", p), "architecture.student.evil._target_"),
    "surrogate": (
        lambda r, p: r["neuron"].__setitem__("surrogate", p),
        "architecture.neuron.surrogate._target_",
    ),
    "in a list": (
        lambda r, p: r["student"].__setitem__("channels", [32, {"deeper": [p]}]),
        "architecture.student.channels[1].deeper[0]._target_",
    ),
    "by interpolation": (
        lambda r, p: r["student"].__setitem__(
            "evil", f"${{oc.create:{{_target_: torch.load, f: '{p['f']}', weights_only: false}}}}"
        ),
        "architecture.student.evil=",
    ),
}


@pytest.mark.parametrize("place", sorted(PLACES))
def test_a_best_pt_whose_record_names_another_class_is_refused_before_anything_is_built(
    finished, payload, tmp_path, place
):
    folder, _ = finished
    evil, marker = payload
    put, key = PLACES[place]
    saved = torch.load(folder / "best.pt", weights_only=True)
    put(saved["architecture"], evil)
    path = tmp_path / "best.pt"
    torch.save(saved, path)
    with pytest.raises(ConfigError) as refused:
        load_student(path)
    message = one_line(str(refused.value))
    assert message.startswith(f"{path}: {key}")
    assert "do not use this file" in message
    assert not marker.exists()


def test_a_legitimate_run_folder_and_best_pt_still_load(finished):
    folder, cfg = finished
    x = torch.randn(3, 1, 8, 8)
    out = load_student(folder)(x)
    assert out.shape == (int(cfg.neuron.T), 3, 10)
    assert torch.equal(load_student(folder / "best.pt")(x), out)
    run = evaluate_cli.locate(str(folder))
    assert run.cfg.student._target_ == cfg.student._target_


BAD_RECORDS = {  # a record omegaconf, Hydra or torch would fail on, each with a raw error of its own before
    "not a checkpoint": lambda path, saved: path.write_bytes(b"not a zip, not a pickle"),
    "no neuron.T": lambda path, saved: (saved["architecture"]["neuron"].pop("T"), torch.save(saved, path)),
    "other weights": lambda path, saved: (
        saved["architecture"]["student"].__setitem__("channels", [8, 8, 8]),
        torch.save(saved, path),
    ),
    "unknown key": lambda path, saved: (
        saved["architecture"]["student"].__setitem__("widht", 3),
        torch.save(saved, path),
    ),
    "no weights": lambda path, saved: (saved.pop("model"), torch.save(saved, path)),
    "no student": lambda path, saved: (saved["architecture"].pop("student"), torch.save(saved, path)),
}


@pytest.mark.parametrize("damage", sorted(BAD_RECORDS))
def test_every_failure_of_load_student_is_one_config_error_naming_the_file(finished, tmp_path, damage):
    folder, _ = finished
    path = tmp_path / "best.pt"
    BAD_RECORDS[damage](path, torch.load(folder / "best.pt", weights_only=True))
    with pytest.raises(Exception) as refused:
        load_student(path)
    assert type(refused.value) is ConfigError, repr(refused.value)
    message = one_line(str(refused.value))
    assert str(path) in message
    assert "copy it again" in message or "build the network" in message


# ---- a run folder: python -m seal_exp.evaluate ------------------------------------------------------


@pytest.mark.parametrize("record", ["config.yaml", ".hydra/config.yaml"])
def test_evaluate_refuses_a_run_folder_whose_config_names_another_class(
    finished, payload, tmp_path, capsys, record
):
    folder, cfg = finished
    evil, marker = payload
    copy = tmp_path / "run"
    shutil.copytree(folder, copy)
    written = OmegaConf.to_container(cfg, resolve=False)
    written["dataset"]["evil"] = evil  # built with the dataset, before any data is read
    if record != "config.yaml":
        (copy / "config.yaml").unlink()
    (copy / record).parent.mkdir(exist_ok=True)
    (copy / record).write_text(yaml.safe_dump(written))
    assert evaluate_cli.main([str(copy)]) == 2
    message = one_line(capsys.readouterr().err)
    assert message.startswith(f"seal-exp: {copy / record}: dataset.evil._target_=torch.load is not a class")
    assert not marker.exists()


# ---- a sweep folder: python -m seal_exp.sweep status -------------------------------------------------


def write_sweep(folder: Path, root: Path, task: list[str]) -> Path:
    """A multirun.yaml as Hydra writes one: the composed config with its Hydra part, the overrides."""
    folder.mkdir()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        saved = compose("train", overrides=[*SMOKE, "tracking=none"], return_hydra_config=True)
    plain = OmegaConf.to_container(saved, resolve=False)
    plain["hydra"]["overrides"] = {
        "hydra": [],
        "task": [*SMOKE, "tracking=none", f"paths.root={root}", *task],
    }
    (folder / "multirun.yaml").write_text(yaml.safe_dump(plain))
    return folder


def test_sweep_status_refuses_an_override_that_names_another_class(payload, tmp_path, capsys):
    evil, marker = payload
    node = f"{{_target_:torch.load,f:'{evil['f']}',weights_only:false}}"
    folder = write_sweep(tmp_path / "sweep", tmp_path, [f"+dataset.evil={node}", "seed=1,2"])
    assert sweep.main(["status", str(folder)]) == 2
    message = one_line(capsys.readouterr().err)
    assert message.startswith(
        f"seal-exp: {folder / 'multirun.yaml'}: dataset.evil._target_=torch.load is not a class"
    )
    assert "(set by the override +dataset.evil=" in message
    assert not marker.exists()


def test_sweep_status_refuses_an_override_of_hydras_search_path(tmp_path, capsys, monkeypatch):
    """Composing ``hydra.searchpath=[pkg://<module>]`` imports the module: a module on the path (the
    working directory, say) would run before any config is seen."""
    modules = tmp_path / "modules"
    modules.mkdir()
    marker = tmp_path / "IMPORTED"
    (modules / "seal_untrusted_sweep_module.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(modules))
    folder = write_sweep(
        tmp_path / "sweep", tmp_path, ["hydra.searchpath=[pkg://seal_untrusted_sweep_module]", "seed=1,2"]
    )
    assert sweep.main(["status", str(folder)]) == 2
    message = one_line(capsys.readouterr().err)
    assert "hydra.searchpath=[pkg://seal_untrusted_sweep_module], a setting of Hydra itself" in message
    assert not marker.exists()


def test_sweep_status_of_a_legitimate_sweep_still_composes_its_jobs(tmp_path, capsys):
    folder = write_sweep(tmp_path / "sweep", tmp_path, ["seed=1,2"])
    assert sweep.main(["status", str(folder)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("| 0 |", "| 1 |"))]
    assert len(rows) == 2 and all("| missing |" in row for row in rows), rows


# ---- a cached teacher's record ------------------------------------------------------------------------


def test_a_cached_teachers_record_is_compared_never_built(finished, payload, tmp_path):
    """The record's ``model`` is text compared with teacher.model: a poisoned one does not fit, unbuilt."""
    _, cfg = finished
    evil, marker = payload
    path = tmp_path / "teacher.pt"
    record = {
        "format": teacher_cache.FORMAT,
        **teacher_cache.expected_identity(cfg),
        "model": json.dumps({**OmegaConf.to_container(cfg.teacher.model), "evil": evil}),
        "state_dict": build_teacher(cfg).state_dict(),
    }
    torch.save(record, path)
    source = teacher_cache.TeacherSource(path, "cache", needs_training=False)
    with pytest.raises(ConfigError, match="does not fit this run"):
        teacher_cache.load_into(build_teacher(cfg), source, cfg)
    assert not marker.exists()


# ---- the allowed set and the interpolations -----------------------------------------------------------


def test_the_allowed_classes_are_exactly_the_targets_written_in_conf(monkeypatch):
    """Every ``_target_: <name>`` line of conf/**/*.yaml, read as text: nested ones (surrogates, hard
    losses, callbacks, the launcher) included, nothing else; plus what the reader lists in
    $SEAL_EXP_TRUSTED_TARGETS (the suite lists its paced dataset)."""
    monkeypatch.setenv("SEAL_EXP_TRUSTED_TARGETS", "")
    pattern = re.compile(r"^\s*(?:-\s*)?_target_:\s*([\w.]+)\s*(?:#.*)?$")
    written = {
        m.group(1)
        for path in CONF_DIR.rglob("*.yaml")
        for line in path.read_text().splitlines()
        if (m := pattern.match(line))
    }
    assert allowed_targets() == written
    assert {
        "spikingjelly.activation_based.surrogate.Sigmoid",
        "seal_exp.models.neurons.rect",
        "hydra_plugins.seal_exp_launcher.slurm.SlurmLauncher",
    } <= written
    monkeypatch.setenv("SEAL_EXP_TRUSTED_TARGETS", " mypkg.MyData, tests.paced_data.PacedMNIST5k ,")
    assert allowed_targets() == written | {"mypkg.MyData", "tests.paced_data.PacedMNIST5k"}
    assert "torch.load" not in written


def test_a_config_folder_on_the_search_path_adds_its_classes(tmp_path):
    own = tmp_path / "my_conf" / "student"
    own.mkdir(parents=True)
    (own / "mine.yaml").write_text("_target_: my_lab.nets.MyNet\nwidth: 3\n")
    node = {"student": {"_target_": "my_lab.nets.MyNet", "width": 3}}
    with pytest.raises(ConfigError, match=r"student\._target_=my_lab\.nets\.MyNet is not a class"):
        check_file_config(node, "run/config.yaml")
    check_file_config(node, "run/config.yaml", search_path=(CONF_DIR, f"file://{tmp_path / 'my_conf'}"))


@pytest.mark.parametrize(
    ("value", "refused"),
    [
        ("${oc.env:HOME}", None),
        ("${paths.root}/outputs/${now:%Y-%m-%d}/${now:%H-%M-%S}_${process_tag:}", None),
        ("${hydra:runtime.output_dir}", None),
        ("${one_task_per_gpu:${.gpus_per_node}}", None),
        ("\\${oc.create:{_target_: torch.load}}", None),  # escaped: text, never resolved
        ("${oc.create:{a: 1}}", "resolver 'oc.create'"),
        ("${oc.decode:'{_target_: torch.load}'}", "resolver 'oc.decode'"),
        ("${oc.select:missing,{_target_: torch.load}}", "spells a node with _target_"),
        ("${${name}:x}", "name is itself an interpolation"),
        ("${eval:1}", "resolver 'eval'"),
    ],
)
def test_interpolations_may_call_only_resolvers_that_build_nothing(value, refused):
    problem = interpolation_problem(value)
    assert (problem is None) if refused is None else (refused in problem), problem


def test_every_config_group_file_passes_the_check_it_sets():
    """A run's files hold what conf/ holds: every interpolation in conf/ calls a resolver files may call
    (a new resolver is added to FILE_RESOLVERS after checking that it builds nothing)."""
    for path in sorted(CONF_DIR.rglob("*.yaml")):
        assert refusal(yaml.safe_load(path.read_text()), allowed_targets()) is None, path
