"""The ``sslprobe`` command line: parse, validate, call a library function, render. Nothing else.

Heavy libraries (torch, timm, datasets) are imported inside the commands so that ``--help`` and
argument errors answer at once.
"""
from __future__ import annotations

import errno
import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from sslprobe import __version__
from sslprobe import options as opt
from sslprobe.distributed import env_rank
from sslprobe.errors import SSLProbeError
from sslprobe.options import EXTRACT, FINETUNE, PRETRAIN, PROBE, VIEWS
from sslprobe.results import PretrainResult

app = typer.Typer(
    name="sslprobe",
    help="BYOL pretraining, cached embeddings and linear probes on your own image folders.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    add_completion=False,
)
_STATE = {"debug": False}
AUG, CKPT, MON = "Augmentation (paper defaults)", "Checkpoints", "Monitoring"  # --help panels
RECIPE, LABELS = "Recipe (docs/finetune.md)", "Label efficiency"

Device = Annotated[str, typer.Option(help="auto (CUDA if present), cpu or cuda.")]
Workers = Annotated[int | None, typer.Option(min=0, help="Decode worker processes (default: cores − 1, at most 8).")]
Seed = Annotated[int, typer.Option(help="Seed for initialisation, sampling and augmentation.")]
ImageCol = Annotated[str | None, typer.Option(help="Image column of a Hugging Face dataset (default: detected).")]
LabelCol = Annotated[str | None, typer.Option(help="Label column of a Hugging Face dataset (default: detected).")]
SmallStem = Annotated[bool | None, typer.Option(
    "--small-stem/--no-small-stem", show_default=False,
    help="ResNet small-image stem: 3×3 stride-1 first conv, no max-pool (default: for networks trained from "
         "scratch at ≤ 64 px; trained weights keep the stem they were trained with).")]

# The augmentation options, shared by `pretrain` and `views` (a preview must take what a run takes).
Blur = Annotated[bool | None, typer.Option("--blur/--no-blur", rich_help_panel=AUG,
    help="Gaussian blur (default: on above 64 px, off at ≤ 64 px).", show_default=False)]
CropScale = Annotated[tuple[float, float], typer.Option(rich_help_panel=AUG,
    help="Random resized crop area range MIN MAX, as fractions of the whole image.")]
FlipP = Annotated[float, typer.Option(rich_help_panel=AUG, help="Horizontal flip probability.")]
JitterP = Annotated[float, typer.Option(rich_help_panel=AUG, help="Colour jitter probability.")]
Brightness = Annotated[float, typer.Option(rich_help_panel=AUG, help="Jitter brightness strength.")]
Contrast = Annotated[float, typer.Option(rich_help_panel=AUG, help="Jitter contrast strength.")]
Saturation = Annotated[float, typer.Option(rich_help_panel=AUG, help="Jitter saturation strength.")]
Hue = Annotated[float, typer.Option(rich_help_panel=AUG, help="Jitter hue strength (≤ 0.5).")]
GrayP = Annotated[float, typer.Option(rich_help_panel=AUG, help="Grayscale probability.")]
BlurP = Annotated[tuple[float, float], typer.Option(rich_help_panel=AUG, help="Blur probability of view 1 and view 2.")]
BlurSigma = Annotated[tuple[float, float], typer.Option(rich_help_panel=AUG,
    help="Blur σ range MIN MAX (kernel ≈ 10 % of the side).")]
SolarizeP = Annotated[tuple[float, float], typer.Option(rich_help_panel=AUG,
    help="Solarisation probability of view 1 and view 2.")]
VflipP = Annotated[float, typer.Option(rich_help_panel=AUG,
    help="Vertical flip probability (domain augmentation: microscopy, satellite, inspection; paper: 0).")]
Rot90P = Annotated[float, typer.Option(rich_help_panel=AUG,
    help="Probability of a quarter, half or three-quarter turn (0.75: all four orientations alike; paper: 0).")]
Grayscale = Annotated[bool, typer.Option("--grayscale", rich_help_panel=AUG,
    help="Grey images: one channel through the store, the views and the backbone (colour images are refused).")]


def _augment(*, crop_scale: tuple[float, float], flip_p: float, jitter_p: float, brightness: float, contrast: float,
             saturation: float, hue: float, gray_p: float, blur_p: tuple[float, float],
             blur_sigma: tuple[float, float], solarize_p: tuple[float, float], vflip_p: float,
             rot90_p: float) -> dict:
    """The augmentation options, checked, as the library's ``augment`` keywords."""
    augment = {"crop_scale": crop_scale, "flip_p": flip_p, "jitter_p": jitter_p, "brightness": brightness,
               "contrast": contrast, "saturation": saturation, "hue": hue, "gray_p": gray_p, "blur_p": blur_p,
               "blur_sigma": blur_sigma, "solarize_p": solarize_p, "vflip_p": vflip_p, "rot90_p": rot90_p}
    opt.check_views(crop_ratio=VIEWS.crop_ratio, **augment)
    return augment


def _version(value: bool) -> None:
    if value:
        typer.echo(f"sslprobe {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="Print the version.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
) -> None:
    _STATE["debug"] = debug


