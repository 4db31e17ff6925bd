"""``python -m seal_exp.sweep status <sweep dir>``: which jobs of a sweep are finished, running, dead,
failed, missing or trained on other data.

The jobs are the sweep's own, expanded from its ``multirun.yaml`` and looked up in the tracking store by
their identity (:mod:`seal_exp.results.sweep_status` says how): relaunching the sweep command trains
exactly the jobs shown as failed, running-but-dead, missing or on other data.

    python -m seal_exp.sweep status multirun/2026-12-02/10-00-00
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml
from omegaconf import ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from seal_exp.results import sweep_status


def main(argv: list[str] | None = None) -> int:
    """Print the sweep's status table; 2 for a folder that is not a sweep or jobs that do not compose."""
    parser = argparse.ArgumentParser(prog="python -m seal_exp.sweep", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    show = commands.add_parser(
        "status", help="each job: finished / running / queued / dead / killed / failed / missing / other data"
    )
    show.add_argument("sweep_dir", type=Path)
    args = parser.parse_args(argv)
    saved = args.sweep_dir / "multirun.yaml"
    problem = unreadable_multirun(saved)
    if problem:
        print(f"seal-exp: {saved}: not a valid multirun.yaml ({problem})", file=sys.stderr)
        return 2
    try:
        jobs = sweep_status.status(args.sweep_dir)
    except sweep_status.SweepError as exc:
        print(f"seal-exp: {exc}", file=sys.stderr)
        return 2
    print(sweep_status.format_table(jobs, sweep_status.relaunch_command(args.sweep_dir)))
    note = sweep_status.launcher_note(args.sweep_dir)
    if note:
        print(note)
    return 0


def unreadable_multirun(saved: Path) -> str | None:
    """Why a sweep's saved config cannot be read (invalid YAML, no ``hydra.overrides.task``), else None.

    Checked before the status is looked up, so a damaged file gets one line, not a parser traceback; a
    missing file is left to the status, which says the folder is not a sweep.
    """
    if not saved.is_file():
        return None
    try:
        task = OmegaConf.select(OmegaConf.load(saved), "hydra.overrides.task")
    except (yaml.YAMLError, UnicodeDecodeError, OmegaConfBaseException) as exc:
        return f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
    if not isinstance(task, ListConfig):
        return "it holds no list hydra.overrides.task, which Hydra writes for every sweep"
    return None


if __name__ == "__main__":
    sys.exit(main())
