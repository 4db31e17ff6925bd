"""Bad input is refused before any data is read, in one message that names the key and what to do."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from seal_exp import compare, sweep
from seal_exp import plan as plan_module
from seal_exp.config import ConfigError, InvalidArgument
from seal_exp.data.embedded import EmbeddedImages
from seal_exp.models import build_teacher
from seal_exp.plan import prepare
from seal_exp.teacher import cache as teacher_cache
from seal_exp.training.optim import sgd
from tests.conftest import SMOKE, make_cfg, run_cli


@pytest.fixture(autouse=True)
def no_data(monkeypatch):
    """Every refusal here comes before the data: reading it fails the test."""
    monkeypatch.setattr(EmbeddedImages, "load", lambda self: pytest.fail("data was read"))


@pytest.mark.parametrize(
    "override",
    [
        "optim.lr=inf",
        "optim.weight_decay=nan",
        "distiller.beta=inf",
        "distiller.tau=-inf",
        "sched.eta_min=nan",
        "neuron.v_threshold=inf",
        "neuron.surrogate.alpha=inf",
        "trainer.dist_timeout_min=inf",
        "teacher.optim.lr=inf",
    ],
)
def test_a_non_finite_number_is_refused_by_its_key(tmp_path, override):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=rf"^{key}=.*is invalid: use a finite number"):
        prepare(make_cfg(tmp_path, [*SMOKE, "tracking=none", override]))


@pytest.mark.parametrize(
    ("override", "rule"),
    [
        ("sched.eta_min=abc", "use a number"),  # torch's schedule would fail at its first step
        ("neuron.surrogate.alpha=abc", "use a number"),  # spikingjelly's, at the first backward
        ("optim.lr=abc", "use a finite number"),
        ("trainer.batch_size=1.5", "use an integer >= 1"),
        ("resume=maybe", "use true or false"),  # a non-empty string would count as true
        ("skip_finished=maybe", "use true or false"),
        ("resume_across_code_change=yes", "use true or false"),
        ("dataset.split_seed=abc", "use an integer"),  # failed in the split, after the run had started
        ("optim.nesterov=maybe", "use true or false"),  # a non-empty string would count as true
    ],
)
def test_a_value_of_the_wrong_type_is_refused_by_its_key(tmp_path, override, rule):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=rf"^{key}=.*is invalid: {rule}"):
        prepare(make_cfg(tmp_path, [*SMOKE, "tracking=none", override]))


@pytest.mark.parametrize(
    ("overrides", "key", "rule"),
    [
        # each failed mid-run with a traceback: torch's and numpy's seeds, float32, the loader's range
        (["seed=99999999999999999999"], "seed", r"use an integer from 0 to 4294967295 "),
        (["seed=4294967296"], "seed", r"use an integer from 0 to 4294967295 "),
        (["optim.lr=1e300"], "optim.lr", r"use a number of at most 3\.403e\+38 in size"),
        (["teacher.optim.lr=1e39"], "teacher.optim.lr", r"use a number of at most 3\.403e\+38"),
        (["trainer.epochs=99999999999999999999"], "trainer.epochs", r"at most 2\*\*63 - 1"),
        # each was taken silently: a negative surrogate flips the gradients, a negative floor the
        # learning rate, epochs=0 distils from a teacher at chance, a huge T grows until memory runs out,
        # an empty root writes outputs/, mlflow.db and .cache/ at /
        (["neuron.surrogate.alpha=-1"], "neuron.surrogate.alpha", r"sharpness must be > 0"),
        (["neuron.surrogate.alpha=0"], "neuron.surrogate.alpha", r"sharpness must be > 0"),
        (["neuron/surrogate=atan", "neuron.surrogate.alpha=-2"], "neuron.surrogate.alpha", r"must be > 0"),
        (["sched.eta_min=-1"], "sched.eta_min", r"the lowest learning rate must be >= 0"),
        (["teacher.sched.eta_min=-0.5"], "teacher.sched.eta_min", r"the lowest learning rate must be >= 0"),
        (["teacher.recipe.epochs=0"], "teacher.recipe.epochs", r"untrained .*teacher\.model\.weights="),
        (["neuron.T=100000"], "neuron.T", r"an integer >= 1, at most 1024: .*memory grows with T"),
        (["neuron.T=1025"], "neuron.T", r"an integer >= 1, at most 1024"),
        (["paths.root="], "paths.root", r"empty it puts them at the top of the file system"),
        (["paths.root=  "], "paths.root", r"empty it puts them at the top of the file system"),
    ],
)
def test_a_value_that_would_fail_or_mislead_the_run_is_refused_by_its_key(tmp_path, overrides, key, rule):
    with pytest.raises(ConfigError, match=rf"^{key}=.* is invalid: .*{rule}") as refused:
        prepare(make_cfg(tmp_path, [*SMOKE, "tracking=none", *overrides]))
    assert "\n" not in str(refused.value)


def test_the_bounds_themselves_are_accepted(tmp_path):
    """The largest seed and T, a zero floor: the limits refuse only what lies beyond them."""
    plan = prepare(make_cfg(tmp_path, [*SMOKE, "tracking=none", "seed=4294967295", "sched.eta_min=0"]))
    assert plan.seed == 2**32 - 1
    prepare(make_cfg(tmp_path, [*SMOKE, "tracking=none", "neuron.T=1024"]), data=False)


def test_a_diverging_run_is_told_the_keys_and_values_to_change(tmp_path):
    """The line a non-finite loss ends the run with names the learning rate and the method's settings
    with this run's values, and the teacher's own learning rate for the teacher."""
    cfg = make_cfg(tmp_path, [*SMOKE, "tracking=none", "optim.lr=0.05", "distiller.alpha=1e30"])
    plan = prepare(cfg)
    advice = plan.student.on_nonfinite
    assert advice.startswith("lower the learning rate (optim.lr=0.05) or the method's settings (")
    assert "distiller.alpha=1e+30" in advice and "distiller.tau=" in advice
    assert plan.teacher.training.on_nonfinite.startswith("lower the learning rate (teacher.optim.lr=")
    assert "distiller." not in plan.teacher.training.on_nonfinite


def test_an_empty_project_root_is_refused_before_hydra_writes_anything(tmp_path):
    """``paths.root=`` would put Hydra's run folder at /outputs before any of the package runs."""
    existed = {p: p.exists() for p in (Path("/outputs"), Path("/mlflow.db"), Path("/.cache"))}
    done = run_cli([*SMOKE, "tracking=none", "paths.root="], cwd=tmp_path)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and lines[0].startswith("seal-exp: configuration error: paths.root='' is invalid")
    assert {p: p.exists() for p in existed} == existed
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "+foo=1",
            r"^foo: seal-exp reads no top-level setting of that name.*\+dataset\.foo=.*keys are dataset,",
        ),
        ("++lr=0.1", r"^lr: seal-exp reads no top-level setting .*did you mean optim\.lr\?"),
        ("+epochs=3", r"^epochs: .*did you mean trainer\.epochs\?"),
    ],
)
def test_a_top_level_key_nothing_reads_is_refused(tmp_path, override, message):
    """``+foo=1`` would only change the job's identity (a typo, or a setting meant for a group)."""
    with pytest.raises(ConfigError, match=message):
        prepare(make_cfg(tmp_path, [*SMOKE, "tracking=none", override]))
    prepare(make_cfg(tmp_path, [*SMOKE, "tracking=none", "++seed=2"]))  # an existing key may be forced


