"""Optimisers and their parameter groups, for every command that trains (pretraining, fine-tuning).

A command says only its own choices — which optimiser, which rates, which parameters run slower —
and builds the rest here: groups with no weight decay on biases, norms and the model's own
``no_weight_decay()`` names (tokens, position embeddings; Goyal et al. 2017 §5.1, BYOL App. C, MAE),
a per-group ``lr_scale`` the schedule multiplies, BEiT's layer-wise decay through timm, and LARS.

timm's ``Lars`` is not used: its trust ratio is η‖w‖/(‖g‖ + λ‖w‖ + ε), BYOL's (ours) η‖w‖/‖g + λw‖;
with BYOL's exclusions they differ by 1.3e-6 after 20 steps at λ = 1.5e-6 (tests/test_optim.py).
"""
from __future__ import annotations

from collections.abc import Callable, Hashable

import torch
from torch import nn

BETAS = (0.9, 0.999)  # AdamW's (Loshchilov & Hutter 2019), torch's default


def no_decay_names(net: nn.Module) -> set[str]:
    """Parameters that get no weight decay: biases and norm weights (ndim ≤ 1) and ``net.no_weight_decay()``."""
    skip = net.no_weight_decay() if hasattr(net, "no_weight_decay") else set()
    return {n for n, p in net.named_parameters() if p.ndim <= 1 or n in skip}


def param_groups(net: nn.Module, *, weight_decay: float, lr_scale: Callable[[nn.Parameter], float] | None = None,
                 flag: str | None = None, order: Callable[[dict], Hashable] | None = None) -> list[dict]:
    """The trainable parameters in groups of one ``lr_scale`` and one ``weight_decay`` (0 on :func:`no_decay_names`).

    ``lr_scale(p)``: the fraction of the scheduled rate ``p`` trains at (default 1). ``flag``: a
    key set True on the decayed groups and False on the others, kept apart even at decay 0 (LARS's
    ``lars``: adapt the decayed weights only). Groups come in the order their first parameter
    appears, stably sorted by ``order(group)`` when given.
    """
    quiet = no_decay_names(net)
    groups: dict[tuple, dict] = {}
    for name, p in net.named_parameters():
        if not p.requires_grad:
            continue
        decays = name not in quiet
        scale = 1.0 if lr_scale is None else float(lr_scale(p))
        key = (scale, weight_decay if decays else 0.0) + ((decays,) if flag else ())
        if key not in groups:
            groups[key] = {"params": [], "weight_decay": key[1], **({flag: decays} if flag else {}), "lr_scale": scale}
        groups[key]["params"].append(p)
    out = list(groups.values())
    return sorted(out, key=order) if order is not None else out


def layer_decay_groups(net: nn.Module, *, weight_decay: float, layer_decay: float) -> list[dict]:
    """BEiT's layer-wise rate decay (Bao et al. 2022): block i of L at layer_decay^(L+1−i) of the head's rate.

    timm's grouping (``param_groups_layer_decay``), with the model's ``no_weight_decay()`` names undecayed.
    """
    from timm.optim import param_groups_layer_decay

    skip = net.no_weight_decay() if hasattr(net, "no_weight_decay") else ()
    return param_groups_layer_decay(net, weight_decay=weight_decay, no_weight_decay_list=skip,
                                    layer_decay=layer_decay)


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


def make_optimizer(name: str, groups: list[dict], *, lr: float, momentum: float = 0.9,
                   betas: tuple[float, float] = BETAS, trust: float = 1e-3) -> torch.optim.Optimizer:
    """``lars`` (:class:`LARS`), ``sgd`` (momentum SGD) or ``adamw`` over ``groups``; ValueError for another name.

    SGD and AdamW get the groups without LARS's ``lars`` key; every group keeps its own ``weight_decay``.
    """
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum, trust=trust)
    plain = [{k: v for k, v in g.items() if k != "lars"} for g in groups]
    if name == "sgd":
        return torch.optim.SGD(plain, lr=lr, momentum=momentum)
    if name == "adamw":
        return torch.optim.AdamW(plain, lr=lr, betas=betas)
    raise ValueError(f"unknown optimizer '{name}'")


__all__ = ["BETAS", "LARS", "layer_decay_groups", "make_optimizer", "no_decay_names", "param_groups"]
