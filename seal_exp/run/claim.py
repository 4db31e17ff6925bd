"""One owner per job: an exclusive lock on the job's identity, held while the job runs.

The lock is a ``flock`` on ``<paths.cache>/jobs/<identity>.lock``: the kernel releases it when the
process exits or dies (kill -9 included), so a claim can never be left behind. A second launch of a
job that is still running (a relaunched sweep, the same command in another terminal) finds the claim
held and stops, naming the process that holds it, instead of becoming a second writer of the same
``last.pt`` and MLflow run. ``sweep status`` uses the same lock to tell a live job from a dead one.
Locks are per host and file system: jobs of one identity on different hosts need a shared file system
with working ``flock`` (NFSv4, Lustre, GPFS) to see each other.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from pathlib import Path
from typing import IO

from seal_exp.config import ConfigError


class JobRunning(ConfigError):
    """Another process holds this job's claim."""


def claim_path(cache: str | Path, identity: str) -> Path:
    return Path(cache) / "jobs" / f"{identity}.lock"


class Claim:
    """The held claim of one job; :meth:`release` (or the process's end) lets it go."""

    def __init__(self, path: Path, handle: IO[str]) -> None:
        self.path, self._handle = path, handle

    def release(self) -> None:
        if not self._handle.closed:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()


def _try_lock(path: Path) -> IO[str] | None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def holder(path: Path) -> str:
    """Who holds (or last held) a claim, as the lock file records it."""
    try:
        who = json.loads(path.read_text())
        return f"pid {who['pid']} on {who['host']}, folder {who['folder']}"
    except (OSError, ValueError, KeyError):
        return "another process"


def claim(cache: str | Path, identity: str, folder: Path) -> Claim:
    """Take the job's claim, or raise :class:`JobRunning` naming who holds it."""
    path = claim_path(cache, identity)
    handle = _try_lock(path)
    if handle is None:
        raise JobRunning(
            f"job {identity} is running already ({holder(path)}): this launch stops rather than write "
            "the same checkpoint and MLflow run twice. Wait for it to end, or stop it (its next start "
            "resumes from its checkpoint)."
        )
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "folder": str(folder)}))
    handle.flush()
    return Claim(path, handle)


def is_held(cache: str | Path, identity: str) -> bool:
    """Whether a live process holds the job's claim (probing takes and drops it at once)."""
    path = claim_path(cache, identity)
    if not path.is_file():
        return False
    handle = _try_lock(path)
    if handle is None:
        return True
    fcntl.flock(handle, fcntl.LOCK_UN)
    handle.close()
    return False
