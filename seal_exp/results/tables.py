"""Statistics and table formatting shared by the sweep report and the comparison, so both state a
mean ± sd, a missing number and a table the same way."""

from __future__ import annotations

import csv
import math
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample (n − 1) standard deviation; NaN sd for one value, so no spread is claimed."""
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else math.nan)


def metric_stats(runs: Sequence[dict[str, Any]], keys: Sequence[str]) -> dict[str, tuple[float, float]]:
    """``mean_sd`` of each metric over the runs that have it (NaN, NaN where none has)."""
    stats = {}
    for key in keys:
        values = [float(r[key]) for r in runs if r.get(key) is not None]
        stats[key] = mean_sd(values) if values else (math.nan, math.nan)
    return stats


def pm(mean: float, sd: float, digits: int = 2) -> str:
    """``mean ± sd``; the mean alone when there is no spread to report (one seed)."""
    return f"{mean:.{digits}f} ± {sd:.{digits}f}" if not math.isnan(sd) else f"{mean:.{digits}f}"


def num(value: Any, digits: int = 2) -> str:
    """A number for a table cell, or "–" where it is unknown (rather than "None")."""
    return "–" if value is None else f"{float(value):.{digits}f}"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """The lines of a pipe table (cells already formatted)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def write_csv_table(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """A header line and the rows as they are (None becomes an empty cell): raw numbers for elsewhere."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
