"""One progress display for a whole study: which arm of how many, which stage, its rate and the time left.

The commands a study runs are called with their own bars off (rich allows one live display at a
time); the study's display shows two lines instead: the study (stages done of all stages, time
left) and the current stage. Pretraining reports through its metrics.jsonl, which a watcher thread
reads twice a second — the loop itself is not touched.
"""
from __future__ import annotations

import contextlib
import json
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any


class StudyProgress:
    """The study's display on stderr (``show``), or a silent stand-in with the same methods."""

    def __init__(self, *, show: bool, stages: int):
        self.show, self.stages = show, stages
        self.bar: Any = None
        self.study_task = self.stage_task = 0

    def __enter__(self) -> StudyProgress:
        if not self.show:
            return self
        from sslprobe.runtime.progress import rich_progress

        self.bar = rich_progress(rate_field=True)
        self.bar.__enter__()
        self.study_task = self.bar.add_task("study", total=self.stages, rate="stages")
        self.stage_task = self.bar.add_task("", total=None, rate="")
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.bar is not None:
            self.bar.__exit__(kind, exc, tb)

    def stage(self, *, arm: str, index: int, arms: int, stage: str, total: int | None = None) -> None:
        """A new stage: 'arm 2/3 byol · pretrain', its bar reset to ``total`` (None: no known length)."""
        if self.bar is None:
            return
        self.bar.update(self.study_task, description=f"study · arm {index}/{arms} {arm}" if arms else "study")
        self.bar.reset(self.stage_task, total=total, description=f"  {stage}", rate="")

    def note(self, text: str) -> None:
        """A line the user should read before the work goes on (above the live display when there is one)."""
        if self.bar is not None:
            self.bar.console.print(text, markup=False, highlight=False, style="yellow")
        else:
            print(text, file=sys.stderr, flush=True)

    def advance(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.advance(self.stage_task, n)

    def done(self) -> None:
        """The current stage finished: one more of the study's stages."""
        if self.bar is not None:
            self.bar.advance(self.study_task, 1)

    def update(self, *, completed: int, rate: str) -> None:
        if self.bar is not None:
            self.bar.update(self.stage_task, completed=completed, rate=rate)

    @contextlib.contextmanager
    def watching(self, metrics: Path) -> Iterator[None]:
        """While inside, the stage's bar follows the last step and img/s a pretraining run logged."""
        if self.bar is None:
            yield
            return
        stop = threading.Event()
        thread = threading.Thread(target=self._follow, args=(metrics, stop), daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def _follow(self, metrics: Path, stop: threading.Event) -> None:
        sized = False
        while not stop.wait(0.5):
            if not sized:  # the run's length is known once it has written its config
                sized = self._size_from(metrics.parent / "config.json")
            last = _last_record(metrics)
            if last is not None:
                self.update(completed=int(last["step"]), rate=f"{last.get('img_per_s', 0):,.0f} img/s")

    def _size_from(self, config: Path) -> bool:
        try:
            total = int(json.loads(config.read_text())["total_steps"])
        except (OSError, ValueError, KeyError, TypeError):
            return False
        self.bar.update(self.stage_task, total=total)
        return True


def _last_record(metrics: Path) -> dict[str, Any] | None:
    """The last complete loss record of a metrics.jsonl (None before the first)."""
    try:
        lines = metrics.read_text().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        with contextlib.suppress(ValueError):
            rec = json.loads(line)
            if isinstance(rec, dict) and "loss" in rec and "step" in rec:
                return rec
    return None
