"""``python -m seal_exp.bench``: speed figures anyone can rerun (printed, never asserted in tests).

``step``: the training step (teacher forward, student forward and backward, the distiller's loss,
the optimiser step) and the evaluation step of any composed config, after warm-up, over several
repeats: images/s, ms/step (median, min, max), peak memory, the spikingjelly kernel and the fast-path
settings. ``--compare`` times the plain path (fp32, NCHW, no compile, stem at every timestep) against
the configured one, interleaved; ``--each`` adds the plain path with one switch at a time.
Defaults: SeAl, resnet18 ← resnet34, CIFAR-shaped input, T=4, batch 32.

``data``: the training loader of a dataset config, as training builds it, for several worker counts
(and pinned memory on CUDA): start-up time, ms/batch and samples/s, to compare with ``step``'s
ms/step (a loader keeps up when it delivers a batch faster than the step consumes it).

``stem-once``: forward + backward time of a student on static images with the stem computed once
and broadcast over T, against the stem run at every timestep.

    python -m seal_exp.bench step --compare
    python -m seal_exp.bench step --batch 128 --json bench.json trainer.compile=neurons trainer.precision=bf16
    python -m seal_exp.bench data --workers 0,1,2 dataset=mnist5k_dvs
    python -m seal_exp.bench stem-once --batch 64 --repeats 9 student=vggsnn neuron.T=10
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import get_class
from omegaconf import DictConfig

from seal_exp.config import CONF_DIR, build
from seal_exp.data.loaders import make_loader, resolve_workers
from seal_exp.models import build_student, speed
from seal_exp.models.neurons import kernel_in_use, reset_spiking_state
from seal_exp.models.spiking_network import SpikingNetwork
from seal_exp.training.epoch import train_step

CIFAR_SHAPE = ["dataset.num_classes=10", "dataset.in_channels=3", "dataset.image_size=32"]


def _device(name: str) -> torch.device:
    """``--device``: ``auto`` is CUDA when present, else the CPU."""
    return torch.device(name if name != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_step(model: torch.nn.Module, x: torch.Tensor, repeats: int, warmup: int) -> list[float]:
    """Seconds per forward + backward (gradients zeroed, state reset each time, as in training)."""
    times = []
    for i in range(warmup + repeats):
        model.zero_grad(set_to_none=True)
        reset_spiking_state(model)
        _sync(x.device)
        start = time.perf_counter()
        model(x).mean().backward()
        _sync(x.device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def stem_once(args: argparse.Namespace) -> int:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=["paths.root=.", "paths.output=.", "student=resnet18", *CIFAR_SHAPE, *args.overrides],
        )
    device = _device(args.device)
    torch.manual_seed(0)
    once = build_student(cfg).to(device).train()
    if not isinstance(once, SpikingNetwork):
        print(f"student={cfg.student._target_} has no separable stem", file=sys.stderr)
        return 2
    every = copy.deepcopy(once)
    once.stem_once, every.stem_once = True, False
    size = int(cfg.dataset.image_size)
    x = torch.randn(args.batch, int(cfg.dataset.in_channels), size, size, device=device)
    print(
        f"{type(once).__name__} ({cfg.student._target_}), T={cfg.neuron.T}, batch {args.batch}, "
        f"input {tuple(x.shape[1:])}, {device}, torch threads {torch.get_num_threads()}; "
        f"forward+backward, median of {args.repeats} after {args.warmup} warm-up"
    )
    # Interleave the two variants so drifts in machine load hit both alike.
    t_once: list[float] = []
    t_every: list[float] = []
    for _ in range(args.repeats):
        t_once += time_step(once, x, 1, args.warmup if not t_once else 0)
        t_every += time_step(every, x, 1, args.warmup if not t_every else 0)
    results = {"stem once": t_once, "stem every step": t_every}
    for name, times in results.items():
        print(
            f"  {name:16s} median {1000 * statistics.median(times):8.1f} ms   "
            f"(min {1000 * min(times):.1f}, max {1000 * max(times):.1f})"
        )
    speedup = statistics.median(t_every) / statistics.median(t_once)
    paired = statistics.median(e / o for e, o in zip(t_every, t_once, strict=True))
    print(f"  speed-up {speedup:.3f}x (ratio of medians); {paired:.3f}x (median of back-to-back pairs)")
    return 0


STEP_DEFAULTS = ["dataset=cifar10", "student=resnet18", "teacher=resnet34", "distiller=seal", "neuron.T=4"]
# the path every speed-up is measured against: what the reference code does
PLAIN = [
    "trainer.precision=fp32",
    "trainer.channels_last=false",
    "trainer.compile=none",
    "trainer.cache_teacher_logits=false",
]  # and student.stem_once=false, for students that have a separable stem


# --each: the plain path plus one switch at a time, to read each one's contribution
SWITCHES = {
    "+stem once": ["student.stem_once=true"],
    "+compile": ["trainer.compile=neurons"],
    "+channels_last": ["trainer.channels_last=true"],
    "+bf16": ["trainer.precision=bf16"],
    "+cached teacher": ["trainer.cache_teacher_logits=true"],
}


def _compose(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(
            "train",
            overrides=[
                "paths.root=.",
                "paths.output=.",
                "tracking=none",
                "teacher.checkpoint=null",
                *overrides,
            ],
        )


def _with_plain(overrides: list[str], cfg: DictConfig) -> list[str]:
    """The plain path's overrides after the user's (``stem_once`` only where ``cfg``'s student has it)."""
    stem = ["student.stem_once=false"] if "stem_once" in cfg.student else []
    return [*overrides, *PLAIN, *stem]


def _applicable_switches(cfg: DictConfig) -> list[str]:
    """The switches of :data:`SWITCHES` this config can take (a stem to hoist, a teacher to cache)."""
    distiller = get_class(cfg.distiller._target_)
    skip = set()
    if "stem_once" not in cfg.student:
        skip.add("+stem once")
    if not distiller.requires_teacher or distiller.reads_teacher_features:
        skip.add("+cached teacher")
    return [name for name in SWITCHES if name not in skip]


class StepTimer:
    """One variant of the step: its networks, optimiser and a fixed synthetic batch on the device."""

    def __init__(self, name: str, cfg: DictConfig, batch: int, device: torch.device) -> None:
        from seal_exp.plan import prepare  # the same building and checks as a training run

        self.name, self.cfg = name, cfg
        cfg.trainer.device = str(device)
        torch.manual_seed(0)
        plan = prepare(cfg, data=False)
        self.settings = plan.settings
        self.objective, self.optimizer, self.student = (
            plan.student.distiller.to(device),
            plan.student.optimizer,
            plan.student.model,
        )
        self.objective.train()
        size, channels = int(cfg.dataset.image_size), int(cfg.dataset.in_channels)
        generator = torch.Generator().manual_seed(0)
        self.x = torch.randn(batch, channels, size, size, generator=generator).to(device)
        self.y = torch.randint(0, int(cfg.dataset.num_classes), (batch,), generator=generator).to(device)
        # trainer.cache_teacher_logits=true: the batch carries its teacher logits, computed here once
        self.cached = plan.student.cache_teacher_logits
        self.extra = (plan.student.distiller.teacher_logits(self.x),) if self.cached else ()
        self.device = device
        self.train_s: list[float] = []
        self.eval_s: list[float] = []

    def _timed(self, fn: Any) -> float:
        _sync(self.device)
        start = time.perf_counter()
        fn()
        _sync(self.device)
        return time.perf_counter() - start

    def train_once(self) -> float:
        return self._timed(lambda: train_step(self.objective, self.optimizer, self.x, self.y, *self.extra))

    def eval_once(self) -> float:
        def run() -> None:
            self.student.eval()
            with torch.no_grad():
                self.student(self.x)
            reset_spiking_state(self.student)
            self.objective.train()

        return self._timed(run)

    def describe(self) -> dict[str, Any]:
        s = self.settings
        return {
            "speed": speed.describe(s.precision, s.channels_last, s.compile, s.compile_mode),
            "precision": s.precision,
            "channels_last": s.channels_last,
            "compile": s.compile,
            "compile_mode": s.compile_mode,
            "stem_once": bool(getattr(self.student, "stem_once", False)),
            "teacher_logits": "cached" if self.cached else "per step",
            "spikingjelly_kernel": kernel_in_use(self.student, self.device),
        }


def _progress(line: str) -> None:
    """Where a long benchmark is (on stderr, so the table on stdout stays clean)."""
    print(f"  .. {line}", file=sys.stderr, flush=True)


def _stats(times: list[float], batch: int) -> dict[str, float]:
    median = statistics.median(times)
    return {
        "ms_median": 1000 * median,
        "ms_min": 1000 * min(times),
        "ms_max": 1000 * max(times),
        "images_per_s": batch / median,
    }


def _peak_memory_mb(device: torch.device) -> tuple[str, float]:
    if device.type == "cuda":
        return "CUDA max allocated", torch.cuda.max_memory_allocated(device) / 2**20
    return "process peak RSS", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def step(args: argparse.Namespace) -> int:
    device = _device(args.device)
    overrides = [*STEP_DEFAULTS, *args.overrides]
    variants = [("configured", overrides)]
    if args.compare or args.each:
        configured = _compose(overrides)
        plain = _with_plain(overrides, configured)
        variants.insert(0, ("plain", plain))
        applicable = _applicable_switches(configured)
        for name, extra in SWITCHES.items() if args.each else ():
            if name in applicable:
                variants.insert(-1, (name, [*plain, *extra]))
    timers = [StepTimer(name, _compose(o), args.batch, device) for name, o in variants]
    cfg = timers[-1].cfg
    method, student = (str(cfg[g]._target_).rsplit(".", 1)[-1] for g in ("distiller", "student"))
    print(
        f"training step: {method}, student {student} <- teacher {cfg.teacher.arch}, T={cfg.neuron.T}, "
        f"batch {args.batch}, input {tuple(timers[-1].x.shape[1:])}, {device}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; {args.warmup} warm-up steps (compilation happens there), "
        f"then {args.repeats} timed, interleaved"
    )
    for timer in timers:  # warm-up: compilation, allocator, oneDNN/cuDNN algorithm choice
        start = time.perf_counter()
        for _ in range(args.warmup):
            timer.train_once()
            timer.eval_once()
        timer.warmup_s = time.perf_counter() - start
        _progress(f"warm-up {timer.name}: {timer.warmup_s:.1f} s")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for r in range(args.repeats):  # interleaved, so drifts in machine load hit every variant alike
        for timer in timers:
            timer.train_s.append(timer.train_once())
            timer.eval_s.append(timer.eval_once())
        _progress(
            f"round {r + 1}/{args.repeats}: " + ", ".join(f"{t.name} {t.train_s[-1]:.2f} s" for t in timers)
        )
    memory_kind, memory = _peak_memory_mb(device)
    results: dict[str, Any] = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "overrides": overrides,
        f"peak_memory_mb ({memory_kind}, all variants)": round(memory, 1),
        "variants": {},
    }
    columns = ("train ms/step (min-max)", "img/s", "eval ms/step", "img/s")
    print(
        f"  {'variant':15s} {columns[0]:>28s} {columns[1]:>8s} {columns[2]:>13s} {columns[3]:>8s} "
        f"{'x plain':>8s}  settings"
    )
    plain_ms = statistics.median(timers[0].train_s) if timers[0].name == "plain" else None
    for timer in timers:
        train, evaluation = _stats(timer.train_s, args.batch), _stats(timer.eval_s, args.batch)
        info = timer.describe()
        results["variants"][timer.name] = {
            "train": train,
            "eval": evaluation,
            "warmup_s": timer.warmup_s,
            **info,
        }
        spread = f"{train['ms_median']:9.1f} ({train['ms_min']:.1f}-{train['ms_max']:.1f})"
        settings = (
            f"{info['speed']}, stem once {info['stem_once']}, teacher logits {info['teacher_logits']}, "
            f"{info['spikingjelly_kernel']}"
        )
        speedup = plain_ms / (train["ms_median"] / 1000) if plain_ms else None
        if speedup is not None:
            results["variants"][timer.name]["train_speedup_vs_plain"] = speedup
        print(
            f"  {timer.name:15s} {spread:>28s} {train['images_per_s']:8.1f} {evaluation['ms_median']:13.1f} "
            f"{evaluation['images_per_s']:8.1f} {f'{speedup:.2f}x' if speedup else '-':>8s}  {settings}, "
            f"warm-up {timer.warmup_s:.1f} s"
        )
    if args.compare or args.each:
        plain, configured = (results["variants"][n] for n in ("plain", "configured"))
        ratio = plain["train"]["ms_median"] / configured["train"]["ms_median"]
        eval_ratio = plain["eval"]["ms_median"] / configured["eval"]["ms_median"]
        results["train_speedup"], results["eval_speedup"] = ratio, eval_ratio
        print(f"  configured vs plain: training step {ratio:.2f}x faster, evaluation step {eval_ratio:.2f}x")
    print(f"  peak memory ({memory_kind}): {memory:.0f} MB")
    if args.profile:
        results["profile"] = _profile(timers[-1], args.profile)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        print(f"  figures written to {args.json}")
    return 0


