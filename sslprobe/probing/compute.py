"""Where and how one probe computes: the device, solver and storage precisions, host offload, the declared metric.

``Solver`` is resolved once from the probe's arguments and the size of its splits, then every step
builds its designs and C paths through it, so the choices (e.g. float64 for small problems, features
streamed from host memory when they would crowd the GPU) are made in one place (docs/probe.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from sslprobe.probing.holdout import Splits
from sslprobe.probing.search import PathState
from sslprobe.probing.solver import Design, Standardizer
from sslprobe.runtime.device import pick_device

DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16}
# "auto" precision solves in float64 up to this many fit-split elements (n·d): there it costs
# milliseconds, and float32 cannot resolve weak-regularisation optima (its line search stalls at
# the precision floor; on digits the C ≥ 1e4 points then differ by a row from the exact path).
AUTO_FLOAT64_ELEMENTS = 2**22


def resolve_dtype(dtype: str, n: int, d: int) -> str:
    """``auto``: float64 for small problems (exact weak-C fits at negligible cost), else float32."""
    if dtype != "auto":
        return dtype
    return "float64" if n * d <= AUTO_FLOAT64_ELEMENTS else "float32"


def offload(n: int, d: int, store: torch.dtype, dev: torch.device) -> bool:
    """Keep features in host memory (streamed per block) when they'd take over half the free GPU memory."""
    if dev.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(dev)
    return n * d * torch.finfo(store).bits // 8 > free // 2


@dataclass(frozen=True)
class Solver:
    """Where and how the probe's designs live and are fitted (device, precisions, the metric that ranks C and k)."""

    device: torch.device
    dtype: torch.dtype
    store: torch.dtype
    chunk_rows: int | None
    offload: bool
    max_iter: int
    num_classes: int
    metric: str  # the declared metric (--metric): it ranks C and kNN k

    @classmethod
    def for_splits(cls, splits: Splits, *, device: str, dtype: str, feature_dtype: str, chunk_rows: int | None,
                   max_iter: int, metric: str) -> Solver:
        """The solver for ``splits``: ``dtype`` "auto" sized by the fit split, offload by all train rows."""
        dev, store = pick_device(device), DTYPES[feature_dtype]
        compute = DTYPES[resolve_dtype(dtype, splits.Xf.shape[0], splits.X.shape[1])]
        return cls(dev, compute, store, chunk_rows, offload(*splits.X.shape, store, dev), max_iter, splits.K, metric)

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    def design(self, rows: torch.Tensor, scaler: Standardizer) -> Design:
        return Design(rows, scaler=scaler, device=self.device, dtype=self.dtype, store=self.store,
                      chunk_rows=self.chunk_rows, offload=self.offload)

    def path(self, Zf: Design, yf: torch.Tensor, Zv: Design, yv: torch.Tensor, *, on_fit=None,
             **stops: Any) -> PathState:
        """A C path fitting ``Zf`` (labels ``yf`` in [0, K)) scored on ``Zv``; ``stops`` override
        PathState's tol / rtol / max_iter."""
        return PathState(Zf, yf, Zv, yv, torch.unique(yf), self.num_classes, **{"max_iter": self.max_iter, **stops},
                         metric=self.metric, on_fit=on_fit)


__all__ = ["AUTO_FLOAT64_ELEMENTS", "DTYPES", "Solver", "offload", "resolve_dtype"]
