"""Seeded DataLoaders: the same seed gives the same batches, with or without worker processes."""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate


def seed_worker(worker_id: int) -> None:
    """Give each loader worker numpy/python seeds derived from torch's per-worker seed."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def time_major_collate(batch: list[Any]) -> Any:
    """Stack ``[T, C, H, W]`` event-frame samples into a time-major ``[T, B, C, H, W]`` batch."""
    x, y = default_collate(batch)
    return x.transpose(0, 1).contiguous(), y


def resolve_workers(num_workers: int | str, in_memory: bool) -> int:
    """``auto``: 0 for data held in memory (workers only add start-up time), else up to 8 per process."""
    if num_workers != "auto":
        return int(num_workers)
    if in_memory:
        return 0
    return min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    num_workers: int = 0,
    pin_memory: bool | str = "auto",
    persistent_workers: bool = True,
    time_major: bool = False,
    drop_last: bool = False,
) -> DataLoader:
    """``pin_memory='auto'``: pinned when CUDA is present. Persistent workers apply only with workers."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        num_workers=num_workers,
        worker_init_fn=seed_worker,
        generator=torch.Generator().manual_seed(seed),
        pin_memory=torch.cuda.is_available() if pin_memory == "auto" else bool(pin_memory),
        persistent_workers=persistent_workers and num_workers > 0,
        collate_fn=time_major_collate if time_major else None,
    )