def test_constructors_refuse_non_finite_numbers_outside_hydra_too():
    with pytest.raises(InvalidArgument, match="lr=inf: use a finite number"):
        sgd([nn.Linear(2, 2)], lr=math.inf)


@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_a_cuda_device_on_a_machine_without_cuda_is_a_config_error(tmp_path, monkeypatch, device):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(
        ConfigError, match=rf"trainer.device='{device}'.*CUDA is not available.*trainer.device=auto"
    ):
        prepare(make_cfg(tmp_path, [*SMOKE, "tracking=none", f"trainer.device={device}"]))


def test_a_cuda_index_beyond_the_devices_and_an_absent_mps_are_config_errors(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ConfigError, match=r"trainer.device='cuda:2'.*2 CUDA device\(s\), cuda:0 to cuda:1"):
        prepare(make_cfg(tmp_path, [*SMOKE, "tracking=none", "trainer.device=cuda:2"]))
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"trainer.device='mps'.*MPS is not available"):
        prepare(make_cfg(tmp_path, [*SMOKE, "tracking=none", "trainer.device=mps"]))


def test_teacher_weights_that_do_not_fit_their_record_name_the_file_and_the_shapes(tmp_path):
    cfg = make_cfg(tmp_path, [*SMOKE, "tracking=none"])
    five_classes = build_teacher(make_cfg(tmp_path, [*SMOKE, "dataset.num_classes=5"]))
    ckpt = tmp_path / "teacher.pt"
    teacher_cache.save(five_classes, ckpt, cfg)  # the record says 10 classes, the head has 5 outputs
    with pytest.raises(ConfigError) as refused:
        prepare(make_cfg(tmp_path, [*SMOKE, "tracking=none", f"teacher.checkpoint={ckpt}"]))
    message = str(refused.value)
    assert message.startswith(f"teacher.checkpoint: the weights in {ckpt} do not fit teacher.model")
    assert "head.weight is [5, 128] in the file, [10, 128] in the model" in message
    assert "teacher.checkpoint=null" in message and "\n" not in message


