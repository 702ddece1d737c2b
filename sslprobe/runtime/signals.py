"""Ctrl-C and SIGTERM as a request to stop between steps (pretraining and fine-tuning save, then stop)."""
from __future__ import annotations

import signal
import threading
from typing import Any


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
