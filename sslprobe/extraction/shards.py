"""Cache writes off the compute thread: the shard writer of ``extract``."""
from __future__ import annotations

import queue
import threading
import time
from collections.abc import Sequence

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
        self._q: queue.Queue[tuple[list[bytes], torch.Tensor] | None] = queue.Queue(maxsize=4)
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
