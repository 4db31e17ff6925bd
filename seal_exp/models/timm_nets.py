"""Any timm architecture as a spiking student (time folded into the batch) or as an ANN teacher.

Student: ``timm.create_model(model_name)`` runs on ``[T·B, ...]``; every activation module of the
listed classes becomes a :class:`TimeFolded` multi-step neuron that sees ``[T, B, ...]``. Functional
activations (``F.gelu`` inside a forward) and attention softmaxes stay analog. BatchNorm statistics
are shared over time, as in the papers' students.

Teacher: nothing is downloaded; pretrained weights come from a local file (``.safetensors`` or a
``torch.save`` state dict, read with ``weights_only=True``) and timm adapts the classifier and input
channels to the dataset.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import timm
import torch
from hydra.utils import get_class
from torch import nn

from seal_exp.config import invalid, require
from seal_exp.models.ann import AnnNetwork
from seal_exp.models.features import FeatureTaps


class TimeFolded(nn.Module):
    """A multi-step neuron inside a network that folds time into the batch: ``[T·B, …] → [T·B, …]``."""

    def __init__(self, neuron: nn.Module, T: int) -> None:
        super().__init__()
        self.neuron, self.T = neuron, T

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.neuron(x.unflatten(0, (self.T, -1))).flatten(0, 1)


def _create(model_name: str, model_kwargs: dict[str, Any] | None, **kwargs: Any) -> nn.Module:
    require(
        bool(timm.is_model(model_name)),
        "model_name",
        model_name,
        "not a timm architecture; list them "
        "with `python -c \"import timm; print(timm.list_models('*resnet*'))\"`",
    )
    try:
        return timm.create_model(model_name, **kwargs, **dict(model_kwargs or {}))
    except (TypeError, ValueError, AssertionError) as exc:
        raise invalid(
            "model_kwargs", dict(model_kwargs or {}), f"timm refused them for {model_name}: {exc}"
        ) from exc


def _replace_activations(module: nn.Module, classes: tuple[type, ...], make: Callable[[], nn.Module]) -> int:
    replaced = 0
    for name, child in module.named_children():
        if isinstance(child, classes):
            setattr(module, name, make())
            replaced += 1
        else:
            replaced += _replace_activations(child, classes, make)
    return replaced


class TimmStudent(FeatureTaps, nn.Module):
    """``forward(x) → [T, B, K]``; stages are timm's ``feature_info`` modules, returned ``[T, B, …]``."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        T: int,
        neuron: Callable[[], nn.Module],
        model_name: str,
        activations: Sequence[str],
        model_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        require(int(T) == T and T >= 1, "T", T, "the number of timesteps must be an integer >= 1")
        self.T = int(T)
        classes = []
        for path in activations:
            try:
                classes.append(get_class(path))
            except Exception as exc:
                raise invalid("activations", path, f"cannot import this class ({exc})") from exc
        self.net = _create(
            model_name, model_kwargs, pretrained=False, num_classes=num_classes, in_chans=in_channels
        )
        count = _replace_activations(self.net, tuple(classes), lambda: TimeFolded(neuron(), self.T))
        require(
            count > 0,
            "activations",
            list(activations),
            f"{model_name} has no activation module of these classes; add the class it uses",
        )
        self.feature_stages = {info["module"]: f"net.{info['module']}" for info in self.net.feature_info}

    def stage_output(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.unflatten(0, (self.T, -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:  # static images: direct encoding
            x = x.unsqueeze(0).expand(self.T, *x.shape)
        elif x.dim() != 5:
            raise ValueError(f"expected [B, C, H, W] or [T, B, C, H, W] input, got shape {tuple(x.shape)}")
        elif x.shape[0] != self.T:
            raise ValueError(
                f"the input has {x.shape[0]} frames but the student runs T={self.T} steps; "
                "set the dataset's frame count to neuron.T"
            )
        return self.net(x.flatten(0, 1)).unflatten(0, (self.T, -1))


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a ``torch.save`` file (``weights_only=True``)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    return state


class TimmTeacher(AnnNetwork):
    """A timm ANN teacher; ``weights`` is a local file of pretrained weights (null: random init)."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        model_name: str,
        weights: str | None = None,
        model_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        extra: dict[str, Any] = {"pretrained": False}
        if weights is not None:
            path = Path(str(weights)).expanduser()
            require(
                path.is_file(), "weights", str(path), "no such file (timm weights are never downloaded here)"
            )
            try:
                state = read_weights(path)
            except Exception as exc:
                raise invalid("weights", str(path), f"cannot read it as a state dict ({exc})") from exc
            extra = {"pretrained": True, "pretrained_cfg_overlay": {"state_dict": state}}
        self.net = _create(model_name, model_kwargs, num_classes=num_classes, in_chans=in_channels, **extra)
        self.feature_stages = {info["module"]: f"net.{info['module']}" for info in self.net.feature_info}

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    @property
    def classifier(self) -> nn.Linear:
        head = self.net.get_classifier()
        if not isinstance(head, nn.Linear):
            raise TypeError(f"this timm model's classifier is a {type(head).__name__}, not a Linear layer")
        return head
