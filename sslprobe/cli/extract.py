"""`sslprobe extract` and `sslprobe cache`: parse → check (the config) → call → render."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from sslprobe.cli.app import app, err
from sslprobe.cli.params import config_command
from sslprobe.config.extract import ExtractConfig
from sslprobe.distributed import env_rank
from sslprobe.results import ExtractResult


@config_command(app, ExtractConfig, epilog="Example: sslprobe extract photos/train --weights "
                                           "runs/byol/backbone.safetensors --out feats/train")
def extract(config: ExtractConfig) -> None:
    """Embed images through a frozen backbone (or raw pixels) for the linear probe, through the cache."""
    from sslprobe.extraction.extract import extract as run

    m = run(config)
    if env_rank() == 0:  # torchrun: rank 0 reports for all
        _render_extract(m, out=config.out)


def _render_extract(m: ExtractResult, *, out: Path) -> None:
    c = m.cache
    cached = f", {c.hits} from cache, {c.misses} computed" if c.enabled else ""
    err(f"{m.counts.embedded} images embedded ({m.dim}-d){cached}, {m.counts.skipped} skipped, "
        f"{m.seconds:.1f} s → {out}")
    if c.invalid_shards:
        err(f"  {c.invalid_shards} damaged cache shard(s) ignored; their rows were recomputed")
    for s in m.skipped[:10]:
        err(f"  skipped {s['path']}: {s['reason']}")
    if len(m.skipped) > 10:
        err(f"  … {len(m.skipped) - 10} more in {out / 'manifest.json'}")


cache_app = typer.Typer(help="Inspect and prune the embedding cache.", no_args_is_help=True)
CacheDir = Annotated[Path | None, typer.Option(
    file_okay=False, help="Cache directory (default: $SSLPROBE_CACHE_DIR or ~/.cache/sslprobe).")]


@cache_app.command("info", epilog="Example: sslprobe cache info")
def cache_info(
    cache_dir: CacheDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
) -> None:
    """List the cache's stores: rows, size, model/weights, last use."""
    import time

    from sslprobe.cache import default_cache_dir, list_stores

    root = cache_dir or default_cache_dir()
    stores = list_stores(root)
    if as_json:
        typer.echo(json.dumps({"dir": str(root), "stores": stores}))
        return
    typer.echo(f"{root}: {len(stores)} store(s), {sum(s['rows'] for s in stores)} rows, "
               f"{sum(s['bytes'] for s in stores) / 1e6:.1f} MB")
    for s in stores:
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(s["last_used"]))
        typer.echo(f"  {s['store']}  {s['model']}  {s['weights']} {s['weights_id'] or ''}  layer={s['layer']} "
                   f"pool={s['pool']} {s['dtype']}  {s['rows']} rows  {s['bytes'] / 1e6:.1f} MB  last used {used}")


@cache_app.command("clear", epilog="Example: sslprobe cache clear --older-than 30")
def cache_clear(
    cache_dir: CacheDir = None,
    store: Annotated[str | None, typer.Option(help="Delete this store (an id from `sslprobe cache info`).")] = None,
    all_stores: Annotated[bool, typer.Option("--all", help="Delete every store.")] = False,
    older_than: Annotated[float | None, typer.Option(help="Delete stores not used for this many days.")] = None,
) -> None:
    """Delete cached embeddings: one store, all, or those unused for N days."""
    from sslprobe.cache import clear_stores, default_cache_dir

    root = cache_dir or default_cache_dir()
    gone = clear_stores(root, store=store, all_stores=all_stores, older_than_days=older_than)
    err(f"deleted {len(gone)} store(s) from {root}")
