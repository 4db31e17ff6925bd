"""Teacher logits computed once per run, when every epoch feeds the teacher the same samples.

With the student's training augmentation off (the embedded datasets; event data with
``dataset.augment`` off), a frozen teacher in eval mode gives each training sample the same logits
every epoch, so they are computed in one inference pass before training and served with the batches
(``trainer.cache_teacher_logits``). The step then skips the teacher's forward; the losses see the same
logits up to float rounding (BatchNorm in eval mode makes each sample's logits independent of its
batch). Distillers that read the teacher's stage outputs (SAMD's CAM, KD-SNN's features) need the
teacher itself and are refused; teacher-free ones have nothing to cache.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from seal_exp.config import ConfigError
from seal_exp.distillers.base import Distiller

log = logging.getLogger("seal_exp")

KEY = "trainer.cache_teacher_logits"
AUTO_LIMIT_BYTES = 2 * 2**30  # auto caches at most this much (float32 N×K, on the host)


def resolve(setting: bool | str, dataset: Any | None, distiller: Distiller | None) -> bool:
    """Whether this run may cache its teacher's logits, decided before any data is read.

    ``auto``: when the training pipeline draws nothing at random and the distiller has a teacher
    and reads only its logits (and, once the data is loaded, the cache pays: :func:`pays`);
    ``true`` where that cannot be done is refused, with the reasons. (``TrainerSettings`` has
    already refused any other value.)
    """
    if setting is False or distiller is None:
        return False
    reasons = []
    if distiller.teacher is None:
        reasons.append(f"{type(distiller).__name__} has no teacher")
    elif distiller.reads_teacher_features:
        reasons.append(f"{type(distiller).__name__} reads the teacher's stage outputs, not only its logits")
    if dataset is not None and dataset.augments_training:  # None: the benchmark's fixed batch
        reasons.append(
            "the dataset's training augmentation is on (dataset.augment), so the teacher sees a different "
            "sample every epoch"
        )
    if setting is True and reasons:
        raise ConfigError(
            f"{KEY}=true cannot be honoured: " + "; ".join(reasons) + f". Use {KEY}=auto or false."
        )
    return not reasons


def pays(setting: bool | str, samples: int, num_classes: int, teacher_forwards: int) -> bool:
    """Whether to cache, once the data is loaded: ``true`` always; ``auto`` when the cache saves
    teacher forwards (a run of one epoch, or one limited by ``limit_train_batches``, may not) and
    fits in 2 GiB of host memory (float32 ``N×K``).

    ``teacher_forwards``: the samples the teacher would see over the whole run without the cache.
    """
    if setting is True:
        return True
    size = samples * num_classes * 4
    if size > AUTO_LIMIT_BYTES:
        log.info(
            "teacher logits not cached: %d samples × %d classes take %.1f GiB (auto caches up to 2 GiB; "
            "%s=true caches anyway)",
            samples,
            num_classes,
            size / 2**30,
            KEY,
        )
        return False
    return teacher_forwards > samples


@torch.no_grad()
def compute(distiller: Distiller, loader: DataLoader, device: torch.device, progress: bool) -> torch.Tensor:
    """The teacher's logits ``[N, K]`` (float32, on the host) for every sample of ``loader``, in order.

    ``loader`` must serve the training part unshuffled, batched like training batches (time-major
    event frames included), so the teacher sees exactly what a training step would give it.
    """
    started = time.perf_counter()
    rows = []
    for x, _y in tqdm(loader, desc="teacher logits", leave=False, disable=None if progress else True):
        rows.append(distiller.teacher_logits(x.to(device, non_blocking=True)).float().cpu())
    logits = torch.cat(rows)
    log.info(
        "teacher logits cached for %d training samples in %.1f s (%s); the teacher is not run while training",
        len(logits),
        time.perf_counter() - started,
        KEY,
    )
    return logits


class WithTeacherLogits(Dataset):
    """``(x, y, teacher_logits)``: a training part with its samples' cached teacher logits.

    The third field reaches the distiller as ``distiller(x, y, teacher_logits)``.
    """

    def __init__(self, base: Dataset, logits: torch.Tensor) -> None:
        if len(base) != len(logits):  # type: ignore[arg-type]
            raise ValueError(f"{len(logits)} cached teacher logits for {len(base)} samples")  # type: ignore[arg-type]
        self.base, self.logits = base, logits

    def __len__(self) -> int:
        return len(self.logits)

    def __getitem__(self, index: int) -> tuple[Any, Any, torch.Tensor]:
        x, y = self.base[index]
        return x, y, self.logits[index]