def _profile(timer: StepTimer, rows: int) -> list[dict[str, Any]]:
    """Where one training step of ``timer``'s variant spends its time: the operators with the most
    self time (torch.profiler), printed and returned for the JSON."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if timer.device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        timer.train_once()
    attr = "self_device_time_total" if timer.device.type == "cuda" else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, attr), reverse=True)
    total = sum(getattr(e, attr) for e in events) or 1
    print(f"  one training step of {timer.name!r}, the {rows} operators with the most self time:")
    table = []
    for e in events[:rows]:
        self_us = getattr(e, attr)
        table.append({"op": e.key, "calls": e.count, "self_ms": self_us / 1000, "share": self_us / total})
        print(
            f"    {e.key[:48]:48s} {e.count:6d} calls {self_us / 1000:9.1f} ms {100 * self_us / total:5.1f} %"
        )
    return table


def _worker_counts(text: str, in_memory: bool) -> list[int]:
    counts = []
    for item in text.split(","):
        item = item.strip()
        if item != "auto" and not item.isdigit():
            raise SystemExit(f"--workers {text!r}: use a comma-separated list of counts >= 0 or auto")
        counts.append(resolve_workers(item if item == "auto" else int(item), in_memory))
    return list(dict.fromkeys(counts))


def data(args: argparse.Namespace) -> int:
    """Time the training loader for each worker count (and pinned memory on CUDA), batches moved to
    the device as training moves them."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["paths.output=.", "tracking=none", *args.overrides])
    device = _device(args.device)
    settings = build(cfg.trainer, "trainer")
    batch = args.batch or settings.batch_size
    source = build(cfg.dataset, "dataset")  # checks the files, naming the folder, before any read
    started = time.perf_counter()
    splits = source.load()
    load_s = time.perf_counter() - started
    counts = _worker_counts(args.workers, splits.in_memory)
    pins = [False, True] if device.type == "cuda" else [False]
    print(
        f"training loader: {cfg.dataset.name}, {len(splits.train)} samples, batch {batch}, "
        f"{'in memory' if splits.in_memory else 'read from files'}, {device}, "
        f"{len(os.sched_getaffinity(0))} cores; load (and cache build) {load_s:.1f} s; "
        f"{args.batches} batches timed after the first"
    )
    header = ("workers", "pinned", "first batch s", "ms/batch (min-max)", "samples/s")
    print("  {:>7s} {:>6s} {:>13s} {:>24s} {:>10s}".format(*header))
    results: dict[str, Any] = {
        "dataset": str(cfg.dataset.name),
        "samples": len(splits.train),
        "batch": batch,
        "device": str(device),
        "load_s": load_s,
        "loaders": [],
    }
    for workers in counts:
        for pin in pins:
            loader = make_loader(
                splits.train,
                batch,
                shuffle=True,
                seed=0,
                num_workers=workers,
                pin_memory=pin,
                persistent_workers=False,
                time_major=splits.time_major,
            )
            n = min(args.batches, len(loader) - 1)
            if n < 1:
                raise SystemExit(f"the training part holds {len(loader)} batch(es) of {batch}: lower --batch")
            times: list[float] = []
            start = time.perf_counter()
            for i, (x, *_rest) in enumerate(loader):
                x.to(device, non_blocking=True)
                _sync(device)
                now = time.perf_counter()
                if i == 0:
                    first = now - start
                else:
                    times.append(now - start)
                start = now
                if i == n:
                    break
            stats = _stats(times, batch)
            results["loaders"].append(
                {"workers": workers, "pin_memory": pin, "first_batch_s": first, **stats}
            )
            spread = f"{stats['ms_median']:9.1f} ({stats['ms_min']:.1f}-{stats['ms_max']:.1f})"
            print(f"  {workers:7d} {pin!s:>6s} {first:13.2f} {spread:>24s} {stats['images_per_s']:10.0f}")
    print("  compare ms/batch with the training step's ms/step: python -m seal_exp.bench step")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        print(f"  figures written to {args.json}")
    return 0


