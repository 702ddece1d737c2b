"""What a backbone turns into a feature vector: layer and pooling choice, normalisation, rescaled init.

``FeatureModel`` takes uint8 images (B, 3, H, W) straight from the decode workers (4× less to
copy than float32), normalises them on the device and returns (B, D): the pooled pre-logits
(timm ``num_classes=0``) by default, or a global-average-pooled earlier stage (timm
``forward_intermediates``, the same tensors ``features_only`` returns), and for ViTs the cls token
or the mean of the patch tokens. Asked for several layers (``--layers``), it takes them all from one
``forward_intermediates`` pass and returns them side by side, (B, ΣD), in ``layers`` order; the
pre-logits of that pass are timm's ``forward_head(·, pre_logits=True)``, the function ``net(x)`` runs,
so each layer's rows equal the ones a single-layer extraction of it computes.
"""
from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from sslprobe.config.extract import POOLS
from sslprobe.config.rules import PRE_LOGITS, layer_tokens, one_of
from sslprobe.errors import SSLProbeError

# --layers auto on a network whose stages all keep one resolution (a ViT's blocks): the blocks at these
# shares of its depth stand in for "stages". iGPT's linear probes peak in the middle of the stack
# (Chen et al. 2020, "Generative Pretraining from Pixels", fig. 3), as the middle stages of random and
# weakly trained CNNs do (Zhang et al. 2017, table 3; Goyal et al. 2019, fig. 4).
ISOTROPIC_DEPTHS = (0.5, 0.75)


def _prefix_tokens(net: nn.Module) -> int:
    return int(getattr(net, "num_prefix_tokens", 0) or 0)


def _stages(net: nn.Module) -> int:
    """How many stages ``forward_intermediates`` can return (0: none)."""
    return len(getattr(net, "feature_info", None) or []) if hasattr(net, "forward_intermediates") else 0


def layer_name(k: int | None) -> str:
    """A layer's name in manifests and cache fingerprints: ``pre-logits`` or ``stage{k}``."""
    return PRE_LOGITS if k is None else f"stage{k}"


def resolve_layer(net: nn.Module, layer: str | int | None, *, flag: str = "--layer") -> int | None:
    """``pre-logits`` (None) or a stage/block index of ``net`` (negative counts from the end)."""
    if layer is None or str(layer) in (PRE_LOGITS, "final", ""):
        return None
    try:
        k = int(str(layer).removeprefix("stage").removeprefix("block"))
    except ValueError:
        raise SSLProbeError(f"{flag} '{layer}' is not 'pre-logits' or a stage number") from None
    n = _stages(net)
    if n == 0:
        raise SSLProbeError(f"{type(net).__name__} has no intermediate stages in timm; use {flag} pre-logits")
    if not -n <= k < n:
        raise SSLProbeError(f"{flag} {layer} is out of range: this model has stages 0..{n - 1} (or -1 for the last)")
    return k % n


def auto_layers(net: nn.Module) -> tuple[int | None, ...]:
    """``--layers auto``: the two stages before the last, then pre-logits (the pooled last stage, as today).

    The stage right before the pooled head is skipped: in a ResNet it *is* the pre-logits, pooled. A
    network whose stages all keep one resolution (ViT blocks) takes the blocks at half and three quarters
    of its depth (``ISOTROPIC_DEPTHS``). No intermediate stages (a model timm gives none): pre-logits alone.
    """
    n = _stages(net)
    if n < 2:
        return (None,)
    reductions = {int(f.get("reduction", 0)) for f in net.feature_info}
    if len(reductions) > 1:  # hierarchical: resolution halves from stage to stage
        picks = {k for k in (n - 3, n - 2) if k >= 0}
    else:
        picks = {math.ceil(n * q) - 1 for q in ISOTROPIC_DEPTHS} - {n - 1}
    return (*sorted(picks), None)


def resolve_layers(net: nn.Module, layers: str, *, layer: str | int | None = PRE_LOGITS) -> tuple[int | None, ...]:
    """``--layers`` on ``net``: ``last`` (``layer`` alone), ``auto`` or a list; stages by depth, pre-logits last."""
    if layers == "last":
        return (resolve_layer(net, layer),)
    if layers == "auto":
        return auto_layers(net)
    picked = {resolve_layer(net, t, flag="--layers") for t in layer_tokens(layers)}
    return tuple(sorted(picked, key=lambda k: math.inf if k is None else k))


def layer_widths(net: nn.Module, ks: Sequence[int | None], *, pool: str) -> tuple[int, ...]:
    """Each layer's feature width as timm declares it: a stage's channels, or the pre-logits width."""
    head = int(getattr(net, "head_hidden_size", 0) or net.num_features) if pool == "auto" else int(net.num_features)
    return tuple(head if k is None else int(net.feature_info[k]["num_chs"]) for k in ks)


def _intermediates_kw(net: nn.Module) -> dict[str, bool]:
    """ViTs hand back their prefix (class) tokens beside the patch grid, where timm's signature allows it."""
    if not _prefix_tokens(net):
        return {}
    params = inspect.signature(net.forward_intermediates).parameters
    return {"return_prefix_tokens": True} if "return_prefix_tokens" in params else {}


