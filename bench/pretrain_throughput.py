#!/usr/bin/env python3
"""BYOL training throughput: sslprobe's pipeline vs lightly's recipe, one process, one device.

Both sides train the same timm backbone (``sslprobe.backbone.create_backbone``, same stem), the
same head widths (``--proj-hidden`` → ``--proj-dim``), the same optimiser (sslprobe's picker and
parameter groups), batch, image size, precision (bf16 autocast + channels_last on CUDA, fp32 on
CPU) and blur policy (sslprobe's: blur 1.0/0.1, off at ≤ 64 px; lightly gets the same
``gaussian_blur`` probabilities). Rows:

  lightly        its BYOL recipe: BYOLTransform (PIL) in DataLoader workers over the files,
                 BYOLProjectionHead/BYOLPredictionHead, NegativeCosineSimilarity, update_momentum
                 with a cosine schedule — the loop of lightly's examples/pytorch/byol.py
  sslprobe       what `sslprobe pretrain` runs: uint8 "store" batches of whole images (RAM cache when the
                 set fits, else streamed from decode workers), both views made by sslprobe.pretraining.augment.make_view
                 on the training device, one sslprobe.pretraining.byol.BYOL step (lr and τ schedules, EMA)
  model-only     the same step on synthetic views already on the device (the ceiling)
  aug-only       each side's augmentation alone (lightly: its DataLoader; sslprobe: make_view ×2)

img/s counts source images (each gives two views). Warm-up steps are excluded; each number is
the median over --repeats (rows are interleaved, so drift on a shared machine hits all of them).
img/CPU-s divides by the CPU time of the process and its DataLoader workers: on a CPU shared
with other jobs it is the fairer comparison (wall rates favour the pipeline with more processes).

    python bench/pretrain_throughput.py --model test_resnet --image-size 64 --batch-size 64
    python bench/pretrain_throughput.py --model test_resnet --image-size 32 --batch-size 128 --proj-hidden 512
    python bench/pretrain_throughput.py --preset gpu --json gpu.json   # ResNet-50 224 px JPEG + ResNet-18 32 px

lightly is a bench-only dependency: ``pip install -e .[bench]``. Where pip must not touch the
installed torch (a pinned CUDA build), ``pip install --no-deps lightly lightning-utilities`` is all
that the imports used here need.
"""
from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

import sslprobe
import sslprobe.pretraining.pretrain as sp
from sslprobe.backbone import SMALL_INPUT, create_backbone
from sslprobe.fileio import write_json
from sslprobe.images.folders import open_images
from sslprobe.pretraining.augment import blur_note, byol_views
from sslprobe.pretraining.batches import BatchSource, store_side

# pretrain()'s own pieces (its model + optimiser builder and its step; BatchSource above is its data
# source), so the bench times sslprobe's real code path. make_optimizer/default_lr give lightly the
# same optimiser.
from sslprobe.pretraining.recipe import default_lr, pick_optimizer
from sslprobe.pretraining.trainstep import (
    RunSpec,
    TrainStep,
    build_byol,
    make_optimizer,
)
from sslprobe.runtime.device import pick_device

FMNIST_SCRIPT = Path(__file__).resolve().parents[2] / "shared" / "data" / "fashion_mnist.py"


# ----------------------------------------------------------------------------- data

def _synthetic_image(args: tuple[str, int, int, int]) -> None:
    path, w, h, seed = args
    g = np.random.default_rng(seed)
    base = Image.fromarray(g.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
    # smooth colour field + grain, so JPEG files have photo-like entropy (~ImageNet file sizes)
    px = np.asarray(base, dtype=np.float32) + g.normal(0, 18, (h, w, 3))
    Image.fromarray(px.clip(0, 255).astype(np.uint8)).save(path, quality=90)


def synthetic_folder(out: Path, *, n: int, width: int, height: int, ext: str) -> Path:
    """``n`` generated images (JPEG or PNG by ``ext``) under ``out``; reused when already complete."""
    if out.is_dir() and len(list(out.glob(f"*.{ext}"))) == n:
        return out
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(str(out / f"{i:06d}.{ext}"), width, height, i) for i in range(n)]
    with Pool(os.cpu_count() or 1) as pool:
        pool.map(_synthetic_image, jobs, chunksize=64)
    return out