def _timing_arguments(parser: argparse.ArgumentParser, repeats: int, warmup: int) -> None:
    """What every benchmark takes: batch size, repeats, warm-up and the device."""
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--warmup", type=int, default=warmup)
    parser.add_argument("--device", default="auto")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m seal_exp.bench", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("step", help="training and evaluation step of a composed config")
    _timing_arguments(t, repeats=10, warmup=3)
    t.add_argument("--compare", action="store_true", help="also time the plain path, interleaved")
    t.add_argument("--each", action="store_true", help="also the plain path with each switch alone")
    t.add_argument("--json", help="write the figures to this file")
    t.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="then profile one configured step: the N costliest operators",
    )
    t.add_argument("overrides", nargs="*", help="Hydra overrides (distiller=…, student=…, trainer.compile=…)")
    p = sub.add_parser("stem-once", help="stem computed once vs at every timestep (static images)")
    _timing_arguments(p, repeats=7, warmup=2)
    p.add_argument("overrides", nargs="*", help="Hydra overrides (student=…, neuron.T=…, dataset.*)")
    d = sub.add_parser("data", help="the training loader: worker counts, pinned memory")
    d.add_argument("--workers", default="0,auto", help="comma-separated worker counts (auto: as training)")
    d.add_argument("--batches", type=int, default=50, help="batches timed after the first")
    d.add_argument("--batch", type=int, default=0, help="batch size (0: trainer.batch_size)")
    d.add_argument("--device", default="auto")
    d.add_argument("--json", help="write the figures to this file")
    d.add_argument("overrides", nargs="*", help="Hydra overrides (dataset=…, dataset.root=…)")
    args = parser.parse_args(argv)
    return {"step": step, "data": data, "stem-once": stem_once}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
