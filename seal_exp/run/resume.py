"""Continuing a job: the layout of ``last.pt``, which one a job continues from, and whether it fits.

``last.pt`` holds everything a fit needs to continue exactly where it stopped (weights, optimiser,
schedule, selection, history, a partly trained epoch, the sampler's and every global RNG state) plus
the job's identity config, which must equal the relaunched job's: a changed setting is refused,
naming the keys, before any data is read.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from torch import nn

from seal_exp.config import ConfigError
from seal_exp.run import checkpoint
from seal_exp.run.distributed import Distributed
from seal_exp.run.identity import code_version, config_differences, data_location

log = logging.getLogger(__name__)

LAST_FORMAT = "seal-exp/last-v1"


@dataclass
class Progress:
    """How far a fit has come; ``epoch`` counts the epochs done."""

    epoch: int = 0
    global_step: int = 0
    best_val_acc: float = -1.0
    best_epoch: int = 0
    best_test_acc: float | None = None  # the papers' best test accuracy over epochs, when tested each epoch
    best_model: dict[str, Any] | None = None
    history: list[dict[str, float]] = field(default_factory=list)

    @classmethod
    def of(cls, state: dict[str, Any]) -> Progress:
        """The progress recorded in a loaded ``last.pt``."""
        return cls(
            int(state["epoch"]),
            int(state["global_step"]),
            state["best_val_acc"],
            state["best_epoch"],
            state["best_test_acc"],
            state["best_model"],
            list(state["history"]),
        )


def last_checkpoint(
    progress: Progress,
    *,
    name: str,
    model: nn.Module,
    objective: Any,
    optimizer: Any,
    scheduler: Any,
    partial_epoch: dict[str, Any] | None,
    sampler_rng: Any,
    rng_ranks: list[dict[str, Any]] | None,
    world_size: int,
    finished: bool,
) -> dict[str, Any]:
    """The content of ``last.pt`` (the job adds its identity, run id and wall time)."""
    return {
        "format": LAST_FORMAT,
        "name": name,
        "epoch": progress.epoch,
        "global_step": progress.global_step,
        "model": model.state_dict(),
        "objective": objective.resumable_state(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "best_val_acc": progress.best_val_acc,
        "best_epoch": progress.best_epoch,
        "best_test_acc": progress.best_test_acc,
        "best_model": progress.best_model,
        "history": progress.history,
        "partial_epoch": partial_epoch,
        "sampler_rng": sampler_rng,
        "rng": checkpoint.rng_states(),
        "rng_ranks": rng_ranks,
        "world_size": world_size,
        "finished": finished,
    }


def rank_rng(state: dict[str, Any], dist: Distributed) -> dict[str, Any]:
    """This rank's RNG states from ``last.pt`` (rank 0's for a checkpoint of another world size)."""
    ranks = state.get("rng_ranks")
    if ranks is not None and len(ranks) == dist.world_size:
        return ranks[dist.rank]
    if dist.world_size != state.get("world_size", 1):
        log.warning(
            "last.pt was written by %d process(es), this run has %d: weights, optimiser and schedule "
            "continue exactly, random draws (data order within ranks, augmentation) do not",
            state.get("world_size", 1),
            dist.world_size,
        )
    return state["rng"]


def resume_point(
    cfg: DictConfig, out: Path, identity_cfg: dict[str, str], earlier: list[Any], data: str | None = None
) -> tuple[Path | None, dict[str, Any] | None]:
    """The ``last.pt`` this job continues from and its content, checked against the config, or Nones.

    ``earlier``: the tracked runs of the same identity and data; a relaunched sweep continues the one an
    interrupted run of this job left in its own folder. ``data``: the data's fingerprint, when known.
    """
    path = out / "last.pt"
    if path.is_file() and not cfg.resume:
        raise ConfigError(
            f"resume=false but {path} exists: set resume=true to continue it, or give the run another "
            "folder (hydra.run.dir=...) so that checkpoint is not overwritten."
        )
    if not cfg.resume:
        return None, None
    if not path.is_file():
        folders = [Path(r.data.tags.get("output_dir", "")) for r in earlier if r.info.status != "FINISHED"]
        path = next((f / "last.pt" for f in folders if (f / "last.pt").is_file()), path)
    if not path.is_file():
        return None, None
    state = read_last(path, identity_cfg)
    _check_code(path, state, bool(cfg.resume_across_code_change))
    written = state.get("data")
    if written is not None and data is not None and written != data:
        raise ConfigError(
            f"{path} was trained on other data (fingerprint {written}; the {cfg.dataset.name} data at hand, "
            f"{data_location(cfg)}, has {data}): resuming would mix two datasets "
            "in one result. Point dataset.root back at that data, or give the run another folder "
            "(hydra.run.dir=...) to start afresh."
        )
    log.info("resuming from %s (epoch %d, step %d)", path, state["epoch"], state["global_step"])
    return path, state


def _check_code(path: Path, state: dict[str, Any], across: bool) -> None:
    """Refuse a ``last.pt`` written by other code unless ``resume_across_code_change``: one result would
    mix two versions of the method."""
    written, now = state.get("code"), code_version()
    if written in (None, now):
        return
    if not across:
        raise ConfigError(
            f"{path} was written by other seal-exp code (source {written}, now {now}): resuming would mix "
            "two versions in one result. Set resume_across_code_change=true to continue it anyway, or give "
            "the run another folder (hydra.run.dir=...) to start afresh."
        )
    log.warning("resuming %s across a code change (source %s, now %s)", path, written, now)


def read_last(path: Path, identity_cfg: dict[str, str]) -> dict[str, Any]:
    """Load ``last.pt`` and refuse it, naming what differs, unless it is this job's."""
    try:
        state = checkpoint.load(path)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        message = f"cannot read {path} to resume from it ({reason}); move it away to restart"
        raise ConfigError(message) from exc
    if not isinstance(state, dict) or state.get("format") != LAST_FORMAT or "config" not in state:
        raise ConfigError(
            f"{path} is not a resumable seal-exp checkpoint (format {LAST_FORMAT}); move it away to start "
            "afresh, or give the run another folder (hydra.run.dir=...)."
        )
    differences = config_differences(state["config"], identity_cfg)
    if differences:
        raise ConfigError(
            f"{path} was written with a different config, so this run cannot resume it:\n  - "
            + "\n  - ".join(differences)
            + "\nPut those keys back to resume, or give the run another folder (hydra.run.dir=... / "
            "hydra.sweep.dir=...) to start a new one."
        )
    return state