@app.command(epilog="Example: sslprobe pretrain photos/ --model resnet18 --image-size 96 --epochs 100 --out runs/byol")
def pretrain(
    data: Annotated[str, typer.Argument(help="Folder of images (labels ignored) or hf:NAME[:SPLIT].")],
    out: Annotated[Path, typer.Option(
        file_okay=False, help="Run directory: backbone.safetensors, config.json, metrics.jsonl.")],
    model: Annotated[str | None, typer.Option(
        help=f"Any timm model name (default: {PRETRAIN.model}; an sslprobe --init file names its own).",
        show_default=False)] = None,
    init: Annotated[str, typer.Option(
        help="Start the backbone from random (timm's training init), pretrained (timm's hub weights) or FILE: a timm "
             "state dict in .safetensors, or an earlier run's backbone.safetensors (a new run; --resume continues "
             "the same one). The heads start fresh.")] = PRETRAIN.init,
    image_size: Annotated[int | None, typer.Option(
        help="Training resolution (default: the model's). ≤ 64 px switches ResNets to a small-image stem.")] = None,
    small_stem: SmallStem = None,
    batch_size: Annotated[int, typer.Option(
        help="Images per step and process (LARS is used from a global batch of 256 up).")] = PRETRAIN.batch_size,
    epochs: Annotated[int, typer.Option(help="Passes over the data.")] = PRETRAIN.epochs,
    max_steps: Annotated[int | None, typer.Option(
        help="Run length in steps (overrides --epochs for the schedule).")] = None,
    minutes: Annotated[float | None, typer.Option(
        help="Run length in minutes: a short timing run (OUT/budget) fits the steps so that warm-up, cosine and τ "
             "all end in time (overrides --epochs; --max-minutes instead stops a longer schedule).")] = None,
    optimizer: Annotated[str, typer.Option(
        help="auto, lars, sgd or adamw (auto: AdamW for backbones without BatchNorm such as ViTs, else LARS for "
             "batch ≥ 256, else SGD).")] = PRETRAIN.optimizer,
    lr: Annotated[float | None, typer.Option(
        help="Base learning rate per 256 images (default: fitted to the optimiser, run length and init; "
             "see docs/pretrain.md).", show_default=False)] = None,
    tau_base: Annotated[float | None, typer.Option(
        help="Target EMA start value τ_base (default: fitted to the run length, 0.97–0.996).",
        show_default=False)] = PRETRAIN.tau_base,
    warmup_epochs: Annotated[float | None, typer.Option(
        help="Linear warm-up length in epochs (default: 10; AdamW: 2/15 of the run).",
        show_default=False)] = PRETRAIN.warmup_epochs,
    backbone_lr_scale: Annotated[float | None, typer.Option(
        help="The backbone's rate as a fraction of the heads' (default: 0.1 from trained weights, else 1).",
        show_default=False)] = None,
    proj_hidden: Annotated[int, typer.Option(
        help="Hidden width of projector and predictor MLPs (paper: 4096).")] = PRETRAIN.proj_hidden,
    proj_dim: Annotated[int, typer.Option(
        help="Output width of projector and predictor (paper: 256).")] = PRETRAIN.proj_dim,
    weight_decay: Annotated[float | None, typer.Option(
        help="Weight decay, biases and norms excluded (default: fitted, 1e-6–1.5e-6; AdamW 0.1).",
        show_default=False)] = PRETRAIN.weight_decay,
    resume: Annotated[bool, typer.Option("--resume", rich_help_panel=CKPT,
        help="Continue the run in --out from its last good checkpoint (same options required); "
             "start it if there is none.")] = False,
    save_every: Annotated[str, typer.Option(rich_help_panel=CKPT,
        help="Checkpoint every STEPS (500), MINUTES (10m), both (500,10m), or only at the end (end)."
    )] = PRETRAIN.save_every,
    max_minutes: Annotated[float | None, typer.Option(rich_help_panel=CKPT,
        help="Stop with a checkpoint after this many minutes (the schedule stays the full run's; "
             "--resume continues).")] = None,
    stop_at: Annotated[int | None, typer.Option(rich_help_panel=CKPT,
        help="Stop with a checkpoint after this step (the schedule stays the full run's; --resume continues).")] = None,
    blur: Blur = None,
    crop_scale: CropScale = VIEWS.crop_scale,
    flip_p: FlipP = VIEWS.flip_p,
    jitter_p: JitterP = VIEWS.jitter_p,
    brightness: Brightness = VIEWS.brightness,
    contrast: Contrast = VIEWS.contrast,
    saturation: Saturation = VIEWS.saturation,
    hue: Hue = VIEWS.hue,
    gray_p: GrayP = VIEWS.gray_p,
    blur_p: BlurP = VIEWS.blur_p,
    blur_sigma: BlurSigma = VIEWS.blur_sigma,
    solarize_p: SolarizeP = VIEWS.solarize_p,
    vflip_p: VflipP = VIEWS.vflip_p,
    rot90_p: Rot90P = VIEWS.rot90_p,
    grayscale: Grayscale = False,
    eval_train: Annotated[str | None, typer.Option(rich_help_panel=MON,
        help="Labelled class folder: kNN bank for an online evaluation (with --eval-test).")] = None,
    eval_test: Annotated[str | None, typer.Option(rich_help_panel=MON,
        help="Labelled class folder scored by the online kNN evaluation.")] = None,
    eval_every: Annotated[int, typer.Option(rich_help_panel=MON,
        help="Online kNN evaluation every K epochs.")] = PRETRAIN.eval_every,
    log_every: Annotated[int, typer.Option(rich_help_panel=MON,
        help="Log to metrics.jsonl every N steps.")] = PRETRAIN.log_every,
    compile: Annotated[bool, typer.Option("--compile/--no-compile",
        help="torch.compile the model (falls back to eager if it fails).")] = False,
    seed: Seed = 0,
    device: Device = "auto",
    workers: Workers = None,
    image_column: ImageCol = None,
    label_column: LabelCol = None,
) -> None:
    """BYOL self-supervised pretraining of a timm backbone on unlabeled images.

    Checkpoints go to OUT/checkpoints; Ctrl-C saves one and stops. Under `torchrun --nproc_per_node N -m sslprobe
    pretrain …` the run uses DDP (--batch-size is per process; the lr scales with the global batch).
    """
    opt.image_source(data)
    opt.check_pretrain(batch_size=batch_size, epochs=epochs, max_steps=max_steps, image_size=image_size,
                       stop_at=stop_at, eval_every=eval_every, log_every=log_every, lr=lr, max_minutes=max_minutes,
                       optimizer=optimizer, tau_base=tau_base, warmup_epochs=warmup_epochs, proj_hidden=proj_hidden,
                       proj_dim=proj_dim, weight_decay=weight_decay, eval_train=eval_train, eval_test=eval_test,
                       init=init, backbone_lr_scale=backbone_lr_scale, minutes=minutes)
    augment = _augment(crop_scale=crop_scale, flip_p=flip_p, jitter_p=jitter_p, brightness=brightness,
                       contrast=contrast, saturation=saturation, hue=hue, gray_p=gray_p, blur_p=blur_p,
                       blur_sigma=blur_sigma, solarize_p=solarize_p, vflip_p=vflip_p, rot90_p=rot90_p)
    from sslprobe.pretraining.pretrain import PretrainInterrupted
    from sslprobe.pretraining.pretrain import pretrain as run

    try:
        s = run(data, out=out, model=model, init=init, backbone_lr_scale=backbone_lr_scale, image_size=image_size,
                small_stem=small_stem, batch_size=batch_size, epochs=epochs, max_steps=max_steps, optimizer=optimizer,
                lr=lr, tau_base=tau_base,
                warmup_epochs=warmup_epochs, proj_hidden=proj_hidden, proj_dim=proj_dim, weight_decay=weight_decay,
                blur=blur, augment=augment, grayscale=grayscale, seed=seed, device=device, workers=workers,
                resume="auto" if resume else "no", save_every=save_every, max_minutes=max_minutes, stop_at=stop_at,
                compile=compile, eval_train=eval_train, eval_test=eval_test, eval_every=eval_every, log_every=log_every,
                image_column=image_column, label_column=label_column, minutes=minutes)
    except PretrainInterrupted as e:
        _err(str(e))
        raise typer.Exit(130) from None
    if env_rank() == 0:  # torchrun: rank 0 reports for all
        _render_pretrain(s, resumed=resume)


