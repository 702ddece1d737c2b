"""One pass of ``extract`` over its images: read back what the cache has, embed what it lacks, queue new rows."""
from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch.utils.data import DataLoader

from sslprobe.extraction.embed import FeatureModel, forward_context
from sslprobe.extraction.hashed import HashedImages, KeyedBatch, collate_keyed
from sslprobe.extraction.shards import ShardWriter
from sslprobe.images.decode import BadImageError, decode_image, gpu_decode
from sslprobe.images.folders import ImageSet
from sslprobe.images.transforms import Uint8Transform

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from sslprobe.cache import Store


def _embed_batch(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """One forward pass, (B, 3, H, W) uint8 on the device → (B, D) float32 on the CPU."""
    return model(x).float().cpu()


@dataclass
class Rows:
    """This rank's rows by file index (read back or computed), and what the passes counted on the way."""

    have: torch.Tensor  # (N,) bool
    keys: list[bytes | None]  # the cache key of each row in ``have``
    feats: torch.Tensor | None = None  # (N, D) in the store dtype, allocated once D is known
    hits: int = 0
    misses: int = 0
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (file index, reason)

    @classmethod
    def empty(cls, n: int) -> Rows:
        return cls(have=torch.zeros(n, dtype=torch.bool), keys=[None] * n)

    def put(self, idx: list[int], keys: list[bytes], rows: torch.Tensor) -> None:
        if self.feats is None:  # allocated once the width is known, outside inference mode
            self.feats = torch.empty(len(self.have), rows.shape[1], dtype=rows.dtype)
        self.feats[idx] = rows.to(self.feats.dtype)
        self.have[idx] = True
        for i, k in zip(idx, keys):
            self.keys[i] = k


class Embedder:
    """Passes over file indices into ``rows``: cached rows read back, the others embedded and queued for the cache.

    ``gpu``: JPEGs leave the workers undecoded and are decoded on ``device`` (nvJPEG), with the CPU
    decoder as the fallback for the files nvJPEG cannot take.
    """

    def __init__(self, model: FeatureModel, *, transform: Uint8Transform, gpu: bool, rows: Rows, writer: ShardWriter,
                 device: torch.device, dtype: str, batch_size: int, workers: int) -> None:
        self.model, self.transform, self.gpu = model, transform, gpu
        self.rows, self.writer, self.device = rows, writer, device
        self.store_dtype = getattr(torch, dtype)
        self.batch_size, self.workers = batch_size, workers

    def run_pass(self, images: ImageSet, order: list[int], *, store: Store | None, bar: Progress,
                 task: TaskID | None) -> list[int]:
        """Embed ``order``; returns the indices whose cached rows failed validation.

        ``bar``: ``runtime.progress.progress_bar``'s (a rich Progress or its silent stand-in); ``task``: its line,
        None to leave it alone.
        """
        retry: list[int] = []
        t0, done = time.perf_counter(), 0
        for b in self._loader(images, order, known=store.keys() if store is not None else frozenset()):
            self.rows.skipped.extend(b.skipped)
            if b.cached_idx:
                retry += self._read_back(b, store)
            if b.images is not None:
                self._embed(b.images, b.new_idx, b.new_keys)
            if b.jpeg_idx:
                self._embed_jpegs(b)
            done += len(b)
            if task is not None:
                rate = done / max(time.perf_counter() - t0, 1e-9)
                bar.update(task, advance=len(b), description=f"extract {rate:,.0f} img/s")
        return retry

    def _loader(self, images: ImageSet, order: list[int], *, known: Collection[bytes]) -> DataLoader:
        ds = HashedImages(images, self.transform, order=order, known=known, draft=self.transform.draft,
                          raw_jpeg=self.gpu)
        return DataLoader(ds, batch_size=self.batch_size, shuffle=False, collate_fn=collate_keyed,
                          num_workers=self.workers, pin_memory=self.device.type == "cuda",
                          prefetch_factor=4 if self.workers else None)

    def _read_back(self, b: KeyedBatch, store: Store) -> list[int]:
        """The batch's cached rows into ``rows``; returns the indices whose shard failed validation."""
        rows, found = store.get(b.cached_keys)
        ok = [k for k, f in enumerate(found) if f]
        if ok:
            self.rows.put([b.cached_idx[k] for k in ok], [b.cached_keys[k] for k in ok], rows)
            self.rows.hits += len(ok)
        return [i for i, f in zip(b.cached_idx, found) if not f]

    def _embed(self, x: torch.Tensor, idx: list[int], keys: list[bytes]) -> None:
        x = x.to(self.device, non_blocking=True)
        if x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)  # (B, 3, H, W), NHWC in memory
        with forward_context(self.device):
            f = _embed_batch(self.model, x)  # (B, D)
        f = f.to(self.store_dtype)
        self.rows.put(idx, keys, f)
        self.writer.add(keys, f)
        self.rows.misses += len(idx)

    def _embed_jpegs(self, b: KeyedBatch) -> None:
        imgs, failed = gpu_decode(b.jpeg_data, device=self.device, transform=self.transform)
        good = [k for k in range(len(b.jpeg_idx)) if k not in set(failed)]
        if imgs is not None:
            self._embed(imgs, [b.jpeg_idx[k] for k in good], [b.jpeg_keys[k] for k in good])
        for k in failed:  # nvJPEG could not: the CPU decoder decides (and words any skip reason)
            try:
                x = self.transform(decode_image(b.jpeg_data[k].numpy().tobytes(), draft=self.transform.draft))
            except BadImageError as e:
                self.rows.skipped.append((b.jpeg_idx[k], str(e)))
                continue
            self._embed(x[None], [b.jpeg_idx[k]], [b.jpeg_keys[k]])
