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
# and of random-rescaled ones: bump when the rescale changes (v2: mean BETA, BatchNorms by their statistics).
# Its own name, so a new rescale leaves the cached rows of plain random weights valid.
RESCALE_POLICY = "rescale-v2"
BETA = 1.0  # the target mean of every calibrated pre-activation; why 1, not 0: docs/extract.md ("random-rescaled")
TINY = 1e-3  # below this a γ / gain / layer scale only exists to silence its branch
_AFFINE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
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


@dataclass
class Calibration:
    """What :func:`rescale_init_` calibrated, by module name."""

    beta: float
    layers: list[str] = field(default_factory=list)  # conv/linear: weights scaled, bias set
    norms: list[str] = field(default_factory=list)  # BatchNorm: running statistics and affine set
    constant: int = 0  # units constant on the batch, left as they were

    def __len__(self) -> int:
        return len(self.layers) + len(self.norms)

    def note(self) -> str:
        """One line for the manifest, e.g. ``rescaled within layers (…, mean 1, std 1): 20 BatchNorms by their …``."""
        parts = [f"{len(self.norms)} BatchNorms by their statistics"] if self.norms else []
        parts += [f"{len(self.layers)} conv/linear layers by weight and bias"] if self.layers else []
        if self.constant:
            parts.append(f"{self.constant} units constant on the calibration images left alone")
        return (f"rescaled within layers (Krähenbühl et al. 2016, mean {self.beta:g}, std 1): "
                + ("; ".join(parts) or "no layer to calibrate"))


def _channels(mod: nn.Module, z: torch.Tensor) -> tuple[int, list[int]]:
    """The channel dimension of ``mod``'s output ``z`` and the dimensions statistics pool over."""
    ch = z.ndim - 1 if isinstance(mod, nn.Linear) else 1
    return ch, [d for d in range(z.ndim) if d != ch]


def _is_stat_norm(m: nn.Module) -> bool:
    """A BatchNorm that normalises by running statistics in eval mode (what extract runs)."""
    return isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None


@torch.no_grad()
def _normalised_by_bn(net: nn.Module, x: torch.Tensor) -> set[int]:
    """ids of the conv/linear layers whose output a BatchNorm reads directly (one forward pass, nothing changed)."""
    last: list[tuple[nn.Module, torch.Tensor]] = []  # the latest conv/linear output only: no batch of maps kept
    paired: set[int] = set()

    def produced(mod: nn.Module, _inp: tuple, out: torch.Tensor) -> None:
        last[:] = [(mod, out)]

    def reads(mod: nn.Module, inp: tuple) -> None:
        if last and inp and inp[0] is last[0][1]:
            paired.add(id(last[0][0]))

    handles = [m.register_forward_hook(produced) for m in net.modules() if isinstance(m, _AFFINE)]
    handles += [m.register_forward_pre_hook(reads) for m in net.modules() if _is_stat_norm(m)]
    try:
        net(x)
    finally:
        for h in handles:
            h.remove()
    return paired


