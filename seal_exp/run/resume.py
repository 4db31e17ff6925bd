"""Continuing a job: the layout of ``last.pt``, which one a job continues from, and whether it fits.

``last.pt`` holds everything a fit needs to continue exactly where it stopped (weights, optimiser,
schedule, selection, history, a partly trained epoch, the sampler's and every global RNG state) plus
the job's identity config, which must equal the relaunched job's: a changed setting is refused,
naming the keys, before any data is read.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
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
    attempt_first_step: int = 0  # global_step when this process took over (not saved: per attempt)

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
    cfg: DictConfig,
    out: Path,
    identity_cfg: dict[str, str],
    elsewhere: Sequence[Path],
    data: str | None = None,
) -> tuple[Path | None, dict[str, Any] | None]:
    """The ``last.pt`` this job continues from and its content, checked against the config, or Nones.

    ``out``'s own ``last.pt`` first, else the first of ``elsewhere`` (the folders of this job's unfinished
    earlier attempts, newest first) that holds one: a relaunch gets a new folder (Hydra names them by
    time). A folder whose checkpoint moved on (:data:`CONTINUED_IN`) is followed to where it went.
    ``data``: the data's fingerprint, when known.
    """
    path = out / LAST
    if path.is_file() and not cfg.resume:
        raise ConfigError(
            f"resume=false but {path} exists: set resume=true to continue it, or give the run another "
            "folder (hydra.run.dir=...) so that checkpoint is not overwritten."
        )
    if not cfg.resume:
        return None, None
    if not path.is_file():
        found = (checkpoint_in(f) for f in elsewhere)
        path = next((p for p in found if p is not None), path)
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


LAST, BEST = "last.pt", "best.pt"
# Left in a folder whose job went on in another: that folder's path. last.pt and best.pt moved there.
CONTINUED_IN = "continued_in.txt"


def checkpoint_in(folder: Path) -> Path | None:
    """The ``last.pt`` of the job that ran in ``folder``: there, or where its note says it moved."""
    seen: set[Path] = set()
    while folder not in seen:
        seen.add(folder)
        note = folder / CONTINUED_IN
        if note.is_file():  # the note is written once the copies are in place: it wins over leftovers
            folder = Path(note.read_text().strip())
            continue
        return folder / LAST if (folder / LAST).is_file() else None
    return None


def carry_over(last: Path, out: Path) -> Path:
    """Move the job's ``last.pt`` and ``best.pt`` from the folder of its earlier attempt into ``out``, where
    it continues, and leave :data:`CONTINUED_IN` there naming ``out``; the ``last.pt`` in ``out``.

    The files are copied first (hard-linked on the same file system), the note written, then the old
    ones removed: killed at any point, one folder holds the pair or the note leads to it. So the run's
    selected model is in its folder when it ends (``best.pt``: logged with the run, measured, loaded by
    ``load_student``), and nothing is left behind that no one points at.
    """
    source = last.parent
    if source.resolve() == out.resolve():
        return last
    out.mkdir(parents=True, exist_ok=True)
    moved = [name for name in (BEST, LAST) if (source / name).is_file()]  # best first: a last.pt has its best
    for name in moved:
        try:
            _copy(source / name, out / name)
        except OSError as exc:  # a full disk: nothing moved yet, the old folder still holds the job
            raise checkpoint.CheckpointWriteError(checkpoint.write_failure(out / name, exc)) from exc
    note = source / CONTINUED_IN
    partial = note.with_name(f".{CONTINUED_IN}.tmp")
    try:
        partial.write_text(f"{out.resolve()}\n")
        os.replace(partial, note)
        for name in moved:
            (source / name).unlink(missing_ok=True)
    except OSError as exc:  # a folder this process may read but not change (another user's)
        log.warning(
            "continuing in %s; %s stay in %s too: it cannot be changed (%s)",
            out,
            " and ".join(moved),
            source,
            exc,
        )
        return out / LAST
    log.info(
        "continuing in %s: %s moved there from %s (%s there says where)",
        out,
        ", ".join(moved),
        source,
        CONTINUED_IN,
    )
    return out / LAST


def _copy(source: Path, target: Path) -> None:
    """``source`` at ``target``, whole or not at all (a hard link where the file system allows one)."""
    partial = target.with_name(f".{target.name}.carried.tmp")
    partial.unlink(missing_ok=True)
    try:
        os.link(source, partial)
    except OSError:  # another file system, or one without hard links
        shutil.copyfile(source, partial)
        shutil.copymode(source, partial)
    os.replace(partial, target)


def job_folder_note(cache: str | Path, identity: str) -> Path:
    """Where the folder of a job's latest attempt is noted: how a relaunch finds its ``last.pt`` with no
    tracking store to ask (``tracking=none``)."""
    return Path(cache) / "jobs" / f"{identity}.folder"


def note_job_folder(cache: str | Path, identity: str, folder: Path) -> None:
    """Note ``folder`` as where the job now keeps its checkpoints."""
    note = job_folder_note(cache, identity)
    note.parent.mkdir(parents=True, exist_ok=True)
    partial = note.with_name(f".{note.name}.{os.getpid()}.tmp")
    partial.write_text(f"{folder.resolve()}\n")
    os.replace(partial, note)


def noted_job_folder(cache: str | Path, identity: str) -> Path | None:
    """The folder :func:`note_job_folder` noted last for this job, if any."""
    note = job_folder_note(cache, identity)
    try:
        text = note.read_text().strip()
    except OSError:
        return None
    return Path(text) if text else None


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
