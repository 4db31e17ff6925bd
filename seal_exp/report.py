"""``python -m seal_exp.report <sweep dir | MLflow parent run id>``: a sweep's report.

Every job with its swept keys and results, the mean ± sd over seeds of each combination, and heatmaps of
the mean test accuracy, written as report.md, report.csv and report_heatmap.png and attached to the
sweep's parent MLflow run (:mod:`seal_exp.results.sweep_report` makes them). A job whose summary.json
(or evaluation.json) is not JSON is listed as unreadable, left out of the tables, and named on stderr
with what to do; the report goes on (exit 0). A folder that is no sweep, or a damaged
``.hydra/overrides.yaml``, stops it with exit 2.

    python -m seal_exp.report multirun/2026-11-21/10-00-00
    python -m seal_exp.report 3f2a…c9 --out reports/alpha-beta           # the sweep's parent MLflow run
    python -m seal_exp.report multirun/2026-11-21/10-00-00 --heatmap neuron.T,distiller.alpha
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from seal_exp.results.sweep_report import ReportError, read_parent_run, read_sweep_dir, write_report
from seal_exp.tracking import default_tracking_uri


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, write the report; 2 (and nothing written) for an input it refuses."""
    parser = argparse.ArgumentParser(
        prog="python -m seal_exp.report",
        description="Tabulate a sweep: every job, mean ± sd over seeds, heatmaps of mean test accuracy.",
    )
    parser.add_argument("sweep", help="a Hydra multirun folder, or the id of a sweep's parent MLflow run")
    parser.add_argument(
        "--tracking-uri",
        default=None,
        help="the MLflow store of a run id (default: this project's sqlite:///<root>/mlflow.db)",
    )
    parser.add_argument("--out", type=Path, help="where the files go (default: the sweep folder)")
    parser.add_argument(
        "--heatmap",
        metavar="KEY_X,KEY_Y",
        help="two swept keys to draw (default distiller.alpha,distiller.beta, else the first two numeric)",
    )
    args = parser.parse_args(argv)
    try:
        pair = None
        if args.heatmap is not None:
            parts = [p.strip() for p in args.heatmap.split(",")]
            if len(parts) != 2 or not all(parts) or parts[0] == parts[1]:
                raise ReportError(f"--heatmap={args.heatmap}: give two different swept keys, KEY_X,KEY_Y")
            pair = (parts[0], parts[1])
        target = Path(args.sweep)
        if target.exists() or "/" in args.sweep or "\\" in args.sweep:
            sweep = read_sweep_dir(target.resolve())
        else:
            sweep = read_parent_run(args.sweep, args.tracking_uri or default_tracking_uri())
        out_dir = args.out or sweep.folder
        if out_dir is None:
            raise ReportError(
                f"{sweep.source}: its sweep folder is not on this machine; pass --out DIR for the files"
            )
        result = write_report(sweep, out_dir.resolve(), pair)
    except ReportError as exc:
        print(f"seal-exp: {exc}", file=sys.stderr)
        return 2
    for job in sweep.unreadable:  # reported as unreadable, left out of the tables: said once more here
        print(f"seal-exp: warning: job {job.name} left out: {job.note}", file=sys.stderr)
    names = ", ".join(p.name for p in result.files)
    where = f" and attached to MLflow run {result.attached_to} under report/" if result.attached_to else ""
    print(f"{result.markdown}\nreport files: {names} in {out_dir.resolve()}{where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
