"""White-box L∞ attacks (FGSM, PGD) on spiking and ordinary networks, through their (surrogate) gradients.

The attacks are Foolbox's (``foolbox.attacks.FGSM``, ``LinfPGD``: torch-native, maintained; torchattacks
pins an old ``requests`` that MLflow cannot share). What is ours is how a spiking network is put in front
of them (:func:`attacked`): its prediction is the mean of its per-timestep logits, as at test time, it is
differentiated through the surrogate gradients it trains with, its membranes are reset after every call,
and it takes pixels. The loaders hand out normalised tensors ``x_norm = (x_pix - mean) / std``; an ε of
8/255 is only comparable with the papers in pixel units, so the attacks work on pixels in [0, 1] and the
attacked function normalises inside.

Forward passes per batch and ε (each one followed by ``reset``, when given):

* ``fgsm``: 1 (the gradient at the clean input), then 1 more to score the result;
* ``pgd``: ``steps`` (one gradient per step; the random start needs none), then 1 more to score it;

and :func:`robust_accuracy` makes 1 clean forward per batch, once for all ε.

A sample counts as robust only if the network classifies it correctly both clean and attacked: a sample it
already gets wrong is already adversarial, even when PGD's random start or a step happens to land on the
right class. So robust accuracy never exceeds the clean accuracy of the same samples.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from seal_exp.config import require
from seal_exp.run.files import ROBUST_CLEAN, ROBUST_PREFIX

ATTACKS = ("fgsm", "pgd")

Model = Callable[[Tensor], Tensor]
Reset = Callable[[], None]


@dataclass(frozen=True)
class PixelSpace:
    """How the loader normalised the pixels: x_norm = (x_pix - mean) / std, per channel (dim 1).

    Pixels lie in [0, 1]; ε is measured there, as in the papers."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        require(len(self.mean) > 0, "mean", self.mean, "give one value per channel")
        require(
            len(self.std) == len(self.mean),
            "std",
            self.std,
            f"give one value per channel, as many as mean has ({len(self.mean)})",
        )
        require(all(s > 0 for s in self.std), "std", self.std, "must be > 0 per channel")

    def _per_channel(self, values: tuple[float, ...], x: Tensor) -> Tensor:
        # A wrong channel count would broadcast silently when one side has a single channel: refuse it.
        if x.dim() < 2 or x.shape[1] != len(values):
            raise ValueError(
                f"x of shape {tuple(x.shape)}: expected {len(values)} channels (one per mean/std) on dim 1"
            )
        shape = (1, len(values)) + (1,) * (x.dim() - 2)
        return torch.tensor(values, dtype=x.dtype, device=x.device).view(shape)

    def to_pixels(self, x_norm: Tensor) -> Tensor:
        """The pixels the loader started from (channels on dim 1, e.g. [B, C, H, W])."""
        return x_norm * self._per_channel(self.std, x_norm) + self._per_channel(self.mean, x_norm)

    def normalise(self, x_pix: Tensor) -> Tensor:
        """What the network was trained on; differentiable, so gradients reach the pixels."""
        return (x_pix - self._per_channel(self.mean, x_pix)) / self._per_channel(self.std, x_pix)


def prediction_logits(out: Tensor) -> Tensor:
    """The logits a prediction is made from: a spiking network's [T, B, K] averaged over T, an ANN's [B, K].

    The time-mean is what the spiking network is scored on at test time, so it is what the attack targets."""
    if out.dim() == 3:
        return out.mean(dim=0)
    if out.dim() == 2:
        return out
    raise ValueError(f"model output of shape {tuple(out.shape)}: expected [T, B, K] or [B, K] logits")


def _check_eps(eps: float) -> None:
    require(
        isinstance(eps, int | float) and not isinstance(eps, bool) and math.isfinite(eps) and 0 < eps <= 1,
        "eps",
        eps,
        "must lie in (0, 1]: it is in pixel units, pixels lie in [0, 1] (8/255 ≈ 0.031 is usual)",
    )


class _Attacked(nn.Module):
    """What Foolbox attacks: pixels in, the prediction's logits ``[B, K]`` out, membranes reset after every
    call (a call's autograd graph does not need them: a reset replaces the state, it does not edit it)."""

    def __init__(self, model: Model, space: PixelSpace, reset: Reset | None) -> None:
        super().__init__()
        self.model, self.space, self.reset = model, space, reset

    def forward(self, x_pix: Tensor) -> Tensor:
        try:
            return prediction_logits(self.model(self.space.normalise(x_pix)))
        finally:
            if self.reset is not None:
                self.reset()


