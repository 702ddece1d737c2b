"""Where work runs, how it shows progress and how it is stopped: device choice, exact float32 matmuls, worker
count, progress bars, Ctrl-C/SIGTERM as a request to stop between steps."""
from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

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


def default_workers() -> int:
    """Decode workers: leave one core for the main process, at most 8."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(8, n - 1))


class _Quiet:
    def add_task(self, *a: Any, **k: Any) -> int:
        return 0

    def update(self, *a: Any, **k: Any) -> None:
        pass

    def advance(self, *a: Any, **k: Any) -> None:
        pass


def rich_progress(*, rate_field: bool = False) -> Any:
    """sslprobe's one rich progress layout on stderr: description, bar, n/total, [a ``rate`` field,]
    elapsed and time left (progress_bar and the study's display both use it)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    rate = (TextColumn("{task.fields[rate]}"),) if rate_field else ()
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), *rate, TimeElapsedColumn(),
                    TimeRemainingColumn(), console=Console(stderr=True), transient=False)


@contextlib.contextmanager
def progress_bar(show: bool = True) -> Iterator[Any]:
    """A rich progress bar on stderr (rate and time left), or a silent stand-in."""
    if not show:
        yield _Quiet()
        return
    with rich_progress() as bar:
        yield bar


class StopSignals:
    """SIGINT/SIGTERM set ``hit`` (the signal's name), which a training loop checks between steps to save and stop;
    a second Ctrl-C interrupts at once. Installed only in the main thread (Python delivers signals there alone)."""

    def __init__(self) -> None:
        self.hit: str | None = None
        self.old: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.hit is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.hit = signal.Signals(signum).name

    def __exit__(self, *exc: object) -> bool:
        for sig, h in self.old.items():
            signal.signal(sig, h)
        return False