@pytest.mark.parametrize("distiller", ["none", "tks", "self_distill"])
def test_a_teacher_checkpoint_for_a_method_without_teacher_is_refused(tmp_path, distiller):
    cfg = make_cfg(
        tmp_path, [*SMOKE, "tracking=none", f"distiller={distiller}", "teacher.checkpoint=/nonexistent"]
    )
    with pytest.raises(
        ConfigError, match=r"teacher.checkpoint=/nonexistent is set but .* drop teacher.checkpoint"
    ):
        prepare(cfg)


def test_an_output_folder_that_cannot_be_created_is_refused_unless_nothing_is_written(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    cfg = make_cfg(tmp_path, [*SMOKE, "tracking=none"], output=blocker / "out")
    with pytest.raises(
        ConfigError, match=rf"paths.output='{blocker}/out'.*{blocker} is a file.*writable folder"
    ):
        prepare(cfg)
    assert prepare(cfg, data=False).student is not None  # the benchmark writes no run folder


def test_an_unwritable_teacher_cache_is_refused_when_the_teacher_must_be_trained(tmp_path, monkeypatch):
    cache = tmp_path / "read-only"
    cache.mkdir()
    real_access = os.access
    monkeypatch.setattr(plan_module.os, "access", lambda p, mode: Path(p) != cache and real_access(p, mode))
    cfg = make_cfg(tmp_path, [*SMOKE, "tracking=none", f"teacher.cache_dir={cache}"])
    with pytest.raises(ConfigError, match=rf"teacher.cache_dir='{cache}'.*{cache} is not writable"):
        prepare(cfg)


def test_compare_report_of_a_missing_folder_exits_2_with_one_line(tmp_path, capsys):
    assert compare.main(["--report", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err == f"seal-exp: --report: {tmp_path / 'nope'}: no such folder; " + (
        "pass the sweep folder the comparison printed\n"
    )


@pytest.mark.parametrize("text", ["hydra:\n  overrides: [unclosed\n", "- a list\n", "nothing: here\n"])
def test_sweep_status_of_a_damaged_multirun_yaml_exits_2_with_one_line(tmp_path, capsys, text):
    (tmp_path / "multirun.yaml").write_text(text)
    assert sweep.main(["status", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"seal-exp: {tmp_path / 'multirun.yaml'}: not a valid multirun.yaml (")
    assert err.count("\n") == 1


def test_the_cli_exits_2_with_one_line_naming_the_key(tmp_path):
    cases = {
        "optim.lr=inf": "optim.lr=inf is invalid: use a finite number",
        "teacher.checkpoint=/nonexistent": "teacher.checkpoint=/nonexistent is set but distiller=none",
        "+foo=1": "foo: seal-exp reads no top-level setting of that name",
    }
    for override, message in cases.items():
        extra = ["distiller=none"] if override.startswith("teacher.") else []
        done = run_cli(
            [*SMOKE, "tracking=none", f"paths.root={tmp_path}", "hydra.output_subdir=null", *extra, override],
            cwd=tmp_path,
        )
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert done.returncode == 2, done.stderr
        assert len(lines) == 1 and lines[0].startswith("seal-exp: configuration error: "), done.stderr
        assert message in lines[0]
