"""Extract throughput: a plain timm + DataLoader loop vs `sslprobe extract` cold, warm and +1 % new.

All four runs embed the same images with the same network object (``create_backbone``: same
weights, same small-image stem), the same batch size and the same number of decode workers, in
one process, one after the other:

  plain  timm's ImageDataset + timm's eval transform (create_transform) + DataLoader, model.eval(),
         torch.no_grad(): what one writes without sslprobe
  cold   ``extract`` into an empty cache directory
  warm   the same ``extract`` again (every row a cache hit)
  +new   1 % more images added to the folder, ``extract`` again

Usage (Fashion-MNIST, 10 classes × 1,000 images)::

    python3 /work/shared/data/fashion_mnist.py /tmp/fm --per-class 1000
    OMP_WAIT_POLICY=PASSIVE flock /tmp/bench.lock python bench/extract_throughput.py /tmp/fm/train

Targets (issue 4): cold ≥ 1.2× plain on CPU, warm ≥ 20× faster than cold, +1 % ≤ 5 % of cold.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path


def plain_loop(data: Path, *, model: str, image_size: int, batch_size: int, workers: int, limit: int | None = None):
    """The peer: the loop a timm user writes by hand (same backbone constructor as sslprobe).

    ``limit``: stop after that many images (a warm-up run)."""
    import torch
    from timm.data import ImageDataset

    from sslprobe.backbone import create_backbone, eval_transform

    net, spec = create_backbone(model, weights="random", image_size=image_size, seed=0)
    net.eval()
    ds = ImageDataset(str(data), transform=eval_transform(spec))
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers)
    feats = []
    with torch.no_grad():
        for x, _ in loader:
            feats.append(net(x))
            if limit is not None and len(feats) * batch_size >= limit:
                break
    return torch.cat(feats), [os.path.relpath(p, data) for p, _ in ds.reader.samples]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path, help="class-folder of images (e.g. Fashion-MNIST train, 10k images)")
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--workers", type=int, default=None, help="decode workers for both (default: sslprobe's)")
    ap.add_argument("--new-fraction", type=float, default=0.01)
    ap.add_argument("--limit", type=int, default=None, help="use only the first N images (quick check)")
    args = ap.parse_args()

    import timm
    import torch
    from safetensors.torch import load_file

    from sslprobe.extraction.extract import extract
    from sslprobe.runtime.workers import default_workers

    workers = default_workers() if args.workers is None else args.workers
    load0 = os.getloadavg()[0]
    files = sorted(p.relative_to(args.data) for p in args.data.rglob("*.png"))[: args.limit]
    n_new = max(1, round(len(files) * args.new_fraction))
    held = set(files[:: max(1, len(files) // n_new)][:n_new])  # spread over the classes
    with tempfile.TemporaryDirectory(prefix="sslprobe-bench-") as tmp:
        work, cache = Path(tmp) / "data", Path(tmp) / "cache"
        for f in files:
            if f not in held:
                (work / f.parent).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(args.data / f, work / f)  # page cache warm for every run alike
        n = len(files) - len(held)
        kw = {"model": args.model, "weights": "random", "image_size": args.image_size, "seed": 0,
              "batch_size": args.batch_size, "workers": workers, "device": "cpu", "cache_dir": cache,
              "show_progress": False}

        cpu: dict[str, float] = {}

        def timed(fn, name):
            # CPU seconds of this process and its (reaped) DataLoader workers, next to wall time:
            # on a shared machine wall time moves with other people's load, CPU time much less.
            c, t = os.times(), time.perf_counter()
            out = fn()
            d = os.times()
            cpu[name] = sum(d[k] - c[k] for k in range(4))
            return out, time.perf_counter() - t

        # The plain loop runs first: warm the OS page cache (and timm's imports) so it is not billed
        # for the first read of every file, which the sslprobe runs after it would not pay.
        for f in work.rglob("*"):
            if f.is_file():
                f.read_bytes()
        plain_loop(work, model=args.model, image_size=args.image_size, batch_size=args.batch_size, workers=0,
                   limit=args.batch_size)
        (pf, paths), t_plain = timed(lambda: plain_loop(work, model=args.model, image_size=args.image_size,
                                                        batch_size=args.batch_size, workers=workers), "plain")
        m_cold, t_cold = timed(lambda: extract(work, out=Path(tmp) / "cold", **kw), "cold")
        m_warm, t_warm = timed(lambda: extract(work, out=Path(tmp) / "warm", **kw), "warm")
        for f in held:
            shutil.copyfile(args.data / f, work / f)
        m_new, t_new = timed(lambda: extract(work, out=Path(tmp) / "new", **kw), "new")

        cold = load_file(str(Path(tmp) / "cold" / "features.safetensors"))["features"]
        warm = load_file(str(Path(tmp) / "warm" / "features.safetensors"))["features"]
        assert m_cold.paths == paths, "plain loop and extract disagree on the file order"
        diff = float((cold - pf).abs().max())
        same = torch.equal(cold, warm)

    print(f"# extract throughput: {args.model} at {args.image_size} px, batch {args.batch_size}, {workers} decode "
          f"worker(s), {n} images (+{len(held)} new), device cpu")
    print(f"# host: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"timm {timm.__version__}, threads {torch.get_num_threads()}")
    print(f"{'run':<22}{'seconds':>9}{'images/s':>11}{'vs plain':>10}{'vs cold':>9}{'CPU s':>8}{'CPU vs plain':>14}")
    rows = [("plain timm loop", "plain", t_plain, n), ("sslprobe cold", "cold", t_cold, n),
            ("sslprobe warm", "warm", t_warm, n), (f"sslprobe +{len(held)} new", "new", t_new, n + len(held))]
    for name, key, t, k in rows:
        print(f"{name:<22}{t:>9.2f}{k / t:>11.0f}{t_plain / t:>9.2f}×{t_cold / t:>8.1f}×{cpu[key]:>8.1f}"
              f"{cpu['plain'] / max(cpu[key], 1e-9):>13.2f}×")
    print(f"cold hits/misses {m_cold.cache.hits}/{m_cold.cache.misses}, warm "
          f"{m_warm.cache.hits}/{m_warm.cache.misses}, +new {m_new.cache.hits}/"
          f"{m_new.cache.misses}; warm == cold bitwise: {same}; max |cold − plain| = {diff:.2e}")
    print(f"targets: cold/plain speed {t_plain / t_cold:.2f}× (≥ 1.2), warm {t_cold / t_warm:.1f}× faster than cold "
          f"(≥ 20), +new costs {100 * t_new / t_cold:.1f} % of cold (≤ 5 %); load average before/after "
          f"{load0:.1f}/{os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
