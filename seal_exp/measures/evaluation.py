"""A finished run's selected student measured beyond top-1: firing rates, synaptic operations, MACs and
energy (and the ANN teacher's MACs and energy), accuracy at other timesteps T', robust accuracy under
FGSM / PGD. The same code runs at the end of every training run (``eval.after_training``) and in
``python -m seal_exp.evaluate`` on any finished run.

Fixed subsets: the first ``eval.energy_samples`` / ``eval.attack_samples`` samples of the test part, in
its stored (unshuffled) order, so two runs on the same split are measured on the same images.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from seal_exp.config import ConfigError, build
from seal_exp.data import DataSplits
from seal_exp.data.loaders import make_loader, resolve_workers
from seal_exp.measures import plots
from seal_exp.measures.activity import (
    Activity,
    AnnCost,
    EnergyRegime,
    energy_ratio,
    measure_ann,
    measure_spiking,
)
from seal_exp.measures.attacks import PixelSpace, Robustness, robust_accuracy
from seal_exp.measures.settings import EvalSettings, check_applicable
from seal_exp.measures.timesteps import accuracy_at_timesteps, student_at, with_timesteps
from seal_exp.models.neurons import reset_spiking_state
from seal_exp.run.files import ROBUST_PREFIX

log = logging.getLogger("seal_exp")

FORMAT = 1


@dataclass(frozen=True)
class Evaluation:
    """What was measured; the parts not asked for are None."""

    samples_test: int
    trained_T: int
    activity: Activity | None = None
    teacher: AnnCost | None = None
    accuracy_at: dict[int, float] | None = None
    robustness: Robustness | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def energy_ratio(self) -> float | None:
        if self.activity is None or self.teacher is None:
            return None
        return energy_ratio(self.teacher, self.activity)

    def headline(self) -> dict[str, Any]:
        """The figures a table quotes, as flat ``summary.json`` / ``evaluation.json`` keys."""
        out: dict[str, Any] = {}
        if self.activity is not None:
            a = self.activity
            out |= {
                "firing_rate": a.firing_rate,
                "synops": a.synops,
                "macs": a.macs,
                "energy_uj": a.energy_uj,
            }
        if self.teacher is not None:
            out |= {
                "teacher_macs": self.teacher.macs,
                "teacher_energy_uj": self.teacher.energy_uj,
                "energy_ratio": self.energy_ratio,
            }
        if self.accuracy_at is not None:
            out["test_acc_at_timesteps"] = {str(t): acc for t, acc in self.accuracy_at.items()}
        if self.robustness is not None:
            r = self.robustness
            out["robust_attack"] = r.attack
            out["robust_acc"] = {format(eps, "g"): acc for eps, acc in r.acc.items()}
            out |= {f"{ROBUST_PREFIX}{r.attack}_eps{format(eps, 'g')}": acc for eps, acc in r.acc.items()}
        return out

    def as_dict(self) -> dict[str, Any]:
        """Everything, JSON-ready: ``evaluation.json`` and the summary's ``measures``."""
        return {
            "format": FORMAT,
            "trained_T": self.trained_T,
            "test_samples": self.samples_test,
            **self.headline(),
            "activity": self.activity.as_dict() if self.activity is not None else None,
            "teacher_cost": self.teacher.as_dict() if self.teacher is not None else None,
            "robustness": self.robustness.as_dict() if self.robustness is not None else None,
            "seconds": self.seconds,
        }

    def metrics(self) -> dict[str, float]:
        """MLflow metrics (logged at step 0, like the run's other headline figures)."""
        out: dict[str, float] = {}
        if self.activity is not None:
            out |= self.activity.as_metrics()
        if self.teacher is not None:
            out |= self.teacher.as_metrics("teacher_")
            out["energy_ratio"] = float(self.energy_ratio)
        if self.accuracy_at is not None:
            out |= {f"test_acc_at_T{t}": acc for t, acc in self.accuracy_at.items()}
        if self.robustness is not None:  # under the names summary.json and the tables use
            out["robust_clean_acc"] = self.robustness.clean_acc
            out |= {k: v for k, v in self.headline().items() if k.startswith(ROBUST_PREFIX)}
        return out

    def lines(self) -> list[str]:
        """What the console shows."""
        out = []
        if self.activity is not None:
            a = self.activity
            out.append(
                f"student: firing rate {a.firing_rate:.4f} | {a.synops / 1e6:.3f} M SynOps, "
                f"{a.macs / 1e6:.3f} M MACs, {a.energy_uj:.3f} µJ per sample "
                f"({a.samples} test samples; {a.regime.split('; energy_simple_uj')[0]})"
            )
        if self.teacher is not None:
            t = self.teacher
            out.append(
                f"ANN teacher: {t.macs / 1e6:.3f} M MACs, {t.energy_uj:.3f} µJ per sample: "
                f"{self.energy_ratio:.2f}× the student's energy"
            )
        if self.accuracy_at is not None:
            cells = ", ".join(f"T'={t}: {acc:.2f}%" for t, acc in self.accuracy_at.items())
            out.append(f"test accuracy at other timesteps (trained at T={self.trained_T}): {cells}")
        if self.robustness is not None:
            r = self.robustness
            cells = ", ".join(f"ε={format(e, 'g')}: {acc:.2f}%" for e, acc in r.acc.items())
            what = f"{r.attack.upper()} robust accuracy ({r.samples} test samples, clean {r.clean_acc:.2f}%)"
            out.append(f"{what}: {cells}")
        return out