def _render_pretrain(s: PretrainResult, *, resumed: bool) -> None:
    """pretrain's summary as stderr lines: where it resumed, how it ended, what to do next."""
    if resumed:
        step = s.resumed_from
        _err(f"resumed from step {step}" if step is not None else "no checkpoint found: started a new run")
    knn = f"; kNN top-1 {s.knn_top1:.3f}" if s.knn_top1 is not None else ""
    _err(f"{s.status}: {s.steps}/{s.total_steps} steps, final loss {s.final_loss:.4f}{knn}; "
         f"skipped {len(s.skipped)} files; backbone written to {Path(s.out) / 'backbone.safetensors'}")
    if not s.complete:
        _err("continue with the same command plus --resume")


@app.command(epilog="Example: sslprobe views photos/ --image-size 96 --rot90-p 0.75 --out views.png")
def views(
    data: Annotated[str, typer.Argument(help="Folder of images (labels ignored) or hf:NAME[:SPLIT].")],
    out: Annotated[Path, typer.Option(dir_okay=False, help="PNG to write: one row per image, its two views.")],
    n: Annotated[int, typer.Option("--n", help="Images (view pairs) to show.")] = 8,
    model: Annotated[str, typer.Option(help="The timm model pretrain would train (its size).")] = PRETRAIN.model,
    image_size: Annotated[int | None, typer.Option(help="Training resolution (default: the model's).")] = None,
    batch_size: Annotated[int, typer.Option(
        help="Pretrain's --batch-size: the draws of an image depend on its batch.")] = PRETRAIN.batch_size,
    step: Annotated[int, typer.Option(help="Run step whose batch and views are shown.")] = 0,
    blur: Blur = None,
    crop_scale: CropScale = VIEWS.crop_scale,
    flip_p: FlipP = VIEWS.flip_p,
    jitter_p: JitterP = VIEWS.jitter_p,
    brightness: Brightness = VIEWS.brightness,
    contrast: Contrast = VIEWS.contrast,
    saturation: Saturation = VIEWS.saturation,
    hue: Hue = VIEWS.hue,
    gray_p: GrayP = VIEWS.gray_p,
    blur_p: BlurP = VIEWS.blur_p,
    blur_sigma: BlurSigma = VIEWS.blur_sigma,
    solarize_p: SolarizeP = VIEWS.solarize_p,
    vflip_p: VflipP = VIEWS.vflip_p,
    rot90_p: Rot90P = VIEWS.rot90_p,
    grayscale: Grayscale = False,
    seed: Seed = 0,
    image_column: ImageCol = None,
    label_column: LabelCol = None,
) -> None:
    """Draw the view pairs `pretrain` would make with the same options, to look at before a long run."""
    opt.image_source(data)
    opt.check_preview(n=n, step=step, batch_size=batch_size, image_size=image_size)
    augment = _augment(crop_scale=crop_scale, flip_p=flip_p, jitter_p=jitter_p, brightness=brightness,
                       contrast=contrast, saturation=saturation, hue=hue, gray_p=gray_p, blur_p=blur_p,
                       blur_sigma=blur_sigma, solarize_p=solarize_p, vflip_p=vflip_p, rot90_p=rot90_p)
    from sslprobe.pretraining.views import preview_views

    r = preview_views(data, out=out, n=n, model=model, image_size=image_size, batch_size=batch_size, step=step,
                      seed=seed, blur=blur, augment=augment, grayscale=grayscale, image_column=image_column,
                      label_column=label_column)
    _err(f"{r['pairs']} view pairs of step {r['step']} ({r['image_size']} px views cut from a {r['store_size']} px "
         f"store) → {out}")


