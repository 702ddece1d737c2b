"""Cache writes off the compute thread, and the rank bookkeeping of a torchrun extract."""
from __future__ import annotations

import os
import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from sslprobe.cache import Store


class ShardWriter:
    """Buffer computed rows and write a shard every ``rows`` rows on a background thread.

    The forward pass never waits for the disk (safetensors serialisation, fsync, rename), and a run
    killed at any moment loses at most the rows not yet in a written shard. ``close`` writes the rest
    and re-raises a write error from the thread. With no store it only counts.
    """

    def __init__(self, store: Store | None, *, rows: int = 4096, tag: str = "r0") -> None:
        self.store, self.rows, self.tag = store, max(1, rows), tag
        self.keys: list[bytes] = []
        self.feats: list[torch.Tensor] = []
        self.pending = 0
        self.shards = 0
        self.seconds = 0.0
        self._q: queue.Queue = queue.Queue(maxsize=4)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="sslprobe-shard-writer", daemon=True)
        if store is not None:
            self._thread.start()

    def add(self, keys: Sequence[bytes], feats: torch.Tensor) -> None:
        """Queue rows (``feats`` (B, D) on the CPU, already in the store dtype)."""
        if self.store is None or not len(keys):
            return
        if self._error is not None:
            raise self._error
        self.keys.extend(keys)
        self.feats.append(feats)
        self.pending += len(keys)
        if self.pending >= self.rows:
            self._submit()

    def _submit(self) -> None:
        if self.pending:
            self._q.put((self.keys, torch.cat(self.feats)))
            self.keys, self.feats, self.pending = [], [], 0

    def _run(self) -> None:
        import time

        while True:
            item = self._q.get()
            if item is None:
                return
            if self._error is None:
                try:
                    t = time.perf_counter()
                    self.store.write_shard(item[0], item[1], tag=self.tag)
                    self.shards += 1
                    self.seconds += time.perf_counter() - t
                except BaseException as e:  # noqa: BLE001 - surfaced on the compute thread at the next add/close
                    self._error = e

    def close(self) -> None:
        """Write what is buffered, wait for the thread, raise its error if it had one."""
        if self.store is None:
            return
        self._submit()
        self._q.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error


@dataclass
class Ranks:
    """This process's place in a torchrun job (world 1 when not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` on rank 0 (None elsewhere)."""
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world if self.main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def broadcast(self, obj: Any) -> Any:
        if self.world == 1:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        if self.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()


def join_ranks(*, cuda: bool) -> Ranks:
    """Join the torchrun process group when ``WORLD_SIZE`` > 1 (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return Ranks()
    import torch.distributed as dist

    owns = False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
        owns = True
    return Ranks(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0") or 0), owns)
