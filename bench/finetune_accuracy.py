"""Fine-tuning accuracy: `sslprobe finetune` beside a plain timm training loop on the same images, epochs and size.

Issue 22: a random-init test_resnet fine-tuned for 3 epochs at 32 px on digit images scored 27 % where a plain
AdamW loop scored 96 %. This bench puts the two side by side in one process, on scikit-learn's 8×8 digits
upsampled to 32 px (written as class folders: 140 per class train, the rest test), from random weights and
from a short `sslprobe pretrain` BYOL backbone, at 3 and 30 epochs:

  plain     the loop one writes without sslprobe: the same start network (``create_backbone`` + the head of
            ``finetuning.network.with_head``), timm's eval transform on every image (no augmentation),
            AdamW lr 1e-3, batch 64, weight decay 0.05 on every parameter, no schedule, all train images,
            scored on test after the last epoch
  sslprobe  ``finetune(TRAIN, test=TEST, epochs=E, weights=…)`` with its defaults (the recipe for the start, the
            ÷3/×1/×3 rate grid chosen on its 20 % hold-out, the refit on all train images); and the same with
            ``flip_p=0`` — mirrored digits are other shapes, and the plain loop does not flip

Test top-1 of each, the rate and epoch sslprobe chose, and sslprobe's wall time. Accuracy only: the timing is
not a benchmark (bench/finetune_throughput.py is).

    OMP_WAIT_POLICY=PASSIVE python bench/finetune_accuracy.py /tmp/ftacc --epochs 3,30

Goal (issue 22): sslprobe within 1 point of the plain loop, or better.
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI: busy-waiting threads slow 4-20× on a shared core

import numpy as np
import timm
import torch
import torch.nn.functional as F
from PIL import Image

from sslprobe.backbone import create_backbone, eval_transform
from sslprobe.finetuning.finetune import finetune
from sslprobe.finetuning.network import with_head

TRAIN_PER_CLASS = 140


def write_digits(root: Path, *, size: int = 32, seed: int = 0) -> tuple[Path, Path]:
    """scikit-learn's 1,797 digits (8×8, 17 grey levels) as RGB class folders at ``size`` px (bilinear), a seeded
    140 per class in train/ and the rest (about 397) in test/."""
    from sklearn.datasets import load_digits

    d = load_digits()
    seen: dict[int, int] = {}
    for i in np.random.default_rng(seed).permutation(len(d.target)).tolist():
        y = int(d.target[i])
        seen[y] = seen.get(y, 0) + 1
        split = "train" if seen[y] <= TRAIN_PER_CLASS else "test"
        (root / split / str(y)).mkdir(parents=True, exist_ok=True)
        img = Image.fromarray((d.images[i] * 255 / 16).astype(np.uint8)).resize((size, size), Image.BILINEAR)
        img.convert("RGB").save(root / split / str(y) / f"{i:04d}.png")
    return root / "train", root / "test"


def byol_backbone(train: Path, out: Path, *, steps: int, seed: int) -> Path:
    """A short BYOL pretraining of test_resnet at 32 px on the train images (labels ignored); an earlier one in
    ``out`` is reused."""
    from sslprobe.pretraining.pretrain import pretrain

    if (out / "backbone.safetensors").is_file():
        return out / "backbone.safetensors"
    pretrain(train, out=out, model="test_resnet", image_size=32, max_steps=steps, batch_size=128, workers=0,
             seed=seed, show_progress=False)
    return out / "backbone.safetensors"


def plain_loop(train: Path, test: Path, *, weights: str, epochs: int, seed: int) -> float:
    """Test top-1 of the plain loop (module docstring) from ``weights`` ("random" or a backbone file)."""
    from timm.data import ImageDataset

    torch.manual_seed(seed)
    net, spec = create_backbone("test_resnet", weights="random", init="train", image_size=32, seed=seed) \
        if weights == "random" else create_backbone(weights=weights)
    tf = eval_transform(spec)
    ds, ts = ImageDataset(str(train), transform=tf), ImageDataset(str(test), transform=tf)
    with_head(net, len(ds.reader.class_to_idx), seed=seed)
    loader = torch.utils.data.DataLoader(ds, batch_size=64, shuffle=True)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.05)
    net.train()
    for _ in range(epochs):
        for x, y in loader:
            loss = F.cross_entropy(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    net.eval()
    hit = n = 0
    with torch.no_grad():
        for x, y in torch.utils.data.DataLoader(ts, batch_size=256):
            hit += int((net(x).argmax(1) == y).sum())
            n += y.numel()
    return hit / n


def sslprobe_run(train: Path, test: Path, *, out: Path, weights: str, epochs: int, seed: int, **extra) -> dict:
    t0 = time.perf_counter()
    start = {"weights": "random", "model": "test_resnet", "image_size": 32} if weights == "random" else \
        {"weights": weights}
    r = finetune(train, out=out, test=test, epochs=epochs, workers=0, seed=seed, save_every="end", **start, **extra)
    return {"top1": r.test.top1, "lr": r.chosen.lr, "epoch": r.chosen.epoch, "seconds": time.perf_counter() - t0,
            "crop": r.schedule["crop_scale"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="working folder (digits, backbone, runs)")
    ap.add_argument("--epochs", default="3,30", help="comma list of run lengths")
    ap.add_argument("--starts", default="random,byol", help="random, byol or both")
    ap.add_argument("--byol-steps", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    train, test = write_digits(a.out / "digits")
    starts = {}
    for s in a.starts.split(","):
        starts[s] = "random" if s == "random" else str(byol_backbone(train, a.out / "byol", steps=a.byol_steps,
                                                                      seed=a.seed))
    rows = []
    for epochs in [int(e) for e in a.epochs.split(",")]:
        for name, weights in starts.items():
            plain = plain_loop(train, test, weights=weights, epochs=epochs, seed=a.seed)
            base = a.out / "runs" / f"{name}-{epochs}"
            default = sslprobe_run(train, test, out=base / "default", weights=weights, epochs=epochs, seed=a.seed)
            noflip = sslprobe_run(train, test, out=base / "noflip", weights=weights, epochs=epochs, seed=a.seed,
                                  flip_p=0.0)
            rows.append((name, epochs, plain, default, noflip))
            print(rows[-1], flush=True)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, timm {timm.__version__}, "
          f"load average {os.getloadavg()[0]:.2f} at the end")
    print(f"data: sklearn digits at 32 px, {TRAIN_PER_CLASS} per class train ({sum(1 for _ in train.rglob('*.png'))} "
          f"images), {sum(1 for _ in test.rglob('*.png'))} test; test_resnet; BYOL: {a.byol_steps} steps")
    print("| start | epochs | plain loop | sslprobe (defaults) | sslprobe --flip-p 0 | chosen lr / epoch (--flip-p 0) "
          "| sslprobe s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, epochs, plain, d, n in rows:
        print(f"| {name} | {epochs} | {plain:.1%} | {d['top1']:.1%} | {n['top1']:.1%} | {n['lr']:.3g} / {n['epoch']} "
              f"| {d['seconds']:.0f} + {n['seconds']:.0f} |")


if __name__ == "__main__":
    main()
