"""Embed a folder of images through a frozen backbone and write a feature set the probe reads.

Output: ``out/features.safetensors`` (``features`` (N, D) in ``dtype``, ``labels`` (N,) int64, −1
where unlabeled) and ``out/manifest.json`` (row-order paths, classes, model, weights,
preprocessing, counts, skipped files with reasons, the cache store, hits/misses and timings).
``weights="pixels"`` embeds the resized pixels themselves — the raw-pixel baseline through the
same path.

Every row goes through the content-addressed cache (``sslprobe.cache``): known image bytes are
read back, new ones computed and written in shards as the run goes, so a rerun costs a read and
a hash per file, an interrupted run resumes where its last shard ended, and renamed files cost
nothing. Under torchrun each rank embeds every WORLD_SIZE-th file and rank 0 writes the output.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import secrets
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from sslprobe import __version__, distributed
from sslprobe.errors import SSLProbeError
from sslprobe.fileio import atomic_path, file_sha256, write_json
from sslprobe.images.decode import DECODE_POLICY
from sslprobe.runtime import default_workers, pick_device, progress_bar

FEATURES = "features.safetensors"
MANIFEST = "manifest.json"
WEIGHTS = ("random", "random-rescaled", "pretrained", "pixels")
DTYPES = ("float32", "float16")
DECODES = ("cpu", "gpu")
CALIBRATION_IMAGES = 64


def _state_sha256(net: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(net.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def extract(
    data: str | os.PathLike,
    *,
    out: str | os.PathLike,
    model: str | None = None,
    weights: str = "random",
    image_size: int | None = None,
    small_stem: bool | None = None,
    layer: str | int = "pre-logits",
    pool: str = "auto",
    dtype: str = "float32",
    batch_size: int = 128,
    seed: int = 0,
    device: str = "auto",
    workers: int | None = None,
    allow_pickle: bool = False,
    image_column: str | None = None,
    label_column: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    shard_rows: int = 4096,
    decode: str = "cpu",
    show_progress: bool = True,
) -> dict[str, Any]:
    """Embed every readable image at ``data``; bad files are skipped and listed. Returns the manifest.

    ``weights``: ``random`` (seeded by ``seed``; the architecture's ordinary init, no zeroed residual
    branches), ``random-rescaled`` (that, then data-dependent rescaling on a seeded sample of the
    images), ``pretrained`` (timm hub), ``pixels`` or a path to a .safetensors backbone (sslprobe's
    own need no ``model``). ``small_stem``: None picks the small-image stem for random weights at
    ≤ 64 px; trained weights keep theirs. ``layer``: ``pre-logits`` or a stage index; ``pool``: auto,
    cls or mean. ``decode="gpu"`` decodes JPEGs with nvJPEG on CUDA.
    """
    from sslprobe.cache import Fingerprint, Store, default_cache_dir
    from sslprobe.extraction.shards import ShardWriter
    from sslprobe.images.folders import open_images

    if batch_size < 1:
        raise SSLProbeError(f"--batch-size must be ≥ 1 (got {batch_size})")
    if image_size is not None and image_size < 1:
        raise SSLProbeError(f"--image-size must be ≥ 1 (got {image_size})")
    if dtype not in DTYPES:
        raise SSLProbeError(f"--dtype must be float32 or float16 (got '{dtype}')")
    if decode not in DECODES:
        raise SSLProbeError(f"--decode must be cpu or gpu (got '{decode}')")
    t0 = time.perf_counter()
    images = open_images(data, image_column=image_column, label_column=label_column)
    ranks, dev = distributed.setup(pick_device(device))
    try:
        built = _build(images, model=model, weights=weights, image_size=image_size, small_stem=small_stem,
                       layer=layer, pool=pool, seed=seed, allow_pickle=allow_pickle,
                       decode=decode if dev.type == "cuda" else "cpu")
        # channels_last on CPU too: with BatchNorm folded, oneDNN convs run ~1.1-1.3x faster in it
        fmodel = built["model"].to(dev).eval().to(memory_format=torch.channels_last)
        fp = Fingerprint(model=built["model_name"], weights=built["weights_kind"], weights_id=built["weights_id"],
                         preprocessing=json.dumps({**built["preprocessing"], "decode_policy": DECODE_POLICY}, sort_keys=True),
                         layer=built["layer"],
                         pool=pool, dtype=dtype, compute="bfloat16" if dev.type == "cuda" else "float32",
                         sslprobe_major=__version__.split(".")[0])
        cache_root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        store = Store.open(cache_root, fp) if use_cache else None
        if store is not None:
            store.refresh()
        t_setup = time.perf_counter() - t0

        from sslprobe.extraction.loop import run_pass

        n = len(images)
        order = list(range(ranks.rank, n, ranks.world))
        writer = ShardWriter(store, rows=shard_rows, tag=f"r{ranks.rank}")
        state = {"hits": 0, "misses": 0, "skipped": [], "feats": None, "have": torch.zeros(n, dtype=torch.bool),
                 "keys": [None] * n}
        nworkers = default_workers() if workers is None else workers
        t1 = time.perf_counter()
        try:
            with progress_bar(show_progress and ranks.main) as bar:
                task = bar.add_task("extract", total=len(order))
                retry = run_pass(images, order, state, model=fmodel, store=store, writer=writer, built=built,
                                 device=dev, dtype=dtype, batch_size=batch_size, workers=nworkers, bar=bar, task=task)
                if retry:  # rows of shards that failed their checksum: recompute, never trust
                    run_pass(images, retry, state, model=fmodel, store=None, writer=writer, built=built, device=dev,
                             dtype=dtype, batch_size=batch_size, workers=nworkers, bar=bar, task=None)
        finally:
            writer.close()  # finished rows are kept even when the run is interrupted
        t_embed = time.perf_counter() - t1
        result = _assemble(images, state, ranks=ranks, store=store)
        manifest = None
        if ranks.main:
            manifest = _write(images, result, out=Path(out), data=data, built=built, fp=fp, store=store,
                              cache_root=cache_root, dev=dev, ranks=ranks, writer=writer,
                              timings={"setup": t_setup, "embed": t_embed, "write_shards": writer.seconds}, t0=t0)
        return distributed.broadcast(manifest, ranks)
    finally:
        distributed.teardown(ranks)


def _build(images: Any, *, model: str | None, weights: str, image_size: int | None, small_stem: bool | None,
           layer: str | int, pool: str, seed: int, allow_pickle: bool, decode: str) -> dict[str, Any]:
    """The feature model, its worker transform and everything the fingerprint needs."""
    from sslprobe.extraction.embed import FeatureModel, Pixels, fold_batchnorm_, resolve_layer
    from sslprobe.images.transforms import Uint8Transform

    if weights == "pixels":
        if str(layer) not in ("pre-logits", "") or pool != "auto" or small_stem is not None:
            raise SSLProbeError("--weights pixels has no layers, pooling or stem; drop --layer/--pool/--small-stem")
        size = image_size or 32
        tf = Uint8Transform(size=size)
        pre = {"image_size": size, "interpolation": "bicubic", "crop_pct": 1.0, "mean": None, "std": None}
        return {"model": FeatureModel(Pixels(), mean=None, std=None), "transform": tf, "model_name": "pixels",
                "weights_kind": "pixels", "weights_id": "", "weights_info": {"weights": "pixels"},
                "preprocessing": {**pre, "decode": "pil-draft"}, "layer": "pre-logits", "draft": tf.draft,
                "decode": "cpu"}
    from sslprobe.backbone import create_backbone, eval_transform, random_backbone

    init = ""
    if weights in ("random", "random-rescaled"):
        if model is None:
            raise SSLProbeError(f"--weights {weights} needs --model NAME (a timm model, e.g. resnet18)")
        net, spec, init = random_backbone(model, image_size=image_size, small_stem=small_stem, seed=seed)
    else:
        net, spec = create_backbone(model, weights=weights, image_size=image_size, small_stem=small_stem, seed=seed,
                                    allow_pickle=allow_pickle)
    net.eval()
    tf = Uint8Transform.from_timm(eval_transform(spec))
    k = resolve_layer(net, layer)
    kind, wid, info = _identify(net, spec, images, tf, weights=weights, seed=seed, init=init)
    fold_batchnorm_(net)
    use_gpu = decode == "gpu"
    pre = {**asdict(spec), "decode": "nvjpeg" if use_gpu else "pil-draft"}
    return {"model": FeatureModel(net, mean=spec.mean, std=spec.std, layer=k, pool=pool), "transform": tf,
            "model_name": spec.model, "weights_kind": kind, "weights_id": wid, "weights_info": info,
            "preprocessing": pre, "layer": "pre-logits" if k is None else f"stage{k}", "draft": tf.draft,
            "decode": decode}


def _identify(net: torch.nn.Module, spec: Any, images: Any, tf: Any, *, weights: str, seed: int,
              init: str) -> tuple[str, str, dict[str, Any]]:
    """Weights kind, the id that pins them down in the cache fingerprint, and their manifest entries.

    ``random-rescaled`` rescales ``net`` here, on a seeded sample of ``images``.
    """
    import timm

    from sslprobe.extraction.embed import FeatureModel, rescale_init_
    from sslprobe.fairinit import POLICY

    info: dict[str, Any] = {"weights": weights}
    if weights == "random":
        # init= keeps rows of the zero-residual init of earlier versions (no init= then) out of this store
        info.update(seed=seed, init=init)
        return "random", f"seed={seed};timm={timm.__version__};init={POLICY}", info
    if weights == "random-rescaled":
        x = _calibration_batch(images, tf, seed=seed)
        rescale_init_(net, FeatureModel(net, mean=spec.mean, std=spec.std).normalize(x))
        sha = _state_sha256(net)
        info.update(seed=seed, init=f"{init}; then rescaled (Krähenbühl et al. 2015)",
                    calibration_images=int(x.shape[0]), weights_sha256=sha)
        return "random-rescaled", f"seed={seed};timm={timm.__version__};init={POLICY};sha256={sha}", info
    if weights == "pretrained":
        cfg = getattr(net, "pretrained_cfg", {}) or {}
        info["pretrained_tag"] = cfg.get("tag")
        tag = json.dumps({k: cfg.get(k) for k in ("hf_hub_id", "tag", "url", "file")}, sort_keys=True)
        return "pretrained", tag, info
    info["weights_sha256"] = file_sha256(weights)
    return "file", info["weights_sha256"], info


def _calibration_batch(images: Any, tf: Any, *, seed: int) -> torch.Tensor:
    """uint8 (B, 3, H, W) of up to 64 readable images, picked by a seeded hash of their ids."""
    from sslprobe.images.decode import BadImageError

    order = sorted(range(len(images)), key=lambda i: hashlib.sha256(f"{seed}:{images.ids[i]}".encode()).digest())
    picked = []
    for i in order:
        try:
            picked.append(tf(images.read(i)))
        except BadImageError:
            continue
        if len(picked) == CALIBRATION_IMAGES:
            break
    if len(picked) < 2:
        raise SSLProbeError("--weights random-rescaled needs at least 2 readable images to calibrate on")
    return torch.stack(picked)


def _assemble(images: Any, state: dict, *, ranks: Any, store: Any) -> dict[str, Any] | None:
    """Rows in file order on rank 0: this rank's, plus the other ranks' (from the store or gathered)."""
    have = state["have"]
    mine = have.nonzero().flatten().tolist()
    part = {"idx": mine, "keys": [state["keys"][i] for i in mine], "skipped": state["skipped"],
            "hits": state["hits"], "misses": state["misses"],
            "feats": None if store is not None or ranks.world == 1 or not mine else state["feats"][have]}
    parts = distributed.gather(part, ranks)
    if not ranks.main:
        return None
    feats = state["feats"]
    if ranks.world > 1:
        if store is not None:
            store.refresh()  # the other ranks' shards are written: their writers closed before gather
        for p in parts[1:]:
            if not p["idx"]:
                continue
            if store is not None:
                rows, found = store.get(p["keys"])
                if not all(found):
                    raise SSLProbeError("another rank's cache shard could not be read back; rerun extract")
            else:
                rows = p["feats"]
            if feats is None:
                feats = torch.empty(len(images), rows.shape[1], dtype=rows.dtype)
            feats[p["idx"]] = rows.to(feats.dtype)
            have[p["idx"]] = True
    idx = have.nonzero().flatten()
    return {"idx": idx.tolist(), "features": None if feats is None else feats[idx],
            "skipped": [s for p in parts for s in p["skipped"]],
            "hits": sum(p["hits"] for p in parts), "misses": sum(p["misses"] for p in parts)}


def _write(images: Any, r: dict, *, out: Path, data: Any, built: dict, fp: Any, store: Any, cache_root: Path,
           dev: torch.device, ranks: Any, writer: Any, timings: dict, t0: float) -> dict[str, Any]:
    from safetensors.torch import save_file

    from sslprobe.images.folders import skipped_report

    rows, skipped = r["idx"], r["skipped"]
    if not rows:
        raise SSLProbeError(f"no readable image in '{data}': all {len(skipped)} files were skipped "
                            f"(first: {skipped_report(images, skipped)[:1]}); check the folder")
    features = r["features"]  # (N, D)
    if not torch.isfinite(features).all():
        bad = int((~torch.isfinite(features)).any(1).sum())
        raise SSLProbeError(f"the backbone produced NaN/inf features for {bad} images; check --weights "
                            "(or use --dtype float32 if float16 overflowed)")
    labels = torch.tensor([images.labels[i] for i in rows], dtype=torch.int64)
    out.mkdir(parents=True, exist_ok=True)
    # The previous run's manifest goes first: a crash between the two writes must not pair the new
    # features with old class names and paths. The features file carries its classes and a run id
    # the manifest repeats, so it stands alone and a reader can check the pair.
    (out / MANIFEST).unlink(missing_ok=True)
    run_id = secrets.token_hex(8)
    with atomic_path(out / FEATURES) as tmp:
        save_file({"features": features.contiguous(), "labels": labels}, str(tmp),
                  metadata={"classes": json.dumps(list(images.classes)), "run_id": run_id})
    import timm

    manifest = {
        "format": "sslprobe-features",
        "run_id": run_id,
        "source": str(data),
        "kind": images.kind,
        "model": built["model_name"],
        **built["weights_info"],
        "preprocessing": built["preprocessing"],
        "layer": built["layer"],
        "pool": fp.pool,
        "dtype": fp.dtype,
        "dim": int(features.shape[1]),
        "classes": list(images.classes),
        "paths": [images.ids[i] for i in rows],
        "counts": {"found": len(images), "embedded": len(rows), "skipped": len(skipped)},
        "skipped": skipped_report(images, skipped),
        "cache": {"enabled": store is not None, "dir": str(cache_root) if store is not None else None,
                  "store": fp.store_id, "fingerprint": asdict(fp), "hits": r["hits"], "misses": r["misses"],
                  "invalid_shards": len(store.invalid) if store is not None else 0,
                  "shards_written": writer.shards},
        "device": str(dev),
        "world_size": ranks.world,
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "seconds": round(time.perf_counter() - t0, 3),
        "versions": {"sslprobe": __version__, "torch": torch.__version__, "timm": timm.__version__,
                     "python": platform.python_version()},
    }
    try:
        write_json(out / MANIFEST, manifest)
    except BaseException:  # a features file without its manifest would lose paths: leave neither
        (out / FEATURES).unlink(missing_ok=True)
        raise
    return manifest
