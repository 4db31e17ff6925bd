"""The embedded MNIST-5k with training samples that take a fixed wall time to read.

A job built on it lasts a known minimum time on any machine, which the time-limit test needs: its
job must still be training when the launcher's pre-timeout signal comes, however fast the CPU.
Instantiated by Hydra in the job's own process (``dataset._target_=tests.paced_data.PacedMNIST5k``,
with the checkout on ``PYTHONPATH``).
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from seal_exp.data.embedded import MNIST5k
from seal_exp.data.splits import DataSplits

REPO = Path(__file__).resolve().parent.parent


class PacedSamples(Dataset):
    """``inner``, each sample read no sooner than ``seconds`` after it was asked for."""

    def __init__(self, inner: Dataset, seconds: float) -> None:
        self.inner, self.seconds = inner, seconds

    def __len__(self) -> int:
        return len(self.inner)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        time.sleep(self.seconds)
        return self.inner[index]


class PacedMNIST5k(MNIST5k):
    def __init__(self, seconds_per_sample: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.seconds_per_sample = seconds_per_sample

    def load(self) -> DataSplits:
        splits = super().load()
        return dataclasses.replace(splits, train=PacedSamples(splits.train, self.seconds_per_sample))


# Overrides that train on the paced data (with ``+dataset.seconds_per_sample=<s>``) and the environment
# the job's process needs to import this module.
PACED = (
    "dataset=mnist5k",
    "dataset._target_=tests.paced_data.PacedMNIST5k",
    "distiller=none",
    "trainer.limit_train_batches=20",
    "trainer.eval_batch_size=500",
    "trainer.checkpoint_every_steps=5",
    "trainer.progress=false",
    "eval.after_training=false",  # seconds per job on 500 test samples; tests/test_evaluate.py covers it
)
WITH_TESTS = {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