@dataclass
class Subject:
    """A trained student and what it is measured with."""

    cfg: DictConfig  # the run's resolved config
    best: dict[str, Any]  # best.pt: ``model`` (weights) and ``architecture``
    data: DataSplits
    device: torch.device
    teacher: nn.Module | None = None  # the run's ANN teacher (None: a teacher-free method)
    batch_size: int = 256
    num_workers: int | str = "auto"
    eval_limit: int | None = None  # trainer.limit_eval_batches: T' accuracies on the samples test_acc saw

    @property
    def architecture(self) -> DictConfig:
        record = self.best.get("architecture") or {}
        return OmegaConf.create({k: record[k] for k in ("student", "neuron", "dataset")})

    def loader(self, data: DataSplits) -> Any:
        return make_loader(
            data.test,
            self.batch_size,
            shuffle=False,
            seed=0,
            num_workers=resolve_workers(self.num_workers, data.in_memory),
            pin_memory="auto",
            persistent_workers=False,
            time_major=data.time_major,
        )

    def student(self, T: int) -> nn.Module:
        return student_at(self.architecture, self.best["model"], T)

    def data_at(self, T: int) -> DataSplits:
        """The test data as a T'-step run reads it: the same for static images; event recordings integrated
        into T' frames again (the dataset's frame count follows ``neuron.T``)."""
        if int(self.cfg.neuron.T) == T:
            return self.data
        mine = OmegaConf.to_container(self.cfg.dataset, resolve=True)
        changed = with_timesteps(self.cfg, T)
        if OmegaConf.to_container(changed.dataset, resolve=True) == mine:
            return self.data
        log.info("integrating %s's events into %d frames for T'=%d", self.cfg.dataset.name, T, T)
        return build(changed.dataset, "dataset").load()


def _inputs(loader: Any) -> Iterator[torch.Tensor]:
    for x, _ in loader:
        yield x


def measure(subject: Subject, settings: EvalSettings) -> Evaluation:
    """Everything ``settings`` asks for (energy, T', attack), on the selected student."""
    T = int(subject.cfg.neuron.T)
    device = subject.device
    test_loader = subject.loader(subject.data)
    seconds: dict[str, float] = {}
    parts: dict[str, Any] = {}
    if settings.energy:
        started = time.perf_counter()
        regime = EnergyRegime(e_mac_pj=settings.e_mac_pj, e_ac_pj=settings.e_ac_pj)
        net = subject.student(T).to(device)
        parts["activity"] = measure_spiking(
            net, _inputs(test_loader), samples=settings.energy_samples, regime=regime, device=device
        )
        if subject.teacher is not None:
            parts["teacher"] = measure_ann(
                subject.teacher.to(device),
                _inputs(test_loader),
                samples=settings.energy_samples,
                regime=regime,
                device=device,
            )
        seconds["energy"] = round(time.perf_counter() - started, 2)
    started = time.perf_counter()
    parts["accuracy_at"] = accuracy_at_timesteps(
        subject.student,
        lambda t: subject.loader(subject.data_at(t)),
        settings.timesteps_for(T),
        device,
        subject.eval_limit,
    )
    seconds["timesteps"] = round(time.perf_counter() - started, 2)
    if settings.attack != "none":
        started = time.perf_counter()
        parts["robustness"] = _robustness(subject, settings, test_loader)
        seconds["attack"] = round(time.perf_counter() - started, 2)
    return Evaluation(samples_test=len(subject.data.test), trained_T=T, seconds=seconds, **parts)


def _robustness(subject: Subject, settings: EvalSettings, loader: Any) -> Robustness:
    if subject.data.normalisation is None:
        check_applicable(subject.cfg, settings)  # the reason, for configs that do not show it
        raise ConfigError(
            f"eval.attack={settings.attack}: dataset={subject.cfg.dataset.name} does not say how its inputs "
            "map to pixels in [0, 1], so a budget in pixel units cannot be set; set eval.attack=none"
        )
    mean, std = subject.data.normalisation
    net = subject.student(int(subject.cfg.neuron.T)).to(subject.device)
    return robust_accuracy(
        net,
        loader,
        PixelSpace(tuple(mean), tuple(std)),
        settings.attack,
        settings.epsilons,
        samples=settings.attack_samples,
        steps=settings.pgd_steps,
        step_size=settings.pgd_step_size,
        seed=settings.attack_seed,
        device=subject.device,
        reset=lambda: reset_spiking_state(net),
    )


def draw(evaluation: Evaluation, out: Path, title: str, prefix_mean: list[float] | None = None) -> list[Path]:
    """The figures of what was measured, in ``out`` (PNG + PDF each); the files written."""
    written: list[Path] = []
    if evaluation.activity is not None:
        written += plots.firing_rates(out / "firing_rates.png", evaluation.activity, title)
    if evaluation.accuracy_at is not None:
        written += plots.accuracy_at_timesteps(
            out / "accuracy_at_timesteps.png",
            evaluation.accuracy_at,
            evaluation.trained_T,
            prefix_mean,
            title,
        )
    if evaluation.robustness is not None:
        written += plots.robustness(out / "robustness.png", evaluation.robustness, title)
    return written
