"""Where the ANN teacher comes from: ``teacher.checkpoint``, or the cache (trained once when missing).

The cache key covers everything that decides the teacher's weights: the dataset config, the
architecture, the teacher recipe (loop, optimiser, schedule), the seed and the content of any initial
weights file. A checkpoint records architecture, dataset, class count and accuracy, and a checkpoint
that does not fit the run is refused before any data is read.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import nn

from seal_exp.config import ConfigError
from seal_exp.run import checkpoint
from seal_exp.run.identity import without_module_paths

log = logging.getLogger(__name__)

FORMAT = "seal-exp/teacher-v1"


@dataclass(frozen=True)
class TeacherSource:
    """Where this run's teacher comes from; ``needs_training`` when the cache does not have it yet."""

    path: Path
    origin: str  # "checkpoint" | "cache"
    needs_training: bool


def _plain(node: DictConfig) -> Any:
    """The resolved config, its targets by name (a moved module is still the same teacher)."""
    return without_module_paths(OmegaConf.to_container(node, resolve=True))


def _file_digest(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def cache_key(cfg: DictConfig) -> str:
    identity = {
        "format": FORMAT,
        # where the files live and the student's augmentation do not change the teacher
        "dataset": {k: v for k, v in _plain(cfg.dataset).items() if k not in ("root", "augment")},
        "model": _plain(cfg.teacher.model),
        "recipe": _plain(cfg.teacher.recipe),
        "optim": _plain(cfg.teacher.optim),
        "sched": _plain(cfg.teacher.sched),
        "seed": cfg.seed,
    }
    weights = cfg.teacher.model.get("weights")
    if weights and Path(str(weights)).expanduser().is_file():  # initial weights from a file: its content
        identity["weights_sha256"] = _file_digest(Path(str(weights)).expanduser())
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def locate(cfg: DictConfig) -> TeacherSource:
    """Resolve the teacher's file without reading any data; a missing explicit checkpoint is an error."""
    if cfg.teacher.checkpoint:
        path = Path(str(cfg.teacher.checkpoint)).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"teacher.checkpoint={path}: no such file. Train a teacher with "
                "`python -m seal_exp.train stage=teacher` (it prints where it saved it), or set "
                "teacher.checkpoint=null to train one for this run and cache it."
            )
        return TeacherSource(path.resolve(), "checkpoint", needs_training=False)
    path = Path(str(cfg.teacher.cache_dir)) / f"{cfg.dataset.name}-{cfg.teacher.arch}-{cache_key(cfg)}.pt"
    return TeacherSource(path, "cache", needs_training=not path.is_file())


def expected_identity(cfg: DictConfig) -> dict[str, Any]:
    return {
        "arch": str(cfg.teacher.arch),
        "dataset": str(cfg.dataset.name),
        "num_classes": int(cfg.dataset.num_classes),
        "in_channels": int(cfg.dataset.in_channels),
    }


def _model_settings(recorded: Any) -> Any:
    """A checkpoint's ``model`` record in today's form (older records hold full module paths)."""
    try:
        return json.dumps(without_module_paths(json.loads(recorded)), sort_keys=True)
    except (TypeError, ValueError):
        return recorded


def check_data(record: dict[str, Any], source: TeacherSource, fingerprint: str | None) -> None:
    """A cached teacher trained on other data (``dataset.root`` now points elsewhere) is refused: it
    would be distilled from as if it had seen this data. An explicit ``teacher.checkpoint`` is the user's
    choice (a teacher from other data may be intended): it gets a warning."""
    written = record.get("data_fingerprint")
    if written is None or fingerprint is None or written == fingerprint:
        return
    if source.origin == "checkpoint":
        log.warning(
            "teacher.checkpoint=%s was trained on other data (fingerprint %s, this run's data %s)",
            source.path,
            written,
            fingerprint,
        )
        return
    raise ConfigError(
        f"the teacher cache {source.path} holds a teacher trained on other data (fingerprint {written}, this "
        f"run's data {fingerprint}): set teacher.cache_dir to another folder to train one on this data and "
        "keep both, or delete that file to replace it."
    )


