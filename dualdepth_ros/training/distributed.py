"""Multi-process training with ``torchrun`` (DDP): one process per GPU, or gloo on CPUs.

``torchrun --nproc_per_node=N -m dualdepth_ros.cli train …`` sets ``RANK``, ``WORLD_SIZE``
and ``LOCAL_RANK``; :func:`init` reads them. Without them training runs in one process.
Multi-machine runs use torchrun's ``--nnodes``/``--rdzv-endpoint`` as usual.
"""

from __future__ import annotations

import dataclasses
import os

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "init", "shutdown", "all_reduce_mean"]


@dataclasses.dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init(device: str = "auto") -> DistInfo:
    """Initialise the process group from torchrun's environment (no-op for one process).

    ``device`` is ``auto`` (CUDA when available), ``cuda`` or ``cpu``. Uses NCCL on CUDA and
    gloo on CPU.
    """
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=dev)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Average a tensor over all processes (identity for one process)."""
    if not info.enabled:
        return value
    value = value.detach().clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / info.world_size
