"""Seeded DataLoaders: the same seed gives the same batches, with or without worker processes."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler, default_collate


def seed_worker(worker_id: int) -> None:
    """Give each loader worker numpy/python seeds derived from torch's per-worker seed."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


class ShardedSampler(Sampler[int]):
    """One rank's share of an epoch, dealt round-robin from the order a single process would use.

    Training draws the permutation exactly as the single-process loader does (a ``RandomSampler``
    on the loader's generator, seeded alike on every rank) and pads it with its head to a multiple
    of the world size, so step ``k`` of all ranks together covers the same samples as step ``k`` of
    one process with the global batch. Evaluation deals the ordered indices without padding, so
    every sample is counted once.
    """

    def __init__(self, n: int, *, shuffle: bool, generator: torch.Generator, rank: int, world: int) -> None:
        self.n, self.shuffle, self.generator, self.rank, self.world = n, shuffle, generator, rank, world

    def __iter__(self) -> Iterator[int]:
        # drawn lazily, as the single-process sampler is: a run that stops early (limit_train_batches)
        # leaves the generator where one process would have left it
        if not self.shuffle:
            yield from range(self.rank, self.n, self.world)
            return
        source = iter(RandomSampler(range(self.n), generator=self.generator))
        head: list[int] = []
        for i in range(-(-self.n // self.world) * self.world):
            if i < self.n:
                index = next(source)
                if i < self.world:
                    head.append(index)
            else:  # padding: the head of the order again
                index = head[(i - self.n) % len(head)]
            if i % self.world == self.rank:
                yield index
        for _ in source:  # the sampler's own end-of-epoch draws, as one process makes them
            pass

    def __len__(self) -> int:
        if self.shuffle:
            return -(-self.n // self.world)
        return len(range(self.rank, self.n, self.world))


def time_major_collate(batch: list[Any]) -> Any:
    """Stack ``[T, C, H, W]`` event-frame samples into a time-major ``[T, B, C, H, W]`` batch
    (further fields, such as cached teacher logits, are batched as they are)."""
    x, *rest = default_collate(batch)
    return x.transpose(0, 1).contiguous(), *rest


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
    shard: tuple[int, int] = (0, 1),
) -> DataLoader:
    """``pin_memory='auto'``: pinned when CUDA is present. Persistent workers apply only with workers.

    ``shard=(rank, world)`` with ``world > 1``: this rank's :class:`ShardedSampler` share;
    ``batch_size`` is then the rank's own batch.
    """
    generator = torch.Generator().manual_seed(seed)
    rank, world = shard
    sampler = (
        ShardedSampler(len(dataset), shuffle=shuffle, generator=generator, rank=rank, world=world)
        if world > 1
        else None
    )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else None,
        sampler=sampler,
        drop_last=drop_last,
        num_workers=num_workers,
        worker_init_fn=seed_worker,
        generator=generator,
        pin_memory=torch.cuda.is_available() if pin_memory == "auto" else bool(pin_memory),
        persistent_workers=persistent_workers and num_workers > 0,
        collate_fn=time_major_collate if time_major else None,
    )
