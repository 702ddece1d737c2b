"""Fine-tuning throughput: a plain timm training loop vs `sslprobe finetune` (same model, batch, resolution, workers).

Both train the same network — ``create_backbone``'s training init with timm's classifier and the same
head init (``finetuning.network.with_head``) — on the same training folder, for the same epochs, with
the same recipe (one rate, no grid: AdamW, the from-scratch weight decay off biases and norms, linear warm-up
(≤ 10 % of the run) then cosine per step, label smoothing 0.1, the crop for the run's length and a flip), and both
validate on the same folder after every epoch (sslprobe after recomputing BatchNorm's statistics, PreciseBN);
one after the other, in one process:

  plain     timm's ImageDataset + ``create_transform(is_training=True)`` (no colour jitter, bilinear)
            in DataLoader workers (shuffle, drop_last, persistent workers), ``create_optimizer_v2``,
            ``CosineLRScheduler`` stepped per update, ``LabelSmoothingCrossEntropy``; validation through
            timm's eval transform: the loop one writes without sslprobe
  sslprobe  ``finetune(TRAIN, val=VAL, …)``: images decoded once, crops on the device, the best epoch
            kept, the final checkpoint, report files and the exported model included

The rate is training images per second of wall time with everything included (dataset set-up,
decoding, validation, sslprobe's files).

    python3 /work/shared/data/fashion_mnist.py /tmp/fm --per-class 500 --test-per-class 100
    OMP_WAIT_POLICY=PASSIVE python bench/finetune_throughput.py /tmp/fm/train /tmp/fm/test

Target (issue 15): sslprobe ≥ 1.0× plain on CPU.
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI: busy-waiting threads slow 4-20× on a shared core

import timm
import torch

from sslprobe.backbone import create_backbone, eval_transform
from sslprobe.config.finetune import SCRATCH_LR, SCRATCH_WEIGHT_DECAY
from sslprobe.config.finetune import FinetuneConfig as FINETUNE
from sslprobe.finetuning.finetune import finetune
from sslprobe.finetuning.network import with_head
from sslprobe.finetuning.recipe import WARMUP_FRACTION, crop_for
from sslprobe.runtime.workers import default_workers


def plain_loop(train: Path, val: Path, *, model: str, image_size: int, batch_size: int, workers: int, epochs: int,
               lr: float, seed: int) -> dict:
    """The peer: timm's dataset, transforms, optimiser, scheduler and loss in the usual training loop."""
    from timm.data import ImageDataset, create_transform
    from timm.loss import LabelSmoothingCrossEntropy
    from timm.optim import create_optimizer_v2
    from timm.scheduler import CosineLRScheduler

    t0 = time.perf_counter()
    net, spec = create_backbone(model, weights="random", init="train", image_size=image_size, seed=seed)
    ds = ImageDataset(str(train), transform=create_transform(
        input_size=(3, spec.image_size, spec.image_size), is_training=True, scale=crop_for(epochs),
        ratio=(3 / 4, 4 / 3), hflip=FINETUNE.flip_p, color_jitter=0.0, interpolation="bilinear", mean=spec.mean,
        std=spec.std))
    vs = ImageDataset(str(val), transform=eval_transform(spec))
    with_head(net, len(ds.reader.class_to_idx), seed=seed)
    torch.manual_seed(seed)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True, drop_last=True,
                                         num_workers=workers, persistent_workers=workers > 0)
    vloader = torch.utils.data.DataLoader(vs, batch_size=256, num_workers=workers)
    peak = lr * batch_size / 256
    opt = create_optimizer_v2(net, opt="adamw", lr=peak, weight_decay=SCRATCH_WEIGHT_DECAY)
    total = len(loader) * epochs
    sched = CosineLRScheduler(opt, t_initial=total, warmup_t=min(round(FINETUNE.warmup_epochs * len(loader)),
                                                                 int(WARMUP_FRACTION * total)), t_in_epochs=False)
    loss_fn = LabelSmoothingCrossEntropy(smoothing=FINETUNE.label_smoothing)
    step, images, top1 = 0, 0, 0.0
    for _ in range(epochs):
        net.train()
        for x, y in loader:
            loss = loss_fn(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            sched.step_update(step)
            images += x.shape[0]
        net.eval()
        hit = n = 0
        with torch.no_grad():
            for x, y in vloader:
                hit += int((net(x).argmax(1) == y).sum())
                n += y.numel()
        top1 = hit / n
    return {"seconds": time.perf_counter() - t0, "train_images": images, "val_top1": top1}


def sslprobe_run(train: Path, val: Path, *, out: Path, model: str, image_size: int, batch_size: int, workers: int,
                 epochs: int, lr: float, seed: int) -> dict:
    t0 = time.perf_counter()
    r = finetune(train, out=out, val=val, model=model, weights="random", image_size=image_size, epochs=epochs,
                 batch_size=batch_size, lr=lr, workers=workers, seed=seed, save_every="end")
    seconds = time.perf_counter() - t0
    s = r.schedule
    last = r.learning_curve[-1]
    return {"seconds": seconds, "train_images": s["total_steps"] * s["batch_size"], "val_top1": last.val_top1,
            "phases": r.timing}


def _rate(r: dict) -> float:
    return r["train_images"] / r["seconds"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("train", type=Path, help="class folders to train on (e.g. Fashion-MNIST, 500 per class)")
    ap.add_argument("val", type=Path, help="class folders to validate on after every epoch")
    ap.add_argument("--model", default="test_resnet")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--lr", type=float, default=SCRATCH_LR,
                    help="base rate per 256 images, for both (one run: no grid)")
    ap.add_argument("--workers", type=int, default=None, help="decode workers for both (default: sslprobe's)")
    ap.add_argument("--repeats", type=int, default=1, help="alternate plain, sslprobe this many times")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    workers = default_workers() if a.workers is None else a.workers
    kw = {"model": a.model, "image_size": a.image_size, "batch_size": a.batch_size, "workers": workers,
          "epochs": a.epochs, "lr": a.lr, "seed": a.seed}
    rows: dict[str, list[dict]] = {"plain timm loop": [], "sslprobe finetune": []}
    for _ in range(a.repeats):  # alternated, so a change in the machine's load hits both
        rows["plain timm loop"].append(plain_loop(a.train, a.val, **kw))
        with tempfile.TemporaryDirectory() as tmp:
            rows["sslprobe finetune"].append(sslprobe_run(a.train, a.val, out=Path(tmp) / "ft", **kw))
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.processor() or platform.system()}, "
          f"torch {torch.__version__}, timm {timm.__version__}, threads {torch.get_num_threads()}, load average "
          f"{os.getloadavg()[0]:.2f} at the end")
    print(f"setup: {a.model} at {a.image_size} px, batch {a.batch_size}, {a.epochs} epochs, {workers} workers, "
          f"train {a.train}, val {a.val}, {a.repeats} alternated run(s) each")
    print("| run | loop | wall s | train images | train img/s (wall) | final val top-1 |")
    print("| --- | --- | --- | --- | --- | --- |")
    for i in range(a.repeats):
        for name, runs in rows.items():
            r = runs[i]
            print(f"| {i + 1} | {name} | {r['seconds']:.1f} | {r['train_images']} | {_rate(r):.0f} | "
                  f"{100 * r['val_top1']:.1f} % |")
    ratios = sorted(_rate(o) / _rate(p) for o, p in zip(rows["sslprobe finetune"], rows["plain timm loop"]))
    ours = rows["sslprobe finetune"][-1]
    print(f"ratio sslprobe / plain per alternated pair: {', '.join(f'{q:.2f}×' for q in ratios)} (lowest "
          f"{ratios[0]:.2f}×; target ≥ 1.0× on CPU); sslprobe phases of the last run (s): "
          + ", ".join(f"{k} {v:.1f}" for k, v in ours["phases"].items()))


if __name__ == "__main__":
    main()
