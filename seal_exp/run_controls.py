"""The config keys that say where and how a job runs, not what it computes: one list, read by the job's
identity (:mod:`seal_exp.run.identity`: a relaunch elsewhere finds the same job), its MLflow params and
its run name (:mod:`seal_exp.tracking`: columns and names show what differs in the results)."""

from __future__ import annotations

# Dotted keys, each with everything under it.
RUN_CONTROLS = (
    "hydra",
    "paths",
    "tracking",
    "eval",  # what is measured after training: `python -m seal_exp.evaluate` may measure again
    "resume",
    "resume_across_code_change",
    "skip_finished",
    "dataset.root",
    "teacher.cache_dir",
    "trainer.device",
    "trainer.progress",
    "trainer.progress_every",
    "trainer.figures",
    "trainer.num_workers",
    "trainer.pin_memory",
    "trainer.persistent_workers",
    "trainer.checkpoint_every_steps",
    "trainer.dist_backend",
    "trainer.dist_timeout_min",
)


def is_run_control(key: str) -> bool:
    """Whether a dotted key (``trainer.device``, ``paths.root``, ``+eval.attack``) is one of them."""
    key = key.lstrip("+~")
    return any(key == c or key.startswith(c + ".") for c in RUN_CONTROLS)