def attacked(model: Model, space: PixelSpace, device: torch.device | str, reset: Reset | None = None) -> Any:
    """``model`` as a Foolbox model on pixels in [0, 1]."""
    import foolbox

    if torch.is_inference_mode_enabled():
        raise RuntimeError("attacks need gradients: call them outside torch.inference_mode()")
    wrapped = _Attacked(model, space, reset)
    wrapped.training = False  # Foolbox asks for eval mode; the network's own mode stays the caller's
    return foolbox.PyTorchModel(wrapped, bounds=(0, 1), device=torch.device(device))


def _run(
    attack: Any, fmodel: Any, model: Model, x_pix: Tensor, y: Tensor, eps: float
) -> tuple[Tensor, Tensor]:
    """The attacked pixels and which of them are misclassified (one scoring forward, Foolbox's).

    The network's parameters are frozen meanwhile: Foolbox backpropagates a loss, which would otherwise
    fill their ``.grad`` (and cost the parameter gradients for nothing)."""
    params = list(model.parameters()) if isinstance(model, nn.Module) else []
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        with torch.enable_grad():
            _, adv, success = attack(fmodel, x_pix.detach().clamp(0, 1), y, epsilons=float(eps))
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)
    return adv.detach(), success


def _pgd_attack(steps: int, step_size: float) -> Any:
    import foolbox

    return foolbox.attacks.LinfPGD(abs_stepsize=step_size, steps=steps, random_start=True)


@contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """PGD's random starts drawn from ``seed`` (Foolbox draws them from torch's generator of the input's
    device), without touching anyone else's random state."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def fgsm(
    model: Model, space: PixelSpace, x_pix: Tensor, y: Tensor, eps: float, *, reset: Reset | None = None
) -> Tensor:
    """Goodfellow et al.'s single step: clamp(x_pix + eps · sign(∇ CE), 0, 1). Returns the attacked pixels."""
    import foolbox

    _check_eps(eps)
    adv, _ = _run(foolbox.attacks.FGSM(), attacked(model, space, x_pix.device, reset), model, x_pix, y, eps)
    return adv


def pgd(
    model: Model,
    space: PixelSpace,
    x_pix: Tensor,
    y: Tensor,
    eps: float,
    steps: int,
    step_size: float,
    seed: int = 0,
    *,
    reset: Reset | None = None,
) -> Tensor:
    """Madry et al.'s projected gradient ascent in the L∞ ball of radius eps around x_pix, within [0, 1],
    from a uniform random start in the ball drawn from ``seed``. Returns the attacked pixels."""
    _check_eps(eps)
    _check_pgd(steps, step_size)
    with _seeded(seed, x_pix.device):
        fmodel = attacked(model, space, x_pix.device, reset)
        adv, _ = _run(_pgd_attack(steps, step_size), fmodel, model, x_pix, y, eps)
    return adv


def _check_pgd(steps: int, step_size: float) -> None:
    require(
        isinstance(steps, int) and not isinstance(steps, bool) and steps >= 1, "steps", steps, "must be >= 1"
    )
    require(
        isinstance(step_size, int | float) and math.isfinite(step_size) and step_size > 0,
        "step_size",
        step_size,
        "must be > 0",
    )


