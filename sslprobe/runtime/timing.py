"""Wall-clock seconds of a command's named phases (probe and fine-tune report them as ``seconds``)."""
from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator


class PhaseTimer:
    """Wall seconds of each named phase, measured around the phase itself, and the total since creation."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        t = time.perf_counter()
        yield
        self.seconds[name] = time.perf_counter() - t

    def total(self) -> float:
        return time.perf_counter() - self.start
