"""What a long BYOL run shows and records: metrics.jsonl, collapse warnings, online kNN, loss curve.

metrics.jsonl has one JSON object per logged step (``step, epoch, loss, lr, tau, img_per_s,
data_wait, proj_std``) plus ``{"epoch", "step", "knn_top1"}`` lines from the online kNN check. A
resumed run first drops every line past its checkpoint's step (and a line half-written by a
kill), so the file reads as one uninterrupted run. Between two logged steps a :class:`LossMeter`
sums the steps' losses on the device; :class:`RunLog` sends each logged window to the file, the
progress bar and, once, the collapse warning.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sslprobe.knn import knn_votes
from sslprobe.runtime.progress import progress_bar

COLLAPSE_FRACTION = 0.1  # warn below this fraction of the healthy 1/√D


def collapse_threshold(proj_dim: int) -> float:
    """proj_std below which the projections count as collapsed: 0.1 × 1/√D."""
    return COLLAPSE_FRACTION / math.sqrt(proj_dim)


class MetricsLog:
    """Append-only metrics.jsonl that a resumed run trims back to its checkpoint."""

    def __init__(self, path: str | os.PathLike, *, resume_step: int | None):
        self.path = Path(path)
        keep: list[str] = []
        if resume_step is not None and self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue  # a line cut short by a kill
                if isinstance(rec, dict) and rec.get("step", 0) <= resume_step:
                    keep.append(line)
        self.path.write_text("".join(x + "\n" for x in keep))
        self.f = open(self.path, "a")  # noqa: SIM115  (held for the run; close() ends it)

    def write(self, rec: dict[str, Any]) -> None:
        self.f.write(json.dumps(rec) + "\n")
        self.f.flush()

    def close(self) -> None:
        self.f.close()

    def records(self) -> list[dict[str, Any]]:
        out = []
        for line in self.path.read_text().splitlines():
            with contextlib.suppress(ValueError):  # a line cut short by a kill
                out.append(json.loads(line))
        return out


def check_collapse(proj_std: float, *, proj_dim: int, step: int) -> str | None:
    """A warning text when the online projections have collapsed, else None."""
    thr = collapse_threshold(proj_dim)
    if proj_std < thr:
        return (f"step {step}: projections look collapsed (std of normalised projections {proj_std:.4f} < {thr:.4f}, "
                f"healthy ≈ {1 / math.sqrt(proj_dim):.4f}); try a lower --lr, a higher --tau-base or a longer warm-up")
    return None


def describe(*, epoch: int, step: int, total: int, loss: float, lr: float, tau: float, rate: float, wait: float) -> str:
    """The progress bar's text: epoch, step, loss, lr, τ, throughput and data-wait share."""
    return (f"pretrain ep {epoch} · step {step}/{total} · loss {loss:.4f} · lr {lr:.3g} · τ {tau:.5f} · "
            f"{rate:,.0f} img/s · data wait {wait:.0%}")


@dataclass(frozen=True)
class Window:
    """Means over the steps since the previous log: loss, proj_std, throughput and data-wait share."""

    loss: float
    proj_std: float
    img_per_s: float
    data_wait: float


class LossMeter:
    """The steps' loss and proj_std summed on the device between two logs, with images and data wait beside.

    Adding is asynchronous (device tensors, no host sync); :meth:`take` reads the sums once per log.
    ``loss`` is the mean of the last window taken: what a checkpoint and the summary record.
    """

    def __init__(self, device: torch.device, *, loss: float | None = None):
        self._loss, self._std = torch.zeros((), device=device), torch.zeros((), device=device)
        self.steps, self.images, self.wait = 0, 0, 0.0
        self.since = time.perf_counter()
        self.loss = float("nan") if loss is None else loss  # a resumed run starts from its checkpoint's

    def add(self, loss: torch.Tensor, proj_std: torch.Tensor, *, images: int, wait: float) -> None:
        """One step's loss and proj_std (device scalars), the images it used and the seconds it waited for them."""
        self._loss += loss
        self._std += proj_std
        self.steps += 1
        self.images += images
        self.wait += wait

    def take(self) -> Window:
        """The window since the last take (needs a step added since), and a fresh one started."""
        loss, std = float(self._loss) / self.steps, float(self._std) / self.steps  # the only host sync
        now = time.perf_counter()
        dt = max(now - self.since, 1e-9)
        window = Window(loss=loss, proj_std=std, img_per_s=self.images / dt, data_wait=self.wait / dt)
        self._loss.zero_(), self._std.zero_()
        self.steps, self.images, self.wait, self.since, self.loss = 0, 0, 0.0, now, loss
        return window