@dataclass(frozen=True)
class Robustness:
    """Accuracy under one attack at several ε, on a fixed subset of the test set (the first ``samples``)."""

    attack: str
    samples: int
    clean_acc: float  # percent, on the same samples
    acc: dict[float, float]  # eps -> percent accuracy under attack
    steps: int | None  # pgd only
    step_size: dict[float, float] | None  # pgd only: the step size used per eps

    def figures(self) -> dict[str, float]:
        """The flat figures tables quote (``summary.json``, ``evaluation.json``):
        ``robust_acc_<attack>_eps<ε>`` and, named after the same attack, ``robust_acc_<attack>_clean``, the
        clean accuracy of the same samples, so each attack's figures stay paired with their clean accuracy."""
        prefix = f"{ROBUST_PREFIX}{self.attack}"
        return {f"{prefix}{ROBUST_CLEAN}": self.clean_acc} | {
            f"{prefix}_eps{format(eps, 'g')}": a for eps, a in self.acc.items()
        }

    def as_metrics(self) -> dict[str, float]:
        """The tracker's metrics: :meth:`figures` and ``robust_samples_<attack>``, the samples they are on."""
        return self.figures() | {f"robust_samples_{self.attack}": float(self.samples)}

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (ε keys written as strings with ``format(eps, "g")``)."""
        return {
            "attack": self.attack,
            "samples": self.samples,
            "clean_acc": self.clean_acc,
            "acc": {format(eps, "g"): a for eps, a in self.acc.items()},
            "steps": self.steps,
            "step_size": None
            if self.step_size is None
            else {format(eps, "g"): s for eps, s in self.step_size.items()},
        }

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> Robustness:
        """What :meth:`as_dict` wrote, back (ε keys as floats again)."""
        sizes = record.get("step_size")
        return cls(
            attack=str(record["attack"]),
            samples=int(record["samples"]),
            clean_acc=float(record["clean_acc"]),
            acc={float(eps): float(a) for eps, a in record["acc"].items()},
            steps=record.get("steps"),
            step_size=None if sizes is None else {float(eps): float(s) for eps, s in sizes.items()},
        )


def _first_samples(loader: Iterable[tuple[Tensor, Tensor]], samples: int) -> list[tuple[Tensor, Tensor]]:
    """The first ``samples`` samples in loader order (the last batch truncated), kept as the loader gave them,
    so every ε sees the same ones even when the loader can be iterated only once."""
    batches, taken = [], 0
    for x, y in loader:
        x, y = x[: samples - taken], y[: samples - taken]
        batches.append((x, y))
        taken += len(y)
        if taken >= samples:
            break
    return batches


def _correct(model: Model, x_norm: Tensor, y: Tensor, reset: Reset | None) -> Tensor:
    """Which samples the model classifies correctly (a bool per sample)."""
    try:
        with torch.no_grad():
            return prediction_logits(model(x_norm)).argmax(dim=1) == y
    finally:
        if reset is not None:
            reset()


def robust_accuracy(
    model: Model,
    loader: Iterable[tuple[Tensor, Tensor]],
    space: PixelSpace,
    attack: str,
    epsilons: Sequence[float],
    *,
    samples: int,
    steps: int = 10,
    step_size: float | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    reset: Reset | None = None,
) -> Robustness:
    """Accuracy (percent) of ``model`` under ``attack`` at each ε on the loader's first ``samples`` samples.

    The model is used as given: the caller puts it in eval mode (and on ``device``). ``reset`` is called after
    every forward pass, since spiking networks keep membrane state between calls. A sample is counted under
    attack only if it is classified correctly both clean and attacked (see the module docstring), so each
    accuracy under attack is at most ``clean_acc``. Forward passes per batch:
    1 clean, then per ε 2 for fgsm and ``steps + 1`` for pgd (see the module docstring). PGD's step size
    defaults to 2.5 · eps / steps (Madry et al.) and its random starts come from one generator seeded with
    ``seed`` per ε, so each ε's result does not depend on which others were asked for. If the loader holds
    fewer than ``samples`` samples, all of them are used and ``Robustness.samples`` says how many.
    """
    require(attack in ATTACKS, "attack", attack, f"use one of {', '.join(ATTACKS)}")
    require(len(epsilons) > 0, "epsilons", list(epsilons), "give at least one eps")
    for eps in epsilons:
        _check_eps(eps)
    require(
        isinstance(samples, int) and not isinstance(samples, bool) and samples >= 1,
        "samples",
        samples,
        "must be >= 1",
    )
    require(
        isinstance(steps, int) and not isinstance(steps, bool) and steps >= 1, "steps", steps, "must be >= 1"
    )
    if step_size is not None:
        require(math.isfinite(step_size) and step_size > 0, "step_size", step_size, "must be > 0 (or None)")

    batches = _first_samples(loader, samples)
    taken = sum(len(y) for _, y in batches)
    require(taken > 0, "loader", loader, "yielded no samples")

    # Clean accuracy on the inputs exactly as the loader gave them, i.e. as the test accuracy is measured;
    # which samples are right clean is kept per batch: only those can be right under attack.
    clean_right = [_correct(model, x.to(device), y.to(device), reset) for x, y in batches]
    clean = sum(int(right.sum()) for right in clean_right)
    acc: dict[float, float] = {}
    sizes: dict[float, float] = {}
    import foolbox

    fmodel = attacked(model, space, device, reset)
    for eps in epsilons:
        eps = float(eps)
        size = 2.5 * eps / steps if step_size is None else float(step_size)
        method = foolbox.attacks.FGSM() if attack == "fgsm" else _pgd_attack(steps, size)
        right = 0
        with _seeded(seed, torch.device(device)):  # each ε from the seed: independent of the other ε asked
            for (x_norm, y), right_clean in zip(batches, clean_right, strict=True):
                x_norm, y = x_norm.to(device), y.to(device)
                _, fooled = _run(method, fmodel, model, space.to_pixels(x_norm), y, eps)
                right += int((right_clean & ~fooled).sum())
        acc[eps] = 100.0 * right / taken
        sizes[eps] = size
    return Robustness(
        attack=attack,
        samples=taken,
        clean_acc=100.0 * clean / taken,
        acc=acc,
        steps=steps if attack == "pgd" else None,
        step_size=sizes if attack == "pgd" else None,
    )
