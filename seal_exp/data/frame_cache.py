"""Building spikingjelly's on-disk caches (events → ``events_np/`` → ``frames_number_T_split_by_X/``)
once, with a progress bar, and refusing a cache an interrupted build left half-written.

spikingjelly marks a build in progress with ``<dir>.building`` and refuses to start while one exists;
:func:`refuse_unfinished_builds` turns that into a message saying what to delete.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from tqdm.auto import tqdm

from seal_exp.data.source import MissingDataset

log = logging.getLogger(__name__)


def refuse_unfinished_builds(root: Path, name: str) -> None:
    """Raise if an interrupted cache build left a ``*.building`` marker in ``root``."""
    markers = sorted(root.glob("*.building")) if root.is_dir() else []
    if markers:
        parts = " ".join(str(m.with_name(m.name.removesuffix(".building"))) for m in markers)
        marks = " ".join(str(m) for m in markers)
        raise MissingDataset(
            f"dataset {name}: an interrupted cache build left "
            f"{', '.join(m.name for m in markers)} in {root}; the cache there is incomplete. "
            f"Delete it and rerun (the build starts again):\n"
            f"  rm -rf {parts} {marks}"
        )


def count_files(folder: Path, suffix: str = ".npz") -> int:
    """Files ending in ``suffix`` under ``folder``, recursively (0 when it does not exist)."""
    if not folder.is_dir():
        return 0
    return sum(name.endswith(suffix) for _, _, names in os.walk(folder) for name in names)


@contextlib.contextmanager
def build_progress(folder: Path, total: int, desc: str, suffix: str = ".npz") -> Iterator[None]:
    """A progress bar counting the files appearing in ``folder`` while the body builds them.

    spikingjelly builds its caches in a thread pool without reporting progress; a watcher thread
    counts the output files once a second instead.
    """
    if folder.is_dir() and not folder.with_name(folder.name + ".building").exists():
        yield  # already built: spikingjelly reuses it
        return
    log.info("%s: building %s (%d files, once; later runs reuse it)", desc, folder, total)
    done = threading.Event()
    # a bar on terminals only (disable=None); log files get the log line above
    bar = tqdm(total=total, desc=desc, unit="file", dynamic_ncols=True, mininterval=1.0, disable=None)

    def watch() -> None:
        while not done.wait(1.0):
            bar.n = min(count_files(folder, suffix), total)
            bar.refresh()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()
        bar.n = min(count_files(folder, suffix), total)
        bar.close()
