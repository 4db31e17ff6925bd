"""How long a job takes to start: from its process's start to its first training step, the first moment it
can write a checkpoint. Recorded per dataset in ``<paths.cache>/startup.json`` by every job, read by the
launcher, which refuses a time limit shorter than that (:func:`seal_exp.sweep_launch.check_time_limit`)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

STARTUP_FILE = "startup.json"


def process_age_s() -> float:
    """Seconds since this process started."""
    import psutil

    return max(0.0, time.time() - psutil.Process().create_time())


def record_startup(cache: str | Path, dataset: str, seconds: float) -> None:
    """Remember how long a job of ``dataset`` took to reach its first training step."""
    path = Path(cache) / STARTUP_FILE
    try:
        known = json.loads(path.read_text()) if path.is_file() else {}
        known = known if isinstance(known, dict) else {}
        known[dataset] = {"seconds": round(float(seconds), 1), "measured": time.strftime("%Y-%m-%d %H:%M")}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(known, indent=1, sort_keys=True) + "\n")
        tmp.replace(path)
    except (OSError, ValueError):  # a measurement, never worth failing a job for
        pass


def measured_startup(cache: str | Path, datasets: list[str]) -> tuple[float, str] | None:
    """The longest start-up recorded for any of ``datasets`` (seconds, and the file it was read from)."""
    path = Path(cache) / STARTUP_FILE
    try:
        known = json.loads(path.read_text())
        found = [float(known[d]["seconds"]) for d in datasets if isinstance(known.get(d), dict)]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return (max(found), str(path)) if found else None


def timing_first_step(poll: Callable[[], bool], cache: str | Path, dataset: str) -> Callable[[], bool]:
    """``poll`` (asked at every step boundary: "stop now?"), recording the process's age the first time it
    is asked, which is when the job's first step is done."""
    done = False

    def first_step_timed() -> bool:
        nonlocal done
        if not done:
            done = True
            record_startup(cache, dataset, process_age_s())
        return poll()

    return first_step_timed
