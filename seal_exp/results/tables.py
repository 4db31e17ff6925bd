"""Statistics and table formatting shared by the sweep report and the comparison, so both state a
mean ± sd, a missing number and a table the same way."""

from __future__ import annotations

import csv
import math
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from seal_exp.run.files import ROBUST_CLEAN, ROBUST_PREFIX


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


# Figures measured beyond top-1 that tables show when a run has them, in this order, then per attack its
# robust_acc_<attack>_clean (clean accuracy of the samples it attacked) and every robust_acc_<attack>_eps<ε>.
MEASURED_COLUMNS = ("firing_rate", "synops", "energy_uj", "energy_ratio")
_TITLES = {
    "firing_rate": "firing rate",
    "synops": "SynOps (M)",
    "energy_uj": "energy (µJ)",
    "energy_ratio": "energy ratio (ANN/SNN)",
}
_FORMATS = {  # key → (divisor, decimals, suffix): what a Markdown cell shows; CSV keeps the raw number
    "firing_rate": (1.0, 3, ""),
    "synops": (1e6, 2, ""),
    "energy_uj": (1.0, 3, ""),
    "energy_ratio": (1.0, 1, "×"),
}


def robust_parts(key: str) -> tuple[str, float] | None:
    """``robust_acc_pgd_eps0.03`` → ("pgd", 0.03), ``robust_acc_pgd_clean`` → ("pgd", 0.0) (a budget of 0: the
    clean accuracy of the samples PGD attacked); None for any other key (so a ``…_sd`` never counts)."""
    if not key.startswith(ROBUST_PREFIX):
        return None
    if key.endswith(ROBUST_CLEAN) and len(key) > len(ROBUST_PREFIX) + len(ROBUST_CLEAN):
        return key[len(ROBUST_PREFIX) : -len(ROBUST_CLEAN)], 0.0
    attack, sep, eps = key[len(ROBUST_PREFIX) :].rpartition("_eps")
    try:
        budget = float(eps)
    except ValueError:
        return None
    return (attack, budget) if sep and attack and math.isfinite(budget) else None


def measured_columns(results: Iterable[dict[str, Any]], fixed: Sequence[str] = MEASURED_COLUMNS) -> list[str]:
    """The measured figures that at least one run has a number for: the ``fixed`` ones in their order, then
    per attack its clean accuracy and its robust accuracies by ε, so a table of older runs gains no empty
    columns."""
    present: set[str] = set()
    for result in results:
        present |= {
            key
            for key, value in result.items()
            if isinstance(value, int | float)
            and not isinstance(value, bool)
            and (key in fixed or robust_parts(key) is not None)
        }
    robust = sorted((k for k in present if k not in fixed), key=lambda k: robust_parts(k) or ("", 0.0))
    return [k for k in fixed if k in present] + robust


def column_title(key: str) -> str:
    """A measured figure's Markdown header: ``SynOps (M)``, ``PGD clean``, ``PGD ε=0.03``; other keys as
    they are."""
    parts = robust_parts(key)
    if parts is not None:
        if key.endswith(ROBUST_CLEAN):
            return f"{parts[0].upper()} clean"
        attack, _, eps = key[len(ROBUST_PREFIX) :].rpartition("_eps")
        return f"{attack.upper()} ε={eps}"
    return _TITLES.get(key, key)


def _format_of(key: str) -> tuple[float, int, str]:
    return _FORMATS.get(key, (1.0, 2, ""))  # robust accuracies: percent, like every accuracy


def measured_cell(key: str, value: Any) -> str:
    """One run's measured figure for a Markdown cell, in the unit its ``column_title`` names."""
    if value is None:
        return "–"
    divisor, digits, suffix = _format_of(key)
    return f"{float(value) / divisor:.{digits}f}{suffix}"


def measured_stat(key: str, mean: float, sd: float) -> str:
    """A measured figure's mean ± sd over runs, in the unit its ``column_title`` names; "–" if none has it."""
    if math.isnan(mean):
        return "–"
    divisor, digits, suffix = _format_of(key)
    return pm(mean / divisor, sd / divisor, digits) + suffix


def measured_note(columns: Sequence[str]) -> str:
    """The units of the measured columns a table shows, in one sentence ("" when it shows none)."""
    parts = {
        "firing_rate": "`firing rate`: spikes per neuron per timestep",
        "synops": "`SynOps (M)`: millions of synaptic operations per test sample",
        "energy_uj": "`energy (µJ)`: per test sample",
        "energy_ratio": "`energy ratio`: the ANN teacher's energy / the student's",
    }
    said = [parts[k] for k in columns if k in parts]
    if any(robust_parts(k) is not None for k in columns):
        said.append(
            "`<attack> ε=…`: test accuracy (%) under that L∞ attack of budget ε, a sample counting only "
            "if it is right both clean and attacked; `<attack> clean`: the clean accuracy of the samples "
            "that attack was measured on"
        )
    return "; ".join(said) + "." if said else ""
