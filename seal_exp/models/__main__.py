"""``python -m seal_exp.models [OVERRIDES…]``: every student and teacher option with its parameter count.

The networks are built through the same factories as a run, from the composed config, so the counts
are those of the run you would launch. Overrides are Hydra overrides; the dataset decides input
channels and class count, e.g. for CIFAR-100-shaped networks::

    python -m seal_exp.models dataset.num_classes=100 dataset.in_channels=3 dataset.image_size=32
"""

from __future__ import annotations

import argparse
import sys
import time

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig

from seal_exp.config import CONF_DIR, ConfigError
from seal_exp.models import build_student, build_teacher


def options(group: str) -> list[str]:
    """The options of a config group: its files (the configs are the registry)."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def _compose(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=["paths.root=.", "paths.output=.", *overrides])


def parameter_table(overrides: list[str]) -> list[dict[str, object]]:
    """One row per student and teacher option: kind, option, class, parameter count."""
    rows: list[dict[str, object]] = []
    for kind, build in (("student", build_student), ("teacher", build_teacher)):
        for option in options(kind):
            cfg = _compose([*overrides, f"{kind}={option}"])
            model = build(cfg)
            node = cfg.student if kind == "student" else cfg.teacher.model
            rows.append(
                {
                    "kind": kind,
                    "option": option,
                    "class": str(node._target_).rsplit(".", 1)[-1],
                    "parameters": sum(p.numel() for p in model.parameters()),
                }
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m seal_exp.models",
        description="List every student and teacher with its parameter count for a dataset shape.",
        epilog=__doc__.split("::", 1)[-1].strip() if __doc__ else None,
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. dataset=digits neuron.T=2")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        rows = parameter_table(args.overrides)
    except (ConfigError, HydraException) as exc:
        print(f"seal-exp: configuration error: {exc}", file=sys.stderr)
        return 2
    cfg = _compose(args.overrides)
    d = cfg.dataset
    print(
        f"networks for {d.in_channels} input channel(s), {d.num_classes} classes, "
        f"{d.image_size}×{d.image_size} inputs (dataset={d.name} plus overrides)\n"
    )
    print("| kind | option | class | parameters |")
    print("|---|---|---|---:|")
    for row in rows:
        print(f"| {row['kind']} | {row['option']} | {row['class']} | {row['parameters']:,} |")
    print(f"\n({len(rows)} networks built in {time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
