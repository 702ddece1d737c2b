"""`sslprobe probe`, `compare` and `predict`: parse → check (the config) → call → render."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from sslprobe.cli.app import app, err, interactive
from sslprobe.cli.params import AsJson, config_command
from sslprobe.config import rules
from sslprobe.config.probe import CompareConfig, ProbeConfig
from sslprobe.errors import SSLProbeError


@config_command(app, ProbeConfig, epilog="Example: sslprobe probe feats/train --test feats/test --search binary "
                                         "--fractions 0.01,0.1,1 --out reports/byol")
def probe(config: ProbeConfig, as_json: AsJson = False) -> None:
    """Linear probe (multinomial logistic regression) and kNN on cached embeddings."""
    from sslprobe.probing.probe import probe as run
    from sslprobe.probing.report import render_probe, summary

    result = run(config, show_progress=not as_json and interactive())
    if as_json:
        typer.echo(json.dumps(summary(result)))
        return
    from rich.console import Console

    render_probe(result, console=Console())


@config_command(app, CompareConfig, epilog="Example: sslprobe compare byol=feats/byol random=feats/random "
                                           "pixels=feats/pixels --out reports/cmp")
def compare(config: CompareConfig, as_json: AsJson = False) -> None:
    """Probe several feature sets with one protocol and print one comparison table."""
    from sslprobe.probing.compare import compare as run
    from sslprobe.probing.report import render_comparison, summary

    rows = run(config)
    if as_json:
        typer.echo(json.dumps({name: summary(r) for name, r in rows}))
        return
    from rich.console import Console

    console = Console()
    render_comparison(rows, console=console)
    for name, r in rows:
        for w in r.warnings:
            console.print(f"warning: {name}: {w}", style="yellow", markup=False, highlight=False)


@app.command(epilog="Example: sslprobe predict feats/new --probe reports/byol/probe.safetensors --out preds.csv; "
                    "sslprobe predict photos/new --finetuned runs/ft/model.safetensors --out preds.csv")
def predict(
    data: Annotated[str, typer.Argument(
        help="With --probe: features (a directory from `extract` or a .safetensors file); with --finetuned: a folder "
             "of images or hf:NAME[:SPLIT].")],
    out: Annotated[Path, typer.Option(dir_okay=False, help="CSV to write: path, prediction, probability.")],
    probe_file: Annotated[Path | None, typer.Option(
        "--probe", help="probe.safetensors written by `sslprobe probe --out` (or its directory).")] = None,
    finetuned: Annotated[Path | None, typer.Option(
        help="model.safetensors written by `sslprobe finetune --out` (or its directory).")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass (--finetuned).")] = 128,
    device: Annotated[str, typer.Option(help="auto (CUDA if present), cpu or cuda.")] = "auto",
    workers: Annotated[int | None, typer.Option(
        min=0, help="Decode worker processes (default: cores − 1, at most 8).")] = None,
) -> None:
    """Classify feature rows with a saved linear probe, or images with a fine-tuned network."""
    if (probe_file is None) == (finetuned is None):
        raise SSLProbeError("give --probe PROBE (to classify extracted features) or --finetuned MODEL (to classify "
                            "images), one of them")
    if finetuned is not None:
        rules.image_source("DATA", data)
        rules.at_least("--batch-size", batch_size)
    for p in (data, probe_file, finetuned):
        if p is not None and not str(p).startswith("hf:") and not Path(p).exists():
            raise SSLProbeError(f"'{p}' does not exist")
    if probe_file is not None:
        from sslprobe.probing.predict import predict as run

        rows = run(data, probe=probe_file, out=out)
        err(f"{len(rows)} rows classified → {out}")
        return
    from sslprobe.finetuning.export import predict_images

    got = predict_images(data, model=finetuned, out=out, batch_size=batch_size, device=device, workers=workers,
                         show_progress=interactive())
    err(f"{len(got.rows)} images classified, {len(got.skipped)} skipped → {out}")
    for s in got.skipped[:10]:
        err(f"  skipped {s['path']}: {s['reason']}")
