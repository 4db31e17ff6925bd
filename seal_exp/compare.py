"""``python -m seal_exp.compare``: distillers × seeds as one multirun, then one honest table.

    python -m seal_exp.compare                                   # every distiller, seeds 0,1,2, embedded data
    python -m seal_exp.compare --distillers none,kd,seal --seeds 0,1,2,3,4 trainer.epochs=4
    python -m seal_exp.compare --report multirun/compare/2026-11-21_10-00-00   # re-tabulate any sweep

The sweep runs through Hydra (one MLflow parent run, one child per job) in
``<paths.root>/multirun/compare/<date>_<time>/`` (``paths.root``: the checkout unless an override or
``conf/local`` moves it). The table — per distiller and combination of the other swept settings, mean ±
sample standard deviation over seeds of the test accuracy of the epoch selected on validation, of the
last epoch and of the papers' best test accuracy over epochs, the per-timestep test accuracy and the wall
time — is written there as ``comparison.md`` and ``comparison.csv`` with a plot ``comparison.png``, and
attached to the sweep's parent MLflow run (:mod:`seal_exp.results.comparison` makes them). Numbers are
reported as they come out. ``--report`` takes any sweep folder (an α × β × T sweep too); a job whose
summary.json is not JSON is named on stderr and left out.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from seal_exp.config import CONF_DIR
from seal_exp.results import comparison


def main(argv: list[str] | None = None) -> int:
    """Run the sweep (or, with --report, only tabulate one) and print the table; 2 for bad arguments."""
    options = comparison.distiller_options()
    parser = argparse.ArgumentParser(
        prog="python -m seal_exp.compare",
        description="Run distillers × seeds as one multirun and tabulate test accuracy (mean ± sd).",
        epilog="Any other argument is a Hydra override for every job (e.g. dataset=digits trainer.epochs=3).",
    )
    parser.add_argument("--distillers", default=",".join(options), help="comma-separated options")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    parser.add_argument(
        "--sweep-dir", type=Path, help="where the sweep goes (default <paths.root>/multirun/compare/<now>)"
    )
    parser.add_argument("--report", type=Path, metavar="SWEEP_DIR", help="only tabulate an existing sweep")
    parser.add_argument(
        "--print-multirun-root",
        action="store_true",
        help="print <paths.root>/multirun for the given overrides (and conf/local) and exit: where sweeps go",
    )
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)

    if args.report is not None:
        try:
            print(comparison.report(args.report, warn=_warn))
        except comparison.ReportError as exc:
            print(f"seal-exp: --report: {exc}", file=sys.stderr)
            return 2
        return 0
    if args.print_multirun_root:
        try:
            print(multirun_root(args.overrides))
        except ValueError as exc:
            print(f"seal-exp: {exc}", file=sys.stderr)
            return 2
        return 0
    distillers = [d.strip() for d in args.distillers.split(",") if d.strip()]
    unknown = sorted(set(distillers) - set(options))
    if unknown:
        valid = ", ".join(options)
        print(f"seal-exp: --distillers: unknown {', '.join(unknown)}; choose from {valid}", file=sys.stderr)
        return 2
    seeds = [s.strip() for s in args.seeds.split(",") if s.strip()]
    if not seeds or not all(s.isdigit() for s in seeds):
        print(f"seal-exp: --seeds={args.seeds}: give comma-separated integers >= 0", file=sys.stderr)
        return 2
    if args.sweep_dir is None:
        try:
            root = multirun_root(args.overrides)
        except ValueError as exc:
            print(f"seal-exp: {exc}", file=sys.stderr)
            return 2
        args.sweep_dir = root / "compare" / time.strftime("%Y-%m-%d_%H-%M-%S")
    sweep_dir = args.sweep_dir.resolve()
    command = [
        sys.executable,
        "-m",
        "seal_exp.train",
        "-m",
        f"distiller={','.join(distillers)}",
        f"seed={','.join(seeds)}",
        f"hydra.sweep.dir={sweep_dir}",
        *args.overrides,
    ]
    print("running:", " ".join(command[1:]), flush=True)
    started = time.perf_counter()
    code = subprocess.call(command)
    wall = time.perf_counter() - started
    expected = len(distillers) * len(seeds)
    if not list(sweep_dir.glob("*/summary.json")):
        print(f"seal-exp: the sweep finished no job (exit code {code}); see {sweep_dir}", file=sys.stderr)
        return code or 1
    text = comparison.report(sweep_dir, distillers, expected, warn=_warn)
    print(f"\n{text}\nwall time of the whole comparison: {wall / 60:.1f} min; files in {sweep_dir}")
    if code != 0:
        print(
            f"seal-exp: some jobs failed (exit code {code}); the table covers the finished ones",
            file=sys.stderr,
        )
    return code


def multirun_root(overrides: Sequence[str]) -> Path:
    """``<paths.root>/multirun`` as the jobs will compose it (the ``paths.*`` overrides among ``overrides``,
    then ``conf/local``), so a sweep goes where ``paths.root`` says, like everything else a run writes.
    ValueError, with the override to fix, for paths that do not compose."""
    from hydra import compose, initialize_config_dir

    paths = [o for o in overrides if o.lstrip("+~").startswith("paths.")]
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("train", overrides=paths)
        root = Path(str(cfg.paths.root)).expanduser()
    except Exception as exc:  # a malformed override or conf/local: one line, not Hydra's traceback
        reason = " ".join(str(exc).split())[:200]
        raise ValueError(
            f"cannot tell where sweeps go from {' '.join(paths) or 'conf/'} ({reason})"
        ) from None
    return root.resolve() / "multirun"


def _warn(line: str) -> None:
    print(f"seal-exp: warning: {line}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
