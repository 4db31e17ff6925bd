"""``python -m seal_exp.sweep status <sweep dir>``: which jobs of a sweep are finished, running, failed
or missing.

The jobs are the sweep's own, expanded from its ``multirun.yaml`` and looked up in the tracking store by
their identity (:mod:`seal_exp.results.sweep_status` says how): relaunching the sweep command trains
exactly the jobs shown as failed, running-but-dead or missing.

    python -m seal_exp.sweep status multirun/2026-12-02/10-00-00
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from seal_exp.results import sweep_status


def main(argv: list[str] | None = None) -> int:
    """Print the sweep's status table; 2 for a folder that is not a sweep or jobs that do not compose."""
    parser = argparse.ArgumentParser(prog="python -m seal_exp.sweep", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    show = commands.add_parser("status", help="the sweep's jobs as finished / running / failed / missing")
    show.add_argument("sweep_dir", type=Path)
    args = parser.parse_args(argv)
    try:
        jobs = sweep_status.status(args.sweep_dir)
    except sweep_status.SweepError as exc:
        print(f"seal-exp: {exc}", file=sys.stderr)
        return 2
    print(sweep_status.format_table(jobs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
