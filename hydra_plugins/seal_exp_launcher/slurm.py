"""submitit's SLURM launcher, with every job waited for (:mod:`.waiting`: a job that ended without a
result is a line of the sweep's table, not a traceback) and a sweep SLURM refuses at submission (a GPU
the partition lacks, too much memory, an unknown partition or account) reported in one line, SLURM's
own words, with nothing left behind. ``conf/hydra/launcher/slurm.yaml`` selects it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as SubmititSlurmLauncher

from hydra_plugins.seal_exp_launcher.waiting import WaitingLauncher


class SlurmLauncher(WaitingLauncher, SubmititSlurmLauncher):
    def submit(self, executor: Any, calls: list[tuple[Any, ...]]) -> list[Any]:
        from submitit.core.utils import FailedJobError

        from seal_exp.sweep_launch import LAUNCH

        try:
            return super().submit(executor, calls)
        except FailedJobError as exc:
            cause = exc.__cause__
            refused = (
                isinstance(cause, subprocess.CalledProcessError) and Path(str(cause.cmd[0])).name == "sbatch"
            )
            if not refused:  # submitit's own failure: its error, as it reports it
                raise
            said = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
            LAUNCH.refused = True
            sweep_dir = Path(str(self.config.hydra.sweep.dir))
            if LAUNCH.folder_was_new:  # made for this launch: nothing of it is worth keeping
                shutil.rmtree(sweep_dir, ignore_errors=True)
            print(
                f"seal-exp: SLURM refused the sweep at submission, no job was submitted: {said}. "
                "Ask for what the partition offers (hydra.launcher.partition, gpus_per_node, "
                "cpus_per_task, mem_gb, timeout_min; `sinfo -o '%P %l %c %m %G'` lists each partition's "
                "time limit, CPUs, memory and GPUs).",
                file=sys.stderr,
                flush=True,
            )
            raise SystemExit(2) from None
