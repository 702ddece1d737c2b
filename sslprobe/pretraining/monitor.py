"""What a long BYOL run shows and records: metrics.jsonl, collapse warnings, online kNN, loss curve.

metrics.jsonl has one JSON object per logged step (``step, epoch, loss, lr, tau, img_per_s,
data_wait, proj_std``) plus ``{"epoch", "step", "knn_top1"}`` lines from the online kNN check. A
resumed run first drops every line past its checkpoint's step (and a line half-written by a
kill), so the file reads as one uninterrupted run.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path
from typing import Any

import torch

from sslprobe.knn import knn_votes

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


class KnnEval:
    """Online kNN top-1 on a labelled train/test pair, decoded once into RAM (keep them small)."""

    def __init__(self, train: str | os.PathLike, test: str | os.PathLike, *, size: int, device: torch.device,
                 workers: int, k: int = 20):
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
            loader = torch.utils.data.DataLoader(ImageDataset(images, Uint8Transform(size=size)), batch_size=256,
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