def load_into(
    teacher: nn.Module, source: TeacherSource, cfg: DictConfig, data_fingerprint: str | None = None
) -> dict[str, Any]:
    """Check that the checkpoint fits this run (its data too, ``data_fingerprint``, when known), load its
    weights into ``teacher``, return its record."""
    key = "teacher.checkpoint" if source.origin == "checkpoint" else "the teacher cache"
    try:
        record = checkpoint.load(source.path)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{key}: cannot read {source.path} as a checkpoint ({reason}).") from exc
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ConfigError(
            f"{key}: {source.path} is not a seal-exp teacher checkpoint (expected format {FORMAT}). "
            "Teachers come from `python -m seal_exp.train stage=teacher`."
        )
    want = expected_identity(cfg)
    problems = [
        f"{k}: the checkpoint has {record.get(k)!r}, this run needs {v!r}"
        for k, v in want.items()
        if record.get(k) != v
    ]
    model_cfg = json.dumps(_plain(cfg.teacher.model), sort_keys=True)
    if not problems and _model_settings(record.get("model")) != model_cfg:
        problems.append(
            f"architecture settings: the checkpoint has {record.get('model')}, teacher.model is {model_cfg}"
        )
    if problems:
        raise ConfigError(
            f"{key}: {source.path} does not fit this run:\n  - "
            + "\n  - ".join(problems)
            + "\nPoint teacher.checkpoint at a teacher trained for this dataset and architecture, or set "
            "teacher.checkpoint=null to train one (it is cached for later runs)."
        )
    check_data(record, source, data_fingerprint)
    _load_weights(teacher, record.get("state_dict"), key, source.path)
    return {k: v for k, v in record.items() if k != "state_dict"}


def _load_weights(teacher: nn.Module, state: Any, key: str, path: Path) -> None:
    """Load the checkpoint's weights; weights that do not fit ``teacher.model`` (a record that says one
    thing and weights that hold another) are refused with the keys and shapes that differ."""
    if not isinstance(state, dict):
        raise ConfigError(
            f"{key}: {path} holds no state_dict. Teachers come from `python -m seal_exp.train stage=teacher`."
        )
    try:
        teacher.load_state_dict(state)
    except RuntimeError as exc:
        differences = _weight_mismatch(teacher, state) or str(exc).splitlines()[0]
        raise ConfigError(
            f"{key}: the weights in {path} do not fit teacher.model ({differences}). "
            + _weights_advice(key, path)
        ) from exc


def _weight_mismatch(teacher: nn.Module, state: dict[str, Any], shown: int = 3) -> str:
    """The first few differently shaped, missing and unexpected weights, for a one-line message."""
    own = teacher.state_dict()
    shape = {k: list(getattr(v, "shape", ())) for k, v in state.items()}
    groups = {
        "shapes differ": [
            f"{k} is {shape[k]} in the file, {list(v.shape)} in the model"
            for k, v in own.items()
            if k in shape and shape[k] != list(v.shape)
        ],
        "missing in the file": [k for k in own if k not in state],
        "not in the model": [k for k in state if k not in own],
    }
    return "; ".join(
        f"{what}: {', '.join(items[:shown])}"
        + (f" and {len(items) - shown} more" if len(items) > shown else "")
        for what, items in groups.items()
        if items
    )


def _weights_advice(key: str, path: Path) -> str:
    if key == "teacher.checkpoint":
        return (
            "Point teacher.checkpoint at a teacher trained with this teacher.model "
            "(`python -m seal_exp.train stage=teacher ...`), or set teacher.checkpoint=null to train one."
        )
    return f"Delete {path} so the teacher is trained again."


def save(teacher: nn.Module, path: Path, cfg: DictConfig, **accuracy: Any) -> dict[str, Any]:
    """Write the trained teacher with the record that :func:`load_into` checks."""
    record = {
        "format": FORMAT,
        **expected_identity(cfg),
        "model": json.dumps(_plain(cfg.teacher.model), sort_keys=True),
        "seed": int(cfg.seed),
        "cache_key": cache_key(cfg),
        **accuracy,
    }
    checkpoint.atomic_save({**record, "state_dict": teacher.state_dict()}, path)
    log.info("teacher saved to %s", path)
    return record
