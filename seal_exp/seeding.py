"""Seeding: a run is a function of its config and seed, whatever happened earlier in the process."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def isolated_torch_rng(seed: int) -> Iterator[None]:
    """Draw from torch's RNG seeded with ``seed`` and restore the previous state afterwards.

    Networks are initialised inside it, so the student's initial weights do not depend on whether a
    teacher was built (or trained, or loaded from the cache) before it.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


RANK_SEED_STRIDE = 100_003


def seed_rank(seed: int, rank: int) -> None:
    """Seed the global RNGs for one data-parallel rank's draws (augmentation); rank 0 uses ``seed`` itself."""
    seed_everything(seed + RANK_SEED_STRIDE * rank)
