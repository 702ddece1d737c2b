"""One process per device under ``torchrun``, for pretraining and extraction alike.

``torchrun --nproc_per_node N -m sslprobe pretrain|extract …`` sets WORLD_SIZE/RANK/LOCAL_RANK.
``env_dist`` reads them, once, for every caller, and imports no torch (this module imports torch
only inside the functions that talk to the process group), so the CLI can ask ``env_rank`` which
rank it is without paying for torch. With WORLD_SIZE > 1, ``setup`` joins a process group (NCCL on
CUDA, gloo on CPU) on the rank's own GPU. Pretraining wraps the model in DDP (``wrap``), shards each
global batch by rank (``pretraining/batches.py``) and takes stop/save decisions together
(``agree``); extraction embeds every WORLD_SIZE-th file and collects the rows on rank 0
(``gather``, ``broadcast``). Rank 0 alone writes files. BatchNorm statistics are synchronised
across ranks (SyncBatchNorm) on CUDA only: PyTorch's SyncBatchNorm has no CPU kernel, so on gloo
each rank normalises over its own slice, and pretraining's config.json says so.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from sslprobe.errors import SSLProbeError

if TYPE_CHECKING:
    import torch
    from torch import nn

T = TypeVar("T")


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


def _env_int(name: str, default: int | None) -> int:
    value = os.environ.get(name, "")
    if value == "" and default is not None:
        return default
    try:
        return int(value)
    except ValueError:
        shown = f"{name}='{value}' is not a number" if value else f"{name} is not set"
        raise SSLProbeError(f"{shown}; launch with torchrun") from None


def env_dist() -> Dist:
    """The place torchrun gave this process (``Dist()`` when not launched by torchrun); no process group yet."""
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return Dist()
    return Dist(rank=_env_int("RANK", None), world=world, local_rank=_env_int("LOCAL_RANK", 0))


def env_rank() -> int:
    """RANK as torchrun sets it (0 when not launched by torchrun with WORLD_SIZE > 1)."""
    return env_dist().rank


def env_world() -> int:
    """WORLD_SIZE as torchrun sets it (1 when not launched by torchrun)."""
    return env_dist().world


def setup(device: torch.device) -> tuple[Dist, torch.device]:
    """Join the process group when launched with WORLD_SIZE > 1; returns (Dist, this rank's device)."""
    dist = env_dist()
    if dist.world <= 1:
        return dist, device
    import torch
    import torch.distributed as td

    if device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    owns = not td.is_initialized()
    if owns:
        td.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(rank=dist.rank, world=dist.world, local_rank=dist.local_rank, owns_group=owns), device


def teardown(dist: Dist) -> None:
    """Leave the process group this module joined."""
    if not dist.owns_group:
        return
    import torch.distributed as td

    if td.is_initialized():
        td.destroy_process_group()


def sync_batchnorm_supported(device: torch.device) -> bool:
    """SyncBatchNorm runs only on GPU-like devices (its CPU path raises in PyTorch)."""
    return device.type != "cpu"


def wrap(net: nn.Module, dist: Dist, device: torch.device) -> nn.Module:
    """DDP around the BYOL module (SyncBatchNorm first where supported); unchanged when world == 1."""
    if dist.world <= 1:
        return net
    from torch import nn
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
    import torch
    import torch.distributed as td

    t = torch.tensor([1.0 if f else 0.0 for f in flags], device=device)
    td.all_reduce(t, op=td.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def barrier(dist: Dist) -> None:
    """Wait for every rank (no-op alone)."""
    if dist.world > 1:
        import torch.distributed as td

        td.barrier()


def gather(obj: T, dist: Dist) -> list[T] | None:
    """Every rank's ``obj`` (pickled) on rank 0, in rank order; None on the other ranks."""
    if dist.world <= 1:
        return [obj]
    import torch.distributed as td

    out: list[T] | None = [None] * dist.world if dist.main else None  # type: ignore[list-item]
    td.gather_object(obj, out, dst=0)
    return out


def broadcast(obj: T, dist: Dist) -> T:
    """Rank 0's ``obj`` (pickled) on every rank."""
    if dist.world <= 1:
        return obj
    import torch.distributed as td

    box = [obj]
    td.broadcast_object_list(box, src=0)
    return box[0]
