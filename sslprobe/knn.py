"""Weighted kNN classification on frozen features (DINO, Caron et al. 2021, and Wu et al. 2018).

Cosine similarity between L2-normalised rows; each of the k nearest bank rows votes for its class
with weight exp(sim / T). Queries and the bank are both processed in blocks with a running top-k,
so the (queries × bank) similarity matrix never exists whole: memory is one block plus the top-k.
The probe's two kNN evaluations share their work (``knn_val_test``): every row is normalised
once, the validation and test queries meet the fit split in one pass, and the test queries' top-k
over train+val is the merge of that pass with the validation rows alone.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from sslprobe.runtime.device import exact_fp32

HEADLINE_K = 20  # DINO's k: the probe's headline kNN (label curves; the tie-break between k's scoring the same)


def _normalised(x: torch.Tensor, dev: torch.device, block: int = 65536) -> torch.Tensor:
    """Unit rows of ``x`` in float32 on ``dev``, normalised block by block."""
    return torch.cat([F.normalize(x[s:s + block].to(dev, torch.float32), dim=1) for s in range(0, x.shape[0], block)]) \
        if x.shape[0] else x.to(dev, torch.float32)


def nearest(bank: torch.Tensor, queries: torch.Tensor, *, kmax: int, chunk: int | None = None,
            bank_chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(sims, idx), both (Nq, min(kmax, M)), best first: the top-k bank rows of each query by dot
    product (cosine on unit rows). Blocks of ``chunk`` queries × ``bank_chunk`` bank rows."""
    m = bank.shape[0]
    kmax = min(kmax, m)
    bank_chunk = bank_chunk or min(m, max(2**16, kmax))
    chunk = chunk or max(1, min(1024, 2**26 // bank_chunk))
    sims_out, idx_out = [], []
    with exact_fp32():
        for s in range(0, queries.shape[0], chunk):
            q = queries[s:s + chunk]  # (c, D)
            best_s = q.new_full((q.shape[0], 0), -2.0)
            best_i = torch.zeros((q.shape[0], 0), dtype=torch.long, device=q.device)
            for b in range(0, m, bank_chunk):
                sims, idx = (q @ bank[b:b + bank_chunk].T).topk(min(kmax, min(bank_chunk, m - b)), dim=1)
                if best_s.shape[1] == 0:
                    best_s, best_i = sims, idx + b
                    continue
                both = torch.cat([best_s, sims], 1)
                best_s, pick = both.topk(min(kmax, both.shape[1]), dim=1)
                best_i = torch.cat([best_i, idx + b], 1).gather(1, pick)
            sims_out.append(best_s)
            idx_out.append(best_i)
    return torch.cat(sims_out), torch.cat(idx_out)


def _votes(sims: torch.Tensor, neighbour_labels: torch.Tensor, *, ks: Sequence[int], num_classes: int,
           temperature: float) -> dict[int, torch.Tensor]:
    """(Nq, K) temperature-weighted votes of the first k neighbours, for each k of ``ks``."""
    weights = (sims / temperature).exp_()
    out = {}
    for k in ks:
        kk = min(k, sims.shape[1])
        out[k] = torch.zeros(sims.shape[0], num_classes, device=sims.device).scatter_add_(
            1, neighbour_labels[:, :kk], weights[:, :kk])
    return out


def knn_votes(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, *,
              ks: Sequence[int], num_classes: int, temperature: float = 0.07, chunk: int | None = None,
              bank_chunk: int | None = None, device: torch.device | str | None = None) -> dict[int, torch.Tensor]:
    """Temperature-weighted kNN votes (Nq, K) per k, cosine similarity on L2-normalised rows.

    One top-k at max(ks) serves every k. ``chunk`` query rows meet ``bank_chunk`` bank rows at a
    time (defaults keep a block under ~2^26 similarities). Votes are float32 on ``device``
    (default: the queries' device).
    """
    dev = torch.device(device) if device is not None else queries.device
    sims, idx = nearest(_normalised(bank, dev), _normalised(queries, dev), kmax=max(ks), chunk=chunk,
                        bank_chunk=bank_chunk)
    return _votes(sims, bank_labels.to(dev)[idx], ks=ks, num_classes=num_classes, temperature=temperature)


def knn_val_test(fit: torch.Tensor, fit_labels: torch.Tensor, val: torch.Tensor, val_labels: torch.Tensor,
                 test: torch.Tensor | None, *, ks: Sequence[int], num_classes: int, temperature: float = 0.07,
                 device: torch.device | str | None = None
                 ) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor] | None]:
    """The probe's kNN: val queries against the fit split, test queries against fit + val.

    Same votes as two ``knn_votes`` calls (tests/test_knn.py), with the shared work done once.
    """
    dev = torch.device(device) if device is not None else fit.device
    kmax = max(ks)
    F_, V = _normalised(fit, dev), _normalised(val, dev)
    T = _normalised(test, dev) if test is not None else V[:0]
    yf, yv = fit_labels.to(dev), val_labels.to(dev)
    sims, idx = nearest(F_, torch.cat([V, T]), kmax=kmax)  # (Nv + Nt, k): one pass over the fit split
    nv = V.shape[0]
    votes_val = _votes(sims[:nv], yf[idx[:nv]], ks=ks, num_classes=num_classes, temperature=temperature)
    if test is None:
        return votes_val, None
    s_val, i_val = nearest(V, T, kmax=kmax)  # test against the val rows alone, then merge
    merged_s = torch.cat([sims[nv:], s_val], 1)
    merged_y = torch.cat([yf[idx[nv:]], yv[i_val]], 1)
    top_s, pick = merged_s.topk(min(kmax, merged_s.shape[1]), dim=1)
    votes_test = _votes(top_s, merged_y.gather(1, pick), ks=ks, num_classes=num_classes, temperature=temperature)
    return votes_val, votes_test


__all__ = ["HEADLINE_K", "knn_val_test", "knn_votes", "nearest"]
