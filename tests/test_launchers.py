"""The hydra/launcher presets (local, slurm, slurm_ddp): they compose with the real conf/, and a SLURM
sweep renders the batch script a cluster would receive. No cluster is needed: the sweep runs through
``python -m seal_exp.train -m`` and the real submitit plugin in this process, with only the sbatch call
(and the wait for results) faked."""

from __future__ import annotations

import logging
import runpy
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import submitit
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from hydra_plugins.hydra_submitit_launcher import submitit_launcher
from omegaconf import DictConfig
from submitit.slurm import slurm

from seal_exp.config import CONF_DIR


def launcher_cfg(preset: str, overrides: Sequence[str] = ()) -> DictConfig:
    """The composed ``train`` config, Hydra's own section included, with ``hydra/launcher=<preset>``."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"hydra/launcher={preset}", *overrides], return_hydra_config=True)
    return cfg


@pytest.mark.parametrize("preset", ["local", "slurm", "slurm_ddp"])
def test_preset_composes_and_builds_its_launcher(preset: str) -> None:
    """``hydra/launcher=<preset>`` selects the plugin, and the plugin accepts every key (resolved)."""
    cfg = launcher_cfg(preset)
    launcher = cfg.hydra.launcher
    kind = "Local" if preset == "local" else "Slurm"
    assert launcher._target_.endswith(f".{kind}Launcher")
    assert launcher.submitit_folder.startswith(f"{cfg.hydra.sweep.dir}/.submitit/")
    assert launcher.timeout_min > 0
    assert launcher.cpus_per_task >= 1

    plugin = instantiate(launcher)
    # the plugin's launcher, or ours built on it (Hydra loads plugin modules itself: compare by name)
    plugin_class = f"{submitit_launcher.__name__}.{kind}Launcher"
    assert plugin_class in {f"{c.__module__}.{c.__qualname__}" for c in type(plugin).__mro__}
    assert all(not isinstance(v, str) or "${" not in v for v in plugin.params.values())


def test_local_preset_runs_on_the_cpu() -> None:
    """gpus_per_node 0: the local executor hides every GPU from the jobs."""
    launcher = launcher_cfg("local").hydra.launcher
    assert launcher.gpus_per_node == 0
    assert launcher.tasks_per_node == 1


def test_slurm_preset_is_one_gpu_per_job_and_survives_the_time_limit() -> None:
    """The cluster chooses the partition; a job warned before its time limit is requeued, not lost."""
    launcher = launcher_cfg("slurm").hydra.launcher
    assert launcher.partition is None  # the cluster's default partition unless overridden
    assert (launcher.gpus_per_node, launcher.tasks_per_node, launcher.nodes) == (1, 1, 1)
    assert launcher.mem_gb > 0
    assert launcher.array_parallelism > 0
    assert launcher.signal_delay_s > 0  # time to write a checkpoint before SLURM kills the job
    assert launcher.max_num_timeout > 0
    assert isinstance(launcher.setup, Sequence)
    assert all(isinstance(line, str) for line in launcher.setup)


def test_slurm_ddp_preset_runs_one_task_per_gpu() -> None:
    """Each task is one DDP rank, so tasks_per_node follows gpus_per_node, also when it is overridden."""
    launcher = launcher_cfg("slurm_ddp").hydra.launcher
    assert launcher.gpus_per_node == launcher.tasks_per_node == 4
    assert launcher.max_num_timeout > 0 and launcher.signal_delay_s > 0  # the slurm preset's, inherited
    eight = launcher_cfg("slurm_ddp", ["hydra.launcher.gpus_per_node=8"]).hydra.launcher
    assert eight.tasks_per_node == 8
    assert instantiate(eight).params["tasks_per_node"] == 8
    # CPU-only nodes: no GPU, one task unless told how many (each a gloo rank)
    cpus = launcher_cfg("slurm_ddp", ["hydra.launcher.gpus_per_node=0"]).hydra.launcher
    assert cpus.tasks_per_node == 1
    two = launcher_cfg("slurm_ddp", ["hydra.launcher.gpus_per_node=0", "hydra.launcher.tasks_per_node=2"])
    assert instantiate(two.hydra.launcher).params["tasks_per_node"] == 2


@pytest.mark.parametrize(
    "override", ["hydra.launcher.mail_type=END", "hydra.launcher.additional_parameters={reservation:ml_week}"]
)
def test_keys_the_plugin_lacks_need_a_plus(override: str) -> None:
    """Hydra refuses them without the ``+`` and says so, as the README warns."""
    with pytest.raises(ConfigCompositionException, match=r"use \+hydra\.launcher\."):
        launcher_cfg("slurm", [override])


@pytest.fixture
def fake_sbatch(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """A SLURM login node in miniature: ``srun`` appears to exist, ``sbatch`` records the script it is
    given and answers with a job id, and every job reports success at once."""
    scripts: list[str] = []

    class FakeCommand:
        def __init__(self, command: list[str], **kwargs: object) -> None:
            self.command = command

        def __call__(self, *args: object, **kwargs: object) -> str:
            assert self.command[0] == "sbatch", self.command
            scripts.append(Path(self.command[1]).read_text())
            return "Submitted batch job 12\n"

    def finished(job: slurm.SlurmJob) -> list[JobReturn]:
        return [JobReturn(status=JobStatus.COMPLETED, _return_value=None)]

    which = shutil.which  # the entry point checks that sbatch is there before it builds the sweep

    def with_sbatch(name: str, *args: object, **kwargs: object) -> str | None:
        return "/usr/bin/sbatch" if name == "sbatch" else which(name, *args, **kwargs)

    monkeypatch.setattr(shutil, "which", with_sbatch)
    monkeypatch.setattr(slurm.SlurmExecutor, "affinity", classmethod(lambda cls: 2))
    monkeypatch.setattr(submitit.core.utils, "CommandFunction", FakeCommand)
    monkeypatch.setattr(slurm.SlurmJob, "results", finished)
    yield scripts
    slurm.SlurmJob.watcher.clear()


def multirun(root: Path, monkeypatch: pytest.MonkeyPatch, args: Sequence[str]) -> Path:
    """``python -m seal_exp.train -m ARGS`` in this process; returns the sweep folder."""
    sweep_dir = root / "sweep"
    argv = ["seal_exp.train", "-m", f"paths.root={root}", f"hydra.sweep.dir={sweep_dir}", "tracking=none"]
    monkeypatch.setattr(sys, "argv", [*argv, *args])
    root_logger = logging.getLogger()
    handlers, level = root_logger.handlers[:], root_logger.level
    GlobalHydra.instance().clear()
    try:  # as `python -m` does, so Hydra finds conf/ next to the entry point
        runpy.run_module("seal_exp.train", run_name="__main__", alter_sys=True)
    finally:
        GlobalHydra.instance().clear()
        root_logger.handlers[:] = handlers  # Hydra replaced them with its console handler
        root_logger.setLevel(level)
    return sweep_dir


def test_slurm_ddp_sweep_renders_the_batch_script(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_sbatch: list[str]
) -> None:
    """What sbatch receives for a two-point sweep: one throttled job array, four GPUs and four tasks per
    job, the time limit, the early warning signal, the partition and the setup lines."""
    sweep_dir = multirun(
        tmp_path,
        monkeypatch,
        [
            "hydra/launcher=slurm_ddp",
            "hydra.launcher.partition=gpu",
            "hydra.launcher.setup=[module load cuda/12.4,echo ready]",
            "hydra.launcher.array_parallelism=1",
            "distiller.alpha=0.3,0.6",
        ],
    )
    launcher = launcher_cfg("slurm_ddp").hydra.launcher
    assert len(fake_sbatch) == 1  # one array for the whole sweep
    script = fake_sbatch[0]
    lines = script.splitlines()
    for directive in (
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --ntasks-per-node=4",
        "#SBATCH --nodes=1",
        f"#SBATCH --cpus-per-task={launcher.cpus_per_task}",
        f"#SBATCH --mem={launcher.mem_gb}GB",
        f"#SBATCH --time={launcher.timeout_min}",
        f"#SBATCH --signal=USR2@{launcher.signal_delay_s}",
        "#SBATCH --partition=gpu",
        "#SBATCH --array=0-1%1",  # two jobs, at most array_parallelism at a time
        "#SBATCH --job-name=train",
    ):
        assert directive in lines, f"{directive!r} missing from\n{script}"
    setup = lines.index("# setup")
    assert lines[setup + 1 : setup + 3] == ["module load cuda/12.4", "echo ready"]
    assert any(line.startswith("srun ") and "submitit.core._submit" in line for line in lines)
    assert f"{sweep_dir}/.submitit/" in script  # logs and pickles live with the sweep
    # the same script stays in the submitit folder, next to the pickled jobs
    assert [p.read_text() for p in sweep_dir.glob(".submitit/**/*_submission.sh")] == [script]
    assert len(list(sweep_dir.glob(".submitit/**/*_submitted.pkl"))) == 2


def test_slurm_default_script_keeps_the_cluster_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_sbatch: list[str]
) -> None:
    """No partition unless one is asked for; one GPU and one task; the preset's own setup line."""
    multirun(tmp_path, monkeypatch, ["hydra/launcher=slurm"])
    lines = fake_sbatch[0].splitlines()
    assert not any(line.startswith("#SBATCH --partition") for line in lines)
    assert {"#SBATCH --gpus-per-node=1", "#SBATCH --ntasks-per-node=1"} <= set(lines)
    setup = launcher_cfg("slurm").hydra.launcher.setup
    assert lines[lines.index("# setup") + 1 :][: len(setup)] == list(setup)


