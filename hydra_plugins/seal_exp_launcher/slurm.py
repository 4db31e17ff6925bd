"""The submitit plugin's SLURM launcher, with a sweep SLURM refuses at submission (a GPU the partition
lacks, too much memory, an unknown partition or account) reported in one line, SLURM's own words,
instead of a submitit traceback. ``conf/hydra/launcher/slurm.yaml`` selects it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as SubmititSlurmLauncher


class SlurmLauncher(SubmititSlurmLauncher):
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Any:
        from submitit.core.utils import FailedJobError

        try:
            return super().launch(job_overrides, initial_job_idx)
        except FailedJobError as exc:
            cause = exc.__cause__
            refused = (
                isinstance(cause, subprocess.CalledProcessError) and Path(str(cause.cmd[0])).name == "sbatch"
            )
            if not refused:  # a job that failed on the cluster: its own error, as submitit reports it
                raise
            said = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
            print(
                f"seal-exp: SLURM refused the sweep at submission, no job was submitted: {said}. "
                "Ask for what the partition offers (hydra.launcher.partition, gpus_per_node, "
                "cpus_per_task, mem_gb, timeout_min; `sinfo -o '%P %l %c %m %G'` lists each partition's "
                "time limit, CPUs, memory and GPUs).",
                file=sys.stderr,
                flush=True,
            )
            raise SystemExit(2) from None
