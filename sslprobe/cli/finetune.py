"""`sslprobe finetune`: parse → check (the config) → call → render."""
from __future__ import annotations

import json

import typer

from sslprobe.cli.app import app, err, interactive
from sslprobe.cli.params import AsJson, config_command
from sslprobe.config.finetune import FinetuneConfig
from sslprobe.distributed import env_rank


@config_command(app, FinetuneConfig, epilog="Example: sslprobe finetune photos/train --weights "
                                            "runs/byol/backbone.safetensors --test photos/test --out runs/ft")
def finetune(config: FinetuneConfig, as_json: AsJson = False) -> None:
    """Fine-tune a backbone and a new linear head end to end on labelled images; the epoch chosen on validation.

    Reports as `probe` does (report.json, per-class CSVs, confusion matrix, learning curve); Ctrl-C saves a checkpoint
    and stops, --resume continues. Under `torchrun --nproc_per_node N -m sslprobe finetune …` it uses DDP
    (--batch-size is per process; the lr scales with the global batch).
    """
    from sslprobe.finetuning.finetune import finetune as run
    from sslprobe.finetuning.loop import FinetuneInterrupted
    from sslprobe.finetuning.report import render_finetune
    from sslprobe.probing.report import summary

    try:
        r = run(config, show_progress=not as_json and interactive())
    except FinetuneInterrupted as e:
        err(str(e))
        raise typer.Exit(130) from None
    if env_rank() != 0:  # torchrun: rank 0 reports for all
        return
    if as_json:
        typer.echo(json.dumps(summary(r)))
        return
    from rich.console import Console

    render_finetune(r, console=Console())
