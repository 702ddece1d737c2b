"""uint8 image batches for pretraining, in an order a resumed run picks up mid-epoch.

The store holds each whole image squashed to a square of :func:`store_side` pixels, with its
width / height beside it, so the views' crops are drawn from the whole image in its own geometry
(``augment.py``; docs/pretrain.md, "Crops").

Epoch ``e`` visits the images in ``randperm(n)`` drawn from a generator seeded with ``(seed, e)``
(``images.datasets.epoch_order``, as fine-tuning's rows); run step ``k`` is batch
``k mod steps_per_epoch`` of epoch ``k // steps_per_epoch``. So the data order is a pure function
of the step: a resumed run (or a restarted worker pool) starts at its step without replaying
anything. With several processes each global batch of ``world × batch`` images is cut into one
slice per rank.
"""
from __future__ import annotations

import itertools
import math
import signal
import statistics
from collections.abc import Callable, Iterator
from typing import Any

import torch

from sslprobe.errors import SSLProbeError
from sslprobe.images.datasets import ImageDataset, collate, epoch_order, first_colour, long_sides, sample_indices
from sslprobe.images.folders import ImageSet
from sslprobe.images.transforms import WholeImage
from sslprobe.runtime.progress import progress_bar

RAM_CACHE_BYTES = 4 << 30  # decode once and keep in memory below this (Fashion-MNIST: 2.4 MB at 28 px)
STORE_SCALE = 2  # the store's side is at most this many times the training size (docs/pretrain.md, "Crops")
SIZE_SAMPLE = 64  # images whose headers choose the store's side