def default_data(cache: Path, *, per_class: int, synthetic_n: int) -> tuple[Path, str]:
    """Fashion-MNIST train class folders (28 px PNG) when the shared script works, else generated 32 px PNGs."""
    root = cache / f"fmnist-{per_class or 'all'}"
    if (root / "train").is_dir() and (root / ".done").exists():
        return root / "train", "Fashion-MNIST train (28 px grayscale PNG)"
    if FMNIST_SCRIPT.exists():
        cmd = [sys.executable, str(FMNIST_SCRIPT), str(root), "--test-per-class", "1"]
        cmd += ["--per-class", str(per_class)] if per_class else []
        try:  # the script may need apt to fetch the data set: give up after a while on an offline machine
            ok = subprocess.run(cmd, check=False, capture_output=True, timeout=180).returncode == 0
        except subprocess.TimeoutExpired:
            ok = False
        if ok:
            (root / ".done").touch()
            return root / "train", "Fashion-MNIST train (28 px grayscale PNG)"
    out = synthetic_folder(cache / f"synthetic-32-{synthetic_n}", n=synthetic_n, width=32, height=32, ext="png")
    return out, "generated 32 px RGB PNG (Fashion-MNIST unavailable)"


class FileImages(Dataset):
    """lightly's side: ``Image.open(f).convert("RGB")`` (torchvision's pil_loader) → transform."""

    def __init__(self, files: list[str], transform: Callable):
        self.files, self.transform = files, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        with open(self.files[i], "rb") as f:
            img = Image.open(f).convert("RGB")
        return self.transform(img)


def cpu_seconds() -> float:
    """User + system CPU time of this process and all its descendants (DataLoader workers), Linux only.

    Images per CPU-second is the rate that a machine shared with other jobs cannot skew the way it
    skews wall-clock rates (a pipeline of more processes gets more of a busy machine's time).
    """
    tick, tree = os.sysconf("SC_CLK_TCK"), {}
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue  # exited meanwhile
            tree[int(p)] = (int(fields[1]), int(fields[11]) + int(fields[12]))  # ppid, utime + stime
    total, todo = 0, [os.getpid()]
    while todo:
        pid = todo.pop()
        total += tree.get(pid, (0, 0))[1]
        todo += [c for c, (ppid, _) in tree.items() if ppid == pid]
    return total / tick


def _forever(make: Callable[[int], Iterator]) -> Iterator:
    epoch = 0
    while True:
        yield from make(epoch)
        epoch += 1


# ----------------------------------------------------------------------------- the two pipelines

