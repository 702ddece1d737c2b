"""Several layers' cache stores read and written as one store of wide rows (``extract --layers``).

One forward pass yields every asked-for layer of an image side by side, (B, ΣD); each layer keeps
its own store, under the fingerprint a single-layer extraction of it has (``cache.Fingerprint``'s
``layer``), so a later run asking for any subset — ``--layers last`` included — reads the same rows.
An image counts as cached only when every layer's store has it; otherwise the pass computes all of
its layers at once (the forward pass is the cost, not the pooling) and each store is written only
the rows it lacks. The pass (``cached_pass``), the shard writer and the ranks' assembly see one
store and one row width, as with a single layer.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from sslprobe.cache import Store


class LayeredStore:
    """``stores[i]`` holds columns ``widths[i]`` of the wide rows, in order; ``shards[i]``: shards written to it."""

    def __init__(self, stores: Sequence[Store], widths: Sequence[int]) -> None:
        if len(stores) != len(widths) or len(stores) < 2:
            raise ValueError(f"{len(stores)} stores for {len(widths)} layer widths")
        self.stores, self.widths = tuple(stores), tuple(int(w) for w in widths)
        self.shards = [0] * len(self.stores)

    @property
    def invalid(self) -> list[str]:
        return [name for s in self.stores for name in s.invalid]

    def refresh(self) -> None:
        for s in self.stores:
            s.refresh()

    def keys(self) -> set[bytes]:
        """The keys every layer has: only those rows can be read back without a forward pass."""
        return set.intersection(*(s.keys() for s in self.stores))

    def get(self, keys: Sequence[bytes]) -> tuple[torch.Tensor, list[bool]]:
        """Wide rows (found, ΣD) for the keys every layer has (a row of a failed shard in any layer reads as
        missing), and the found-mask."""
        got = [s.get(keys) for s in self.stores]
        found = [all(f[i] for _, f in got) for i in range(len(keys))]
        if not any(found):
            return torch.empty(0, 0), found
        cols = []
        for rows, f in got:
            at = torch.tensor(f).cumsum(0) - 1  # position of key i among this store's found rows
            cols.append(rows[at[torch.tensor(found)]])
        return torch.cat(cols, 1), found

    def write_shard(self, keys: Sequence[bytes], features: torch.Tensor, *, tag: str = "") -> None:
        """Each layer's columns of ``features`` (N, ΣD) into its store, for the keys that store lacks."""
        for i, (store, cols) in enumerate(zip(self.stores, features.split(self.widths, dim=1))):
            new = [j for j, k in enumerate(keys) if k not in store]
            if new:
                store.write_shard([keys[j] for j in new], cols[new], tag=tag)
                self.shards[i] += 1
