"""A fitted probe as a file: save it next to the report, load it, and classify new feature sets.

``probe.safetensors`` holds the weights (K, D), bias (K,) and the standardisation mean/std (D,)
as tensors, and the class names, C and feature width as metadata — no pickle, nothing executed.
"""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from sslprobe.errors import SSLProbeError
from sslprobe.fileio import atomic_path, csv_text
from sslprobe.probing.features import FeatureSet, as_feature_set
from sslprobe.probing.solver import LogReg, Standardizer
from sslprobe.runtime.device import exact_fp32


@dataclass(frozen=True)
class ProbeModel:
    """Raw features → class scores: ((x − mean) / std) @ weight.T + bias."""

    weight: torch.Tensor  # (K, D) float32
    bias: torch.Tensor  # (K,)
    mean: torch.Tensor  # (D,) zeros when unstandardised
    std: torch.Tensor  # (D,) ones when unstandardised
    classes: tuple[str, ...]
    C: float

    @classmethod
    def from_fit(cls, model: LogReg, scaler: Standardizer, *, classes: list[str], C: float) -> ProbeModel:
        d = model.coef.shape[1]
        mean = scaler.mean if scaler.mean is not None else torch.zeros(d, dtype=torch.float64)
        std = scaler.std if scaler.std is not None else torch.ones(d, dtype=torch.float64)
        return cls(model.coef.detach().float().cpu(), model.intercept.detach().float().cpu(),
                   mean.float().cpu(), std.float().cpu(), tuple(classes), float(C))

    def save(self, path: str | os.PathLike) -> None:
        """Write safetensors atomically (tensors + JSON metadata)."""
        from safetensors.torch import save_file

        meta = {"classes": json.dumps(list(self.classes)), "C": repr(self.C), "format": "sslprobe-probe/1"}
        tensors = {"weight": self.weight.contiguous(), "bias": self.bias.contiguous(),
                   "mean": self.mean.contiguous(), "std": self.std.contiguous()}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)

    @classmethod
    def load(cls, path: str | os.PathLike) -> ProbeModel:
        """Read a probe written by ``save`` (``sslprobe probe --out DIR`` → DIR/probe.safetensors)."""
        from safetensors import SafetensorError, safe_open

        p = Path(path)
        if p.is_dir():
            p = p / "probe.safetensors"
        if not p.is_file():
            raise SSLProbeError(f"probe '{p}' not found; run `sslprobe probe … --out DIR` and pass "
                                "DIR/probe.safetensors")
        try:
            with safe_open(str(p), framework="pt", device="cpu") as f:
                meta = f.metadata() or {}
                t = {k: f.get_tensor(k) for k in ("weight", "bias", "mean", "std")}
            classes = tuple(json.loads(meta["classes"]))
            C = float(meta.get("C", "nan"))
        except (SafetensorError, OSError, ValueError, KeyError, RuntimeError) as e:
            raise SSLProbeError(f"cannot read probe '{p}' ({e}); it must be a probe.safetensors from "
                                "`sslprobe probe`") from None
        k, d = t["weight"].shape
        if t["bias"].shape != (k,) or t["mean"].shape != (d,) or t["std"].shape != (d,) or len(classes) != k:
            raise SSLProbeError(f"probe '{p}' is inconsistent (weight {k}×{d}, {len(classes)} classes); "
                                "re-run the probe")
        return cls(t["weight"].float(), t["bias"].float(), t["mean"].float(), t["std"].float(), classes, C)

    def probabilities(self, features: torch.Tensor, *, block: int = 65536) -> torch.Tensor:
        """(N, K) softmax probabilities for raw (N, D) features, in row blocks."""
        if features.shape[1] != self.weight.shape[1]:
            raise SSLProbeError(f"feature width {features.shape[1]} differs from the probe's {self.weight.shape[1]}; "
                                "extract with the model and layer the probe was trained on")
        out = []
        with exact_fp32():
            for i in range(0, features.shape[0], block):
                z = (features[i:i + block].float() - self.mean) / self.std
                out.append(torch.softmax(torch.addmm(self.bias, z, self.weight.T), 1))
        return torch.cat(out)


def predict(features: str | os.PathLike | FeatureSet, *, probe: str | os.PathLike | ProbeModel,
            out: str | os.PathLike | None = None) -> list[dict]:
    """Classify every row: [{"path", "prediction", "probability"}]; ``out`` also writes them as CSV.

    Rows without a path (a bare .safetensors) are named by their index.
    """
    model = probe if isinstance(probe, ProbeModel) else ProbeModel.load(probe)
    fs = as_feature_set(features, labels_required=False)
    prob, pred = model.probabilities(fs.features).max(1)
    paths = fs.paths or tuple(str(i) for i in range(fs.features.shape[0]))
    rows = [{"path": p, "prediction": model.classes[int(c)], "probability": float(q)}
            for p, c, q in zip(paths, pred.tolist(), prob.tolist())]
    if out is not None:
        write_predictions(rows, out)
    return rows


def write_predictions(rows: list[dict], out: str | os.PathLike) -> None:
    """The predictions CSV (path, prediction, probability), atomically; text cells guarded against formulas."""
    with atomic_path(out) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "prediction", "probability"])
        w.writeheader()
        w.writerows({**r, "path": csv_text(r["path"]), "prediction": csv_text(r["prediction"]),
                     "probability": f"{r['probability']:.6f}"} for r in rows)


__all__ = ["ProbeModel", "predict", "write_predictions"]
