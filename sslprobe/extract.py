"""Embed a folder of images through a frozen backbone and write a feature set the probe reads.

Output: ``out/features.safetensors`` (``features`` (N, D) float32, ``labels`` (N,) int64, −1 where
unlabeled) and ``out/manifest.json`` (row-order paths, classes, model, weights, preprocessing,
counts, skipped files with reasons). ``weights="pixels"`` embeds the resized pixels themselves —
the raw-pixel baseline through the same path.
"""
from __future__ import annotations

import hashlib
import os
import platform
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from sslprobe import __version__
from sslprobe.errors import SSLProbeError
from sslprobe.fileio import atomic_path, write_json
from sslprobe.runtime import default_workers, pick_device, progress_bar

FEATURES = "features.safetensors"
MANIFEST = "manifest.json"


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class _Pixels(torch.nn.Module):
    """The raw-pixel "backbone": flatten the (already resized, un-normalised) image."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


def _pixel_transform(size: int):
    from torchvision import transforms as T

    return T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size), T.ToTensor()])


def extract(
    data: str | os.PathLike,
    *,
    out: str | os.PathLike,
    model: str | None = None,
    weights: str = "random",
    image_size: int | None = None,
    batch_size: int = 128,
    seed: int = 0,
    device: str = "auto",
    workers: int | None = None,
    allow_pickle: bool = False,
    image_column: str | None = None,
    label_column: str | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Embed every readable image at ``data``; bad files are skipped and listed. Returns the manifest.

    ``weights``: ``random`` (seeded by ``seed``), ``pretrained`` (timm hub), ``pixels`` or a path to
    a .safetensors backbone (sslprobe's own need no ``model``).
    """
    from sslprobe.data import ImageDataset, collate, open_images, skipped_report

    if batch_size < 1:
        raise SSLProbeError(f"--batch-size must be ≥ 1 (got {batch_size})")
    if image_size is not None and image_size < 1:
        raise SSLProbeError(f"--image-size must be ≥ 1 (got {image_size})")
    t0 = time.perf_counter()
    images = open_images(data, image_column=image_column, label_column=label_column)
    dev = pick_device(device)
    weights_info: dict[str, Any] = {"weights": weights}
    if weights == "pixels":
        size = image_size or 32
        net, transform = _Pixels(), _pixel_transform(size)
        preprocessing = {"image_size": size, "interpolation": "bicubic", "crop_pct": 1.0, "mean": None, "std": None}
        model_name = "pixels"
    else:
        from sslprobe.backbone import create_backbone, eval_transform

        net, spec = create_backbone(model, weights=weights, image_size=image_size, seed=seed, allow_pickle=allow_pickle)
        transform = eval_transform(spec)
        preprocessing = asdict(spec)
        model_name = spec.model
        if weights not in ("random", "pretrained"):
            weights_info["weights_sha256"] = _file_sha256(Path(weights))
        if weights == "random":
            weights_info["seed"] = seed
    net = net.to(dev).eval()
    if dev.type == "cuda":
        net = net.to(memory_format=torch.channels_last)

    from torch.utils.data import DataLoader

    loader = DataLoader(ImageDataset(images, transform), batch_size=batch_size, shuffle=False, collate_fn=collate,
                        num_workers=default_workers() if workers is None else workers, pin_memory=dev.type == "cuda")
    feats, labels, rows, skipped = [], [], [], []
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else torch.autocast("cpu", enabled=False)
    with torch.inference_mode(), autocast, progress_bar(show_progress) as bar:
        task = bar.add_task("extract", total=len(images))
        for b in loader:
            skipped.extend(b.skipped)
            if len(b.indices):
                x = b.images.to(dev, non_blocking=True)
                if dev.type == "cuda":
                    x = x.contiguous(memory_format=torch.channels_last)
                feats.append(net(x).float().cpu())
                labels.append(b.labels)
                rows.extend(b.indices.tolist())
            bar.advance(task, len(b.indices) + len(b.skipped))
    if not rows:
        raise SSLProbeError(f"no readable image in '{data}': all {len(skipped)} files were skipped "
                            f"(first: {skipped_report(images, skipped)[:1]}); check the folder")
    features = torch.cat(feats)  # (N, D)
    if not torch.isfinite(features).all():
        bad = int((~torch.isfinite(features)).any(1).sum())
        raise SSLProbeError(f"the backbone produced NaN/inf features for {bad} images; check --weights")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    with atomic_path(out / FEATURES) as tmp:
        save_file({"features": features.contiguous(), "labels": torch.cat(labels).to(torch.int64)}, str(tmp))
    import timm

    manifest = {
        "format": "sslprobe-features",
        "source": str(data),
        "kind": images.kind,
        "model": model_name,
        **weights_info,
        "preprocessing": preprocessing,
        "dim": int(features.shape[1]),
        "classes": list(images.classes),
        "paths": [images.ids[i] for i in rows],
        "counts": {"found": len(images), "embedded": len(rows), "skipped": len(skipped)},
        "skipped": skipped_report(images, skipped),
        "device": str(dev),
        "seconds": round(time.perf_counter() - t0, 3),
        "versions": {"sslprobe": __version__, "torch": torch.__version__, "timm": timm.__version__,
                     "python": platform.python_version()},
    }
    write_json(out / MANIFEST, manifest)
    return manifest