@app.command(epilog="Example: sslprobe extract photos/train --weights runs/byol/backbone.safetensors --out feats/train")
def extract(
    data: Annotated[str, typer.Argument(help="Folder of images or class subfolders, or hf:NAME[:SPLIT].")],
    out: Annotated[Path, typer.Option(file_okay=False, help="Output directory: features.safetensors + manifest.json.")],
    weights: Annotated[str, typer.Option(help="random, random-rescaled (data-dependent init), pretrained (timm hub), "
                                               "pixels, or a .safetensors file.")] = EXTRACT.weights,
    model: Annotated[str | None, typer.Option(help="timm model name (not needed for sslprobe backbone files).")] = None,
    image_size: Annotated[int | None, typer.Option(help="Override the evaluation resolution.")] = None,
    small_stem: SmallStem = None,
    layer: Annotated[str, typer.Option(help="pre-logits (pooled, default) or a stage/block index, e.g. 2 or -2 "
                                            "(global-average-pooled).")] = EXTRACT.layer,
    pool: Annotated[str, typer.Option(help="auto (the model's own), cls (ViT class token) or mean (of patch tokens / "
                                           "feature map).")] = EXTRACT.pool,
    dtype: Annotated[str, typer.Option(help="Storage dtype of features: float32 or float16.")] = EXTRACT.dtype,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = EXTRACT.batch_size,
    cache_dir: Annotated[Path | None, typer.Option(file_okay=False, help="Embedding cache (default: "
                                                   "$SSLPROBE_CACHE_DIR or ~/.cache/sslprobe).")] = None,
    no_cache: Annotated[bool, typer.Option(
        "--no-cache", help="Compute everything and leave the cache untouched.")] = False,
    decode: Annotated[str, typer.Option(help="JPEG decoding: cpu (PIL, draft mode) or gpu (nvJPEG on CUDA, CPU "
                                             "fallback).")] = EXTRACT.decode,
    allow_pickle: Annotated[bool, typer.Option(
        help="Allow .pt/.pth weights (loaded with torch.load(weights_only=True)).")] = False,
    seed: Seed = 0,
    device: Device = "auto",
    workers: Workers = None,
    image_column: ImageCol = None,
    label_column: LabelCol = None,
    labels: Annotated[Path | None, typer.Option(dir_okay=False, help="CSV with columns path,label naming DATA's "
                                                "images and their classes (paths relative to DATA).")] = None,
) -> None:
    """Embed images through a frozen backbone (or raw pixels) for the linear probe, through the cache."""
    opt.image_source(data)
    opt.check_extract(weights=weights, model=model, batch_size=batch_size, image_size=image_size, pool=pool,
                      dtype=dtype, decode=decode, no_cache=no_cache, cache_dir=cache_dir)
    from sslprobe.extraction.extract import extract as run

    m = run(data, out=out, model=model, weights=weights, image_size=image_size, small_stem=small_stem, layer=layer,
            pool=pool, dtype=dtype, batch_size=batch_size, seed=seed, device=device, workers=workers,
            allow_pickle=allow_pickle, image_column=image_column, label_column=label_column, cache_dir=cache_dir,
            use_cache=not no_cache, decode=decode, labels=labels)
    if env_rank() != 0:  # torchrun: rank 0 reports for all
        return
    c = m.cache
    cached = f", {c.hits} from cache, {c.misses} computed" if c.enabled else ""
    _err(f"{m.counts.embedded} images embedded ({m.dim}-d){cached}, {m.counts.skipped} skipped, "
         f"{m.seconds:.1f} s → {out}")
    if c.invalid_shards:
        _err(f"  {c.invalid_shards} damaged cache shard(s) ignored; their rows were recomputed")
    for s in m.skipped[:10]:
        _err(f"  skipped {s['path']}: {s['reason']}")
    if len(m.skipped) > 10:
        _err(f"  … {len(m.skipped) - 10} more in {out / 'manifest.json'}")


cache_app = typer.Typer(help="Inspect and prune the embedding cache.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")
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
    _err(f"deleted {len(gone)} store(s) from {root}")


Search = Annotated[str, typer.Option(
    help="How to choose C on validation: grid (45 C's in 1e-6..1e5, warm-started, early stop) or binary "
         "(CLIP's coarse-then-bisect, ~14 fits).")]
FixedC = Annotated[float | None, typer.Option(
    "--C", help="Fix the inverse regularisation C (scikit-learn convention) instead of searching.")]
Standardize = Annotated[bool, typer.Option(help="Standardise features with training statistics.")]
KnnK = Annotated[str, typer.Option(help="kNN k values, comma-separated (cosine, T-weighted votes); 'none' skips kNN.")]
KnnT = Annotated[float, typer.Option(help="kNN temperature T (votes weigh exp(similarity / T)).")]
Fractions = Annotated[str | None, typer.Option(help="Label-efficiency fractions of each class, e.g. 0.01,0.1,1.0.")]
Shots = Annotated[str | None, typer.Option(help="Label-efficiency shots per class, e.g. 1,5,10,25.")]
Seeds = Annotated[int, typer.Option(help="Draws per label-efficiency point (mean ± std).")]
Float64 = Annotated[bool, typer.Option(
    "--float64", help="Solve in float64 (default: float64 for small problems, else float32; TF32 always off).")]
