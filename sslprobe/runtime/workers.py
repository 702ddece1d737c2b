"""How many decode workers a DataLoader gets by default."""
from __future__ import annotations

import os


def default_workers() -> int:
    """Decode workers: leave one core for the main process, at most 8."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(8, n - 1))