class LightlyBYOL(nn.Module):
    """The model of lightly's examples/pytorch/byol.py around our backbone."""

    def __init__(self, backbone: nn.Module, *, feature_dim: int, hidden: int, out: int):
        super().__init__()
        from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
        from lightly.models.utils import deactivate_requires_grad

        self.backbone = backbone
        self.projection_head = BYOLProjectionHead(feature_dim, hidden, out)
        self.prediction_head = BYOLPredictionHead(out, hidden, out)
        self.backbone_momentum = copy.deepcopy(backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prediction_head(self.projection_head(self.backbone(x).flatten(start_dim=1)))

    def forward_momentum(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection_head_momentum(self.backbone_momentum(x).flatten(start_dim=1)).detach()


class Bench:
    """One configuration: builds both pipelines once, then times them row by row."""

    def __init__(self, a: argparse.Namespace, data: Path):
        self.a, self.data = a, data
        self.dev = pick_device(a.device)
        self.cuda = self.dev.type == "cuda"
        self.images = open_images(data)
        if self.images.kind == "hf":
            raise SystemExit("--data must be a folder of image files (lightly reads files)")
        self.files = [os.path.join(self.images.root or "", *i.split("/")) for i in self.images.ids]
        _, spec = create_backbone(a.model, init="train", image_size=a.image_size, small_stem=a.small_stem, seed=a.seed)
        self.size = spec.image_size
        self.views = byol_views(self.size, blur=a.blur)
        # sslprobe's data source, as pretrain() builds it; the RAM-cache decode is a one-off cost
        t = time.perf_counter()
        self.store = store_side(self.images, size=self.size)  # the whole-image store pretrain() draws crops from
        self.source = BatchSource(self.images, store=self.store, batch=a.batch_size, device=self.dev, seed=a.seed,
                                  workers=a.workers, show_progress=False)
        self.decode_s = time.perf_counter() - t
        self.batch = self.source.batch
        self.stream = (BatchSource(self.images, store=self.store, batch=self.batch, device=self.dev, seed=a.seed,
                                   workers=a.workers, show_progress=False, ram_limit=-1)
                       if a.stream != "auto" and self.source.ram is not None else None)
        opt_name = pick_optimizer(a.optimizer, batch=self.batch)
        base_lr = default_lr(opt_name)
        total = 1_000_000  # schedule horizon: the lr/τ values do not change the cost of a step
        self.cfg = RunSpec(
            data=str(data), model=spec.model, image_size=self.size, small_stem=spec.small_stem, store_size=self.store,
            batch_size=self.batch,
            global_batch=self.batch, max_steps=total, total_steps=total, optimizer=opt_name,
            lr=base_lr * self.batch / 256,
            base_lr=base_lr, tau_base=a.tau_base, proj_hidden=a.proj_hidden, proj_dim=a.proj_dim, seed=a.seed,
            views=self.views, blur=blur_note(self.size, a.blur),
            precision="bfloat16 autocast" if self.cuda else "float32", device=self.dev.type)
        net, opt, self.spec = build_byol(self.cfg, device=self.dev)
        self.train = TrainStep(net, opt, cfg=self.cfg, spec=self.spec, device=self.dev)
        self.compiled = (TrainStep(net, opt, cfg=self.cfg, spec=self.spec, device=self.dev, compile=True)
                         if a.compile else None)
        self.lightly = LightlySide(self, opt_name=opt_name, lr=self.cfg.lr)
        self.k = 0  # global step counter for the schedules
        self.cpu_rates: dict[str, list[float]] = {}  # row → images per CPU-second, per repeat
        self.row = ""
        self.loss_sum = torch.zeros((), device=self.dev)
        g = torch.Generator(device=self.dev).manual_seed(a.seed + 1)
        shape = (self.batch, 3, self.size, self.size)
        self.synthetic = [torch.randn(shape, generator=g, device=self.dev) for _ in range(2)]
        if self.cuda:
            self.synthetic = [v.contiguous(memory_format=torch.channels_last) for v in self.synthetic]

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def timed(self, step: Callable[[], object]) -> float:
        """img/s of ``step`` (one batch) over --steps calls after --warmup calls, synchronised at both ends."""
        for _ in range(self.a.warmup):
            step()
        self.sync()
        t, c = time.perf_counter(), cpu_seconds()
        for _ in range(self.a.steps):
            step()
        self.sync()
        wall, cpu = time.perf_counter() - t, cpu_seconds() - c
        n = self.a.steps * self.batch
        self.cpu_rates.setdefault(self.row, []).append(n / cpu if cpu > 0 else float("nan"))
        return n / wall

    def _sslprobe_train(self, source: BatchSource, train: TrainStep) -> float:
        """pretrain()'s inner loop: next (step, batch), TrainStep, accumulate the loss on the device."""
        it = source.batches(start=self.k)

        def one() -> None:
            k, x, aspect = next(it)
            loss, _ = train(x, k, aspect)
            self.loss_sum += loss
            self.k = k + 1

        try:
            return self.timed(one)
        finally:
            it.close()  # a streamed source shuts its workers down

    def _sslprobe_mapped(self) -> float:
        """pretrain()'s CPU path: views made in the DataLoader workers (BatchSource.mapped), model step here."""
        it = self.source.mapped(self.train.make_views, start=self.k)

        def one() -> None:
            k, (v1, v2) = next(it)
            loss, _ = self.train.model_step(v1, v2, k)
            self.loss_sum += loss
            self.k = k + 1

        try:
            return self.timed(one)
        finally:
            it.close()  # shuts the workers down

    def _model_only(self) -> float:
        def one() -> None:
            loss, _ = self.train.model_step(*self.synthetic, self.k)
            self.loss_sum += loss
            self.k += 1

        return self.timed(one)

    def _sslprobe_views(self, source: BatchSource) -> float:
        it = source.batches(start=self.k)
        try:
            def one() -> None:
                _, x, aspect = next(it)
                self.train.views(x, 0, aspect)

            return self.timed(one)
        finally:
            it.close()

    def _source_only(self, source: BatchSource) -> float:
        it = source.batches(start=self.k)
        try:
            return self.timed(lambda: next(it))
        finally:
            it.close()

    def rows(self) -> dict[str, Callable[[], float]]:
        """Row name → a function that measures it once."""
        w, d, lt = self.a.workers, self.dev.type, self.lightly
        r: dict[str, Callable[[], float]] = {f"lightly: BYOLTransform in {w} workers + step": lt.train}
        if self.source.ram is not None and self.a.stream != "only":
            r[f"sslprobe: RAM cache + views on {d}"] = lambda: self._sslprobe_train(self.source, self.train)
            if not self.cuda and self.source.can_map:
                r[f"sslprobe: RAM cache + views in {w} workers (pretrain's CPU path)"] = self._sslprobe_mapped
            if self.compiled is not None:
                r[f"sslprobe: RAM cache + views on {d}, compiled"] = lambda: self._sslprobe_train(self.source,
                                                                                                 self.compiled)
        stream = self.stream or (self.source if self.source.ram is None else None)
        if stream is not None:
            r[f"sslprobe: streamed by {w} workers + views on {d}"] = lambda: self._sslprobe_train(stream, self.train)
        r[MODEL_ONLY] = self._model_only
        r["model-only: lightly step (four B passes)"] = lt.model_only
        r[f"aug-only: lightly DataLoader, {w} workers"] = lt.aug_only
        src = self.source if self.source.ram is not None else stream
        r[f"aug-only: sslprobe views x2 on {d}"] = lambda: self._sslprobe_views(src)
        if stream is not None:
            r[f"data-only: sslprobe decode+resize, {w} workers"] = lambda: self._source_only(stream)
        return r


MODEL_ONLY = "model-only: sslprobe step (per-view passes)"


class LightlySide:
    """lightly's recipe on the same backbone, heads widths, optimiser, device and precision."""

    def __init__(self, b: Bench, *, opt_name: str, lr: float):
        from lightly.loss import NegativeCosineSimilarity
        from lightly.transforms import (
            BYOLTransform,
            BYOLView1Transform,
            BYOLView2Transform,
        )

        self.b, a = b, b.a
        bb, _ = create_backbone(a.model, init="train", image_size=a.image_size, small_stem=b.spec.small_stem,
                                seed=a.seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(a.seed)
            self.net = LightlyBYOL(bb, feature_dim=bb.num_features, hidden=a.proj_hidden, out=a.proj_dim).to(b.dev)
        if b.cuda:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.net.train()
        self.opt = make_optimizer(opt_name, self.net, lr=lr, weight_decay=b.cfg.weight_decay)
        self.criterion = NegativeCosineSimilarity()
        v1, v2 = b.views
        norm = {"mean": list(b.spec.mean), "std": list(b.spec.std)}
        tf = BYOLTransform(
            view_1_transform=BYOLView1Transform(input_size=b.size, gaussian_blur=v1.blur_p, normalize=norm),
            view_2_transform=BYOLView2Transform(input_size=b.size, gaussian_blur=v2.blur_p, normalize=norm),
        )
        w = a.workers
        self.loader = DataLoader(FileImages(b.files, tf), batch_size=b.batch, shuffle=True, drop_last=True,
                                 num_workers=w, pin_memory=b.cuda, persistent_workers=w > 0,
                                 generator=torch.Generator().manual_seed(a.seed))

    def step(self, x0: torch.Tensor, x1: torch.Tensor) -> None:
        """The loop body of lightly's example: cosine momentum, EMA, four passes, symmetric loss."""
        from lightly.models.utils import update_momentum
        from lightly.utils.scheduler import cosine_schedule

        b = self.b
        m = cosine_schedule(b.k, b.cfg.total_steps, b.cfg.tau_base, 1)
        update_momentum(self.net.backbone, self.net.backbone_momentum, m=m)
        update_momentum(self.net.projection_head, self.net.projection_head_momentum, m=m)
        x0, x1 = x0.to(b.dev, non_blocking=True), x1.to(b.dev, non_blocking=True)
        if b.cuda:
            x0, x1 = x0.contiguous(memory_format=torch.channels_last), x1.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=b.cuda):  # the precision TrainStep uses
            p0, z0 = self.net(x0), self.net.forward_momentum(x0)
            p1, z1 = self.net(x1), self.net.forward_momentum(x1)
            loss = 0.5 * (self.criterion(p0, z1) + self.criterion(p1, z0))
        loss.backward()
        self.opt.step()
        self.opt.zero_grad()
        b.loss_sum += loss.detach()
        b.k += 1

    def train(self) -> float:
        it = iter(self.loader)  # a fresh epoch: nothing prefetched is billed to the timed steps
        return self.b.timed(lambda: self.step(*next(it)))

    def model_only(self) -> float:
        return self.b.timed(lambda: self.step(*self.b.synthetic))

    def aug_only(self) -> float:
        it = iter(self.loader)
        return self.b.timed(lambda: next(it))


# ----------------------------------------------------------------------------- end to end

def pretrain_e2e(a: argparse.Namespace, data: Path) -> float:
    """Cross-check: img/s of ``sslprobe.pretrain`` itself from its metrics.jsonl (first window dropped)."""
    with tempfile.TemporaryDirectory() as out:
        sp.pretrain(data, out=out, model=a.model, image_size=a.image_size, batch_size=a.batch_size,
                    max_steps=a.warmup + a.steps, optimizer=a.optimizer, tau_base=a.tau_base,
                    proj_hidden=a.proj_hidden, proj_dim=a.proj_dim, blur=a.blur, seed=a.seed, device=a.device,
                    workers=a.workers, log_every=a.warmup, show_progress=False)
        return logged_rate(Path(out), batch=a.batch_size, after=a.warmup)


def logged_rate(out: Path, *, batch: int, after: int) -> float:
    """img/s of a pretrain run from its metrics.jsonl windows that start at step ``after`` or later (the earlier
    windows hold the warm-up steps)."""
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    recs = [r for r in recs if "img_per_s" in r]
    imgs = secs = 0.0
    for prev, rec in itertools.pairwise(recs):
        if prev["step"] >= after:
            n = (rec["step"] - prev["step"]) * batch
            imgs, secs = imgs + n, secs + n / rec["img_per_s"]
    return imgs / secs if secs else float("nan")


# ----------------------------------------------------------------------------- driver

def run_config(a: argparse.Namespace) -> dict:
    """Build, time every row --repeats times (interleaved), print the table; return the results."""
    cache = Path(a.cache_dir)
    if a.data:
        data, what = Path(a.data), "given folder"
    elif a.synthetic_jpeg:
        n, w, h = a.synthetic_jpeg
        data = synthetic_folder(cache / f"synthetic-jpeg-{n}-{w}x{h}", n=n, width=w, height=h, ext="jpg")
        what = f"generated {w}x{h} JPEG (quality 90)"
    else:
        data, what = default_data(cache, per_class=a.per_class, synthetic_n=10 * a.per_class or 60_000)
    b = Bench(a, data)
    rows = {k: f for k, f in b.rows().items() if not a.only or any(w in k for w in a.only)}
    runs: dict[str, list[float]] = {k: [] for k in rows}
    for _ in range(a.repeats):
        for name, fn in rows.items():
            b.row = name
            runs[name].append(fn())
    med = {k: statistics.median(v) for k, v in runs.items()}
    if a.e2e and a.small_stem in (None, b.size <= SMALL_INPUT):  # pretrain() picks the stem by this rule
        try:
            med["sslprobe: pretrain() end to end (1 run)"] = pretrain_e2e(a, data)
        except Exception as e:  # noqa: BLE001 -- a failing cross-check must not lose the table above
            print(f"pretrain() cross-check skipped: {type(e).__name__}: {e}", file=sys.stderr)

    import lightly
    import timm

    v1, v2 = b.views
    head = {
        "versions": {"sslprobe": sslprobe.__version__, "lightly": lightly.__version__, "torch": torch.__version__,
                     "timm": timm.__version__},
        "device": str(b.dev), "device_name": torch.cuda.get_device_name(b.dev) if b.cuda else _cpu_name(),
        "threads": torch.get_num_threads(), "workers": a.workers, "model": b.spec.model, "image_size": b.size,
        "small_stem": b.spec.small_stem, "batch": b.batch, "heads": f"{a.proj_hidden}->{a.proj_dim}",
        "optimizer": b.cfg.optimizer, "precision": "bf16 autocast + channels_last" if b.cuda else "fp32",
        "blur_p": [v1.blur_p, v2.blur_p], "data": f"{data} ({len(b.files):,} files; {what})",
        "ram_cache": b.source.ram is not None, "store_px": b.store, "decode_to_store_s": round(b.decode_s, 2),
        "warmup": a.warmup, "steps": a.steps, "repeats": a.repeats,
    }
    cpu = {k: statistics.median(v) for k, v in b.cpu_rates.items()}
    print_table(head, med, runs, cpu)
    return {"config": head, "median_img_per_s": med, "runs": runs, "median_img_per_cpu_s": cpu,
            "cpu_runs": b.cpu_rates}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return f"{os.cpu_count()} cores"


def print_table(head: dict, med: dict[str, float], runs: dict[str, list[float]], cpu: dict[str, float]) -> None:
    h = head
    print(f"\n{h['model']} {h['image_size']} px{' small stem' if h['small_stem'] else ''}, batch {h['batch']}, "
          f"heads {h['heads']}, {h['optimizer']}, {h['precision']}, blur p {h['blur_p'][0]}/{h['blur_p'][1]}")
    print(f"device {h['device']} ({h['device_name']}), {h['threads']} threads, {h['workers']} workers; "
          + ", ".join(f"{k} {v}" for k, v in h["versions"].items()))
    print(f"data {h['data']}; sslprobe RAM cache: {'yes' if h['ram_cache'] else 'no'} "
          f"(store {h['store_px']} px, one-off decode {h['decode_to_store_s']} s); {h['steps']} timed steps after "
          f"{h['warmup']}, "
          f"median of {h['repeats']}")
    lightly = next((v for k, v in med.items() if k.startswith("lightly:")), float("nan"))
    model = med.get(MODEL_ONLY, float("nan"))
    width = max(len(k) for k in med) + 2
    lcpu = next((v for k, v in cpu.items() if k.startswith("lightly:")), float("nan"))
    print(f"\n{'pipeline':<{width}}{'img/s':>9}{'x lightly':>11}{'x model-only':>14}{'img/CPU-s':>11}"
          f"{'x lightly':>11}   img/s per repeat")
    for k, v in med.items():
        spread = " ".join(f"{x:,.0f}" for x in runs.get(k, []))
        c = cpu.get(k, float("nan"))
        print(f"{k:<{width}}{v:>9,.0f}{v / lightly:>11.2f}{v / model:>14.2f}{c:>11,.1f}{c / lcpu:>11.2f}   {spread}")


PRESETS = {
    # ResNet-50 at 224 px from JPEG files (the H100 anchor: lightly 480 img/s, model-only 1,410)
    "gpu-r50": {"model": "resnet50", "image_size": 224, "batch_size": 256, "synthetic_jpeg": (12_800, 500, 375),
                "stream": "also", "warmup": 10, "steps": 30},
    # ResNet-18 small stem at 32 px on Fashion-MNIST (lightly 7,890 img/s on an H100)
    "gpu-r18": {"model": "resnet18", "image_size": 32, "batch_size": 512, "per_class": 0, "compile": True,
                "warmup": 10, "steps": 30},
}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=["gpu", *PRESETS], help="gpu = gpu-r50 then gpu-r18 in one command")
    ap.add_argument("--model", default="test_resnet")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per row and repeat")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps before each timed run")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--workers", type=int, help="DataLoader workers for both sides (default: all cores, at most 16)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--data", help="folder of images (default: Fashion-MNIST train folder, written once)")
    ap.add_argument("--per-class", type=int, default=1000, help="Fashion-MNIST images per class (0 = all 60k)")
    ap.add_argument("--synthetic-jpeg", type=int, nargs=3, metavar=("N", "W", "H"), help="generate N JPEGs of W×H")
    ap.add_argument("--cache-dir", default=os.path.join(tempfile.gettempdir(), "sslprobe-bench"))
    ap.add_argument("--small-stem", action=argparse.BooleanOptionalAction, default=None,
                    help="default: sslprobe's rule (on at ≤ 64 px)")
    ap.add_argument("--blur", action=argparse.BooleanOptionalAction, default=None,
                    help="default: sslprobe's rule (off at ≤ 64 px); lightly gets the same probabilities")
    ap.add_argument("--proj-hidden", type=int, default=4096)
    ap.add_argument("--proj-dim", type=int, default=256)
    ap.add_argument("--optimizer", default="auto", choices=["auto", "lars", "sgd", "adamw"])
    ap.add_argument("--tau-base", type=float, default=0.996)
    ap.add_argument("--compile", action="store_true", help="also time sslprobe's step under torch.compile")
    ap.add_argument("--stream", default="auto", choices=["auto", "also", "only"],
                    help="sslprobe's streamed source (no RAM cache): auto = only where pretrain() would stream")
    ap.add_argument("--no-proto", action="store_true",
                    help="accepted for old command lines; the prototype rows became sslprobe's own CPU path")
    ap.add_argument("--only", nargs="+", metavar="WORD", help="time only the rows whose name holds one of these")
    ap.add_argument("--no-e2e", dest="e2e", action="store_false", help="skip the pretrain() cross-check")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the results here")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    a = parse(argv)
    if a.workers is None:
        a.workers = min(16, os.cpu_count() or 1)
    configs = []
    if a.preset:
        for name in (["gpu-r50", "gpu-r18"] if a.preset == "gpu" else [a.preset]):
            c = argparse.Namespace(**vars(a))
            for k, v in PRESETS[name].items():
                setattr(c, k, v)
            configs.append((name, c))
    else:
        configs.append(("cli", a))
    results = {}
    for name, c in configs:
        results[name] = run_config(c)
        if a.json:  # after each config, so a time-boxed run keeps what it finished
            write_json(a.json, results)


if __name__ == "__main__":
    main()