Select = Annotated[str, typer.Option(
    help="Metric that chooses C and kNN k on validation: auto (balanced accuracy when classes are imbalanced "
         "> 2:1, else top-1), top1 or balanced.")]
HalfFeatures = Annotated[bool, typer.Option(
    "--half-features", help="Store standardised features in float16 (half the memory and bytes per pass).")]
ChunkRows = Annotated[int | None, typer.Option(
    help="Rows per block when streaming the loss/gradient (default: all at once when they fit).")]
KNN_K = ",".join(map(str, PROBE.knn_k))
AsJson = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout instead of tables.")]


@app.command(epilog="Example: sslprobe probe feats/train --test feats/test --search binary --fractions 0.01,0.1,1 "
                    "--out reports/byol")
def probe(
    train: Annotated[str, typer.Argument(help="Training features: a directory from `extract` or a .safetensors file.")],
    val: Annotated[str | None, typer.Option(
        help="Validation features (default: a stratified 20 % hold-out of TRAIN).")] = None,
    test: Annotated[str | None, typer.Option(help="Test features.")] = None,
    c: FixedC = None,
    search: Search = PROBE.search,
    standardize: Standardize = True,
    knn_k: KnnK = KNN_K,
    knn_t: KnnT = PROBE.knn_temperature,
    fractions: Fractions = None,
    shots: Shots = None,
    seeds: Seeds = PROBE.seeds,
    select: Select = PROBE.select,
    float64: Float64 = False,
    half_features: HalfFeatures = False,
    chunk_rows: ChunkRows = None,
    seed: Seed = 0,
    device: Device = "auto",
    out: Annotated[Path | None, typer.Option(
        file_okay=False, help="Report directory: report.json, per-class CSV, plots, probe.safetensors.")] = None,
    as_json: AsJson = False,
) -> None:
    """Linear probe (multinomial logistic regression) and kNN on cached embeddings."""
    for p in (train, val, test):
        opt.feature_source(p)
    kw = opt.probe_keywords(C=c, search=search, knn_k=knn_k, knn_t=knn_t, fractions=fractions, shots=shots,
                            seeds=seeds, chunk_rows=chunk_rows, float64=float64, half_features=half_features,
                            select=select)
    from sslprobe.probing.probe import probe as run
    from sslprobe.probing.report import render_probe, summary

    result = run(train, val=val, test=test, standardize=standardize, seed=seed,
                 device=device, out=out, show_progress=not as_json and sys.stderr.isatty(), **kw)
    if as_json:
        typer.echo(json.dumps(summary(result)))
    else:
        from rich.console import Console

        render_probe(result, console=Console())


@app.command(epilog="Example: sslprobe compare byol=feats/byol random=feats/random pixels=feats/pixels "
                    "--out reports/cmp")
def compare(
    sets: Annotated[list[str], typer.Argument(
        help="NAME=DIR pairs; DIR is a feature dir, or holds train/ (val/, test/) feature dirs.", show_default=False)],
    c: FixedC = None,
    search: Search = PROBE.search,
    standardize: Standardize = True,
    knn_k: KnnK = KNN_K,
    knn_t: KnnT = PROBE.knn_temperature,
    fractions: Fractions = None,
    shots: Shots = None,
    seeds: Seeds = PROBE.seeds,
    select: Select = PROBE.select,
    float64: Float64 = False,
    half_features: HalfFeatures = False,
    chunk_rows: ChunkRows = None,
    seed: Seed = 0,
    device: Device = "auto",
    out: Annotated[Path | None, typer.Option(
        file_okay=False, help="Report directory: OUT/NAME/ per set and comparison.json.")] = None,
    as_json: AsJson = False,
) -> None:
    """Probe several feature sets with one protocol and print one comparison table."""
    pairs: dict[str, str] = {}
    for item in sets:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise SSLProbeError(f"'{item}' is not NAME=DIR (e.g. byol=feats/byol)")
        if name in pairs:
            raise SSLProbeError(f"the name '{name}' is used twice; give each feature set its own name")
        pairs[name] = path
    kw = opt.probe_keywords(C=c, search=search, knn_k=knn_k, knn_t=knn_t, fractions=fractions, shots=shots,
                            seeds=seeds, chunk_rows=chunk_rows, float64=float64, half_features=half_features,
                            select=select)
    from sslprobe.probing.compare import compare as run
    from sslprobe.probing.features import resolve_sets
    from sslprobe.probing.report import render_comparison, summary

    rows = run({name: resolve_sets(path) for name, path in pairs.items()}, out=out, standardize=standardize,
               seed=seed, device=device, **kw)
    if as_json:
        typer.echo(json.dumps({name: summary(r) for name, r in rows}))
        return
    from rich.console import Console

    console = Console()
    render_comparison(rows, console=console)
    for name, r in rows:
        for w in r.warnings:
            console.print(f"warning: {name}: {w}", style="yellow", markup=False, highlight=False)


@app.command(epilog="Example: sslprobe finetune photos/train --weights runs/byol/backbone.safetensors --test "
                    "photos/test --out runs/ft")
