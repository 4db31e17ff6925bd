"""A trained student, ready to use without rebuilding its config by hand.

``best.pt`` (the weights selected on validation) records the architecture that holds them: the
``student``, ``neuron`` and dataset-shape settings :func:`seal_exp.models.build_student` needs. The
run attaches it to its MLflow run as ``best.pt``, next to the ``student`` MLflow model, so a run id
or a registered model name is enough to get the network back, on any machine that reaches the store.

    from seal_exp import load_student
    net = load_student("outputs/2026-12-06/10-00-00_1a2b")   # a run folder
    net = load_student("3f78dde293b5421fa45b1f23aa4339be")     # an MLflow run id (project store)
    net = load_student("models:/seal-mnist/1")                 # a registered model (version or alias)
    logits = net(net.input_transform(pixels))   # pixels in [0, 1], [B, C, H, W] (event frames: net(frames))
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from seal_exp.config import ConfigError
from seal_exp.config_targets import check_file_config
from seal_exp.models import build_student
from seal_exp.models.neurons import reset_spiking_state
from seal_exp.run import checkpoint

ARCHITECTURE_FORMAT = 1
ARCHITECTURE_PARTS = ("student", "neuron", "dataset")  # what build_student reads
BEST = "best.pt"


def architecture(
    cfg: DictConfig, normalisation: tuple[tuple[float, ...], tuple[float, ...]] | None
) -> dict[str, Any]:
    """What ``best.pt`` records so that the network can be built again and fed as in training: plain
    values only (``weights_only`` loading accepts them). ``normalisation``: the data's per-channel
    ``(mean, std)`` of pixels in [0, 1] (the embedded sets compute theirs on the training split), None for
    event frames, which the network takes as they are."""
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
        "input": {"kind": "events"}
        if normalisation is None
        else {"kind": "pixels", "mean": list(normalisation[0]), "std": list(normalisation[1])},
    }


class InputTransform(nn.Module):
    """Pixels in [0, 1] (``ToTensor``'s range; ``[..., C, H, W]``) → the network's input, ``(pixels − mean)
    / std`` per channel with the statistics the run's data was normalised with."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(-1, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return (pixels - self.mean) / self.std


class ReadyStudent(nn.Module):
    """The trained spiking network as a plain function of a batch: ``[T, B, classes]`` logits (average
    over T for the prediction), with its membranes reset after every call, so calls never leak
    state into each other.

    It takes its input as the run's loader gave it: normalised images. ``input_transform`` turns pixels
    in [0, 1] into that input (``mean`` and ``std``: per channel, as recorded in ``best.pt``); it is None
    for event frames (``input_kind`` "events": event counts, fed as they are) and for a ``best.pt`` of an
    older version that recorded no input (``input_kind`` "unknown")."""

    def __init__(self, net: nn.Module, input_record: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.net = net
        record = input_record if isinstance(input_record, dict) else {}
        self.input_kind: str = str(record.get("kind", "unknown"))
        self.mean: tuple[float, ...] | None = None
        self.std: tuple[float, ...] | None = None
        self.input_transform: InputTransform | None = None
        if self.input_kind == "pixels":
            try:
                self.mean, self.std = tuple(map(float, record["mean"])), tuple(map(float, record["std"]))
            except (KeyError, TypeError, ValueError):
                self.input_kind = "unknown"  # a damaged record: no transform rather than a wrong one
            else:
                self.input_transform = InputTransform(self.mean, self.std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        try:
            return self.net(x)
        finally:
            reset_spiking_state(self.net)


def _reason(exc: BaseException) -> str:
    """The first line of an exception's message, for a one-line refusal."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


UNUSABLE = (
    "the file is damaged, or was not written by seal-exp's training: copy it again from the run's folder, "
    "or build the network from the run's config.yaml and load the file's 'model' weights into it"
)


def student_from_checkpoint(path: Path) -> ReadyStudent:
    """The network of a ``best.pt`` with its weights, in eval mode on the CPU.

    Checkpoints are shared, so the architecture record is checked before anything of it is built (only
    the classes the config groups name, :mod:`seal_exp.config_targets`), and every failure is a
    :class:`ConfigError` naming the file.
    """
    try:
        saved = checkpoint.load(path)
    except Exception as exc:  # a truncated zip, an empty file, a pickle weights_only refuses …
        raise ConfigError(f"cannot read {path} as a checkpoint ({_reason(exc)}): {UNUSABLE}") from None
    record = saved.get("architecture") if isinstance(saved, dict) else None
    if not isinstance(record, dict) or record.get("format") != ARCHITECTURE_FORMAT:
        raise ConfigError(
            f"{path} records no architecture (written by an older version): build the network from the "
            "run's config (its .hydra/config.yaml) and load the file's 'model' weights into it"
        )
    lacking = [k for k in ARCHITECTURE_PARTS if not isinstance(record.get(k), dict)]
    if lacking:
        raise ConfigError(f"{path}: its architecture record has no {', '.join(lacking)} settings: {UNUSABLE}")
    check_file_config(record, path, prefix="architecture")
    try:
        net = build_student(OmegaConf.create({k: record[k] for k in ARCHITECTURE_PARTS}))
    except Exception as exc:  # a refused value (ConfigError) or a record omegaconf or Hydra cannot use
        raise ConfigError(
            f"{path}: its architecture record cannot be built ({_reason(exc)}): {UNUSABLE}"
        ) from None
    try:
        net.load_state_dict(saved["model"])
    except Exception as exc:  # no weights, or weights of another network
        raise ConfigError(
            f"{path}: its 'model' weights do not fit the architecture it records ({_reason(exc)}): {UNUSABLE}"
        ) from None
    return ReadyStudent(net, record.get("input")).eval()


def load_student(source: str | os.PathLike[str], tracking_uri: str | None = None) -> ReadyStudent:
    """The selected student of a run: ``source`` is its run folder, its ``best.pt``, an MLflow run id,
    ``runs:/<id>`` or ``models:/<name>/<version|alias>`` (``tracking_uri``: the store; default
    ``$MLFLOW_TRACKING_URI``, else this project's ``mlflow.db``).

    The network takes normalised images, as training fed it: ``net.input_transform(pixels)`` makes them
    from pixels in [0, 1] (``net.mean``, ``net.std``); event frames go in as they are
    (``net.input_transform`` is None, ``net.input_kind == "events"``)."""
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
    try:
        best = _best_of_run(run_id_of(text, tracking_uri), tracking_uri)
    except ConfigError:
        raise
    except Exception as exc:  # the store unreachable, an artifact that cannot be downloaded …
        raise ConfigError(
            f"{text}: cannot fetch its {BEST} from MLflow ({_reason(exc)}): check the store "
            "(tracking_uri or $MLFLOW_TRACKING_URI), or pass the run's folder or its best.pt"
        ) from None
    return student_from_checkpoint(best)


def missing_sqlite_store(uri: str) -> Path | None:
    """The SQLite file ``uri`` names when it does not exist (MLflow would create it, empty), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    path = Path(uri[len("sqlite:///") :].split("?", 1)[0])
    return None if path.is_file() else path


def tracking_client(tracking_uri: str | None) -> Any:
    """A client of ``tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else this project's store; a SQLite store
    that does not exist is refused rather than created empty."""
    from mlflow.tracking import MlflowClient

    from seal_exp.tracking import default_tracking_uri

    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()
    missing = missing_sqlite_store(uri)
    if missing is not None:
        raise ConfigError(f"no MLflow store at {missing}; set MLFLOW_TRACKING_URI or pass the run folder")
    return MlflowClient(uri)


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
