"""Checkpoints that survive a crash mid-write and load without unpickling arbitrary code."""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch


def atomic_save(obj: Any, path: str | Path) -> Path:
    """Write ``obj`` next to ``path`` then rename it into place: a reader sees the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load(path: str | Path) -> Any:
    """Load a checkpoint with ``weights_only=True`` onto the CPU."""
    return torch.load(Path(path), map_location="cpu", weights_only=True)


def rng_states() -> dict[str, Any]:
    """Every RNG state, in types that ``weights_only`` loading accepts."""
    np_state = np.random.get_state()
    states: dict[str, Any] = {
        "python": list(random.getstate()[1]),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states
