"""`sslprobe pretrain` and `sslprobe views`: parse → check (the config) → call → render."""
from __future__ import annotations

from pathlib import Path

import typer

from sslprobe.cli.app import app, err
from sslprobe.cli.params import config_command
from sslprobe.config.pretrain import PretrainConfig, PreviewConfig
from sslprobe.distributed import env_rank
from sslprobe.results import PretrainResult


@config_command(app, PreviewConfig,
                epilog="Example: sslprobe views photos/ --image-size 96 --rot90-p 0.75 --out views.png")
def views(config: PreviewConfig) -> None:
    """Draw the view pairs `pretrain` would make with the same options, to look at before a long run."""
    from sslprobe.pretraining.preview import preview_views

    r = preview_views(config)
    err(f"{r['pairs']} view pairs of step {r['step']} ({r['image_size']} px views cut from a {r['store_size']} px "
        f"store) → {config.out}")


@config_command(app, PretrainConfig, epilog="Example: sslprobe pretrain photos/ --model resnet18 --image-size 96 "
                                            "--epochs 100 --out runs/byol")
def pretrain(config: PretrainConfig) -> None:
    """BYOL self-supervised pretraining of a timm backbone on unlabeled images.

    Checkpoints go to OUT/checkpoints; Ctrl-C saves one and stops. Under `torchrun --nproc_per_node N -m sslprobe
    pretrain …` the run uses DDP (--batch-size is per process; the lr scales with the global batch).
    """
    from sslprobe.pretraining.pretrain import PretrainInterrupted
    from sslprobe.pretraining.pretrain import pretrain as run

    try:
        s = run(config)
    except PretrainInterrupted as e:
        err(str(e))
        raise typer.Exit(130) from None
    if env_rank() == 0:  # torchrun: rank 0 reports for all
        _render_pretrain(s, resumed=config.resume != "no")


def _render_pretrain(s: PretrainResult, *, resumed: bool) -> None:
    """pretrain's summary as stderr lines: where it resumed, how it ended, what to do next."""
    if resumed:
        step = s.resumed_from
        err(f"resumed from step {step}" if step is not None else "no checkpoint found: started a new run")
    knn = f"; kNN top-1 {s.knn_top1:.3f}" if s.knn_top1 is not None else ""
    err(f"{s.status}: {s.steps}/{s.total_steps} steps, final loss {s.final_loss:.4f}{knn}; "
        f"skipped {len(s.skipped)} files; backbone written to {Path(s.out) / 'backbone.safetensors'}")
    if not s.complete:
        err("continue with the same command plus --resume")