def finetune(
    train: Annotated[str, typer.Argument(
        help="Class folders (one subfolder per class) or hf:NAME[:SPLIT] with labels.")],
    out: Annotated[Path, typer.Option(file_okay=False, help="Run directory: model.safetensors (timm-loadable, with "
                                                            "class names), report.json, per-class CSVs, plots.")],
    weights: Annotated[str, typer.Option(help="random (timm's training init), random-rescaled, pretrained (timm hub) "
                                              "or a backbone .safetensors file.")] = FINETUNE.weights,
    model: Annotated[str | None, typer.Option(help="timm model name (not needed for sslprobe backbone files).")] = None,
    val: Annotated[str | None, typer.Option(
        help="Validation class folders (default: the probe's stratified 20 % hold-out of TRAIN).")] = None,
    test: Annotated[str | None, typer.Option(help="Test class folders, scored once with the chosen network.")] = None,
    image_size: Annotated[int | None, typer.Option(help="Training and evaluation resolution (default: the "
                                                        "model's).")] = None,
    small_stem: SmallStem = None,
    epochs: Annotated[int | None, typer.Option(help=f"Passes over the training rows (default {FINETUNE.epochs}).")
                      ] = None,
    minutes: Annotated[float | None, typer.Option(
        help="Budget instead of --epochs: the whole epochs a timing of the step says fit, per run.")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per step.")] = FINETUNE.batch_size,
    lr: Annotated[float | None, typer.Option(rich_help_panel=RECIPE, help=f"AdamW peak rate of the head per 256 "
                                             f"images (default {FINETUNE.lr:g}).")] = None,
    lrs: Annotated[str | None, typer.Option(rich_help_panel=RECIPE, help="A learning-rate grid instead of --lr, "
                                            "e.g. 3e-4,1e-3,3e-3: one run each, chosen on validation.")] = None,
    backbone_lr_scale: Annotated[float | None, typer.Option(rich_help_panel=RECIPE, help=f"Backbone rate ÷ head rate "
                                                            f"(default: {FINETUNE.backbone_lr_scale:g} for trained "
                                                            "CNNs, 1 for random weights).")] = None,
    layer_decay: Annotated[float | None, typer.Option(rich_help_panel=RECIPE, help=f"Layer-wise rate decay from the "
                                                      f"head down (default: {FINETUNE.layer_decay:g} for trained "
                                                      "ViTs).")] = None,
    weight_decay: Annotated[float, typer.Option(rich_help_panel=RECIPE, help="AdamW weight decay (not on biases, "
                                                "norms, tokens).")] = FINETUNE.weight_decay,
    warmup_epochs: Annotated[float, typer.Option(rich_help_panel=RECIPE, help="Linear warm-up before the cosine "
                                                 "decay (at most half the run).")] = FINETUNE.warmup_epochs,
    label_smoothing: Annotated[float, typer.Option(rich_help_panel=RECIPE, help="Label smoothing of the training "
                                                   "loss (0 turns it off).")] = FINETUNE.label_smoothing,
    crop_scale: Annotated[tuple[float, float], typer.Option(
        rich_help_panel=RECIPE, help="Random resized crop area range MIN MAX (of the whole image).")
    ] = FINETUNE.crop_scale,
    flip_p: Annotated[float, typer.Option(rich_help_panel=RECIPE, help="Horizontal flip probability.")
                      ] = FINETUNE.flip_p,
    select: Annotated[str, typer.Option(
        help="Metric that chooses the epoch (and learning rate) on validation: auto (balanced accuracy when classes "
             "are imbalanced > 2:1, else top1), top1 or balanced.")] = FINETUNE.select,
    fractions: Annotated[str | None, typer.Option(rich_help_panel=LABELS, help="Label-efficiency fractions of each "
                                                  "class, e.g. 0.01,0.1,1.0.")] = None,
    shots: Annotated[str | None, typer.Option(rich_help_panel=LABELS, help="Label-efficiency shots per class, e.g. "
                                              "1,5,10.")] = None,
    seeds: Annotated[int, typer.Option(rich_help_panel=LABELS, help="Draws per label-efficiency point (mean ± std).")
                     ] = FINETUNE.seeds,
    resume: Annotated[bool, typer.Option("--resume", rich_help_panel=CKPT, help="Continue the fine-tune in --out "
                                         "(same options required); start it if there is none.")] = False,
    save_every: Annotated[str, typer.Option(rich_help_panel=CKPT, help="Checkpoint every STEPS (500), MINUTES (10m), "
                                            "both (500,10m), or only at stops (end).")] = FINETUNE.save_every,
    allow_pickle: Annotated[bool, typer.Option(
        help="Allow .pt/.pth weights (loaded with torch.load(weights_only=True)).")] = False,
    seed: Seed = 0,
    device: Device = "auto",
    workers: Workers = None,
    image_column: ImageCol = None,
    label_column: LabelCol = None,
    as_json: AsJson = False,
) -> None:
    """Fine-tune a backbone and a new linear head end to end on labelled images; the epoch chosen on validation.

    Reports as `probe` does (report.json, per-class CSVs, confusion matrix, learning curve); Ctrl-C saves a checkpoint
    and stops, --resume continues. Under `torchrun --nproc_per_node N -m sslprobe finetune …` it uses DDP
    (--batch-size is per process; the lr scales with the global batch).
    """
    for p in (train, val, test):
        if p is not None:
            opt.image_source(p)
    grid, fr, sh = opt.numbers("--lrs", lrs, float), opt.numbers("--fractions", fractions, float), \
        opt.numbers("--shots", shots, int)
    opt.check_finetune(weights=weights, model=model, epochs=epochs, minutes=minutes, batch_size=batch_size,
                       image_size=image_size, lr=lr, lrs=grid, backbone_lr_scale=backbone_lr_scale,
                       layer_decay=layer_decay, weight_decay=weight_decay, warmup_epochs=warmup_epochs,
                       label_smoothing=label_smoothing, crop_scale=crop_scale, flip_p=flip_p,
                       val_fraction=FINETUNE.val_fraction, select=select, seeds=seeds, fractions=fr, shots=sh)
    from sslprobe.finetuning.finetune import finetune as run
    from sslprobe.finetuning.loop import FinetuneInterrupted
    from sslprobe.finetuning.report import render_finetune
    from sslprobe.probing.report import summary

    try:
        r = run(train, out=out, weights=weights, model=model, val=val, test=test, image_size=image_size,
                small_stem=small_stem, epochs=epochs, minutes=minutes, batch_size=batch_size, lr=lr, lrs=grid,
                backbone_lr_scale=backbone_lr_scale, layer_decay=layer_decay, weight_decay=weight_decay,
                warmup_epochs=warmup_epochs, label_smoothing=label_smoothing, crop_scale=crop_scale, flip_p=flip_p,
                select=select, fractions=fr, shots=sh, seeds=seeds, seed=seed, device=device, workers=workers,
                resume="auto" if resume else "no", save_every=save_every, allow_pickle=allow_pickle,
                image_column=image_column, label_column=label_column, show_progress=not as_json and sys.stderr.isatty())
    except FinetuneInterrupted as e:
        _err(str(e))
        raise typer.Exit(130) from None
    if env_rank() != 0:  # torchrun: rank 0 reports for all
        return
    if as_json:
        typer.echo(json.dumps(summary(r)))
        return
    from rich.console import Console

    render_finetune(r, console=Console())


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
    batch_size: Annotated[int, typer.Option(help="Images per forward pass (--finetuned).")] = EXTRACT.batch_size,
    device: Device = "auto",
    workers: Workers = None,
) -> None:
    """Classify feature rows with a saved linear probe, or images with a fine-tuned network."""
    if (probe_file is None) == (finetuned is None):
        raise SSLProbeError("give --probe PROBE (to classify extracted features) or --finetuned MODEL (to classify "
                            "images), one of them")
    if finetuned is not None:
        opt.image_source(data)
        opt.at_least("--batch-size", batch_size)
    for p in (data, probe_file, finetuned):
        if p is not None and not str(p).startswith("hf:") and not Path(p).exists():
            raise SSLProbeError(f"'{p}' does not exist")
    if probe_file is not None:
        from sslprobe.probing.predict import predict as run

        rows = run(data, probe=probe_file, out=out)
        _err(f"{len(rows)} rows classified → {out}")
        return
    from sslprobe.finetuning.export import predict_images

    got = predict_images(data, model=finetuned, out=out, batch_size=batch_size, device=device, workers=workers,
                         show_progress=sys.stderr.isatty())
    _err(f"{len(got.rows)} images classified, {len(got.skipped)} skipped → {out}")
    for s in got.skipped[:10]:
        _err(f"  skipped {s['path']}: {s['reason']}")


