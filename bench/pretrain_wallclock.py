#!/usr/bin/env python3
"""BYOL on the CPU as a user feels it: `sslprobe pretrain` against lightly's recipe, whole processes, alternated.

Each side is its own process, timed from launch to exit by this driver (imports, reading the
images, starting workers, the steps, saving), and the sides alternate --rounds times so that drift
on a shared machine hits both; the table gives medians and the ratio lightly / sslprobe (above 1:
sslprobe is faster). Beside the whole-process wall, each side reports its steady-state step rate
(its own timer, warm-up steps excluded), the number the issue's "BYOL step" means.

  sslprobe  ``python -m sslprobe pretrain DATA --out TMP --model M --image-size S --batch-size B
            --workers W --max-steps N`` (its defaults otherwise: whatever a user gets)
  lightly   this script with ``--side lightly``: lightly's examples/pytorch/byol.py loop —
            BYOLTransform (PIL) in W DataLoader workers over the files, BYOLProjectionHead and
            BYOLPredictionHead, NegativeCosineSimilarity, update_momentum — on the same timm backbone
            and stem, with the heads' widths, optimiser, learning rate, weight decay and τ read from the
            config.json of sslprobe's first run (so the two train the same recipe; the blur
            probabilities are sslprobe's, off at ≤ 64 px)

    python bench/pretrain_wallclock.py --rounds 3                         # test_resnet, 64 px, batch 64, 40 steps
    python bench/pretrain_wallclock.py --image-size 32 --batch-size 128 --rounds 3

lightly is a bench-only dependency (``pip install -e .[bench]``, or ``pip install --no-deps lightly
lightning-utilities`` beside a pinned torch). Run on a quiet machine: nothing else on the cores.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="test_resnet")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--steps", type=int, default=40, help="steps per run")
    ap.add_argument("--warmup", type=int, default=10, help="steps left out of the steady-state rate")
    ap.add_argument("--rounds", type=int, default=3, help="alternated runs of each side")
    ap.add_argument("--data", help="image folder (default: 1,000 Fashion-MNIST images a class, written once)")
    ap.add_argument("--per-class", type=int, default=1000)
    ap.add_argument("--cache-dir", default=os.path.join(tempfile.gettempdir(), "sslprobe-bench"))
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--side", choices=("lightly",), help=argparse.SUPPRESS)  # the driver's child
    ap.add_argument("--recipe", help=argparse.SUPPRESS)  # the child's: sslprobe's config.json
    return ap.parse_args(argv)


# ----------------------------------------------------------------------------- the lightly child

def lightly_side(a: argparse.Namespace) -> None:
    """lightly's BYOL loop for --steps steps; prints one JSON line with its steady-state rate."""
    import torch
    from lightly.loss import NegativeCosineSimilarity
    from lightly.models.utils import update_momentum
    from lightly.transforms import BYOLTransform, BYOLView1Transform, BYOLView2Transform
    from lightly.utils.scheduler import cosine_schedule
    from pretrain_throughput import FileImages, LightlyBYOL
    from torch.utils.data import DataLoader

    from sslprobe.backbone import create_backbone
    from sslprobe.images.folders import open_images
    from sslprobe.pretraining.trainstep import make_optimizer

    cfg = json.loads(Path(a.recipe).read_text())
    torch.manual_seed(cfg["seed"])
    backbone, spec = create_backbone(cfg["model"], init="train", image_size=cfg["image_size"],
                                     small_stem=cfg["small_stem"], seed=cfg["seed"])
    net = LightlyBYOL(backbone, feature_dim=backbone.num_features, hidden=cfg["proj_hidden"], out=cfg["proj_dim"])
    net.train()
    opt = make_optimizer(cfg["optimizer"], net, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    norm = {"mean": list(spec.mean), "std": list(spec.std)}
    v1, v2 = cfg["views"]
    tf = BYOLTransform(
        view_1_transform=BYOLView1Transform(input_size=cfg["image_size"], gaussian_blur=v1["blur_p"], normalize=norm),
        view_2_transform=BYOLView2Transform(input_size=cfg["image_size"], gaussian_blur=v2["blur_p"], normalize=norm))
    images = open_images(a.data)
    files = [os.path.join(images.root or "", *i.split("/")) for i in images.ids]
    loader = DataLoader(FileImages(files, tf), batch_size=cfg["batch_size"], shuffle=True, drop_last=True,
                        num_workers=a.workers, persistent_workers=a.workers > 0,
                        generator=torch.Generator().manual_seed(cfg["seed"]))
    criterion = NegativeCosineSimilarity()
    step, t_warm, it = 0, None, iter(loader)
    while step < a.steps:
        try:
            x0, x1 = next(it)
        except StopIteration:
            it = iter(loader)
            continue
        m = cosine_schedule(step, cfg["total_steps"], cfg["tau_base"], 1)
        update_momentum(net.backbone, net.backbone_momentum, m=m)
        update_momentum(net.projection_head, net.projection_head_momentum, m=m)
        p0, z0 = net(x0), net.forward_momentum(x0)
        p1, z1 = net(x1), net.forward_momentum(x1)
        loss = 0.5 * (criterion(p0, z1) + criterion(p1, z0))
        loss.backward()
        opt.step()
        opt.zero_grad()
        step += 1
        if step == a.warmup:
            t_warm = time.perf_counter()
    rate = (a.steps - a.warmup) * cfg["batch_size"] / (time.perf_counter() - t_warm) if t_warm else float("nan")
    print(json.dumps({"img_per_s": rate, "loss": float(loss)}))


# ----------------------------------------------------------------------------- the driver

def run_sslprobe(a: argparse.Namespace, out: Path) -> tuple[float, float]:
    cmd = [sys.executable, "-m", "sslprobe", "pretrain", a.data, "--out", str(out), "--model", a.model,
           "--image-size", str(a.image_size), "--batch-size", str(a.batch_size), "--workers", str(a.workers),
           "--max-steps", str(a.steps), "--log-every", "5"]
    t = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    wall = time.perf_counter() - t
    from pretrain_throughput import logged_rate

    return wall, logged_rate(out, batch=a.batch_size, after=a.warmup)


def run_lightly(a: argparse.Namespace, recipe: Path) -> tuple[float, float]:
    cmd = [sys.executable, __file__, "--side", "lightly", "--recipe", str(recipe), "--data", a.data,
           "--steps", str(a.steps), "--warmup", str(a.warmup), "--workers", str(a.workers)]
    t = time.perf_counter()
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - t
    return wall, json.loads(done.stdout.strip().splitlines()[-1])["img_per_s"]


def main(argv: list[str] | None = None) -> None:
    a = parse(argv)
    sys.path.insert(0, str(HERE))  # the sibling bench's data, model and log readers
    if a.data is None:
        from pretrain_throughput import default_data

        a.data = str(default_data(Path(a.cache_dir), per_class=a.per_class, synthetic_n=10 * a.per_class)[0])
    if a.side == "lightly":
        lightly_side(a)
        return
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI sets it, for both children
    walls: dict[str, list[float]] = {"sslprobe": [], "lightly": []}
    rates: dict[str, list[float]] = {"sslprobe": [], "lightly": []}
    with tempfile.TemporaryDirectory() as tmp:
        recipe = Path(tmp) / "recipe.json"
        for r in range(a.rounds):
            out = Path(tmp) / f"run{r}"
            w, rate = run_sslprobe(a, out)
            if r == 0:
                recipe.write_text((out / "config.json").read_text())
            walls["sslprobe"].append(w)
            rates["sslprobe"].append(rate)
            w, rate = run_lightly(a, recipe)
            walls["lightly"].append(w)
            rates["lightly"].append(rate)
            print(f"round {r + 1}: sslprobe {walls['sslprobe'][-1]:.1f} s ({rates['sslprobe'][-1]:.0f} img/s), "
                  f"lightly {walls['lightly'][-1]:.1f} s ({rates['lightly'][-1]:.0f} img/s)", flush=True)
        cfg = json.loads(recipe.read_text())
    med_w = {k: statistics.median(v) for k, v in walls.items()}
    med_r = {k: statistics.median(v) for k, v in rates.items()}
    print(f"\n{a.model} at {a.image_size} px, batch {a.batch_size}, {a.workers} workers, {a.steps} steps, "
          f"{a.rounds} alternated rounds; {cfg['optimizer']} lr {cfg['lr']:g}, heads {cfg['proj_hidden']}→"
          f"{cfg['proj_dim']}; {platform.machine()}, {os.cpu_count()} cores")
    print("| side | whole process (median s) | steady-state img/s (median) |\n| --- | --- | --- |")
    for k in ("lightly", "sslprobe"):
        print(f"| {k} | {med_w[k]:.1f} ({', '.join(f'{x:.1f}' for x in walls[k])}) | "
              f"{med_r[k]:.0f} ({', '.join(f'{x:.0f}' for x in rates[k])}) |")
    print(f"sslprobe / lightly: whole process {med_w['lightly'] / med_w['sslprobe']:.2f}× the speed, "
          f"steady-state step {med_r['sslprobe'] / med_r['lightly']:.2f}×")
    if a.json:
        Path(a.json).write_text(json.dumps({"args": {k: v for k, v in vars(a).items() if k not in ("side", "recipe")},
                                            "walls_s": walls, "img_per_s": rates}, indent=1))


if __name__ == "__main__":
    main()
