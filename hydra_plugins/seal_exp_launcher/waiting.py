"""Submitting a batch of Hydra jobs through submitit and waiting for every one of them.

submitit's Hydra plugin collects results in job order and raises at the first job without one (a
``scancel``, a job that stopped, a refused duplicate), leaving the others unread and the user with a
traceback. Here every job is waited for; one that produced no result is recorded with the scheduler's
state and the job's own last ``seal-exp:`` line (:mod:`seal_exp.sweep_launch`), and the sweep ends
with its table and exit code 3 instead.

Hydra imports every module under ``hydra_plugins`` to discover plugins: imports stay light here.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from omegaconf import OmegaConf

log = logging.getLogger(__name__)

INIT_KEYS = ("submitit_folder", "max_num_timeout")  # given when the executor is made, not per job


class WaitingLauncher:
    """Mixed into submitit's Slurm and Local launchers (which provide ``params``, ``config`` and
    ``_EXECUTOR``)."""

    params: dict[str, Any]
    config: Any
    _EXECUTOR: str

    def executor(self) -> Any:
        """submitit's executor with the preset's parameters: the queue's own keys as they are, the
        scheduler-specific ones under the scheduler's prefix (``slurm_partition``)."""
        import submitit

        prefix = self._EXECUTOR
        made = {"folder": self.params["submitit_folder"]}
        if "max_num_timeout" in self.params:
            made[f"{prefix}_max_num_timeout"] = self.params["max_num_timeout"]
        executor = submitit.AutoExecutor(cluster=prefix, **made)
        queue_keys = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(
            **{
                key if key in queue_keys else f"{prefix}_{key}": value
                for key, value in self.params.items()
                if key not in INIT_KEYS
            }
        )
        return executor

    def submit(self, executor: Any, calls: list[tuple[Any, ...]]) -> list[Any]:
        """Submit the batch (one array on SLURM); a scheduler's refusal is handled by the subclass."""
        return executor.map_array(self, *zip(*calls, strict=True))

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[JobReturn]:
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
        log.info("Submitit '%s' sweep output dir : %s", self._EXECUTOR, sweep_dir)
        calls = []
        for num, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info("\t#%d : %s", num, " ".join(filter_overrides(overrides)))
            calls.append(
                (list(overrides), "hydra.sweep.dir", num, f"job_id_for_{num}", Singleton.get_state())
            )
        jobs = self.submit(self.executor(), calls)
        from seal_exp.sweep_launch import LAUNCH

        LAUNCH.launched += len(jobs)
        return [
            self.wait(num, list(overrides), job)
            for num, overrides, job in zip(
                range(initial_job_idx, initial_job_idx + len(jobs)), job_overrides, jobs, strict=True
            )
        ]

    def wait(self, num: int, overrides: list[str], job: Any) -> JobReturn:
        """The job's own return, or, where it ended without one, a record of why (and an empty return)."""
        from submitit.core.utils import FailedJobError, UncompletedJobError

        from seal_exp.sweep_launch import LAUNCH, EndedWithoutResult, outcome_state

        err = Path(job.paths.stderr)
        try:
            returned = job.results()[0]
            if returned.status != JobStatus.FAILED:
                return returned
            # Hydra caught the job's exception and returned it: the job ran, and raised
            state, reason = "FAILED", own_reason(err) or last_line(f"{returned._return_value!r}")
        except (UncompletedJobError, FailedJobError) as exc:
            state = outcome_state(job.state)
            if state in ("COMPLETED", "FINISHED", "UNKNOWN"):
                state = "FAILED"  # its process ended, but without a result (an exit code, an exception)
            reason = own_reason(err) or last_line(str(exc)) or state
        LAUNCH.unfinished.append(EndedWithoutResult(num, tuple(overrides), state, reason, str(err)))
        log.warning("job #%d (%s) ended without a result: %s", num, job.job_id, reason)
        return JobReturn(overrides=overrides, status=JobStatus.COMPLETED, _return_value=None)


def own_reason(err_log: Path) -> str | None:
    """The last line a job wrote as ``seal-exp: …`` in its error log (its own words on how it ended)."""
    try:
        lines = err_log.read_text(errors="replace").splitlines()
    except OSError:
        return None
    said = [line[len("seal-exp: ") :].strip() for line in lines if line.startswith("seal-exp: ")]
    return said[-1] if said else None


def last_line(text: str) -> str:
    """The last meaningful line of a submitit error (an exception's own line, not the traceback)."""
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("-")]
    return lines[-1] if lines else ""