BYOL = "BYOL recipe (every BYOL arm)"  # --help panel of `study`
ARM_HELP = (f"Comma-separated arms: {', '.join(opt.STUDY_ARMS)} (default: {','.join(opt.STUDY.arms_cpu)} on CPU; "
            f"{','.join(opt.STUDY.arms_gpu)} on a GPU).")
STUDY_FRACTIONS, STUDY_SHOTS, STUDY_KNN_K = (",".join(map(str, v)) for v in (opt.STUDY.fractions, opt.STUDY.shots,
                                                                             opt.STUDY.knn_k))


@app.command(epilog="Example: sslprobe study photos/ --out study --model resnet18 --image-size 96 --minutes 30")
def study(
    data: Annotated[str, typer.Argument(
        help="Labelled images: class subfolders, hf:NAME[:SPLIT], or a folder of images with --labels.")],
    out: Annotated[Path, typer.Option(file_okay=False, help="Study directory: report.html, report.md, results.csv, "
                                                            "study.json, splits.json and every stage's outputs.")],
    labels: Annotated[Path | None, typer.Option(
        dir_okay=False, help="CSV with columns path,label (paths relative to DATA).")] = None,
    unlabeled: Annotated[str | None, typer.Option(
        help="More images for the pretraining pool only (labels ignored; val/test images are kept out).")] = None,
    test: Annotated[str | None, typer.Option(
        help="A fixed labelled test set with DATA's classes (default: a seeded stratified split of DATA).")] = None,
    arms: Annotated[str | None, typer.Option(help=ARM_HELP)] = None,
    model: Annotated[str, typer.Option(help="timm model of every network arm.")] = opt.STUDY.model,
    image_size: Annotated[int | None, typer.Option(help="Resolution (default: the model's; raw pixels at ≤ 32 px).")
                          ] = None,
    epochs: Annotated[int | None, typer.Option(help=f"BYOL epochs per BYOL arm (default {PRETRAIN.epochs}).")] = None,
    minutes: Annotated[float | None, typer.Option(
        help="Training minutes per BYOL arm: the whole schedule (warm-up, cosine, τ) is fitted to the step rate "
             "measured here (fine-tune arms get the same minutes).")] = None,
    batch_size: Annotated[int, typer.Option(rich_help_panel=BYOL, help="Images per step.")] = PRETRAIN.batch_size,
    optimizer: Annotated[str, typer.Option(rich_help_panel=BYOL, help="auto, lars, sgd or adamw.")
                         ] = PRETRAIN.optimizer,
    lr: Annotated[float | None, typer.Option(rich_help_panel=BYOL, help="Base learning rate per 256 images.")
                  ] = None,
    tau_base: Annotated[float | None, typer.Option(rich_help_panel=BYOL, help="Target EMA start τ_base.")
                        ] = PRETRAIN.tau_base,
    warmup_epochs: Annotated[float | None, typer.Option(rich_help_panel=BYOL, help="Warm-up in epochs.")
                             ] = PRETRAIN.warmup_epochs,
    proj_hidden: Annotated[int, typer.Option(rich_help_panel=BYOL, help="Hidden width of projector and predictor.")
                           ] = PRETRAIN.proj_hidden,
    test_fraction: Annotated[float, typer.Option(help="Test share of each class, drawn once into splits.json.")
                             ] = opt.STUDY.test_fraction,
    val_fraction: Annotated[float, typer.Option(help="Validation share of each class after the test draw.")
                            ] = opt.STUDY.val_fraction,
    fractions: Fractions = STUDY_FRACTIONS,
    shots: Shots = STUDY_SHOTS,
    seeds: Seeds = opt.STUDY.seeds,
    knn_k: KnnK = STUDY_KNN_K,
    search: Search = opt.STUDY.search,
    select: Select = opt.STUDY.select,
    seed: Seed = 0,
    device: Device = "auto",
    workers: Workers = None,
    image_column: ImageCol = None,
    label_column: LabelCol = None,
) -> None:
    """Does BYOL on these images help? Every arm on one leakage-safe split, one report (report.html).

    Rerun the same command to continue after Ctrl-C: finished stages are reused, pretraining resumes.
    """
    names = [a for a in (arms or "").replace(" ", "").split(",") if a]
    fr, sh, ks = opt.numbers("--fractions", fractions, float), opt.numbers("--shots", shots, int), \
        opt.numbers("--knn-k", knn_k, int)
    opt.check_study(data=data, labels=None if labels is None else str(labels), unlabeled=unlabeled, test=test,
                    arms=names, epochs=epochs, minutes=minutes, steps=None, test_fraction=test_fraction,
                    val_fraction=val_fraction, fractions=fr, shots=sh, seeds=seeds, knn_k=ks, search=search,
                    select=select, image_size=image_size, batch_size=batch_size)
    import shlex

    from rich.console import Console

    from sslprobe.study.plan import ByolRecipe
    from sslprobe.study.run import StudyInterrupted
    from sslprobe.study.run import study as run

    recipe = ByolRecipe(batch_size=batch_size, optimizer=optimizer, lr=lr, tau_base=tau_base,
                        warmup_epochs=warmup_epochs, proj_hidden=proj_hidden)
    try:
        run(data, out=out, labels=labels, unlabeled=unlabeled, test=test, arms=names or None, model=model,
            image_size=image_size, epochs=epochs, minutes=minutes, byol=recipe, test_fraction=test_fraction,
            val_fraction=val_fraction, fractions=fr, shots=sh, seeds=seeds, knn_k=ks, search=search, select=select,
            seed=seed, device=device, workers=workers, image_column=image_column, label_column=label_column,
            command=" ".join(["sslprobe", *map(shlex.quote, sys.argv[1:])]), show_progress=sys.stderr.isatty(),
            console=Console())
    except StudyInterrupted as e:
        _err(str(e))
        raise typer.Exit(130) from None