def test_sbatch_options_the_plugin_lacks_reach_the_script(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_sbatch: list[str]
) -> None:
    """Two escape hatches: ``+hydra.launcher.additional_parameters`` passes any sbatch option through
    verbatim (as a dict, or one key at a time), and ``+hydra.launcher.<key>`` adds an option submitit
    knows but the plugin's config does not list."""
    multirun(
        tmp_path,
        monkeypatch,
        [
            "hydra/launcher=slurm",
            "+hydra.launcher.additional_parameters={reservation:ml_week,exclusive:true}",
            "+hydra.launcher.additional_parameters.account=proj123",
            "+hydra.launcher.mail_type=END",
        ],
    )
    lines = set(fake_sbatch[0].splitlines())
    expected = {"--reservation=ml_week", "--exclusive", "--account=proj123", "--mail-type=END"}
    assert {f"#SBATCH {option}" for option in expected} <= lines


def test_unknown_launcher_key_fails_before_submission(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_sbatch: list[str], capsys: pytest.CaptureFixture
) -> None:
    """A misspelt ``+hydra.launcher.<key>`` stops the sweep, naming the key, before anything is submitted."""
    with pytest.raises(SystemExit):
        multirun(tmp_path, monkeypatch, ["hydra/launcher=slurm", "+hydra.launcher.mail_typo=END"])
    assert "Unknown argument 'mail_typo'" in capsys.readouterr().err
    assert fake_sbatch == []


