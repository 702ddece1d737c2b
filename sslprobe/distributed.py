"""torch.distributed for pretraining: one process per device, started by ``torchrun``.

``torchrun --nproc_per_node N -m sslprobe pretrain …`` sets WORLD_SIZE/RANK/LOCAL_RANK; with
WORLD_SIZE > 1 the run joins a process group (NCCL on CUDA, gloo on CPU), wraps the model in DDP
and shards each global batch by rank (``batches.py``). Rank 0 alone writes files. BatchNorm
statistics are synchronised across ranks (SyncBatchNorm) on CUDA only: PyTorch's SyncBatchNorm has
no CPU kernel, so on gloo each rank normalises over its own slice, and config.json says so.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from sslprobe.errors import SSLProbeError


@dataclass(frozen=True)
class Dist:
    """This process's place in the run; ``world == 1`` means no process group."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False  # True when setup() created the process group (and teardown() ends it)

    @property
    def main(self) -> bool:
        return self.rank == 0


def env_world() -> int:
    """WORLD_SIZE as torchrun sets it (1 when not launched by torchrun)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise SSLProbeError(f"WORLD_SIZE='{os.environ['WORLD_SIZE']}' is not a number; launch with torchrun") from None


def setup(device: torch.device) -> tuple[Dist, torch.device]:
    """Join the process group when launched with WORLD_SIZE > 1; returns (Dist, this rank's device)."""
    import torch.distributed as td

    world = env_world()
    if world <= 1:
        return Dist(), device
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    owns = not td.is_initialized()
    if owns:
        td.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(rank=rank, world=world, local_rank=local, owns_group=owns), device


def teardown(dist: Dist) -> None:
    """Leave the process group this module joined."""
    import torch.distributed as td

    if dist.owns_group and td.is_initialized():
        td.destroy_process_group()


def sync_batchnorm_supported(device: torch.device) -> bool:
    """SyncBatchNorm runs only on GPU-like devices (its CPU path raises in PyTorch)."""
    return device.type != "cpu"


def wrap(net: nn.Module, dist: Dist, device: torch.device) -> nn.Module:
    """DDP around the BYOL module (SyncBatchNorm first where supported); unchanged when world == 1."""
    if dist.world <= 1:
        return net
    from torch.nn.parallel import DistributedDataParallel as DDP

    if sync_batchnorm_supported(device):
        net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    ids = [device.index] if device.type == "cuda" else None
    # DDP's default buffer sync: rank 0's BN running statistics are broadcast at every forward, so
    # the checkpoint rank 0 writes is what every rank continues from.
    return DDP(net, device_ids=ids)


def agree(flags: list[bool], dist: Dist, device: torch.device) -> list[bool]:
    """Each flag True on every rank when any rank says True (stop/save decisions must be collective)."""
    if dist.world <= 1:
        return list(flags)
    import torch.distributed as td

    t = torch.tensor([1.0 if f else 0.0 for f in flags], device=device)
    td.all_reduce(t, op=td.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def barrier(dist: Dist) -> None:
    """Wait for every rank (no-op alone)."""
    if dist.world > 1:
        import torch.distributed as td

        td.barrier()