@app.command(epilog="Example: sslprobe demo --out sslprobe-demo")
def demo(
    out: Annotated[Path, typer.Option(
        file_okay=False, help="Working directory for the sample data, runs and features.")] = Path("sslprobe-demo"),
    steps: Annotated[int | None, typer.Option(
        help="BYOL steps (default: the tuned short run; the whole demo ~4 min on 2 CPU cores).")] = None,
    device: Device = "auto",
) -> None:
    """A study on the built-in Fashion-MNIST sample: pretrain → extract → probe, baselines, the full report."""
    opt.at_least("--steps", steps)
    from rich.console import Console

    from sslprobe.demo import run_demo

    run_demo(out=out, steps=steps, device=device, console=Console())


def _err(msg: str) -> None:
    # File names that aren't valid UTF-8 arrive as surrogate escapes; print them as \udcXX (what a
    # real stderr does anyway) so a strict stream (pytest, CliRunner, a wrapper) can't crash on one.
    typer.echo(msg.encode("utf-8", "backslashreplace").decode("utf-8"), err=True)


def main() -> None:
    """Entry point: user errors (ours and the parser's) become one line on stderr and exit code 2."""
    # Busy-waiting OpenMP threads make torch 4–20× slower when another process holds a core
    # (measured on 2-core machines); passive waiting costs nothing measurable when idle. Set before
    # torch loads, in the command-line process only (importing sslprobe changes no environment).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # Typer ≥ 0.2x vendors click; find its exception types through a public class either way.
    usage_error = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")
    click_exception = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
    try:
        code = app(standalone_mode=False)
    except SSLProbeError as e:
        if _STATE["debug"]:
            raise
        _err(f"error: {e}")
        sys.exit(2)
    except usage_error as e:
        cmd = e.ctx.command_path if e.ctx else "sslprobe"
        typer.echo(f"error: {e.format_message()} (see '{cmd} --help')", err=True)
        sys.exit(2)
    except click_exception as e:
        typer.echo(f"error: {e.format_message()}", err=True)
        sys.exit(e.exit_code)
    except OSError as e:
        # A full disk or an unwritable --out is the user's to fix, not a bug: one line, not a traceback.
        if _STATE["debug"] or e.errno not in _USER_OS_ERRORS:
            raise
        where = f" ('{e.filename}')" if e.filename else ""
        _err(f"error: {e.strerror or e}{where}; free some space or choose another --out/--cache-dir, then rerun")
        sys.exit(2)
    except (KeyboardInterrupt, typer.Abort):
        typer.echo("interrupted", err=True)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


_USER_OS_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EACCES, errno.EPERM}
