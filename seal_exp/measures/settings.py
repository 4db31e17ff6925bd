"""What a trained student is measured on beyond top-1 (``conf/eval``), checked when built: before any
data is read, a bad value stops the run or the evaluation and names its key."""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import DictConfig

from seal_exp.config import ConfigError, require, require_finite

ATTACKS = ("none", "fgsm", "pgd")


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


@dataclass(frozen=True)
class EvalSettings:
    """``eval.*``: energy and activity, accuracy at other timesteps, adversarial robustness."""

    after_training: bool = True
    energy: bool = True
    energy_samples: int = 500
    e_mac_pj: float = 4.6
    e_ac_pj: float = 0.9
    timesteps: list[int] = field(default_factory=list)
    attack: str = "none"
    epsilons: list[float] = field(default_factory=lambda: [0.01, 0.03])
    pgd_steps: int = 10
    pgd_step_size: float | None = None
    attack_samples: int = 500
    attack_seed: int = 0

    def __post_init__(self) -> None:
        for name in ("after_training", "energy"):
            value = getattr(self, name)
            require(isinstance(value, bool), name, value, "use true or false")
        for name in ("energy_samples", "attack_samples", "pgd_steps"):
            value = getattr(self, name)
            require(_is_count(value), name, value, "use an integer >= 1")
        require_finite(e_mac_pj=self.e_mac_pj, e_ac_pj=self.e_ac_pj)
        for name in ("e_mac_pj", "e_ac_pj"):
            value = getattr(self, name)
            require(value > 0, name, value, "an energy per operation in pJ, > 0")
        timesteps = list(self.timesteps) if self.timesteps is not None else None
        require(
            timesteps is not None and all(_is_count(t) for t in timesteps),
            "timesteps",
            self.timesteps,
            "a list of timestep counts >= 1, e.g. [6, 8] ([]: only 1…T)",
        )
        object.__setattr__(self, "timesteps", sorted(set(timesteps)))
        require(self.attack in ATTACKS, "attack", self.attack, f"choose one of {', '.join(ATTACKS)}")
        epsilons = list(self.epsilons) if self.epsilons is not None else []
        require(len(epsilons) > 0, "epsilons", self.epsilons, "list at least one budget, e.g. [0.01, 0.03]")
        for eps in epsilons:
            require_finite(epsilons=eps)
            require(
                0 < eps <= 1,
                "epsilons",
                self.epsilons,
                "L∞ budgets in pixel units (images in [0, 1]): each in (0, 1], e.g. [0.01, 0.03]",
            )
        object.__setattr__(self, "epsilons", [float(e) for e in epsilons])
        if self.pgd_step_size is not None:
            require_finite(pgd_step_size=self.pgd_step_size)
            require(
                0 < self.pgd_step_size <= 1,
                "pgd_step_size",
                self.pgd_step_size,
                "a step in pixel units in (0, 1], or null for 2.5·ε/pgd_steps",
            )
        require(
            isinstance(self.attack_seed, int)
            and not isinstance(self.attack_seed, bool)
            and self.attack_seed >= 0,
            "attack_seed",
            self.attack_seed,
            "use an integer >= 0",
        )

    def timesteps_for(self, T: int) -> list[int]:
        """The T' a student trained at ``T`` is evaluated at: 1…T and the listed ones."""
        return sorted(set(range(1, T + 1)) | set(self.timesteps))

    def step_size(self, eps: float) -> float:
        return self.pgd_step_size if self.pgd_step_size is not None else 2.5 * eps / self.pgd_steps


def is_event_data(cfg: DictConfig) -> bool:
    """Whether the dataset serves event frames (their count follows the run's T), known from the config."""
    return "frames_number" in cfg.dataset


def check_applicable(cfg: DictConfig, settings: EvalSettings) -> None:
    """Refuse what cannot be measured on this run, before any data is read."""
    if settings.attack != "none" and is_event_data(cfg):
        raise ConfigError(
            f"eval.attack={settings.attack}: dataset={cfg.dataset.name} serves event frames (counts of "
            "events per pixel and polarity), not pixels in [0, 1], so an L∞ budget in pixel units has no "
            "meaning there; set eval.attack=none for event data, or attack a run on a static dataset "
            "(mnist5k, cifar10, cifar100, imagenet)"
        )
