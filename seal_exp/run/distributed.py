"""Data-parallel training: one process per GPU, started by ``torchrun`` or by submitit tasks.

The rank and world size come from the launch environment (torchrun's ``RANK``/``WORLD_SIZE``/
``LOCAL_RANK``, or submitit's job environment, exported the same way); nothing is configured by
hand. ``trainer.batch_size`` stays the global batch, split evenly over the ranks, so a recipe means
the same on 1 or 8 GPUs. Rank 0 alone tracks, writes checkpoints and summaries; decisions that must
agree (skip, resume, stop at the pre-timeout signal, non-finite loss) are taken once and shared, and
so is the model: after every epoch rank 0's weights and BatchNorm statistics are copied to every rank
(:meth:`Distributed.broadcast_state`), so what is evaluated, selected, saved and used is one state.

Control messages travel over a CPU (gloo) group, so agreeing on "stop now?" at every step never
synchronises the GPU.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LaunchEnvironment:
    """Where this process sits in a multi-process launch."""

    rank: int
    world_size: int
    local_rank: int
    launcher: str  # "torchrun" | "submitit"


def launch_environment() -> LaunchEnvironment | None:
    """The multi-process launch this process belongs to, or None for a single process.

    torchrun sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; a submitit job with several tasks
    (``hydra/launcher=slurm_ddp``) has them exported from its job environment, with the master
    address and a port derived from the job id.
    """
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        world = int(os.environ["WORLD_SIZE"])
        if world <= 1:
            return None
        launcher = "submitit" if os.environ.get("SUBMITIT_EXECUTOR") else "torchrun"
        rank = int(os.environ["RANK"])
        return LaunchEnvironment(rank, world, int(os.environ.get("LOCAL_RANK", rank)), launcher)
    if os.environ.get("SUBMITIT_EXECUTOR"):
        import submitit

        job = submitit.JobEnvironment()
        if job.num_tasks <= 1:
            return None
        env = submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        return LaunchEnvironment(env.rank, env.world_size, env.local_rank, "submitit")
    return None


@dataclass
class Distributed:
    """This process's rank in the run; a world of one makes every operation a no-op."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launcher: str = "none"
    control: Any = field(default=None, repr=False)  # the CPU (gloo) group for control messages

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` holds on any rank (CPU only, no GPU synchronisation)."""
        if not self.enabled:
            return bool(flag)
        t = torch.tensor([int(bool(flag))])
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.control)
        return bool(t.item())

    def min_int(self, value: int) -> int:
        """The smallest of every rank's ``value`` (CPU only)."""
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.long)
        dist.all_reduce(t, op=dist.ReduceOp.MIN, group=self.control)
        return int(t.item())

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over the ranks in place (on its device) and return it."""
        if self.enabled:
            dist.all_reduce(tensor)
        return tensor

    def share(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (pickled; for small decisions and paths)."""
        if not self.enabled:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0, group=self.control)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj, group=self.control)
        return out

    def broadcast_state(self, module: nn.Module) -> None:
        """Copy rank 0's parameters and buffers into ``module`` on every rank, in place.

        DDP keeps the parameters equal, but each rank's BatchNorm running statistics follow its own
        shard (DDP hands rank 0's to the others only at the start of the next forward pass). Without
        this the ranks would evaluate, select and go on using models that differ from each other and
        from the one rank 0 saves. One broadcast per device and dtype; values are copied bit for bit.
        """
        if not self.enabled:
            return
        by_kind: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
        for tensor in (*module.parameters(), *module.buffers()):
            by_kind.setdefault((tensor.device, tensor.dtype), []).append(tensor)
        with torch.no_grad():
            for (device, _), tensors in by_kind.items():
                flat = torch.cat([t.detach().reshape(-1) for t in tensors])  # logical order, any layout
                # CUDA tensors over the process group's own backend; CPU ones over the gloo group
                dist.broadcast(flat, src=0, group=None if device.type == "cuda" else self.control)
                if self.is_main:
                    continue
                offset = 0
                for t in tensors:
                    t.copy_(flat[offset : offset + t.numel()].view_as(t))
                    offset += t.numel()

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier(group=self.control)

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


SINGLE = Distributed()


def resolve_backend(backend: str, device: torch.device) -> str:
    """``auto``: NCCL for CUDA devices, gloo otherwise (CPU runs and the tests)."""
    if backend != "auto":
        return backend
    return "nccl" if device.type == "cuda" else "gloo"


def start(
    env: LaunchEnvironment | None, device: torch.device, backend: str, timeout_min: float
) -> Distributed:
    """Join the process group of ``env`` (or return the single-process world when ``env`` is None)."""
    if env is None:
        return SINGLE
    if device.type == "cuda":
        torch.cuda.set_device(device)
    timeout = datetime.timedelta(minutes=timeout_min)
    chosen = resolve_backend(backend, device)
    dist.init_process_group(backend=chosen, timeout=timeout)
    control = dist.new_group(backend="gloo", timeout=timeout) if chosen != "gloo" else dist.group.WORLD
    log.info(
        "rank %d of %d (local rank %d, %s, backend %s, device %s)",
        env.rank,
        env.world_size,
        env.local_rank,
        env.launcher,
        chosen,
        device,
    )
    return Distributed(env.rank, env.world_size, env.local_rank, env.launcher, control)


def rank_device(requested: torch.device, env: LaunchEnvironment | None) -> torch.device:
    """Each rank's device: ``cuda:<local rank>`` when the run is on CUDA, else the requested one."""
    if env is None or requested.type != "cuda":
        return requested
    return torch.device("cuda", env.local_rank)