class RunLog:
    """Where each logged window goes: metrics.jsonl (main rank: ``log``), the progress bar, the collapse warning.

    A context manager: the progress bar (``show``) lives inside the ``with``. The first collapsed
    window warns (``warn``: on the rank that prints); every collapsed record says so in the file.
    ``warnings`` collects the texts for the summary.
    """

    def __init__(self, log: MetricsLog | None, *, show: bool, start: int, total: int, steps_per_epoch: int,
                 proj_dim: int, warn: bool):
        self.log, self.show, self.start, self.total, self.spe = log, show, start, total, steps_per_epoch
        self.proj_dim, self.warn = proj_dim, warn
        self.warnings: list[str] = []
        self._bar: contextlib.AbstractContextManager[Any] | None = None

    def __enter__(self) -> RunLog:
        self._bar = progress_bar(self.show)
        self.bar = self._bar.__enter__()
        self.task = self.bar.add_task("pretrain", total=self.total, completed=self.start)
        return self

    def __exit__(self, *exc: Any) -> bool | None:
        return self._bar.__exit__(*exc) if self._bar is not None else None

    def window(self, step: int, w: Window, *, lr: float, tau: float) -> None:
        """Record the window that ends after run step ``step`` (1-based count of steps done)."""
        epoch = (step - 1) // self.spe
        msg = check_collapse(w.proj_std, proj_dim=self.proj_dim, step=step)
        if msg and not self.warnings:
            self.warnings.append(msg)
            if self.warn:
                warnings.warn(msg, RuntimeWarning, stacklevel=2)
        if self.log is not None:
            self.log.write({"step": step, "epoch": epoch, "loss": round(w.loss, 6), "lr": lr, "tau": tau,
                            "img_per_s": round(w.img_per_s, 1), "data_wait": round(w.data_wait, 4),
                            "proj_std": round(w.proj_std, 6), **({"collapsed": True} if msg else {})})
        self.bar.update(self.task, completed=step, description=describe(
            epoch=epoch, step=step, total=self.total, loss=w.loss, lr=lr, tau=tau, rate=w.img_per_s, wait=w.data_wait))

    def knn(self, step: int, top1: float) -> None:
        if self.log is not None:
            self.log.write({"step": step, "epoch": (step - 1) // self.spe, "knn_top1": round(top1, 4)})


def knn_due(step: int, *, steps_per_epoch: int, every: int, total: int, final: bool) -> bool:
    """Whether the online kNN runs after ``step`` steps: at the end of every ``every``-th epoch, and
    (``final``, once the loop is over) for the last weights of the schedule when no epoch ended there."""
    if final:
        return step == total and step % steps_per_epoch != 0
    return step % steps_per_epoch == 0 and (step // steps_per_epoch) % every == 0


class KnnEval:
    """Online kNN top-1 on a labelled train/test pair, decoded once into RAM (keep them small)."""

    def __init__(self, train: str | os.PathLike, test: str | os.PathLike, *, size: int, device: torch.device,
                 workers: int, k: int = 20, channels: int = 3):
        from sslprobe.errors import SSLProbeError
        from sslprobe.images.datasets import ImageDataset, collate
        from sslprobe.images.folders import open_images
        from sslprobe.images.transforms import Uint8Transform

        self.device, self.k = device, k
        sets = []
        for name, path in (("--eval-train", train), ("--eval-test", test)):
            images = open_images(path)
            if not images.classes:
                raise SSLProbeError(f"{name} '{path}' has no class subfolders; kNN evaluation needs labelled images")
            loader = torch.utils.data.DataLoader(ImageDataset(images, Uint8Transform(size=size, channels=channels)),
                                                 batch_size=256,
                                                 num_workers=workers, collate_fn=collate)
            xs, ys = [], []
            for b in loader:
                if len(b.indices):
                    xs.append(b.images)
                    ys.append(b.labels)
            if not xs:
                raise SSLProbeError(f"{name} '{path}' has no readable image")
            sets.append((torch.cat(xs), torch.cat(ys), images.classes))
        (self.xtr, self.ytr, ctr), (self.xte, self.yte, cte) = sets
        if list(ctr) != list(cte):
            raise SSLProbeError(f"--eval-train and --eval-test have different classes ({len(ctr)} vs {len(cte)}); "
                                "use the train and test split of one labelled set")
        self.num_classes = len(ctr)

    @torch.no_grad()
    def _embed(self, backbone: torch.nn.Module, x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        out = []
        for i in range(0, len(x), 512):
            b = x[i:i + 512].to(self.device, non_blocking=True).float().div_(255)
            out.append(backbone((b - mean) / std).float())
        return torch.cat(out)

    def __call__(self, backbone: torch.nn.Module, *, mean: tuple[float, ...], std: tuple[float, ...]) -> float:
        """kNN (k=20, cosine, temperature-weighted) top-1 of ``backbone`` features; BN in eval mode."""
        m = torch.tensor(mean, device=self.device).view(1, -1, 1, 1)
        s = torch.tensor(std, device=self.device).view(1, -1, 1, 1)
        was = backbone.training
        backbone.eval()
        try:
            bank, q = self._embed(backbone, self.xtr, m, s), self._embed(backbone, self.xte, m, s)
        finally:
            backbone.train(was)
        votes = knn_votes(bank, self.ytr.to(bank.device), q, ks=(self.k,), num_classes=self.num_classes)[self.k]
        return float((votes.argmax(1).cpu() == self.yte).float().mean())


def loss_curve(records: list[dict[str, Any]], path: str | os.PathLike) -> str:
    """Plot loss (and kNN top-1 when logged) against step into a PNG; returns the path or why not."""
    try:
        import matplotlib.figure  # noqa: F401  (drawn through Figure objects, as every sslprobe plot: plots.py)
    except ImportError:
        return "skipped: matplotlib is not installed (pip install matplotlib)"
    from sslprobe.plots import loss_curve_png

    pts = [(r["step"], r["loss"]) for r in records if "loss" in r and r["loss"] is not None]
    knn = [(r["step"], r["knn_top1"]) for r in records if "knn_top1" in r]
    if not pts:
        return "skipped: no logged loss"
    loss_curve_png(pts, knn, Path(path))
    return str(path)
