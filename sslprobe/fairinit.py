"""Random inits for frozen random-feature baselines: the ordinary one (no residual branch starts at
zero) and the data-dependent rescaling of ``random-rescaled`` with the one pick of its calibration images.

timm initialises residual networks for training: the last norm γ of each residual block at zero
(``zero_init_last``, Goyal et al. 2017: ResNet, RegNet, ByobNet/ByoaNet, CspNet, TResNet, RepViT …),
NF-Net output-conv gains and skipinit gains at zero, res-post-norm γ at zero (Swin V2), and layer
scales at 1e-6…1e-4 (ConvNeXt, DeiT III, CaiT, DINOv2, MetaFormer …). Training leaves that init in a
few steps; a network that is never trained keeps it, and every residual branch adds (almost)
nothing, so the "random features" are those of the stem and the shortcuts. Repair: γ, gains and
layer scales to 1, an all-zero conv/linear weight to its module's default init.
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from sslprobe.errors import SSLProbeError

CALIBRATION_IMAGES = 64  # the sample ``random-rescaled`` calibrates on (extract and fine-tune alike)
POLICY = "fair-v1"  # part of the cache fingerprint of random weights: bump when the repair changes
TINY = 1e-3  # below this a γ / gain / layer scale only exists to silence its branch
_LAYER_SCALE = re.compile(r"gamma\w*|ls\d*|layer_scale\w*")
# GRN (ConvNeXt V2) computes x + γ·… + β: zero γ makes it an identity, not a dead branch.
_NOT_A_GAIN_NORM = ("GlobalResponseNorm",)


@dataclass
class InitRepairs:
    """What :func:`repair_init_` changed, by parameter name."""

    norm_weights: list[str] = field(default_factory=list)
    gains: list[str] = field(default_factory=list)
    layer_scales: list[str] = field(default_factory=list)
    reinitialised: list[str] = field(default_factory=list)

    def note(self, *, switch: bool) -> str:
        """One line for the manifest, e.g. ``timm default, zero_init_last off; layer-scale reset: 24 (…)``."""
        parts = ["timm default, " + ("zero_init_last off" if switch else "no zero_init_last switch")]
        for label, names in (("norm γ reset to 1", self.norm_weights), ("gain reset to 1", self.gains),
                             ("layer-scale reset to 1", self.layer_scales),
                             ("zero weights re-initialised", self.reinitialised)):
            if names:
                more = ", …" if len(names) > 2 else ""
                parts.append(f"{label}: {len(names)} ({', '.join(names[:2])}{more})")
        if len(parts) == 1:
            parts.append("nothing else to reset")
        return "; ".join(parts)


def _tiny(p: torch.Tensor) -> bool:
    return p.is_floating_point() and p.numel() > 0 and float(p.detach().abs().max()) <= TINY


def _is_norm(m: nn.Module) -> bool:
    own = m._parameters.get("weight")
    if own is None or type(m).__name__ in _NOT_A_GAIN_NORM:
        return False
    return isinstance(m, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)) or "Norm" in type(m).__name__


def _is_layer_scale(m: nn.Module, leaf: str, p: torch.Tensor) -> bool:
    per_channel = p.numel() == max(p.shape, default=1)  # (C,), (C, 1, 1) or (1, 1, C)
    scale_module = re.search(r"LayerScale|^Scale$", type(m).__name__) is not None
    return per_channel and (scale_module or _LAYER_SCALE.fullmatch(leaf) is not None)


@torch.no_grad()
def repair_init_(net: nn.Module) -> InitRepairs:
    """Reset what timm zeroed or shrank to silence residual branches; returns what changed.

    Idempotent, and a no-op on a network with an ordinary init. Re-initialised layers draw from
    the global RNG: call it under the same seed as the model's creation.
    """
    done = InitRepairs()
    for name, m in net.named_modules():
        prefix = f"{name}." if name else ""
        if _is_norm(m) and _tiny(m.weight):
            m.weight.fill_(1.0)
            done.norm_weights.append(f"{prefix}weight")
            continue
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)) and not m.weight.detach().any():
            m.reset_parameters()  # also re-draws its bias, which the zeroing code left at zero
            done.reinitialised.append(f"{prefix}weight")
        for leaf, p in m._parameters.items():
            if p is None or not _tiny(p):
                continue
            if leaf.endswith("gain"):
                p.fill_(1.0)
                done.gains.append(prefix + leaf)
            elif _is_layer_scale(m, leaf, p):
                p.fill_(1.0)
                done.layer_scales.append(prefix + leaf)
    return done


@torch.no_grad()
def rescale_init_(net: nn.Module, x: torch.Tensor, *, eps: float = 1e-6) -> int:
    """Data-dependent init (Krähenbühl et al. 2015): every conv/linear output gets zero mean and unit
    variance per channel on the batch ``x``. Returns the number of layers rescaled.

    One forward pass suffices: each layer's hook rescales its weights (and sets its bias to −mean/std,
    adding a bias where the layer had none) and returns the output the rescaled layer would give, so
    the layers after it are calibrated on already-rescaled inputs, as in the paper's layer-by-layer
    procedure. Channels that are constant on the batch are left alone.
    """
    layers = [m for m in net.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))]
    done: set[int] = set()

    def hook(mod: nn.Module, _inp: tuple, out: torch.Tensor) -> torch.Tensor | None:
        if id(mod) in done or not isinstance(out, torch.Tensor):
            return None  # a layer applied twice keeps its first calibration
        done.add(id(mod))
        ch = out.ndim - 1 if isinstance(mod, nn.Linear) else 1
        dims = [d for d in range(out.ndim) if d != ch]
        mean, std = out.float().mean(dims), out.float().std(dims)  # (C,)
        live = std > eps
        scale = torch.where(live, 1 / std.clamp_min(eps), torch.ones_like(std))
        shift = torch.where(live, mean, torch.zeros_like(mean))
        mod.weight.mul_(scale.view(-1, *[1] * (mod.weight.ndim - 1)).to(mod.weight.dtype))
        bias = mod.bias if mod.bias is not None else torch.zeros_like(mean)
        new_bias = ((bias - shift) * scale).to(mod.weight.dtype)
        if mod.bias is None:
            mod.bias = nn.Parameter(new_bias)
        else:
            mod.bias.copy_(new_bias)
        view = [1] * out.ndim
        view[ch] = -1
        return (out - shift.view(view)) * scale.view(view)

    handles = [m.register_forward_hook(hook) for m in layers]
    try:
        net.eval()(x)
    finally:
        for h in handles:
            h.remove()
    return len(done)


def calibration_order(ids: Sequence[str], *, seed: int) -> list[int]:
    """Positions of ``ids`` in the order of sha256("seed:id"): the seeded, name-keyed order the pick walks."""
    return sorted(range(len(ids)), key=lambda i: hashlib.sha256(f"{seed}:{ids[i]}".encode()).digest())


def calibration_batch(ids: Sequence[str], read: Callable[[list[int]], list[torch.Tensor | None]], *, seed: int,
                      n: int = CALIBRATION_IMAGES) -> torch.Tensor:
    """The (B, C, H, W) batch ``random-rescaled`` calibrates on: the first ``n`` readable images in
    :func:`calibration_order`, so every command that rescales a seed's network picks the same images.

    ``read(positions)`` gives one tensor per position, None where the image is unreadable (it is
    skipped and the next in order taken); it is asked only for as many as are still missing, so a
    folder of readable images is read once, ``n`` at a time. Fewer than 2 readable images is an error.
    """
    order, picked, at = calibration_order(ids, seed=seed), [], 0
    while len(picked) < n and at < len(order):
        want = order[at:at + n - len(picked)]
        at += len(want)
        picked += [x for x in read(want) if x is not None]
    if len(picked) < 2:
        raise SSLProbeError("--weights random-rescaled needs at least 2 readable images to calibrate on")
    return torch.stack(picked)