@torch.no_grad()
def rescale_init_(net: nn.Module, x: torch.Tensor, *, beta: float = BETA, eps: float = 1e-6) -> Calibration:
    """Within-layer data-dependent init (Krähenbühl et al. 2016, Algorithm 1): every unit's pre-activation
    gets mean ``beta`` and standard deviation 1 on the batch ``x`` (over images and positions/tokens).

    A pre-activation is the output of each eval-mode BatchNorm and of each conv/linear layer no
    BatchNorm reads directly. A BatchNorm is calibrated through what it already is — a per-channel
    affine map of its input: running mean and variance := the batch's, γ := 1, β := ``beta``; the
    conv before it keeps its weights and gains no bias. Any other conv/linear layer has each output
    channel's weights divided by its standard deviation σ and its bias set to ``beta`` − μ/σ (a bias
    added where it had none). The layers are calibrated in forward order, each on the output of the
    already calibrated layers before it, in one pass (after a first that finds which BatchNorm reads
    which layer). Residual sums are left as they come: each added term is calibrated, the sum is
    not, as in the authors' code. Channels constant on the batch are left alone.

    ``beta`` = 1, not 0: docs/extract.md ("random-rescaled") shows why a ReLU network centred at 0 in
    every unit loses the geometry of its inputs with depth, and the measurements behind 1.
    """
    net.eval()  # BatchNorms by their running statistics, and none updated by the passes below
    paired = _normalised_by_bn(net, x)
    done = Calibration(beta=beta)
    seen: set[int] = set()
    names = {id(m): n for n, m in net.named_modules()}

    def norm_before(mod: nn.Module, inp: tuple) -> None:
        if id(mod) in seen or not inp or not isinstance(inp[0], torch.Tensor):
            return  # a module applied twice keeps its first calibration
        seen.add(id(mod))
        _calibrate_norm(mod, inp[0], beta=beta, eps=eps, done=done)
        done.norms.append(names[id(mod)])

    def layer_after(mod: nn.Module, _inp: tuple, out: torch.Tensor) -> torch.Tensor | None:
        if id(mod) in seen or not isinstance(out, torch.Tensor):
            return None
        seen.add(id(mod))
        done.layers.append(names[id(mod)])
        return _calibrate_layer(mod, out, beta=beta, eps=eps, done=done)

    handles = [m.register_forward_pre_hook(norm_before) for m in net.modules() if _is_stat_norm(m)]
    handles += [m.register_forward_hook(layer_after) for m in net.modules()
                if isinstance(m, _AFFINE) and id(m) not in paired]
    try:
        net(x)
    finally:
        for h in handles:
            h.remove()
    return done


def _unit_stats(mod: nn.Module, z: torch.Tensor, *, eps: float,
                done: Calibration) -> tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(channel axis, per-unit mean, std, live) of a module's pre-activation ``z``; constant units counted."""
    ch, dims = _channels(mod, z)
    mean, std = z.float().mean(dims), z.float().std(dims, correction=0)  # (C,)
    live = std > eps
    done.constant += int((~live).sum())
    return ch, mean, std, live


def _calibrate_norm(mod: nn.Module, z: torch.Tensor, *, beta: float, eps: float, done: Calibration) -> None:
    """A BatchNorm's input ``z`` made its statistics: running mean/var := the batch's, γ := 1, β := ``beta``."""
    _, mean, std, live = _unit_stats(mod, z, eps=eps, done=done)
    var = (std.square() - mod.eps).clamp_min(0)  # BN divides by sqrt(var + eps): std exactly 1
    mod.running_mean.copy_(torch.where(live, mean, mod.running_mean.float()))
    mod.running_var.copy_(torch.where(live, var, mod.running_var.float()))
    if mod.weight is not None:
        mod.weight.copy_(torch.where(live, torch.ones_like(mean), mod.weight.float()))
        mod.bias.copy_(torch.where(live, torch.full_like(mean, beta), mod.bias.float()))


def _calibrate_layer(mod: nn.Module, out: torch.Tensor, *, beta: float, eps: float,
                     done: Calibration) -> torch.Tensor:
    """A conv/linear layer's weights ÷ σ and bias := ``beta`` − μ/σ per output unit; returns its new output."""
    ch, mean, std, live = _unit_stats(mod, out, eps=eps, done=done)
    scale = torch.where(live, 1 / std.clamp_min(eps), torch.ones_like(std))
    shift = torch.where(live, beta - mean * scale, torch.zeros_like(mean))  # z ↦ z·scale + shift
    w = mod.weight
    w.mul_(scale.view(-1, *[1] * (w.ndim - 1)).to(w.dtype))
    bias = mod.bias if mod.bias is not None else torch.zeros_like(mean)
    new_bias = (bias.float() * scale + shift).to(w.dtype)
    if mod.bias is None:
        mod.bias = nn.Parameter(new_bias)
    else:
        mod.bias.copy_(new_bias)
    view = [1] * out.ndim
    view[ch] = -1
    return out * scale.view(view).to(out.dtype) + shift.view(view).to(out.dtype)


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
