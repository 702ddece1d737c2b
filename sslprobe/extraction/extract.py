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

``layers`` other than ``last`` embeds several layers from one forward pass per image; each layer has
its own store (``layered.LayeredStore``) and its own feature directory: the deepest in ``out``, whose
manifest lists them all under ``layers``, the others in ``out/layers/NAME`` (docs/extract.md).

``extract`` reads as its steps: check the options, build the feature model (``_build``), open
the cache (``_open_cache``), embed this rank's files (``_embed_all``, the pass is
``cached_pass.Embedder``), collect every rank's rows on rank 0 (``_assemble``) and write the pair of
files per layer (``_write``).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

import sslprobe.distributed as distributed
from sslprobe.cache import Fingerprint, Store, default_cache_dir
from sslprobe.config.extract import ExtractConfig
from sslprobe.distributed import Dist
from sslprobe.errors import SSLProbeError
from sslprobe.extraction.cached_pass import Embedder, Rows
from sslprobe.extraction.embed import FeatureModel
from sslprobe.extraction.layered import LayeredStore
from sslprobe.extraction.shards import ShardWriter
from sslprobe.fileio import atomic_path, write_json
from sslprobe.images.decode import DECODE_POLICY
from sslprobe.images.folders import ImageSet, open_images, skipped_report
from sslprobe.images.transforms import Uint8Transform
from sslprobe.results import ExtractResult
from sslprobe.runtime.device import pick_device
from sslprobe.runtime.progress import progress_bar
from sslprobe.runtime.workers import default_workers
from sslprobe.version import __version__

if TYPE_CHECKING:
    from sslprobe.starts import Opened

FEATURES = "features.safetensors"
MANIFEST = "manifest.json"
LAYERS_DIR = "layers"  # out/layers/NAME: every layer of --layers but the deepest


@dataclass(frozen=True)
class Featurizer:
    """What the weights become: the feature model, its input transform, and what names it in cache and manifest."""

    model: FeatureModel
    transform: Uint8Transform  # the decode workers' (and the nvJPEG path's) resize and crop
    gpu: bool  # JPEGs decoded with nvJPEG on the device
    model_name: str
    weights_kind: str  # the fingerprint's ``weights``: random, random-rescaled, pretrained, pixels or file
    weights_id: str  # what pins the weights down in the fingerprint (seed, hub tag or sha256)
    weights_info: dict[str, Any]  # the manifest's weights entries
    preprocessing: dict[str, Any]
    layers: tuple[str, ...]  # "stage{k}" by depth, then "pre-logits"; one name for a single layer
    widths: tuple[int, ...] = ()  # several layers: their widths, how each wide row splits

    def dirs(self) -> dict[str, str]:
        """Each layer's feature directory, relative to ``out``: the deepest is ``out`` itself."""
        return {name: "." if i == len(self.layers) - 1 else f"{LAYERS_DIR}/{name}"
                for i, name in enumerate(self.layers)}


@dataclass(frozen=True)
class CacheUse:
    """Each layer's fingerprint and store, and the store the pass goes through: the one layer's, or every
    layer's as one (``LayeredStore``); ``store`` None with ``use_cache=False``."""

    fingerprints: tuple[Fingerprint, ...]  # one per layer, in ``Featurizer.layers`` order
    root: Path
    stores: tuple[Store, ...] | None
    store: Store | LayeredStore | None

    def entry(self, i: int, *, hits: int, misses: int, shards_written: int) -> dict[str, Any]:
        """Layer ``i``'s manifest ``cache`` entry (hits and misses are the pass's: rows read back, rows computed)."""
        fp, store = self.fingerprints[i], None if self.stores is None else self.stores[i]
        return {"enabled": store is not None, "dir": str(self.root) if store is not None else None,
                "store": fp.store_id, "fingerprint": asdict(fp), "hits": hits, "misses": misses,
                "invalid_shards": len(store.invalid) if store is not None else 0,
                "shards_written": shards_written}

    def shards_written(self, writer: ShardWriter) -> list[int]:
        """Shards each layer's store was written this run."""
        if isinstance(self.store, LayeredStore):
            return list(self.store.shards)
        return [writer.shards] * len(self.fingerprints)  # one layer, or no cache (0 each)


@dataclass(frozen=True)
class Part:
    """One rank's share, gathered on rank 0; ``feats`` only when no store holds its rows (no cache)."""

    idx: list[int]
    keys: list[bytes]
    skipped: list[tuple[int, str]]
    hits: int
    misses: int
    feats: torch.Tensor | None


