"""``python -m seal_exp.bench``: speed figures anyone can rerun (printed, never asserted in tests).

``stem-once``: forward + backward time of a student on static images with the stem computed once
and broadcast over T, against the stem run at every timestep. Defaults: resnet18, T=4, batch 32,
CIFAR-shaped input (3×32×32, 10 classes), median of several timed runs after warm-up.

    python -m seal_exp.bench stem-once
    python -m seal_exp.bench stem-once --batch 64 --repeats 9 student=vggsnn neuron.T=10
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time

import torch
from hydra import compose, initialize_config_dir

from seal_exp.config import CONF_DIR
from seal_exp.models import build_student
from seal_exp.models.neurons import reset_spiking_state
from seal_exp.models.spiking_network import SpikingNetwork

CIFAR_SHAPE = ["dataset.num_classes=10", "dataset.in_channels=3", "dataset.image_size=32"]


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
    device = torch.device(
        args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    )
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m seal_exp.bench", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("stem-once", help="stem computed once vs at every timestep (static images)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("overrides", nargs="*", help="Hydra overrides (student=…, neuron.T=…, dataset.*)")
    args = parser.parse_args(argv)
    return stem_once(args)


if __name__ == "__main__":
    sys.exit(main())