def store_side(images: ImageSet, *, size: int, channels: int = 3, ram_limit: int | None = None) -> int:
    """The store's side: the images' median longer side, within [size, STORE_SCALE × size], shrunk to fit in RAM.

    An image whose longer side fits is stored at full resolution (the shorter side is stretched,
    the crops undo it); no image is stored below the training size, so images smaller than it
    (Fashion-MNIST at 32 px) are stored as before. When a store of that side would not fit in
    ``ram_limit`` (default :data:`RAM_CACHE_BYTES`) the side shrinks towards ``size`` until it fits;
    below ``size`` the store streams from the workers instead.
    """
    sides = long_sides(images, sample_indices(len(images), SIZE_SAMPLE))
    want = int(statistics.median(sides)) if sides else size
    limit = RAM_CACHE_BYTES if ram_limit is None else ram_limit
    fit = math.isqrt(max(0, limit) // max(1, len(images) * channels))
    return max(size, min(want, STORE_SCALE * size, fit))


def _worker_ignores_stop_signals(_: int) -> None:
    # Ctrl-C reaches the whole process group: a worker that died of it would take the batch the
    # training process is waiting for, which then fails instead of saving a checkpoint. The
    # training process decides when to stop; its workers end with it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def check_grey(images: ImageSet) -> None:
    """Refuse ``--grayscale`` on colour images: any of :data:`SIZE_SAMPLE` images spread over the set in colour."""
    i = first_colour(images, sample_indices(len(images), SIZE_SAMPLE))
    if i is not None:
        raise SSLProbeError(f"--grayscale keeps one channel of grey images, but '{images.ids[i]}' is in colour (its "
                            "red, green and blue differ); drop --grayscale, or convert the images to grey first")


class _MappedSteps(torch.utils.data.Dataset):
    """Item ``step`` = ``(step, fn(uint8 batch of that step, step, aspect=its aspects))`` from the RAM cache, for
    DataLoader workers."""

    def __init__(self, ram: torch.Tensor, aspect: torch.Tensor, fn: Callable[..., Any], *, batch: int, rank: int,
                 world: int, seed: int):
        self.ram, self.aspect, self.fn, self.batch, self.rank, self.world = ram, aspect, fn, batch, rank, world
        self.seed = seed
        self.per_epoch = len(ram) // (batch * world)
        self._order: tuple[int, torch.Tensor | None] = (-1, None)  # one permutation per epoch, per worker

    def __getitem__(self, step: int) -> tuple[int, Any]:
        epoch, j = divmod(step, self.per_epoch)
        if self._order[0] != epoch:
            self._order = (epoch, epoch_order(len(self.ram), seed=self.seed, epoch=epoch))
        lo = j * self.batch * self.world + self.rank * self.batch
        idx = self._order[1][lo:lo + self.batch]
        return step, self.fn(self.ram[idx], step, aspect=self.aspect[idx])


class _Order:
    """Index lists for this rank, step after step from ``start`` on, forever (a DataLoader batch_sampler)."""

    def __init__(self, n: int, *, batch: int, rank: int, world: int, seed: int, start: int):
        self.n, self.batch, self.rank, self.world, self.seed, self.start = n, batch, rank, world, seed, start
        self.per_epoch = n // (batch * world)

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start
        while True:
            epoch, k = divmod(step, self.per_epoch)
            order = epoch_order(self.n, seed=self.seed, epoch=epoch)
            gb = self.batch * self.world
            for j in range(k, self.per_epoch):
                lo = j * gb + self.rank * self.batch
                yield order[lo:lo + self.batch].tolist()
            step = (epoch + 1) * self.per_epoch


class BatchSource:
    """uint8 (B, C, S, S) batches and their aspects (B,) on the device: from RAM when the set fits, else streamed.

    ``store`` is the side S (:func:`store_side`); each image is stored whole, squashed to the square,
    and its width / height goes beside it. ``channels`` 1 stores grey images in one channel.
    ``batch`` is per process; it is capped so that one global batch fits in the data.
    ``skipped`` collects (index, reason) of unreadable images (RAM: all at once; streaming: as met).
    """

    def __init__(self, images: ImageSet, *, store: int, batch: int, device: torch.device, seed: int, workers: int,
                 rank: int = 0, world: int = 1, show_progress: bool = True, ram_limit: int | None = None,
                 channels: int = 3):
        self.images, self.device, self.seed, self.workers = images, device, seed, workers
        self.rank, self.world, self.store, self.channels = rank, world, store, channels
        # Decode and squash the whole image, nothing else in the workers: the random views are made on the device.
        tf = WholeImage(side=store, channels=channels)
        self.dataset = ImageDataset(images, tf, draft=tf.draft, aspect=True)
        self.skipped: list[tuple[int, str]] = []
        self.ram: torch.Tensor | None = None
        self.aspect: torch.Tensor | None = None  # (N,) width / height of the images in the RAM cache
        n = len(images)
        if n * channels * store * store <= (RAM_CACHE_BYTES if ram_limit is None else ram_limit):
            self.ram, self.aspect = self._decode_all(show_progress and rank == 0)
            n = len(self.ram)
        self.batch = min(batch, n // world)
        if self.batch < 2:
            raise SSLProbeError(f"{n} readable images cannot give each of {world} processes a batch of 2; "
                                "BYOL's BatchNorm needs at least 2 images per process")
        self.n = n

    @property
    def steps_per_epoch(self) -> int:
        return self.n // (self.batch * self.world)

    def _decode_all(self, show_progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
        from torch.utils.data import DataLoader

        parts, aspects = [], []
        loader = DataLoader(self.dataset, batch_size=256, num_workers=self.workers, collate_fn=collate)
        with progress_bar(show_progress) as bar:
            task = bar.add_task("decode", total=len(self.images))
            for b in loader:
                self.skipped.extend(b.skipped)
                if len(b.indices):
                    parts.append(b.images)
                    aspects.append(b.aspect)
                bar.advance(task, len(b.indices) + len(b.skipped))
        if not parts:
            raise SSLProbeError(f"no readable image in '{self.images.source}' ({len(self.skipped)} skipped); "
                                "see the reasons with `sslprobe extract`")
        ram, aspect = torch.cat(parts), torch.cat(aspects)
        if self.device.type == "cuda":
            return ram.to(self.device), aspect.to(self.device)
        return ram, aspect

    def batches(self, *, start: int) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """(step, uint8 batch, its aspects), both on the device, from run step ``start`` on, without end."""
        if self.ram is not None:
            yield from self._ram_batches(start)
            return
        from torch.utils.data import DataLoader

        order = _Order(self.n, batch=self.batch, rank=self.rank, world=self.world, seed=self.seed, start=start)
        step = start

        # One loader for the whole run: workers persist and prefetch across epoch boundaries.
        loader = DataLoader(self.dataset, batch_sampler=order, num_workers=self.workers, collate_fn=collate,
                            pin_memory=self.device.type == "cuda", prefetch_factor=4 if self.workers else None,
                            worker_init_fn=_worker_ignores_stop_signals)
        for b in loader:
            self.skipped.extend(b.skipped)
            if len(b.indices) >= 2:  # BatchNorm needs at least 2 samples; a step with fewer is skipped
                yield step, b.images.to(self.device, non_blocking=True), b.aspect.to(self.device, non_blocking=True)
            step += 1

    @property
    def can_map(self) -> bool:
        """Whether :meth:`mapped` can run: the images are cached in host memory and there are workers."""
        return self.ram is not None and self.ram.device.type == "cpu" and self.workers >= 1

    def mapped(self, fn: Callable[..., Any], *, start: int) -> Iterator[tuple[int, Any]]:
        """(step, fn(uint8 batch, step, aspect=its aspects)) from run step ``start`` on, ``fn`` run in the workers.

        The batches are those :meth:`batches` gives (same order, same rank slice), so a pure ``fn``
        (the CPU view maker) returns what it would in this process while the model step runs beside
        it. Needs :attr:`can_map`; ``fn`` must be picklable where workers are spawned.
        """
        from torch.utils.data import DataLoader

        if not self.can_map:
            raise SSLProbeError("BatchSource.mapped needs the images cached in host memory and at least one worker")
        ds = _MappedSteps(self.ram, self.aspect, fn, batch=self.batch, rank=self.rank, world=self.world, seed=self.seed)
        loader = DataLoader(ds, batch_size=None, sampler=itertools.count(start), num_workers=self.workers,
                            prefetch_factor=2, worker_init_fn=_worker_ignores_stop_signals)
        yield from loader

    def _ram_batches(self, start: int) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        # Same order as _Order, but the permutation goes to the device once per epoch: a per-step
        # host→GPU index copy would make the host wait for the GPU every step.
        spe, gb, step = self.steps_per_epoch, self.batch * self.world, start
        while True:
            epoch, k = divmod(step, spe)
            order = epoch_order(self.n, seed=self.seed, epoch=epoch).to(self.ram.device)
            for j in range(k, spe):
                lo = j * gb + self.rank * self.batch
                idx = order[lo:lo + self.batch]
                yield step, self.ram[idx], self.aspect[idx]
                step += 1