@pytest.mark.parametrize("preset", ["slurm", "slurm_ddp"])
def test_a_request_slurm_refuses_stops_the_sweep_with_one_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fake_sbatch: list[str],
    capsys: pytest.CaptureFixture,
    preset: str,
) -> None:
    """sbatch's refusal (here: a GPU type the cluster lacks) ends the sweep with exit code 2 and one line
    that quotes SLURM and names the keys to change: no traceback."""

    class Refusing:
        def __init__(self, command: list[str], **kwargs: object) -> None:
            self.command = command

        def __call__(self, *args: object, **kwargs: object) -> str:
            refusal = subprocess.CalledProcessError(1, self.command)
            said = "sbatch: error: Invalid generic resource (gres) specification"
            raise submitit.core.utils.FailedJobError(said) from refusal

    monkeypatch.setattr(submitit.core.utils, "CommandFunction", Refusing)
    with pytest.raises(SystemExit) as stop:
        multirun(tmp_path, monkeypatch, [f"hydra/launcher={preset}", "seed=0,1"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.startswith("seal-exp:")]
    assert "no job was submitted: sbatch: error: Invalid generic resource (gres) specification" in line
    assert "hydra.launcher.partition" in line and "Traceback" not in err


def test_a_submitit_warning_is_written_once() -> None:
    """submitit writes warnings to stdout and stderr and passes them to the root logger (three copies
    of each sacct warning per status check); after the setup one handler takes each record."""
    import logging

    from seal_exp.train import submitit_logs_once

    submitit_logs_once()
    submitit_logs_once()  # idempotent: a job's main() runs it again in the same process
    log = logging.getLogger("submitit")
    assert log.propagate is False
    for level in (logging.INFO, logging.WARNING, logging.ERROR):
        record = log.makeRecord("submitit", level, __file__, 1, "Bypassing sacct error", None, None)
        streams = [h for h in log.handlers if type(h) is logging.StreamHandler]  # not pytest's capture
        takers = [h for h in streams if level >= h.level and h.filter(record)]
        assert len(takers) == 1, (level, takers)


@pytest.mark.parametrize(
    "limit",
    [
        ("hydra.launcher.timeout_min=1", "hydra.launcher.signal_delay_s=30"),
        ("hydra.launcher.timeout_min=2",),  # the preset's signal_delay_s: 120 s
    ],
)
def test_a_time_limit_that_cannot_work_is_refused_before_submission(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fake_sbatch: list[str],
    capsys: pytest.CaptureFixture,
    limit: tuple[str, ...],
) -> None:
    """SLURM may send the pre-timeout signal up to 60 s early: a limit whose signal can come before the
    job has started (and trained a little) is refused with one line naming the key and the smallest limit
    that works; nothing is submitted, no folder and no MLflow run are left."""
    from seal_exp.sweep_launch import MIN_TRAINING_S, SLURM_SIGNAL_SLACK_S

    with pytest.raises(SystemExit) as stop:
        multirun(tmp_path, monkeypatch, ["hydra/launcher=slurm", *limit, "seed=0,1", "tracking=mlflow"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.startswith("seal-exp:")]
    assert "hydra.launcher.timeout_min=" in line and "cannot work" in line and "Nothing was submitted" in line
    delay = 30 if "signal_delay_s=30" in " ".join(limit) else 120
    # the smallest limit it names leaves the job its start-up (at least 0 s) and MIN_TRAINING_S
    suggested = int(line.split("Use hydra.launcher.timeout_min=")[1].split()[0])
    assert suggested * 60 >= delay + SLURM_SIGNAL_SLACK_S + MIN_TRAINING_S
    assert "Traceback" not in err and fake_sbatch == []
    assert not (tmp_path / "sweep").exists() and not (tmp_path / "mlflow.db").exists()


def test_the_smallest_limit_the_refusal_names_is_accepted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_sbatch: list[str], capsys: pytest.CaptureFixture
) -> None:
    """Take the refusal's advice and the sweep is submitted."""
    with pytest.raises(SystemExit):
        multirun(tmp_path, monkeypatch, ["hydra/launcher=slurm", "hydra.launcher.timeout_min=1"])
    line = next(x for x in capsys.readouterr().err.splitlines() if x.startswith("seal-exp:"))
    suggested = line.split("Use hydra.launcher.timeout_min=")[1].split()[0]
    multirun(tmp_path, monkeypatch, ["hydra/launcher=slurm", f"hydra.launcher.timeout_min={suggested}"])
    assert len(fake_sbatch) == 1


def test_a_sweep_run_inside_a_program_gives_the_stop_signals_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a sweep runs, SIGTERM/SIGINT/SIGHUP close its parent run; once it ends they are the calling
    program's again (a notebook or script that ran a sweep keeps its own Ctrl-C)."""
    stops = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    before = [signal.getsignal(s) for s in stops]
    try:
        multirun(tmp_path, monkeypatch, ["dataset=digits", "debug=smoke", "distiller=none", "seed=0"])
    except SystemExit as ended:
        assert ended.code in (0, None)
    assert (tmp_path / "sweep" / "0" / "summary.json").is_file()
    assert [signal.getsignal(s) for s in stops] == before
