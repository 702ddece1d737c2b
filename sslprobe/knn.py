"""Weighted kNN classification on frozen features (DINO, Caron et al. 2021, and Wu et al. 2018).

Cosine similarity between L2-normalised rows; each of the k nearest bank rows votes for its class
with weight exp(sim / T). Queries and the bank are both processed in blocks with a running top-k,
so the (queries × bank) similarity matrix never exists whole: memory is one block plus the top-k.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from sslprobe.solver import exact_fp32


def knn_votes(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, *,
              ks: Sequence[int], num_classes: int, temperature: float = 0.07, chunk: int | None = None,
              bank_chunk: int | None = None, device: torch.device | str | None = None) -> dict[int, torch.Tensor]:
    """Temperature-weighted kNN votes (Nq, K) per k, cosine similarity on L2-normalised rows.

    One top-k at max(ks) serves every k. ``chunk`` query rows meet ``bank_chunk`` bank rows at a
    time (defaults keep a block under ~2^26 similarities); rows move to ``device`` (default: the
    queries' device) block by block, so both sets may stay in host memory. Votes are float32.
    """
    dev = torch.device(device) if device is not None else queries.device
    m = bank.shape[0]
    kmax = min(max(ks), m)
    bank_chunk = bank_chunk or min(m, max(2**16, kmax))
    chunk = chunk or max(1, min(1024, 2**26 // bank_chunk))
    labels = bank_labels.to(dev)
    out = {k: torch.zeros(queries.shape[0], num_classes, device=dev) for k in ks}
    bank_blocks = [F.normalize(bank[b:b + bank_chunk].to(dev, torch.float32), dim=1)
                   for b in range(0, m, bank_chunk)] if m <= bank_chunk * 4 else None  # small banks: normalise once
    with exact_fp32():
        for s in range(0, queries.shape[0], chunk):
            q = F.normalize(queries[s:s + chunk].to(dev, torch.float32), dim=1)  # (c, D)
            best_s = torch.full((q.shape[0], 0), -2.0, device=dev)
            best_i = torch.zeros((q.shape[0], 0), dtype=torch.long, device=dev)
            for j, b in enumerate(range(0, m, bank_chunk)):
                blk = bank_blocks[j] if bank_blocks is not None else \
                    F.normalize(bank[b:b + bank_chunk].to(dev, torch.float32), dim=1)
                sims, idx = (q @ blk.T).topk(min(kmax, blk.shape[0]), dim=1)  # (c, ≤kmax), best first
                best_s, pick = torch.cat([best_s, sims], 1).topk(min(kmax, best_s.shape[1] + sims.shape[1]), dim=1)
                best_i = torch.cat([best_i, idx + b], 1).gather(1, pick)
            weights, votes_for = (best_s / temperature).exp_(), labels[best_i]
            for k in ks:
                kk = min(k, m)
                out[k][s:s + chunk].scatter_add_(1, votes_for[:, :kk], weights[:, :kk])
    return out


__all__ = ["knn_votes"]
