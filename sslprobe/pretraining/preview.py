"""`sslprobe views`: the view pairs a pretraining run would draw, as a figure to look at before the run.

Everything comes from the pieces ``pretrain()`` itself uses, with the same options: the backbone's
training size, the store (:func:`batches.store_side`, ``BatchSource``: each whole image squashed to
the square, its aspect beside it), the batch of run step ``step`` on rank 0 (the data order is a
function of the step) and :class:`trainstep.ViewMaker` seeded by (seed, rank 0, step). The store is
streamed, so only that step's batch is decoded; its images are the run's whenever every file is
readable (the RAM store leaves unreadable files out of the order). The views are shown before
normalisation (mean 0, std 1: the same draws, the same pixels).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sslprobe.backbone import create_backbone
from sslprobe.config.pretrain import PreviewConfig
from sslprobe.errors import SSLProbeError
from sslprobe.images.folders import open_images
from sslprobe.pretraining.augment import ViewConfig, byol_views
from sslprobe.pretraining.batches import BatchSource, check_grey, store_side
from sslprobe.pretraining.trainstep import ViewMaker


@dataclass(frozen=True)
class ViewPairs:
    """The first ``n`` images of a step's batch as the store holds them, and their two views, in [0, 1]."""

    stored: torch.Tensor  # (n, C, S, S) uint8: the whole image squashed to the store's square
    aspect: torch.Tensor  # (n,) width / height of the originals
    view1: torch.Tensor  # (n, C, size, size) float32 in [0, 1]
    view2: torch.Tensor
    step: int
    store_size: int
    image_size: int
    views: tuple[ViewConfig, ViewConfig]


def draw_views(config: PreviewConfig | str | os.PathLike, /, **options: Any) -> ViewPairs:
    """The views ``pretrain()`` with the same options draws at run step ``config.step``, for the batch's first ``n``.

    ``config``: a :class:`~sslprobe.config.pretrain.PreviewConfig`, or the data folder with its options
    as keywords (augmentations as ``pretrain()`` takes them). The batch is decoded in this process (no
    workers: they would decode batches ahead for nothing).
    """
    c = PreviewConfig.of(config, **options)
    data, n, step, seed, grayscale = c.data, c.n, c.step, c.seed, c.grayscale
    images = open_images(data, image_column=c.image_column, label_column=c.label_column)
    if len(images) < 2:
        raise SSLProbeError(f"'{data}' has {len(images)} image; BYOL needs at least 2 (ideally thousands)")
    if grayscale:
        check_grey(images)
    channels = 1 if grayscale else 3
    _, spec = create_backbone(c.model, weights="random", init="train", image_size=c.image_size, seed=seed,
                              in_chans=channels)
    views = byol_views(spec.image_size, c.augment)
    side = store_side(images, size=spec.image_size, channels=channels)
    source = BatchSource(images, store=side, batch=c.batch_size, device=torch.device("cpu"), seed=seed, workers=0,
                         show_progress=False, ram_limit=0, channels=channels)
    batches = source.batches(start=step)
    try:
        s, x, aspect = next(batches)
    finally:
        batches.close()
    make = ViewMaker(views, spec.image_size, (0.0,) * channels, (1.0,) * channels, seed=seed, rank=0)
    v1, v2 = make(x, s, aspect=aspect)
    k = min(n, x.shape[0])
    return ViewPairs(stored=x[:k], aspect=aspect[:k], view1=v1[:k], view2=v2[:k], step=s, store_size=side,
                     image_size=spec.image_size, views=views)


def preview_views(config: PreviewConfig | str | os.PathLike, /, **options: Any) -> dict[str, Any]:
    """Draw :func:`draw_views` into the PNG ``config.out``: one row per image, stored image and its two views.

    Returns what was drawn: the file, the step, the store's side, the training size, the pairs shown.
    """
    c = PreviewConfig.of(config, **options)
    if c.out is None:
        raise SSLProbeError("preview_views needs out=FILE.png (draw_views returns the views without a file)")
    try:
        import matplotlib.figure  # noqa: F401  (drawn through Figure objects, as every sslprobe plot: plots.py)
    except ImportError:
        raise SSLProbeError("`sslprobe views` draws with matplotlib: pip install 'sslprobe[plots]'") from None
    from sslprobe.plots import views_png

    pairs = draw_views(c)
    out = c.out

    def hwc(t: torch.Tensor) -> Any:
        return t.permute(0, 2, 3, 1).numpy()

    views_png(hwc(pairs.stored.float() / 255), pairs.aspect.tolist(), hwc(pairs.view1), hwc(pairs.view2), Path(out),
              title=f"step {pairs.step}: store {pairs.store_size} px, views {pairs.image_size} px")
    return {"out": str(out), "pairs": int(pairs.view1.shape[0]), "step": pairs.step, "store_size": pairs.store_size,
            "image_size": pairs.image_size}
