"""BYOL (Grill et al. 2020, arXiv 2006.07733): heads, loss, target EMA, schedules, LARS.

Pure functions plus one module; the training loop lives in ``pretrain.py``.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn


def mlp(in_dim: int, hidden: int = 4096, out: int = 256) -> nn.Sequential:
    """Projector/predictor: Linear → BatchNorm1d → ReLU → Linear (paper §3.3)."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, out))


def regression_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Per-sample ‖p̂ − ẑ‖² = 2 − 2·cos(p, z), normalised in float32 (eq. 2); (B, D) → (B,)."""
    p = F.normalize(p.float(), dim=-1)
    z = F.normalize(z.float(), dim=-1)
    return 2 - 2 * (p * z).sum(-1)


def tau_at(step: int, total: int, base: float) -> float:
    """Target decay τ = 1 − (1 − τ_base)(cos(πk/K) + 1)/2: τ_base at k = 0, 1 at k = K."""
    k = min(max(step, 0), total)
    return 1 - (1 - base) * (math.cos(math.pi * k / max(total, 1)) + 1) / 2


def lr_at(step: int, total: int, *, peak: float, warmup: int) -> float:
    """Linear warm-up to ``peak`` over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    k = (step - warmup) / max(total - warmup, 1)
    return peak * 0.5 * (1 + math.cos(math.pi * min(max(k, 0.0), 1.0)))


def projection_std(z: torch.Tensor) -> torch.Tensor:
    """Collapse indicator: std over the batch of L2-normalised projections, averaged over dims.

    ≈ 1/√D for well-spread outputs (D = projection width), → 0 when every image maps to one
    point (the collapse BYOL's predictor and EMA target are there to avoid). (B, D) → 0-d.
    """
    return F.normalize(z.float(), dim=-1).std(0).mean()


class BYOL(nn.Module):
    """Online (backbone → projector → predictor) and target (EMA of backbone → projector)."""

    def __init__(self, backbone: nn.Module, *, feature_dim: int, hidden: int = 4096, out: int = 256):
        super().__init__()
        self.backbone = backbone
        self.projector = mlp(feature_dim, hidden, out)
        self.predictor = mlp(out, hidden, out)
        self.target_backbone = copy.deepcopy(backbone).requires_grad_(False)
        self.target_projector = copy.deepcopy(self.projector).requires_grad_(False)

    def forward(self, v1: torch.Tensor, v2: torch.Tensor, *, return_std: bool = False):
        """Symmetrised loss L + L̃ averaged over the batch; the target side has no gradient.

        With ``return_std`` also the collapse indicator (see :func:`projection_std`) of the online
        projections, as a 0-d tensor on the device (no host sync).
        """
        # One pass per view, as the paper's implementation does: BatchNorm normalises each view's
        # batch on its own (a joint 2B pass would mix the two views' statistics). On CPU it is also
        # the faster shape (bench/RESULTS.md: 4 B-passes beat 2 2B-passes at 64 px).
        o1 = self.projector(self.backbone(v1))  # (B, D)
        o2 = self.projector(self.backbone(v2))
        p1, p2 = self.predictor(o1), self.predictor(o2)
        with torch.no_grad():
            z1 = self.target_projector(self.target_backbone(v1))
            z2 = self.target_projector(self.target_backbone(v2))
        loss = (regression_loss(p1, z2) + regression_loss(p2, z1)).mean()
        if return_std:
            return loss, projection_std(torch.cat([o1, o2]).detach())
        return loss

    @torch.no_grad()
    def update_target(self, tau: float) -> None:
        """ξ ← τ·ξ + (1 − τ)·θ for weights; buffers (BN statistics) are copied."""
        for online, target in ((self.backbone, self.target_backbone), (self.projector, self.target_projector)):
            o, t = list(online.parameters()), list(target.parameters())
            torch._foreach_lerp_(t, o, 1 - tau)
            for bo, bt in zip(online.buffers(), target.buffers()):
                bt.copy_(bo)


def param_groups(model: nn.Module, *, weight_decay: float, backbone_lr_scale: float = 1.0) -> list[dict]:
    """Weights get decay and LARS adaptation; biases and norm parameters (ndim ≤ 1) neither (paper App. C).

    Each group's ``lr_scale`` multiplies the scheduled rate. With ``backbone_lr_scale`` ≠ 1 the
    backbone's parameters get groups of their own after the heads' (a trained backbone learns
    slower than its fresh heads; docs/pretrain.md), so group 0 always runs at the scheduled rate.
    """
    inner = getattr(model, "module", model)  # DDP
    slow = ({id(p) for p in inner.backbone.parameters()}
            if backbone_lr_scale != 1.0 and isinstance(getattr(inner, "backbone", None), nn.Module) else set())
    groups = []
    for scale, part in ((1.0, False), (backbone_lr_scale, True)):
        params = [p for p in model.parameters() if p.requires_grad and (id(p) in slow) == part]
        if part and not params:
            continue
        groups += [{"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay, "lars": True,
                    "lr_scale": scale},
                   {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0, "lars": False,
                    "lr_scale": scale}]
    return groups


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise trust ratio η‖w‖/‖g + λw‖ (You et al. 2017), as BYOL uses.

    Groups with ``lars=False`` (biases, BatchNorm) get plain momentum SGD without decay.
    """

    def __init__(self, params, lr: float, *, momentum: float = 0.9, weight_decay: float = 0.0, trust: float = 1e-3):
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "trust": trust,
                                  "lars": True})

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            # Whole-group (foreach) ops: a handful of kernel launches per group instead of ~8 per
            # parameter, and the trust ratios stay on the device (no host sync).
            grads = [p.grad for p in params]
            if group["lars"]:
                wd = group["weight_decay"]
                d = torch._foreach_add(grads, params, alpha=wd) if wd else torch._foreach_mul(grads, 1.0)
                w_norm, d_norm = torch.stack(torch._foreach_norm(params)), torch.stack(torch._foreach_norm(d))
                ratio = torch.where((w_norm > 0) & (d_norm > 0), group["trust"] * w_norm / d_norm,
                                    torch.ones_like(w_norm))
                torch._foreach_mul_(d, list(ratio.unbind(0)))
            else:
                d = grads
            state = [self.state[p] for p in params]
            have = [i for i, st in enumerate(state) if "momentum_buffer" in st]
            if have:  # buf ← μ·buf + d
                bufs = [state[i]["momentum_buffer"] for i in have]
                torch._foreach_mul_(bufs, group["momentum"])
                torch._foreach_add_(bufs, [d[i] for i in have])
            for st, di in zip(state, d):
                if "momentum_buffer" not in st:  # first step: buf = d
                    st["momentum_buffer"] = di.clone()
            torch._foreach_add_(params, [st["momentum_buffer"] for st in state], alpha=-group["lr"])
        return loss