class FeatureModel(nn.Module):
    """uint8 images → normalised floats → backbone → (B, D) features of one layer, pooled.

    ``layers`` (several, from ``resolve_layers``): (B, ΣD), each layer's pooled features side by side in
    that order, their widths ``widths``.
    """

    def __init__(self, net: nn.Module, *, mean: tuple[float, ...] | None, std: tuple[float, ...] | None,
                 layer: int | None = None, pool: str = "auto", layers: Sequence[int | None] | None = None) -> None:
        super().__init__()
        one_of("--pool", pool, POOLS)
        if pool == "cls" and _prefix_tokens(net) == 0:
            raise SSLProbeError("--pool cls needs a model with a class token (a ViT); use --pool mean or auto")
        self.net, self.pool = net, pool
        self.layers = tuple(layers) if layers is not None else (layer,)
        self.layer = self.layers[0] if len(self.layers) == 1 else None
        self.widths = layer_widths(net, self.layers, pool=pool) if len(self.layers) > 1 else ()
        self._checked = False
        self.register_buffer("mean", None if mean is None else torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", None if std is None else torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        # The same float ops as torchvision's ToTensor + Normalize, so features match timm's eval
        # transform bit for bit on CPU.
        x = x.float().div(255)
        if self.mean is not None:
            x = x.sub_(self.mean).div_(self.std)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalize(x)  # (B, 3, H, W)
        if len(self.layers) > 1:
            return self._several(x)
        if self.layer is None:
            if self.pool == "auto":
                return self.net(x)  # (B, D) timm's own pooling and pre-logits
            return self._pool_tokens(self.net.forward_features(x))
        out = self.net.forward_intermediates(x, indices=[self.layer], intermediates_only=True,
                                             **_intermediates_kw(self.net))[0]
        return self._pool_stage(out)

    def _several(self, x: torch.Tensor) -> torch.Tensor:
        """Every layer of ``layers`` from one pass: (B, ΣD)."""
        stages = [k for k in self.layers if k is not None]
        kw = _intermediates_kw(self.net)
        if None in self.layers:  # the pass runs to the end: its final features give the pre-logits
            final, inter = self.net.forward_intermediates(x, indices=stages, **kw)
            head = self.net.forward_head(final, pre_logits=True) if self.pool == "auto" else self._pool_tokens(final)
            parts = [*(self._pool_stage(t) for t in inter), head]
        else:
            inter = self.net.forward_intermediates(x, indices=stages, intermediates_only=True, **kw)
            parts = [self._pool_stage(t) for t in inter]
        if not self._checked:  # the cache splits rows by the declared widths: never by wrong ones
            got = tuple(int(p.shape[1]) for p in parts)
            if got != self.widths:
                raise SSLProbeError(f"timm declares widths {self.widths} for layers "
                                    f"{[layer_name(k) for k in self.layers]} but the model gave {got}; extract "
                                    "them one at a time (--layer N)")
            self._checked = True
        return torch.cat(parts, 1)  # (B, ΣD)

    def _pool_stage(self, out: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """A stage's output pooled: a feature map averaged; a ViT block's tokens as the model pools them."""
        if isinstance(out, tuple):  # ViT: (B, D, h, w) patch grid, (B, P, D) prefix tokens
            spatial, prefix = out
            token_pool = getattr(self.net, "global_pool", "token") == "token"
            return prefix[:, 0] if self.pool == "cls" or (self.pool == "auto" and token_pool) else spatial.mean((2, 3))
        return out.mean((2, 3))  # (B, C) global average pool of the stage output

    def _pool_tokens(self, feats: torch.Tensor) -> torch.Tensor:
        if feats.ndim == 4:  # CNN feature map (B, C, h, w)
            return feats.mean((2, 3))
        k = _prefix_tokens(self.net)
        return feats[:, 0] if self.pool == "cls" else feats[:, k:].mean(1)  # (B, D)


class Pixels(nn.Module):
    """The raw-pixel "backbone": the resized image itself, flattened, in [0, 1]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


def fold_batchnorm_(net: nn.Module) -> int:
    """Fold each eval-mode BatchNorm2d into the conv that alone feeds it; returns the number folded.

    Same function up to float rounding (~1e-7), one memory pass less per layer: on a 2-core CPU
    a ResNet-18 at 32 px runs ~1.4× faster. Found by tracing ``forward`` with torch.fx; models
    that do not trace are left unchanged. Only pairs whose modules are used exactly once are folded,
    so ``forward_intermediates`` (same modules, same order) sees the same function.
    """
    from torch import fx
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    try:
        graph = fx.symbolic_trace(net).graph
    except Exception:  # noqa: BLE001 - dynamic control flow: keep the model as it is
        return 0
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    modules = dict(net.named_modules())
    folded = 0
    for node in graph.nodes:
        if node.op != "call_module" or type(modules.get(node.target)) is not nn.BatchNorm2d:
            continue
        src = node.args[0] if node.args else None
        if not (isinstance(src, fx.Node) and src.op == "call_module" and type(modules.get(src.target)) is nn.Conv2d):
            continue
        if len(src.users) != 1 or calls[src.target] != 1 or calls[node.target] != 1:
            continue
        bn = modules[node.target]
        if not bn.track_running_stats or bn.running_mean is None:
            continue
        _set(net, src.target, fuse_conv_bn_eval(modules[src.target].eval(), bn.eval()))
        _set(net, node.target, nn.Identity())
        folded += 1
    return folded


def _set(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


@contextlib.contextmanager
def forward_context(device: torch.device) -> Iterator[None]:
    """inference_mode everywhere; bf16 autocast on CUDA (fp32 on CPU keeps the numbers exact)."""
    with torch.inference_mode():
        if device.type == "cuda":
            with torch.autocast("cuda", dtype=torch.bfloat16):
                yield
        else:
            yield
