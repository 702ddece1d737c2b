"""`sslprobe study` and `sslprobe demo`: parse → check (the config) → call → render (the study renders itself)."""
from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from sslprobe.cli.app import app, err, interactive
from sslprobe.cli.params import config_command
from sslprobe.config import rules
from sslprobe.config.study import StudyConfig


@config_command(app, StudyConfig,
                epilog="Example: sslprobe study photos/ --out study --model resnet18 --image-size 96 --minutes 30")
def study(config: StudyConfig) -> None:
    """Does BYOL on these images help? Every arm on one leakage-safe split, one report (report.html).

    Rerun the same command to continue after Ctrl-C: finished stages are reused, pretraining resumes.
    """
    from rich.console import Console

    from sslprobe.study.run import StudyInterrupted
    from sslprobe.study.run import study as run

    command = " ".join(["sslprobe", *map(shlex.quote, sys.argv[1:])])
    try:
        run(config.replace(command=command), show_progress=interactive(), console=Console())
    except StudyInterrupted as e:
        err(str(e))
        raise typer.Exit(130) from None


@app.command(epilog="Example: sslprobe demo --out sslprobe-demo")
def demo(
    out: Annotated[Path, typer.Option(
        file_okay=False, help="Working directory for the sample data, runs and features.")] = Path("sslprobe-demo"),
    steps: Annotated[int | None, typer.Option(
        help="BYOL steps (default: the tuned short run; the whole demo ~4 min on 2 CPU cores).")] = None,
    device: Annotated[str, typer.Option(help="auto (CUDA if present), cpu or cuda.")] = "auto",
) -> None:
    """A study on the built-in Fashion-MNIST sample: pretrain → extract → probe, baselines, the full report."""
    rules.at_least("--steps", steps)
    from rich.console import Console

    from sslprobe.demo import run_demo

    run_demo(out=out, steps=steps, device=device, console=Console())
