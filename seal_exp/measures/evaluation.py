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

log = logging.getLogger("seal_exp")

# evaluation.json and the summary's ``measures``: every measurement kept under its name (format 2). Format 1
# (until evaluations accumulated) held one evaluation's parts side by side.
FORMAT = 2
ENERGY = "energy"  # firing rates, SynOps, MACs, energy (and the teacher's)
TIMESTEPS = "timesteps/"  # + T': accuracy at T' timesteps
ATTACK = "attack/"  # + the attack: accuracy under it at each ε, with the clean accuracy of the same samples


@dataclass(frozen=True)
class Evaluation:
    """What one evaluation measured; the parts not asked for are None."""

    samples_test: int
    trained_T: int
    settings: EvalSettings
    evaluated_at: str  # when it was measured, local time ("%Y-%m-%d %H:%M:%S")
    activity: Activity | None = None
    teacher: AnnCost | None = None
    accuracy_at: dict[int, float] | None = None
    accuracy_samples: int | None = None  # how many test samples each accuracy at T' is on
    robustness: Robustness | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def energy_ratio(self) -> float | None:
        if self.activity is None or self.teacher is None:
            return None
        return energy_ratio(self.teacher, self.activity)

    def measurements(self) -> dict[str, dict[str, Any]]:
        """Each measurement under the name a later one of the same kind replaces (:func:`accumulated`):
        ``energy``, ``timesteps/<T'>`` per T', ``attack/<attack>``; each with its settings, its sample count
        and when it was measured. JSON-ready."""
        out: dict[str, dict[str, Any]] = {}
        s = self.settings
        if self.activity is not None:
            out[ENERGY] = {
                "evaluated_at": self.evaluated_at,
                "samples": self.activity.samples,
                "settings": {
                    "energy_samples": s.energy_samples,
                    "e_mac_pj": s.e_mac_pj,
                    "e_ac_pj": s.e_ac_pj,
                },
                "activity": self.activity.as_dict(),
                "teacher_cost": self.teacher.as_dict() if self.teacher is not None else None,
                "energy_ratio": self.energy_ratio,
                "seconds": self.seconds.get("energy"),
            }
        for T, acc in sorted((self.accuracy_at or {}).items()):
            out[f"{TIMESTEPS}{T}"] = {
                "evaluated_at": self.evaluated_at,
                "samples": self.accuracy_samples,
                "T": T,
                "acc": acc,
            }
        if self.robustness is not None:
            r = self.robustness
            settings: dict[str, Any] = {
                "attack_samples": s.attack_samples,
                "epsilons": list(s.epsilons),
                "attack_seed": s.attack_seed,
            }
            if r.attack == "pgd":
                settings |= {"pgd_steps": s.pgd_steps, "pgd_step_size": s.pgd_step_size}
            out[f"{ATTACK}{r.attack}"] = {
                "evaluated_at": self.evaluated_at,
                "samples": r.samples,
                "settings": settings,
                "result": r.as_dict(),
                "seconds": self.seconds.get("attack"),
            }
        return out

    def headline(self) -> dict[str, Any]:
        """The figures a table quotes, as flat ``summary.json`` / ``evaluation.json`` keys."""
        return headline(self.measurements())

    def as_dict(self) -> dict[str, Any]:
        """Everything, JSON-ready: the summary's ``measures`` (evaluation.json adds earlier measurements)."""
        return {
            "format": FORMAT,
            "trained_T": self.trained_T,
            "test_samples": self.samples_test,
            **self.headline(),
            "measurements": self.measurements(),
            "seconds": self.seconds,
        }

    def metrics(self) -> dict[str, float]:
        """MLflow metrics (logged at step 0, like the run's other headline figures); each robust figure named
        after its attack, beside that attack's clean accuracy and sample count."""
        out: dict[str, float] = {}
        if self.activity is not None:
            out |= self.activity.as_metrics()
        if self.teacher is not None:
            out |= self.teacher.as_metrics("teacher_")
            out["energy_ratio"] = float(self.energy_ratio)
        if self.accuracy_at is not None:
            out |= {f"test_acc_at_T{t}": acc for t, acc in self.accuracy_at.items()}
        if self.robustness is not None:
            out |= self.robustness.as_metrics()
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
            out.append(robustness_line(self.robustness))
        return out


def robustness_line(r: Robustness) -> str:
    """One attack's figures, with the clean accuracy of the same samples they are bounded by."""
    cells = ", ".join(f"ε={format(e, 'g')}: {acc:.2f}%" for e, acc in r.acc.items())
    return f"{r.attack.upper()} robust accuracy ({r.samples} test samples, clean {r.clean_acc:.2f}%): {cells}"


