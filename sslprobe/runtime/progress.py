"""sslprobe's one progress layout (rich, on stderr) and the progress bar every command shows, or its silent stand-in.

rich is imported inside ``rich_progress`` so that importing a command stays cheap.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


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
