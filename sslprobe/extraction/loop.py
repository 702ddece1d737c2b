"""The inner loop of ``extract``: read back what the cache has, embed what it lacks, queue new rows."""
from __future__ import annotations

import time
from typing import Any

import torch

from sslprobe.extraction.embed import forward_context


def _embed_batch(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """One forward pass, (B, 3, H, W) uint8 on the device → (B, D) float32 on the CPU."""
    return model(x).float().cpu()


def _put(state: dict, idx: list[int], keys: list[bytes], rows: torch.Tensor) -> None:
    if state["feats"] is None:  # allocated once the width is known, outside inference mode
        state["feats"] = torch.empty(len(state["have"]), rows.shape[1], dtype=rows.dtype)
    state["feats"][idx] = rows.to(state["feats"].dtype)
    state["have"][idx] = True
    for i, k in zip(idx, keys):
        state["keys"][i] = k


def run_pass(images: Any, order: list[int], state: dict, *, model: torch.nn.Module, store: Any, writer: Any,
             built: dict, device: torch.device, dtype: str, batch_size: int, workers: int, bar: Any,
             task: Any) -> list[int]:
    """Embed ``order`` into ``state``; returns the indices whose cached rows failed validation."""
    from torch.utils.data import DataLoader

    from sslprobe.extraction.hashed import HashedImages, collate_keyed
    from sslprobe.images.decode import BadImageError, decode_image, gpu_decode

    known = store.keys() if store is not None else frozenset()
    ds = HashedImages(images, built["transform"], order=order, known=known, draft=built["draft"],
                      raw_jpeg=built["decode"] == "gpu")
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, collate_fn=collate_keyed, num_workers=workers,
                        pin_memory=device.type == "cuda", prefetch_factor=4 if workers else None)
    store_dtype = getattr(torch, dtype)
    retry: list[int] = []

    def embed(x: torch.Tensor, idx: list[int], keys: list[bytes]) -> None:
        x = x.to(device, non_blocking=True)
        if x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)  # (B, 3, H, W), NHWC in memory
        with forward_context(device):
            f = _embed_batch(model, x)  # (B, D)
        f = f.to(store_dtype)
        _put(state, idx, keys, f)
        writer.add(keys, f)
        state["misses"] += len(idx)

    t0, done = time.perf_counter(), 0
    for b in loader:
        state["skipped"].extend(b.skipped)
        if b.cached_idx:
            rows, found = store.get(b.cached_keys)
            ok = [k for k, f in enumerate(found) if f]
            retry += [i for i, f in zip(b.cached_idx, found) if not f]
            if ok:
                _put(state, [b.cached_idx[k] for k in ok], [b.cached_keys[k] for k in ok], rows)
                state["hits"] += len(ok)
        if b.images is not None:
            embed(b.images, b.new_idx, b.new_keys)
        if b.jpeg_idx:
            imgs, failed = gpu_decode(b.jpeg_data, device=device, transform=built["transform"])
            good = [k for k in range(len(b.jpeg_idx)) if k not in set(failed)]
            if imgs is not None:
                embed(imgs, [b.jpeg_idx[k] for k in good], [b.jpeg_keys[k] for k in good])
            for k in failed:  # nvJPEG could not: the CPU decoder decides (and words any skip reason)
                try:
                    x = built["transform"](decode_image(b.jpeg_data[k].numpy().tobytes(), draft=built["draft"]))
                except BadImageError as e:
                    state["skipped"].append((b.jpeg_idx[k], str(e)))
                    continue
                embed(x[None], [b.jpeg_idx[k]], [b.jpeg_keys[k]])
        done += len(b)
        if task is not None:
            rate = done / max(time.perf_counter() - t0, 1e-9)
            bar.update(task, advance=len(b), description=f"extract {rate:,.0f} img/s")
    return retry