def headline(measurements: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The flat figures of the measurements kept (what reports and comparisons read): ``firing_rate``,
    ``synops``, ``macs``, ``energy_uj`` and the teacher's, ``test_acc_at_timesteps``, and per attack
    ``robust_acc_<attack>_clean`` with ``robust_acc_<attack>_eps<ε>``."""
    out: dict[str, Any] = {}
    energy = measurements.get(ENERGY)
    if energy is not None:
        a = energy["activity"]
        out |= {key: a[key] for key in ("firing_rate", "synops", "macs", "energy_uj")}
        if energy.get("teacher_cost") is not None:
            t = energy["teacher_cost"]
            out |= {
                "teacher_macs": t["macs"],
                "teacher_energy_uj": t["energy_uj"],
                "energy_ratio": energy["energy_ratio"],
            }
    at = {entry["T"]: entry["acc"] for name, entry in measurements.items() if name.startswith(TIMESTEPS)}
    if at:
        out["test_acc_at_timesteps"] = {str(T): at[T] for T in sorted(at)}
    for name in sorted(n for n in measurements if n.startswith(ATTACK)):
        out |= Robustness.from_dict(measurements[name]["result"]).figures()
    return out


def _order(name: str) -> tuple[int, int, str]:
    """energy, then T' in increasing order, then the attacks by name."""
    if name.startswith(TIMESTEPS):
        return (1, int(name[len(TIMESTEPS) :]), "")
    return (0, 0, "") if name == ENERGY else (2, 0, name)


def accumulated(earlier: dict[str, dict[str, Any]], latest: Evaluation) -> dict[str, dict[str, Any]]:
    """The earlier measurements with the latest over them: a measurement of the same name (the energy, one
    T', one attack) is replaced whole, the others are kept as they were measured."""
    merged = earlier | latest.measurements()
    return {name: merged[name] for name in sorted(merged, key=_order)}


def earlier_measurements(record: dict[str, Any] | None) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The measurements an ``evaluation.json`` holds, and notes on what of it is not kept.

    Format 1 (one evaluation, its parts side by side) is read too: its energy and accuracies at T' are kept;
    its robust figures are not, since they counted samples misclassified when clean as robust when the
    attack happened to land on the right class."""
    if not record:
        return {}, []
    if record.get("format") == FORMAT:
        return dict(record.get("measurements") or {}), []
    at = str(record.get("evaluated_at", "")) or None
    kept: dict[str, dict[str, Any]] = {}
    if record.get("activity") is not None:
        settings = record.get("settings") or {}
        kept[ENERGY] = {
            "evaluated_at": at,
            "samples": record["activity"].get("samples"),
            "settings": {k: settings.get(k) for k in ("energy_samples", "e_mac_pj", "e_ac_pj")},
            "activity": record["activity"],
            "teacher_cost": record.get("teacher_cost"),
            "energy_ratio": record.get("energy_ratio"),
            "seconds": (record.get("seconds") or {}).get("energy"),
        }
    for T, acc in (record.get("test_acc_at_timesteps") or {}).items():
        kept[f"{TIMESTEPS}{int(T)}"] = {"evaluated_at": at, "samples": None, "T": int(T), "acc": acc}
    notes = []
    robust = record.get("robustness")
    if robust is not None:
        attack = str(robust.get("attack", "?"))
        notes.append(
            f"the earlier {attack.upper()} figures in evaluation.json counted samples misclassified when "
            f"clean as robust, so they are not kept: measure them again with eval.attack={attack}"
        )
    return {name: kept[name] for name in sorted(kept, key=_order)}, notes


def kept_line(measurements: dict[str, dict[str, Any]], latest: Evaluation) -> str | None:
    """What evaluation.json keeps from earlier evaluations besides the latest one's measurements."""
    new = latest.measurements()
    parts = []
    for name, entry in measurements.items():
        if name in new:
            continue
        when = entry.get("evaluated_at") or "an earlier evaluation"
        samples = f"{entry['samples']} test samples, " if entry.get("samples") else ""
        if name.startswith(ATTACK):
            r = Robustness.from_dict(entry["result"])
            figures = ", ".join(f"ε={format(e, 'g')}: {a:.2f}%" for e, a in r.acc.items())
            parts.append(f"{r.attack.upper()} ({samples}{when}: clean {r.clean_acc:.2f}%, {figures})")
        elif name.startswith(TIMESTEPS):
            parts.append(f"T'={entry['T']} ({samples}{when}: {entry['acc']:.2f}%)")
        else:
            parts.append(f"{name} ({samples}{when})")
    return "kept from earlier evaluations: " + "; ".join(parts) if parts else None


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
    evaluated_at = time.strftime("%Y-%m-%d %H:%M:%S")
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
    tested = len(subject.data.test)  # the samples evaluate() reads: all, or its first eval_limit batches
    parts["accuracy_samples"] = (
        tested if subject.eval_limit is None else min(tested, subject.eval_limit * subject.batch_size)
    )
    if settings.attack != "none":
        started = time.perf_counter()
        parts["robustness"] = _robustness(subject, settings, test_loader)
        seconds["attack"] = round(time.perf_counter() - started, 2)
    return Evaluation(
        samples_test=len(subject.data.test),
        trained_T=T,
        settings=settings,
        evaluated_at=evaluated_at,
        seconds=seconds,
        **parts,
    )


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


def draw(
    evaluation: Evaluation,
    out: Path,
    title: str,
    prefix_mean: list[float] | None = None,
    measurements: dict[str, dict[str, Any]] | None = None,
) -> list[Path]:
    """The figures of what was measured, in ``out`` (PNG + PDF each); the files written.

    ``measurements``: all those kept (:func:`accumulated`; default: this evaluation's), so that the accuracy
    at T' and the robustness figures show the earlier measurements next to this one's, one curve per attack.
    The firing rates are drawn only when this evaluation measured them; no figure is removed."""
    kept = evaluation.measurements() if measurements is None else measurements
    written: list[Path] = []
    if evaluation.activity is not None:
        written += plots.firing_rates(out / "firing_rates.png", evaluation.activity, title)
    at = {entry["T"]: entry["acc"] for name, entry in kept.items() if name.startswith(TIMESTEPS)}
    if evaluation.accuracy_at is not None and at:
        written += plots.accuracy_at_timesteps(
            out / "accuracy_at_timesteps.png", at, evaluation.trained_T, prefix_mean, title
        )
    attacks = [
        Robustness.from_dict(entry["result"]) for name, entry in kept.items() if name.startswith(ATTACK)
    ]
    if evaluation.robustness is not None and attacks:
        written += plots.robustness(out / "robustness.png", attacks, title)
    return written
