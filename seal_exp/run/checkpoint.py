"""Checkpoints that survive a crash mid-write and load without unpickling arbitrary code."""

from __future__ import annotations

import errno
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seal_exp.config import RunFailed


def current_umask() -> int:
    """The process umask, read without changing it where Linux shows it (``/proc/self/status``).

    ``os.umask`` can only read it by setting it, which for that instant gives files another thread
    creates the wrong mode; that fallback is left for systems without ``/proc``.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class CheckpointWriteError(RunFailed):
    """A checkpoint could not be written (disk full, quota, I/O error); the one it replaces is intact."""


def atomic_save(obj: Any, path: str | Path) -> Path:
    """Write ``obj`` next to ``path`` then rename it into place: a reader sees the old file or the new one.

    The file gets the mode a plain ``open()`` would give it (0o666 less the umask), not ``mkstemp``'s
    0o600, so a group sharing checkpoints or the teacher cache can read it. A write the file system
    refuses raises :class:`CheckpointWriteError`, one line saying what failed, where, and what to do.
    """
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise CheckpointWriteError(write_failure(path, exc)) from exc
        raise
    return path


def write_failure(path: Path, exc: OSError) -> str:
    """What failed, where, and what to do, in one line."""
    code = errno.errorcode.get(exc.errno or 0)
    why = f"{code}: {exc.strerror}" if code and exc.strerror else str(exc)
    kept = f"the previous {path.name} there is intact" if path.is_file() else "nothing was left in its place"
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
    fix = "Free space on that file system" if full else f"Check that {path.parent} can be written"
    return (
        f"could not write {path} ({why}); {kept}. {fix} (or point hydra.run.dir, paths.cache at another "
        "one), then run the same command to continue from the last checkpoint."
    )


def load(path: str | Path) -> Any:
    """Load a checkpoint with ``weights_only=True`` onto the CPU."""
    return torch.load(Path(path), map_location="cpu", weights_only=True)


def rng_states() -> dict[str, Any]:
    """Every global RNG state, in types that ``weights_only`` loading accepts."""
    version, internal, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    """Put back what :func:`rng_states` recorded, so a resumed job draws the numbers it would have."""
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    n = states["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
