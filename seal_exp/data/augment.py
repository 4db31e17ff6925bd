"""The reference augmentation pipelines, each step a switch.

Images (CIFAR, ImageNet): crop → horizontal flip → AutoAugment → ToTensor → Cutout (before
normalisation, so the hole is black) → Normalize → RandomErasing (after it, as the SAMD/NLD code has
it). Event frames (CIFAR10-DVS): resize → flip → one op drawn per sample from {roll, rotate, cutout},
the same op and parameters for every frame. Random draws use torch's generator, which the seeded
DataLoader seeds per worker.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torchvision import transforms as T
from torchvision.transforms.v2 import functional as TF

from seal_exp.config import InvalidArgument, require

__all__ = [
    "Cutout",
    "FrameAugment",
    "FrameTransform",
    "ImageAugment",
    "image_eval_transform",
    "image_train_transform",
]


def _from_mapping(cls: type, node: Mapping[str, Any] | None, key: str) -> Any:
    """``cls(**node)`` with unknown keys reported as ``dataset.<key>.<name>``."""
    node = dict(node or {})
    known = {f.name for f in fields(cls)}
    for name in node:
        if name not in known:
            raise InvalidArgument(
                f"{key}.{name}", node[name], f"not a known switch; use {', '.join(sorted(known))}"
            )
    try:
        return cls(**node)
    except InvalidArgument as exc:
        raise InvalidArgument(f"{key}.{exc.name}", exc.value, exc.rule) from exc


class Cutout:
    """One ``size``×``size`` hole of zeros at a uniformly drawn centre, clipped at the borders
    (DeVries & Taylor, 2017). Works on any tensor ``[..., H, W]``; every leading slice gets the same hole.
    """

    def __init__(self, size: int) -> None:
        self.size = int(size)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
        half = self.size // 2
        y0, y1 = max(cy - half, 0), min(cy + half, h)
        x0, x1 = max(cx - half, 0), min(cx + half, w)
        x = x.clone()
        x[..., y0:y1, x0:x1] = 0
        return x

    def __repr__(self) -> str:
        return f"Cutout(size={self.size})"


@dataclass(frozen=True)
class ImageAugment:
    """Switches of the image training pipeline (``dataset.augment`` / ``dataset.teacher_augment``)."""

    crop: bool = True
    flip: bool = True
    autoaugment: bool = False
    cutout: int = 0  # side of the hole in pixels; 0: off
    erasing: float = 0.0  # probability of torchvision's RandomErasing after Normalize; 0: off
    erasing_scale: tuple[float, float] = (0.02, 0.33)  # its range of erased area, as a share of the image

    def __post_init__(self) -> None:
        require(self.cutout >= 0, "cutout", self.cutout, "the hole's side in pixels, 0 to switch it off")
        require(0 <= self.erasing <= 1, "erasing", self.erasing, "a probability in [0, 1]; 0 switches it off")
        scale = tuple(float(v) for v in self.erasing_scale)
        require(
            len(scale) == 2 and 0 < scale[0] <= scale[1] <= 1,
            "erasing_scale",
            list(self.erasing_scale),
            "give [low, high] with 0 < low <= high <= 1 (shares of the image area)",
        )
        object.__setattr__(self, "erasing_scale", scale)

    @classmethod
    def from_config(cls, node: Mapping[str, Any] | None, key: str) -> ImageAugment:
        return _from_mapping(cls, node, key)


def image_train_transform(
    aug: ImageAugment,
    size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    *,
    crop: str,
    policy: T.AutoAugmentPolicy,
    resize: int | None = None,
) -> T.Compose:
    """``crop='pad'``: RandomCrop(size, padding 4) (CIFAR); ``'resized'``: RandomResizedCrop(size)
    (ImageNet; with ``aug.crop`` off, Resize(resize) + CenterCrop(size) as in evaluation)."""
    steps: list[Any] = []
    if crop == "pad":
        if aug.crop:
            steps.append(T.RandomCrop(size, padding=4))
    elif aug.crop:
        steps.append(T.RandomResizedCrop(size))
    else:
        steps += [T.Resize(resize or round(size * 256 / 224)), T.CenterCrop(size)]
    if aug.flip:
        steps.append(T.RandomHorizontalFlip())
    if aug.autoaugment:
        steps.append(T.AutoAugment(policy))
    steps.append(T.ToTensor())
    if aug.cutout:
        steps.append(Cutout(aug.cutout))
    steps.append(T.Normalize(mean, std))
    if aug.erasing:
        steps.append(T.RandomErasing(p=aug.erasing, scale=aug.erasing_scale, value=0))
    return T.Compose(steps)


def image_eval_transform(
    mean: tuple[float, ...], std: tuple[float, ...], resize: int | None = None, size: int | None = None
) -> T.Compose:
    """ToTensor → Normalize, after Resize(resize) → CenterCrop(size) when given (ImageNet)."""
    steps: list[Any] = []
    if resize:
        steps += [T.Resize(resize), T.CenterCrop(size)]
    steps += [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(steps)


FRAME_OPS = ("roll", "rotate", "cutout")


@dataclass(frozen=True)
class FrameAugment:
    """Switches of the event-frame training pipeline (``dataset.augment``)."""

    flip: bool = True
    one_of: tuple[str, ...] = FRAME_OPS  # one op drawn per sample; () switches it off
    roll: int = 5  # max shift in pixels, each axis
    rotate: float = 30.0  # max angle in degrees
    cutout: int = 16  # side of the hole in pixels

    def __post_init__(self) -> None:
        object.__setattr__(self, "one_of", tuple(self.one_of))
        for op in self.one_of:
            require(
                op in FRAME_OPS, "one_of", list(self.one_of), f"ops are drawn from {', '.join(FRAME_OPS)}"
            )
        require(self.roll >= 0, "roll", self.roll, "must be >= 0 pixels")
        require(self.rotate >= 0, "rotate", self.rotate, "must be >= 0 degrees")
        require(self.cutout >= 0, "cutout", self.cutout, "must be >= 0 pixels")

    @classmethod
    def from_config(cls, node: Mapping[str, Any] | None, key: str) -> FrameAugment:
        return _from_mapping(cls, node, key)


def augments(aug: ImageAugment | FrameAugment | None) -> bool:
    """Whether a training pipeline draws anything at random (else a sample is the same every epoch)."""
    if isinstance(aug, ImageAugment):
        return aug.crop or aug.flip or aug.autoaugment or aug.cutout > 0 or aug.erasing > 0
    if isinstance(aug, FrameAugment):
        return aug.flip or bool(aug.one_of)
    return False


class FrameTransform:
    """Event frames ``[T, C, H, W]`` (numpy or tensor) → float32 tensor, resized to ``size``; with
    ``augment``, flipped and given one op per sample."""

    def __init__(self, size: int, augment: FrameAugment | None = None) -> None:
        self.size = int(size)
        self.augment = augment

    def __call__(self, frames: Any) -> torch.Tensor:
        x = torch.as_tensor(frames, dtype=torch.float32)
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        aug = self.augment
        if aug is None:
            return x
        if aug.flip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        if aug.one_of:
            op = aug.one_of[int(torch.randint(len(aug.one_of), ()))]
            if op == "roll":
                dy, dx = (int(v) for v in torch.randint(-aug.roll, aug.roll + 1, (2,)))
                x = torch.roll(x, shifts=(dy, dx), dims=(-2, -1))
            elif op == "rotate":
                angle = float(torch.empty(()).uniform_(-aug.rotate, aug.rotate))
                x = TF.rotate(x, angle)
            else:
                x = Cutout(aug.cutout)(x)
        return x

    def __repr__(self) -> str:
        return f"FrameTransform(size={self.size}, augment={self.augment})"
