"""A job's identity: the hash of what decides its results, so relaunching a sweep can find earlier jobs.

Two jobs with the same identity train the same model from the same data with the same method and
seed; they may differ only in where files go and how the run is watched (output and data paths,
tracking, progress bars, loader workers, the device, checkpoint frequency). The identity is recorded
as the MLflow tag ``seal.identity`` and in every ``last.pt``.

It hashes what a config means, not where its code lives: every ``_target_`` counts by the name of the
class or function it builds (``seal_exp.models.resnet.SpikingResNet`` → ``SpikingResNet``), so moving a
module leaves every identity and teacher cache key as it was.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from seal_exp.config import flatten
from seal_exp.run_controls import RUN_CONTROLS, is_run_control

EXCLUDED = RUN_CONTROLS  # where and how a job runs, not what it computes (seal_exp/run_controls.py)


def target_name(target: str) -> str:
    """What a ``_target_`` builds, without the module it lives in."""
    return str(target).rsplit(".", 1)[-1]


def without_module_paths(node: Any) -> Any:
    """A plain (nested) config with every ``_target_`` reduced to :func:`target_name`."""
    if isinstance(node, dict):
        return {k: target_name(v) if k == "_target_" else without_module_paths(v) for k, v in node.items()}
    if isinstance(node, list):
        return [without_module_paths(v) for v in node]
    return node


def _meaning(key: str, value: str) -> str:
    return target_name(value) if key == "_target_" or key.endswith("._target_") else value


def _excluded(key: str) -> bool:
    return is_run_control(key)


def identity_config(cfg: DictConfig) -> dict[str, str]:
    """The flattened, resolved config without the keys in :data:`EXCLUDED`, targets by name only.

    Excluded values are blanked before resolving, so the identity can be computed outside a running
    job too (``paths.output`` needs Hydra's runtime), e.g. by ``python -m seal_exp.sweep status``.
    """
    plain = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    with open_dict(plain):
        for key in EXCLUDED:
            parent, _, leaf = key.rpartition(".")
            node = OmegaConf.select(plain, parent) if parent else plain
            if isinstance(node, DictConfig) and leaf in node:
                node[leaf] = None
    meaning = without_module_paths(OmegaConf.to_container(plain, resolve=True))
    return {k: v for k, v in sorted(flatten(meaning).items()) if not _excluded(k)}


def job_identity(cfg: DictConfig | dict[str, Any]) -> str:
    """A 16-hex-digit hash of :func:`identity_config` (or of an already flattened one)."""
    flat = cfg if isinstance(cfg, dict) else identity_config(cfg)
    return hashlib.sha256(json.dumps(flat, sort_keys=True).encode()).hexdigest()[:16]


def config_differences(before: dict[str, str], now: dict[str, str]) -> list[str]:
    """``key: before -> now`` for every key whose value differs (or exists on one side only).

    ``before`` may come from a ``last.pt`` that recorded full module paths: those compare by name.
    """
    missing = "(absent)"
    before = {k: _meaning(k, v) for k, v in before.items()}
    return [
        f"{k}: {before.get(k, missing)} -> {now.get(k, missing)}"
        for k in sorted(before.keys() | now.keys())
        if before.get(k, missing) != now.get(k, missing)
    ]


DATA_TAG = "seal.data"  # the MLflow tag holding the data's fingerprint (seal_exp.data.fingerprint)


def same_data(recorded: str | None, now: str | None) -> bool:
    """Whether a result recorded with fingerprint ``recorded`` holds for the data now at hand.

    ``recorded`` None: a run from before fingerprints were recorded, taken as it is. ``now`` None: the
    data is not built yet (an event dataset before its frame cache), so nothing recorded matches.
    """
    return recorded is None or recorded == now


def data_location(cfg: DictConfig) -> str:
    """Where the dataset's files are, for messages (the embedded sets ship inside packages)."""
    root = cfg.dataset.get("root")
    return f"dataset.root={root}" if root else "shipped inside its package"


CODE_TAG = "seal.code"  # the MLflow tag (and last.pt key) holding :func:`code_version`


@functools.cache
def code_version() -> str:
    """A 12-hex-digit hash of the package's Python sources, so an uncommitted edit counts too.

    Not part of the identity (editing a plot must not retrain a sweep): recorded on every run and in
    every ``last.pt``, so a resume across a code change is refused unless asked for, and a job skipped
    as finished under other code says so.
    """
    package = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for source in sorted(package.rglob("*.py")):
        digest.update(source.relative_to(package).as_posix().encode() + b"\0" + source.read_bytes() + b"\0")
    return digest.hexdigest()[:12]
