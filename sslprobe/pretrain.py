"""The BYOL training loop: data to the device, views there, optimiser, logging, outputs.

Writes into ``out``: ``backbone.safetensors`` (online backbone, timm state dict + rebuild
metadata), ``config.json`` and ``metrics.jsonl`` (one line per logged step).
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision.transforms.functional as TF

from sslprobe.augment import ViewConfig, byol_views, make_view
from sslprobe.backbone import create_backbone, save_backbone
from sslprobe.byol import BYOL, LARS, lr_at, param_groups, tau_at
from sslprobe.data import ImageDataset, collate, open_images, skipped_report
from sslprobe.errors import SSLProbeError
from sslprobe.fileio import write_json
from sslprobe.runtime import default_workers, pick_device, progress_bar

RAM_CACHE_BYTES = 4 << 30  # decode once and keep in memory below this (Fashion-MNIST: 2.4 MB at 28 px)


@dataclass(frozen=True)
class PretrainConfig:
    """Everything that defines a run; saved as config.json."""

    data: str
    model: str
    image_size: int
    small_stem: bool
    batch_size: int
    epochs: int
    max_steps: int | None
    total_steps: int
    optimizer: str
    lr: float
    base_lr: float
    weight_decay: float
    warmup_steps: int
    tau_base: float
    proj_hidden: int
    proj_dim: int
    seed: int
    views: tuple[ViewConfig, ViewConfig]
    device: str


class _StoreTransform:
    """Decode-side transform: resize the short side, centre-crop square, uint8 CHW."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, img) -> torch.Tensor:
        img = TF.resize(img, self.size, interpolation=TF.InterpolationMode.BICUBIC)
        return TF.pil_to_tensor(TF.center_crop(img, [self.size, self.size]))