@dataclass(frozen=True)
class Assembled:
    """Every rank's rows in file order (rank 0): ``features`` (len(idx), D), None when no image was readable."""

    idx: list[int]
    features: torch.Tensor | None
    skipped: list[tuple[int, str]]
    hits: int
    misses: int


def _state_sha256(net: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(net.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def extract(config: ExtractConfig | str | os.PathLike, /, *, show_progress: bool = True,
            **options: Any) -> ExtractResult:
    """Embed every readable image of ``config.data``; bad files are skipped and listed. Returns an ``ExtractResult``.

    ``config``: an :class:`~sslprobe.config.extract.ExtractConfig`, or the data folder with the options
    as keywords. ``weights``: ``random`` (seeded by ``seed``; the architecture's ordinary init, no zeroed
    residual branches), ``random-rescaled`` (that, then data-dependent rescaling on a seeded sample of
    the images), ``pretrained`` (timm hub), ``pixels`` or a path to a .safetensors backbone (sslprobe's
    own need no ``model``). ``small_stem``: None picks the small-image stem for random weights at
    ≤ 64 px; trained weights keep theirs. ``layer``: ``pre-logits`` or a stage index; ``layers``: ``last``
    (that one layer), ``auto`` or a list such as ``"2,3,pre-logits"``: every layer from one pass, the
    deepest in ``out``, the others in ``out/layers/NAME`` (the result's ``layers`` lists them); ``pool``:
    auto, cls or mean. ``decode="gpu"`` decodes JPEGs with nvJPEG on CUDA. ``labels``: a path,label CSV naming
    the images of the folder ``data`` and their classes (see ``images.folders.open_images``).
    """
    c = ExtractConfig.of(config, **options)
    data, out, dtype = c.data, c.out, c.dtype
    t0 = time.perf_counter()
    images = open_images(data, image_column=c.image_column, label_column=c.label_column, labels=c.labels)
    dist, dev = distributed.setup(pick_device(c.device))
    try:
        calibration = images if c.calibration is None else \
            open_images(c.calibration, image_column=c.image_column, label_column=c.label_column)
        feat = _build(calibration, model=c.model, weights=c.weights, image_size=c.image_size, small_stem=c.small_stem,
                      layer=c.layer, layers=c.layers, pool=c.pool, seed=c.seed, allow_pickle=c.allow_pickle,
                      decode=c.decode if dev.type == "cuda" else "cpu")
        # channels_last on CPU too: with BatchNorm folded, oneDNN convs run ~1.1-1.3x faster in it
        feat.model.to(dev).eval().to(memory_format=torch.channels_last)
        cache = _open_cache(feat, pool=c.pool, dtype=dtype, dev=dev, cache_dir=c.cache_dir, use_cache=c.use_cache)
        t_setup = time.perf_counter() - t0
        t1 = time.perf_counter()
        workers = default_workers() if c.workers is None else c.workers
        rows, writer = _embed_all(images, feat, store=cache.store, dist=dist, dev=dev, dtype=dtype,
                                  batch_size=c.batch_size, workers=workers, shard_rows=c.shard_rows,
                                  show_progress=show_progress)
        t_embed = time.perf_counter() - t1
        result = _assemble(images, rows, dist=dist, store=cache.store)
        manifest = None
        if result is not None:  # rank 0
            manifest = _write(images, result, out=Path(out), data=data, feat=feat, cache=cache, dev=dev,
                              world=dist.world, shards_written=cache.shards_written(writer), t0=t0,
                              timings={"setup": t_setup, "embed": t_embed, "write_shards": writer.seconds})
        return distributed.broadcast(manifest, dist)
    finally:
        distributed.teardown(dist)


def _build(calibration: ImageSet, *, model: str | None, weights: str, image_size: int | None, small_stem: bool | None,
           layer: str | int, layers: str, pool: str, seed: int, allow_pickle: bool, decode: str) -> Featurizer:
    """The feature model, its worker transform and everything the fingerprint needs; ``calibration``: the images
    ``random-rescaled`` calibrates on (DATA, or ``--calibration``)."""
    from sslprobe.extraction.embed import fold_batchnorm_, layer_name, resolve_layers
    from sslprobe.starts import open_start, parse_start

    start = parse_start(weights)
    if start.init == "pixels":
        return _pixels(image_size=image_size, model=model, small_stem=small_stem, layer=layer, layers=layers,
                       pool=pool)
    from sslprobe.backbone import eval_transform

    # random: the architecture's ordinary ("fair") init, as frozen features need it
    opened = open_start(start, model=model, image_size=image_size, small_stem=small_stem, seed=seed,
                        random_init="fair", allow_pickle=allow_pickle)
    net, spec = opened.net, opened.spec
    net.eval()
    tf = Uint8Transform.from_timm(eval_transform(spec), channels=spec.in_chans)  # 1: a grey backbone
    ks = resolve_layers(net, layers, layer=layer)
    kind, wid, info = _identify(opened, calibration, tf, weights=weights, seed=seed)
    fold_batchnorm_(net)
    use_gpu = decode == "gpu"
    # in_chans is named only for grey backbones: the rows of every RGB one keep their cache fingerprint
    pre = {k: v for k, v in asdict(spec).items() if k != "in_chans" or v != 3}
    fm = FeatureModel(net, mean=spec.mean, std=spec.std, layers=ks, pool=pool)
    return Featurizer(model=fm, transform=tf, gpu=use_gpu, model_name=spec.model, weights_kind=kind, weights_id=wid,
                      weights_info=info, preprocessing={**pre, "decode": "nvjpeg" if use_gpu else "pil-draft"},
                      layers=tuple(layer_name(k) for k in ks), widths=fm.widths)


def _pixels(*, image_size: int | None, model: str | None, small_stem: bool | None, layer: str | int, layers: str,
            pool: str) -> Featurizer:
    """The raw-pixel baseline: the image resized and centre-cropped (32 px by default), flattened.

    With ``model``, the crop and the interpolation are that model's eval ones (timm's ``crop_pct``: the short
    side resized to ⌊size / crop_pct⌋, the centre square cut), so pixels see what the network arms of a
    study see (docs/study.md, "One input"); without it, the whole short-side square."""
    from sslprobe.backbone import eval_crop
    from sslprobe.extraction.embed import Pixels

    if layers != "last":
        raise SSLProbeError(f"--weights pixels has no layers to choose from; drop --layers {layers}")
    if str(layer) not in ("pre-logits", "") or pool != "auto" or small_stem is not None:
        raise SSLProbeError("--weights pixels has no layers, pooling or stem; drop --layer/--pool/--small-stem")
    size = image_size or 32
    crop, interpolation = eval_crop(model) if model else (1.0, "bicubic")
    pre = {"image_size": size, "interpolation": interpolation, "crop_pct": crop, "mean": None, "std": None}
    tf = Uint8Transform(size=size, resize=math.floor(size / crop), interpolation=interpolation)
    return Featurizer(model=FeatureModel(Pixels(), mean=None, std=None), transform=tf,
                      gpu=False, model_name="pixels", weights_kind="pixels", weights_id="",
                      weights_info={"weights": "pixels"}, preprocessing={**pre, "decode": "pil-draft"},
                      layers=("pre-logits",))


def _identify(opened: Opened, images: ImageSet, tf: Uint8Transform, *, weights: str,
              seed: int) -> tuple[str, str, dict[str, Any]]:
    """Weights kind, the id that pins them down in the cache fingerprint, and their manifest entries.

    ``random-rescaled`` rescales the network here, on the seed's calibration images of ``images`` (DATA or
    ``--calibration``).
    """
    import timm

    from sslprobe.fairinit import POLICY, RESCALE_POLICY, rescale_init_

    net, spec, start = opened.net, opened.spec, opened.start
    info: dict[str, Any] = {"weights": weights}
    if start.init == "random":
        # init= keeps rows of the zero-residual init of earlier versions (no init= then) out of this store
        info.update(seed=seed, init=opened.note)
        return "random", f"seed={seed};timm={timm.__version__};init={POLICY}", info
    if start.init == "random-rescaled":
        x = _calibration_batch(images, tf, seed=seed)
        done = rescale_init_(net, FeatureModel(net, mean=spec.mean, std=spec.std).normalize(x))
        sha = _state_sha256(net)
        info.update(seed=seed, init=f"{opened.note}; then {done.note()}", calibration_images=int(x.shape[0]),
                    calibration_source=images.source, weights_sha256=sha)
        wid = f"seed={seed};timm={timm.__version__};init={POLICY};rescale={RESCALE_POLICY};sha256={sha}"
        return "random-rescaled", wid, info
    if start.init == "pretrained":
        cfg = getattr(net, "pretrained_cfg", {}) or {}
        info["pretrained_tag"] = opened.hub_tag
        tag = json.dumps({k: cfg.get(k) for k in ("hf_hub_id", "tag", "url", "file")}, sort_keys=True)
        return "pretrained", tag, info
    info["weights_sha256"] = start.sha256
    return "file", start.sha256, info


def _calibration_batch(images: ImageSet, tf: Uint8Transform, *, seed: int) -> torch.Tensor:
    """uint8 (B, C, H, W) of the seed's calibration images (``fairinit.calibration_batch``), unreadable ones skipped."""
    from sslprobe.fairinit import calibration_batch
    from sslprobe.images.decode import BadImageError

    def read(positions: list[int]) -> list[torch.Tensor | None]:
        out: list[torch.Tensor | None] = []
        for i in positions:
            try:
                out.append(tf(images.read(i)))
            except BadImageError:
                out.append(None)
        return out

    return calibration_batch(images.ids, read, seed=seed)


def _open_cache(feat: Featurizer, *, pool: str, dtype: str, dev: torch.device, cache_dir: str | os.PathLike | None,
                use_cache: bool) -> CacheUse:
    """Each layer's fingerprint (in the manifest even without a cache) and, with a cache, its store."""
    fps = tuple(Fingerprint(model=feat.model_name, weights=feat.weights_kind, weights_id=feat.weights_id,
                            preprocessing=json.dumps({**feat.preprocessing, "decode_policy": DECODE_POLICY},
                                                     sort_keys=True),
                            layer=name, pool=pool, dtype=dtype, compute="bfloat16" if dev.type == "cuda" else "float32",
                            sslprobe_major=__version__.split(".")[0]) for name in feat.layers)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if not use_cache:
        return CacheUse(fingerprints=fps, root=root, stores=None, store=None)
    stores = tuple(Store.open(root, fp) for fp in fps)
    for s in stores:
        s.refresh()
    store = stores[0] if len(stores) == 1 else LayeredStore(stores, feat.widths)
    return CacheUse(fingerprints=fps, root=root, stores=stores, store=store)


def _embed_all(images: ImageSet, feat: Featurizer, *, store: Store | None, dist: Dist, dev: torch.device, dtype: str,
               batch_size: int, workers: int, shard_rows: int, show_progress: bool) -> tuple[Rows, ShardWriter]:
    """This rank's files (every WORLD_SIZE-th) through the cache; the writer is closed (its shards on disk)."""
    order = list(range(dist.rank, len(images), dist.world))
    rows = Rows.empty(len(images))
    writer = ShardWriter(store, rows=shard_rows, tag=f"r{dist.rank}")
    embedder = Embedder(feat.model, transform=feat.transform, gpu=feat.gpu, rows=rows, writer=writer, device=dev,
                        dtype=dtype, batch_size=batch_size, workers=workers)
    try:
        with progress_bar(show_progress and dist.main) as bar:
            task = bar.add_task("extract", total=len(order))
            retry = embedder.run_pass(images, order, store=store, bar=bar, task=task)
            if retry:  # rows of shards that failed their checksum: recompute, never trust
                embedder.run_pass(images, retry, store=None, bar=bar, task=None)
    finally:
        writer.close()  # finished rows are kept even when the run is interrupted
    return rows, writer


def _assemble(images: ImageSet, rows: Rows, *, dist: Dist, store: Store | None) -> Assembled | None:
    """Rows in file order on rank 0: this rank's, plus the other ranks' (from the store or gathered)."""
    mine = rows.have.nonzero().flatten().tolist()
    send = None if store is not None or dist.world == 1 or not mine else rows.feats[rows.have]
    part = Part(idx=mine, keys=[rows.keys[i] for i in mine], skipped=rows.skipped, hits=rows.hits,
                misses=rows.misses, feats=send)
    parts = distributed.gather(part, dist)
    if parts is None:
        return None
    if dist.world > 1:
        if store is not None:
            store.refresh()  # the other ranks' shards are written: their writers closed before gather
        for p in parts[1:]:
            _take(rows, p, store=store)
    idx = rows.have.nonzero().flatten()
    return Assembled(idx=idx.tolist(), features=None if rows.feats is None else rows.feats[idx],
                     skipped=[s for p in parts for s in p.skipped], hits=sum(p.hits for p in parts),
                     misses=sum(p.misses for p in parts))


def _take(rows: Rows, part: Part, *, store: Store | None) -> None:
    """Another rank's rows into ``rows``: read from the store its writer filled, or as it sent them."""
    if not part.idx:
        return
    if store is None:
        got = part.feats
    else:
        got, found = store.get(part.keys)
        if not all(found):
            raise SSLProbeError("another rank's cache shard could not be read back; rerun extract")
    rows.put(part.idx, part.keys, got)


def _write(images: ImageSet, r: Assembled, *, out: Path, data: str | os.PathLike, feat: Featurizer, cache: CacheUse,
           dev: torch.device, world: int, shards_written: list[int], timings: dict[str, float],
           t0: float) -> ExtractResult:
    """Each layer's features.safetensors, then its manifest.json; the deepest layer's, in ``out``, last.

    Returns the result of ``out`` (its manifest's ``to_json()``); with several layers it lists them all.
    """
    features = _checked_features(images, r, data=data)  # (N, ΣD)
    labels = torch.tensor([images.labels[i] for i in r.idx], dtype=torch.int64)
    parts = features.split(list(feat.widths), 1) if len(feat.layers) > 1 else (features,)
    dirs = feat.dirs()
    # out's manifest goes first: while the other layers are written, no old list of them stands in out
    (out / MANIFEST).unlink(missing_ok=True)
    result = None
    for i, (name, part) in enumerate(zip(feat.layers, parts)):
        top = dirs[name] == "."
        doc = _manifest(images, r, dim=int(part.shape[1]), data=data, feat=feat, layer=i,
                        cache=cache.entry(i, hits=r.hits, misses=r.misses, shards_written=shards_written[i]),
                        dev=dev, world=world, timings=timings, t0=t0,
                        layers=dirs if top and len(dirs) > 1 else None)
        result = _write_set(out / dirs[name], part, labels, classes=list(images.classes), doc=doc)
    return result


def _write_set(d: Path, features: torch.Tensor, labels: torch.Tensor, *, classes: list[str],
               doc: dict[str, Any]) -> ExtractResult:
    """One feature directory: features.safetensors, then manifest.json."""
    from safetensors.torch import save_file

    d.mkdir(parents=True, exist_ok=True)
    # The previous run's manifest goes first: a crash between the two writes must not pair the new
    # features with old class names and paths. The features file carries its classes and a run id
    # the manifest repeats, so it stands alone and a reader can check the pair.
    (d / MANIFEST).unlink(missing_ok=True)
    run_id = secrets.token_hex(8)
    with atomic_path(d / FEATURES) as tmp:
        save_file({"features": features.contiguous(), "labels": labels}, str(tmp),
                  metadata={"classes": json.dumps(classes), "run_id": run_id})
    manifest = ExtractResult.from_json({"format": doc.pop("format"), "run_id": run_id, **doc})
    try:
        write_json(d / MANIFEST, manifest.to_json())
    except BaseException:  # a features file without its manifest would lose paths: leave neither
        (d / FEATURES).unlink(missing_ok=True)
        raise
    return manifest


def _checked_features(images: ImageSet, r: Assembled, *, data: str | os.PathLike) -> torch.Tensor:
    """The features to write; refuses a run with no readable image or with non-finite features."""
    if not r.idx:
        raise SSLProbeError(f"no readable image in '{data}': all {len(r.skipped)} files were skipped "
                            f"(first: {skipped_report(images, r.skipped)[:1]}); check the folder")
    features = r.features
    if not torch.isfinite(features).all():
        bad = int((~torch.isfinite(features)).any(1).sum())
        raise SSLProbeError(f"the backbone produced NaN/inf features for {bad} images; check --weights "
                            "(or use --dtype float32 if float16 overflowed)")
    return features


def _manifest(images: ImageSet, r: Assembled, *, dim: int, data: str | os.PathLike, feat: Featurizer, layer: int,
              cache: dict[str, Any], dev: torch.device, world: int, timings: dict[str, float], t0: float,
              layers: dict[str, str] | None) -> dict[str, Any]:
    """Layer ``layer``'s manifest, less its run id; ``layers`` (out's, with several layers): every layer's dir."""
    import timm

    fp = cache["fingerprint"]
    doc = {
        "format": "sslprobe-features",
        "source": str(data),
        "kind": images.kind,
        "model": feat.model_name,
        **feat.weights_info,
        "preprocessing": feat.preprocessing,
        "layer": feat.layers[layer],
        "pool": fp["pool"],
        "dtype": fp["dtype"],
        "dim": dim,
        "classes": list(images.classes),
        "paths": [images.ids[i] for i in r.idx],
        "counts": {"found": len(images), "embedded": len(r.idx), "skipped": len(r.skipped)},
        "skipped": skipped_report(images, r.skipped),
        "cache": cache,
        "device": str(dev),
        "world_size": world,
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "seconds": round(time.perf_counter() - t0, 3),
        "versions": {"sslprobe": __version__, "torch": torch.__version__, "timm": timm.__version__,
                     "python": platform.python_version()},
    }
    return {**doc, "layers": layers} if layers else doc
