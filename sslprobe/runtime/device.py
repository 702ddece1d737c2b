"""Where work runs and how exactly: device choice (``auto`` → CUDA when there is one) and exact float32 matmuls."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from sslprobe.errors import SSLProbeError


def pick_device(device: str = "auto") -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda`` without a GPU is a clear error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SSLProbeError("--device cuda asked for, but no CUDA GPU is visible; use --device cpu or auto")
    try:
        return torch.device(device)
    except RuntimeError as e:
        raise SSLProbeError(f"unknown device '{device}'; use auto, cpu or cuda") from e


@contextlib.contextmanager
def exact_fp32() -> Iterator[None]:
    """Full float32 matmuls inside (TF32's 10-bit mantissa stalls L-BFGS line searches at weak
    regularisation); only leaves not already exact are touched, and restored exactly after."""
    leaves = [torch.backends.cuda.matmul, torch.backends.mkldnn.matmul]
    inherit_exact = torch.backends.fp32_precision in ("none", "ieee")
    saved = []
    for leaf in leaves:
        prev = leaf.fp32_precision
        if prev == "ieee" or (prev == "none" and inherit_exact):
            continue
        saved.append((leaf, prev))
        leaf.fp32_precision = "ieee"
    try:
        yield
    finally:
        for leaf, prev in saved:
            leaf.fp32_precision = prev