def _optimizer(name: str, model: torch.nn.Module, *, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    groups = param_groups(model, weight_decay=weight_decay)
    if name == "lars":
        return LARS(groups, lr=lr, momentum=0.9, trust=1e-3)
    if name == "sgd":
        return torch.optim.SGD([{k: v for k, v in g.items() if k != "lars"} for g in groups], lr=lr, momentum=0.9)
    if name == "adamw":
        return torch.optim.AdamW([{k: v for k, v in g.items() if k != "lars"} for g in groups], lr=lr)
    raise ValueError(name)  # validated in pretrain()


def pick_optimizer(name: str, *, batch: int) -> str:
    """``auto`` → LARS from batch 256 (the paper's setting), plain momentum SGD below it."""
    if name != "auto":
        return name
    return "lars" if batch >= 256 else "sgd"


def _default_lr(optimizer: str) -> float:
    # Base lr per 256 images: 0.2 is the paper's LARS value; AdamW wants a far smaller step.
    return {"lars": 0.2, "sgd": 0.06, "adamw": 2e-3}[optimizer]


def pretrain(
    data: str | os.PathLike,
    *,
    out: str | os.PathLike,
    model: str = "resnet18",
    image_size: int | None = None,
    batch_size: int = 256,
    epochs: int = 100,
    max_steps: int | None = None,
    optimizer: str = "auto",
    lr: float | None = None,
    weight_decay: float = 1.5e-6,
    warmup_epochs: float = 10.0,
    tau_base: float = 0.996,
    proj_hidden: int = 4096,
    proj_dim: int = 256,
    blur: bool | None = None,
    seed: int = 0,
    device: str = "auto",
    workers: int | None = None,
    log_every: int = 10,
    image_column: str | None = None,
    label_column: str | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """BYOL-pretrain a timm backbone on the images at ``data`` (labels, if any, are ignored).

    ``optimizer="auto"`` is LARS for batch ≥ 256 (the paper's) and SGD below; ``lr`` is the base
    rate per 256 images, scaled linearly with the batch. Returns a summary dict.
    """
    for name, val in (("batch_size", batch_size), ("epochs", epochs), ("proj_hidden", proj_hidden), ("proj_dim", proj_dim)):
        if val < 1:
            raise SSLProbeError(f"--{name.replace('_', '-')} must be ≥ 1 (got {val})")
    if max_steps is not None and max_steps < 1:
        raise SSLProbeError(f"--max-steps must be ≥ 1 (got {max_steps})")
    if image_size is not None and image_size < 8:
        raise SSLProbeError(f"--image-size must be ≥ 8 (got {image_size})")
    if optimizer not in ("auto", "lars", "sgd", "adamw"):
        raise SSLProbeError(f"unknown optimizer '{optimizer}'; use auto, lars, sgd or adamw")
    if not 0 <= tau_base < 1:
        raise SSLProbeError(f"--tau-base must be in [0, 1) (got {tau_base})")
    images = open_images(data, image_column=image_column, label_column=label_column)
    dev = pick_device(device)
    if len(images) < 2:
        raise SSLProbeError(f"'{data}' has {len(images)} image; BYOL needs at least 2 (ideally thousands)")
    batch = min(batch_size, len(images))

    backbone, spec = create_backbone(model, weights="random", image_size=image_size, seed=seed)
    views = byol_views(spec.image_size, blur=blur)
    opt_name = pick_optimizer(optimizer, batch=batch)
    base_lr = lr if lr is not None else _default_lr(opt_name)
    steps_per_epoch = max(len(images) // batch, 1)
    total = steps_per_epoch * epochs if max_steps is None else max_steps
    cfg = PretrainConfig(
        data=str(data), model=spec.model, image_size=spec.image_size, small_stem=spec.small_stem,
        batch_size=batch, epochs=epochs, max_steps=max_steps, total_steps=total, optimizer=opt_name,
        lr=base_lr * batch / 256, base_lr=base_lr, weight_decay=weight_decay,
        warmup_steps=min(int(round(warmup_epochs * steps_per_epoch)), total // 2), tau_base=tau_base,
        proj_hidden=proj_hidden, proj_dim=proj_dim, seed=seed, views=views, device=str(dev),
    )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", asdict(cfg))

    with torch.random.fork_rng(devices=[]):  # seed the heads' init without touching the caller's RNG
        torch.manual_seed(seed)
        net = BYOL(backbone, feature_dim=backbone.num_features, hidden=proj_hidden, out=proj_dim).to(dev)
    if dev.type == "cuda":
        net = net.to(memory_format=torch.channels_last)
    opt = _optimizer(opt_name, net, lr=cfg.lr, weight_decay=weight_decay)
    gen = torch.Generator(device=dev).manual_seed(seed)
    source = _BatchSource(images, store=spec.image_size, batch=batch, device=dev, seed=seed,
                          workers=default_workers() if workers is None else workers, show_progress=show_progress)

    metrics = open(out / "metrics.jsonl", "w")
    step, seen, t_log, loss_sum = 0, 0, time.perf_counter(), torch.zeros((), device=dev)
    last = float("nan")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else _null()
    net.train()
    try:
        with progress_bar(show_progress) as bar:
            task = bar.add_task("pretrain", total=total)
            for epoch in range(math.ceil(total / steps_per_epoch)):
                for x in source.epoch(epoch):
                    if step >= total:
                        break
                    for gr in opt.param_groups:
                        gr["lr"] = lr_at(step, total, peak=cfg.lr, warmup=cfg.warmup_steps)
                    v1 = make_view(x, views[0], size=spec.image_size, mean=spec.mean, std=spec.std, generator=gen)
                    v2 = make_view(x, views[1], size=spec.image_size, mean=spec.mean, std=spec.std, generator=gen)
                    if dev.type == "cuda":
                        v1, v2 = v1.contiguous(memory_format=torch.channels_last), v2.contiguous(memory_format=torch.channels_last)
                    with autocast:
                        loss = net(v1, v2)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    tau = tau_at(step, total, tau_base)
                    net.update_target(tau)
                    loss_sum += loss.detach()
                    step += 1
                    seen += x.shape[0]
                    if step % log_every == 0 or step == total:
                        n_logged = (step - 1) % log_every + 1
                        last = float(loss_sum) / n_logged  # the only host sync: once per log
                        loss_sum.zero_()
                        now = time.perf_counter()
                        rate = seen / max(now - t_log, 1e-9)
                        seen, t_log = 0, now
                        if not math.isfinite(last):
                            raise SSLProbeError(
                                f"loss became {last} at step {step}; lower --lr or use --optimizer sgd "
                                f"(nothing was saved from this step on; {out}/backbone.safetensors is from the last good save)"
                            )
                        rec = dict(step=step, epoch=epoch, loss=round(last, 6), lr=opt.param_groups[0]["lr"], tau=tau, img_per_s=round(rate, 1))
                        metrics.write(json.dumps(rec) + "\n")
                        metrics.flush()
                        bar.update(task, completed=step, description=f"pretrain loss {last:.3f} {rate:,.0f} img/s")
                    else:
                        bar.update(task, completed=step)
                if step >= total:
                    break
    finally:
        metrics.close()
    net.eval()
    save_backbone(net.backbone, spec, out / "backbone.safetensors")
    summary = {
        "out": str(out), "steps": step, "final_loss": last, "images": len(images),
        "skipped": skipped_report(images, source.skipped), "model": spec.model, "image_size": spec.image_size,
        "small_stem": spec.small_stem, "device": str(dev), "optimizer": opt_name,
    }
    write_json(out / "summary.json", summary)
    return summary


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


class _BatchSource:
    """uint8 (B, 3, S, S) batches on the device: from RAM when the set fits, else streamed by workers."""

    def __init__(self, images, *, store: int, batch: int, device: torch.device, seed: int, workers: int, show_progress: bool):
        self.images, self.batch, self.device, self.seed, self.workers = images, batch, device, seed, workers
        self.dataset = ImageDataset(images, _StoreTransform(store))
        self.skipped: list[tuple[int, str]] = []
        self.ram: torch.Tensor | None = None
        if len(images) * 3 * store * store <= RAM_CACHE_BYTES:
            self.ram = self._decode_all(show_progress)

    def _loader(self, *, shuffle: bool, epoch: int, drop_last: bool):
        from torch.utils.data import DataLoader

        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return DataLoader(self.dataset, batch_size=self.batch if drop_last else 256, shuffle=shuffle, generator=g,
                          num_workers=self.workers, collate_fn=collate, drop_last=drop_last,
                          pin_memory=self.device.type == "cuda", persistent_workers=False)

    def _decode_all(self, show_progress: bool) -> torch.Tensor:
        parts = []
        with progress_bar(show_progress) as bar:
            task = bar.add_task("decode", total=len(self.images))
            for b in self._loader(shuffle=False, epoch=0, drop_last=False):
                self.skipped.extend(b.skipped)
                if len(b.indices):
                    parts.append(b.images)
                bar.advance(task, len(b.indices) + len(b.skipped))
        if not parts:
            raise SSLProbeError(f"no readable image in '{self.images.source}' ({len(self.skipped)} skipped); see the reasons with `sslprobe extract`")
        ram = torch.cat(parts)
        if len(ram) < 2:
            raise SSLProbeError("fewer than 2 readable images; BYOL needs at least 2")
        self.batch = min(self.batch, len(ram))
        return ram.to(self.device) if self.device.type == "cuda" else ram

    def epoch(self, epoch: int):
        if self.ram is not None:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            order = torch.randperm(len(self.ram), generator=g)
            for i in range(0, len(order) - self.batch + 1, self.batch):
                yield self.ram[order[i:i + self.batch].to(self.ram.device)]
            return
        for b in self._loader(shuffle=True, epoch=epoch, drop_last=True):
            if epoch == 0:
                self.skipped.extend(b.skipped)
            if len(b.indices) >= 2:  # BatchNorm needs at least 2 samples
                yield b.images.to(self.device, non_blocking=True)
