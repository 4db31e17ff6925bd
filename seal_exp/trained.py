"""A trained student, ready to use without rebuilding its config by hand.

``best.pt`` (the weights selected on validation) records the architecture that holds them: the
``student``, ``neuron`` and dataset-shape settings :func:`seal_exp.models.build_student` needs. The
run attaches it to its MLflow run as ``best.pt``, next to the ``student`` MLflow model, so a run id
or a registered model name is enough to get the network back, on any machine that reaches the store.

    from seal_exp import load_student
    net = load_student("outputs/2026-12-06/10-00-00_1a2b")   # a run folder
    net = load_student("3f78dde293b5421fa45b1f23aa4339be")     # an MLflow run id (project store)
    net = load_student("models:/seal-mnist/1")                 # a registered model (version or alias)
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from seal_exp.config import ConfigError
from seal_exp.models import build_student
from seal_exp.models.neurons import reset_spiking_state
from seal_exp.run import checkpoint

ARCHITECTURE_FORMAT = 1
BEST = "best.pt"


def architecture(cfg: DictConfig) -> dict[str, Any]:
    """What ``best.pt`` records so that the network can be built again: plain values only
    (``weights_only`` loading accepts them)."""
    data = cfg.dataset
    return {
        "format": ARCHITECTURE_FORMAT,
        "student": OmegaConf.to_container(cfg.student, resolve=True),
        "neuron": OmegaConf.to_container(cfg.neuron, resolve=True),
        "dataset": {
            "name": str(data.name),
            "in_channels": int(data.in_channels),
            "num_classes": int(data.num_classes),
            "image_size": data.get("image_size"),
        },
    }


class ReadyStudent(nn.Module):
    """The trained spiking network as a plain function of a batch: ``[T, B, classes]`` logits (average
    over T for the prediction), with its membranes reset after every call, so calls never leak
    state into each other."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        try:
            return self.net(x)
        finally:
            reset_spiking_state(self.net)


def student_from_checkpoint(path: Path) -> ReadyStudent:
    """The network of a ``best.pt`` with its weights, in eval mode on the CPU."""
    saved = checkpoint.load(path)
    record = saved.get("architecture")
    if not isinstance(record, dict) or record.get("format") != ARCHITECTURE_FORMAT:
        raise ConfigError(
            f"{path} records no architecture (written by an older version): build the network from the "
            "run's config (its .hydra/config.yaml) and load the file's 'model' weights into it"
        )
    net = build_student(OmegaConf.create({k: record[k] for k in ("student", "neuron", "dataset")}))
    net.load_state_dict(saved["model"])
    return ReadyStudent(net).eval()


def load_student(source: str | os.PathLike[str], tracking_uri: str | None = None) -> ReadyStudent:
    """The selected student of a run: ``source`` is its run folder, its ``best.pt``, an MLflow run id,
    ``runs:/<id>`` or ``models:/<name>/<version|alias>`` (``tracking_uri``: the store; default
    ``$MLFLOW_TRACKING_URI``, else this project's ``mlflow.db``)."""
    text = str(source)
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / BEST).is_file():
            raise ConfigError(f"no {BEST} in {path}: not a run folder, or its run selected no model")
        return student_from_checkpoint(path / BEST)
    if path.suffix == ".pt":
        if not path.is_file():
            raise ConfigError(f"{path}: no such file")
        return student_from_checkpoint(path)
    return student_from_checkpoint(_best_of_run(run_id_of(text, tracking_uri), tracking_uri))


def tracking_client(tracking_uri: str | None) -> Any:
    from mlflow.tracking import MlflowClient

    from seal_exp.tracking import default_tracking_uri

    return MlflowClient(tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri())


def run_id_of(text: str, tracking_uri: str | None) -> str:
    """The MLflow run behind a run id, ``runs:/<id>[/…]`` or ``models:/<name>/<version|alias>``."""
    if text.startswith("runs:/"):
        return text[len("runs:/") :].split("/", 1)[0]
    if text.startswith("models:/"):
        name, _, which = text[len("models:/") :].partition("/")
        client = tracking_client(tracking_uri)
        try:
            version = client.get_model_version(name, which) if which.isdigit() else None
            version = version or client.get_model_version_by_alias(name, which)
        except Exception as exc:
            raise ConfigError(f"{text}: no such registered model version or alias ({exc})") from None
        return str(version.run_id)
    if len(text) == 32 and all(c in "0123456789abcdef" for c in text):
        return text
    raise ConfigError(
        f"{text!r} is neither a run folder, a best.pt, an MLflow run id, runs:/<id> nor "
        "models:/<name>/<version>"
    )


def _best_of_run(run_id: str, tracking_uri: str | None) -> Path:
    """The run's ``best.pt``: its MLflow artifact, else the file in the run folder it names."""
    client = tracking_client(tracking_uri)
    try:
        run = client.get_run(run_id)
    except Exception as exc:
        raise ConfigError(f"MLflow run {run_id}: not found in {client.tracking_uri} ({exc})") from None
    if run.data.tags.get("stage") == "teacher":
        raise ConfigError(f"MLflow run {run_id} trained a teacher only: it has no student")
    if BEST in {a.path for a in client.list_artifacts(run_id)}:
        return Path(client.download_artifacts(run_id, BEST, tempfile.mkdtemp(prefix="seal-exp-student-")))
    local = Path(run.data.tags.get("output_dir", "")) / BEST
    if local.is_file():
        return local
    raise ConfigError(
        f"MLflow run {run_id} has no {BEST} artifact and its run folder ({local.parent}) holds none: "
        "it finished without selecting a model, or its files were removed"
    )
