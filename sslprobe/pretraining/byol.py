"""BYOL (Grill et al. 2020, arXiv 2006.07733): heads, loss, target EMA, parameter groups.

Pure functions plus one module; the training loop lives in ``pretrain.py``, the schedules (learning
rate, τ) in ``sslprobe/schedules.py`` and LARS in ``sslprobe/optim.py``.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

import sslprobe.optim as optim


def mlp(in_dim: int, hidden: int = 4096, out: int = 256) -> nn.Sequential:
    """Projector/predictor: Linear → BatchNorm1d → ReLU → Linear (paper §3.3)."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, out))


def regression_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Per-sample ‖p̂ − ẑ‖² = 2 − 2·cos(p, z), normalised in float32 (eq. 2); (B, D) → (B,)."""
    p = F.normalize(p.float(), dim=-1)
    z = F.normalize(z.float(), dim=-1)
    return 2 - 2 * (p * z).sum(-1)


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
    The grouping itself is the shared one (:func:`sslprobe.optim.param_groups`).
    """
    inner = getattr(model, "module", model)  # DDP
    slow = ({id(p) for p in inner.backbone.parameters()}
            if backbone_lr_scale != 1.0 and isinstance(getattr(inner, "backbone", None), nn.Module) else set())
    return optim.param_groups(model, weight_decay=weight_decay, flag="lars",
                              lr_scale=lambda p: backbone_lr_scale if id(p) in slow else 1.0,
                              order=lambda g: (id(g["params"][0]) in slow, not g["lars"]))
