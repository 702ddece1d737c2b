"""timm backbones: random init (fair for frozen features, or timm's for training), timm (hub) weights or
local files; small-input stems; saving.

A backbone here is a timm model created with ``num_classes=0`` so its output is the pooled
pre-logits feature vector (B, D). Files written by sslprobe are safetensors with metadata that
says how to rebuild the model (name, stem change, preprocessing), so ``extract --weights FILE``
needs no ``--model``. Which of these a command's ``--weights``/``--init`` names, and what pins it
down, is ``sslprobe.starts`` (built on :func:`create_backbone`); hub weights come from the local
cache first and fail at once, in one line, when neither the cache nor the hub has them.
"""
from __future__ import annotations

import json
import math
import os
import socket
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from sslprobe.errors import SSLProbeError
from sslprobe.fairinit import repair_init_
from sslprobe.version import __version__

# random nets at or below this many pixels get the CIFAR-style stem (docs/pretrain.md, "Initialisation and stem")
SMALL_INPUT = 64
FORMAT = "sslprobe-backbone"
INITS = ("fair", "train")  # random init for frozen features / for training (see random_backbone)


@dataclass(frozen=True)
class BackboneSpec:
    """What it takes to rebuild a backbone and preprocess its inputs (stored as file metadata)."""

    model: str
    image_size: int
    mean: tuple[float, ...]  # one value per input channel
    std: tuple[float, ...]
    interpolation: str
    crop_pct: float
    small_stem: bool
    in_chans: int = 3  # 1: a backbone for grey images (pretrain --grayscale); files without the key have 3

    def to_metadata(self) -> dict[str, str]:
        meta = {k: json.dumps(v) for k, v in asdict(self).items()}
        meta.update(format=FORMAT, sslprobe_version=__version__)
        return meta

    @classmethod
    def from_metadata(cls, meta: dict[str, str], *, source: str = "the weights file") -> BackboneSpec:
        """Parse and check file metadata; anything malformed is an SSLProbeError naming the key."""
        vals: dict[str, Any] = {"in_chans": 3}
        for k in cls.__dataclass_fields__:
            if k == "in_chans" and k not in meta:
                continue  # written before grey backbones existed
            try:
                vals[k] = json.loads(meta[k])
            except (KeyError, TypeError, ValueError):
                raise SSLProbeError(f"{source}: metadata '{k}' is missing or not JSON; re-save the backbone "
                                    "with sslprobe, or pass --model NAME for a plain state dict") from None

        def bad(k: str, want: str) -> SSLProbeError:
            return SSLProbeError(f"{source}: metadata '{k}' = {meta[k][:40]!r} is not {want}; re-save the backbone")

        def number(v: object) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        if not isinstance(vals["model"], str) or not vals["model"]:
            raise bad("model", "a timm model name")
        if not isinstance(vals["image_size"], int) or isinstance(vals["image_size"], bool) or vals["image_size"] < 1:
            raise bad("image_size", "a positive integer")
        if vals["in_chans"] not in (1, 3) or isinstance(vals["in_chans"], bool):
            raise bad("in_chans", "1 or 3")
        for k in ("mean", "std"):
            v = vals[k]
            if not isinstance(v, list) or len(v) != vals["in_chans"] or not all(number(x) for x in v) or (
                    k == "std" and min(v) <= 0):
                raise bad(k, f"{vals['in_chans']} finite numbers" + (" > 0" if k == "std" else ""))
            vals[k] = tuple(float(x) for x in v)
        if not isinstance(vals["interpolation"], str):
            raise bad("interpolation", "a name such as bicubic")
        if not number(vals["crop_pct"]) or not 0 < vals["crop_pct"] <= 4:
            raise bad("crop_pct", "a number in (0, 4]")
        if not isinstance(vals["small_stem"], bool):
            raise bad("small_stem", "true or false")
        return cls(**vals)


def check_model_name(model: str) -> None:
    """Raise a one-line error for a name timm does not know, with the closest names by spelling."""
    if timm.is_model(model):
        return
    import difflib

    close = difflib.get_close_matches(model, timm.list_models(), n=5, cutoff=0.6)
    hint = f" (closest: {', '.join(close)})" if close else ""
    raise SSLProbeError(f"unknown model '{model}'{hint}; see `timm.list_models()` for all names")


def adapt_small_stem(net: nn.Module) -> bool:
    """Make a ResNet-style stem keep resolution on tiny images: 3×3 stride-1 first conv, no max-pool.

    Without it a 28–32 px image is 1×1 after the stem and the last stage (docs/pretrain.md; the
    CIFAR variant of He et al. 2016 used by SimCLR/BYOL small-image experiments). Returns False
    when the model has no such stem (ViTs, ConvNeXt …), which are left unchanged.
    """
    conv1 = getattr(net, "conv1", None)
    if not isinstance(getattr(net, "maxpool", None), nn.Module) or conv1 is None:
        return False
    if isinstance(conv1, nn.Conv2d):
        net.conv1 = nn.Conv2d(conv1.in_channels, conv1.out_channels, 3, 1, 1, bias=conv1.bias is not None)
    elif not (isinstance(conv1, nn.Sequential) and isinstance(conv1[0], nn.Conv2d)):
        return False
    # A deep stem (resnet-d, test_resnet: three 3×3 convs) keeps its stride-2 first conv and only loses
    # the max-pool: total stride 16 instead of 32, so 32 px still ends at 2×2, at a quarter of the
    # compute a stride-1 deep stem would cost.
    net.maxpool = nn.Identity()
    return True


def has_batchnorm(net: nn.Module) -> bool:
    """Whether ``net`` normalises with batch statistics (ResNets, EfficientNets …) — not ViTs, Swin, ConvNeXt.

    Pretraining's ``auto`` optimiser reads it: BYOL's LARS/SGD recipe is a BatchNorm network's,
    the BatchNorm-free families are trained with AdamW (docs/pretrain.md, "ViTs").
    """
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())


def default_spec(net: nn.Module, *, model: str, image_size: int | None, small_stem: bool | None,
                 in_chans: int = 3) -> BackboneSpec:
    """Preprocessing from timm's data config for this model, with an optional size override.

    ``small_stem=None`` is the rule for training from scratch: the small-image stem at ≤ 64 px.
    ``in_chans=1``: the mean and std are the averages of the model's three (grey input).
    """
    from timm.data import resolve_model_data_config

    cfg = resolve_model_data_config(net)
    size = int(image_size or cfg["input_size"][-1])
    if small_stem is None:
        small_stem = size <= SMALL_INPUT
    return BackboneSpec(
        model=model,
        image_size=size,
        mean=_per_channel(cfg["mean"], in_chans),
        std=_per_channel(cfg["std"], in_chans),
        interpolation=str(cfg.get("interpolation", "bicubic")),
        crop_pct=float(cfg.get("crop_pct", 0.875)),
        small_stem=bool(small_stem),
        in_chans=in_chans,
    )


def eval_crop(model: str) -> tuple[float, str]:
    """The model's eval crop (timm's ``crop_pct``) and interpolation, from its default config without building it
    (timm's defaults, 0.875 and bicubic, for a model whose config names neither)."""
    from timm.models import get_pretrained_cfg

    check_model_name(model)
    cfg = get_pretrained_cfg(model)
    return (float(getattr(cfg, "crop_pct", None) or 0.875), str(getattr(cfg, "interpolation", None) or "bicubic"))


def trained_size(model: str) -> int:
    """The resolution the model's default (hub) weights were trained at: their config's input size."""
    from timm.models import get_pretrained_cfg

    check_model_name(model)
    cfg = get_pretrained_cfg(model)
    size = getattr(cfg, "input_size", None) or (3, 224, 224)
    return int(size[-1])


def _per_channel(values: tuple[float, ...], in_chans: int) -> tuple[float, ...]:
    v = tuple(float(x) for x in values)
    return (sum(v) / len(v),) if in_chans == 1 and len(v) > 1 else v


def _create(model: str, *, pretrained: bool, image_size: int | None, seed: int | None = None, in_chans: int = 3,
            **kw: Any) -> tuple[nn.Module, set[str]]:
    """timm.create_model with keywords not every family takes; returns the model and the keywords it took."""
    check_model_name(model)
    if in_chans != 3:
        kw["in_chans"] = in_chans  # every timm family takes it (hub weights: its first conv summed over RGB)
    if image_size is not None and any(t in model for t in ("vit", "deit", "eva", "beit")):
        kw["img_size"] = image_size  # ViTs need the position embedding sized for the input
    fixed: set[str] = set()
    while True:
        if seed is not None:
            torch.manual_seed(seed)  # a refused attempt must not shift the init of the next
        try:
            return timm.create_model(model, pretrained=pretrained, num_classes=0, **kw), set(kw) | fixed
        except TypeError as e:
            if not kw:
                raise
            named = {k for k in kw if f"'{k}'" in str(e)}
            if "multiple values" in str(e):
                fixed |= named  # the entry point sets it itself (regnetz: zero_init_last=False)
            kw = {k: v for k, v in kw.items() if k not in (named or set(kw))}


def random_backbone(model: str, *, image_size: int | None = None, small_stem: bool | None = None, seed: int = 0,
                    init: str = "fair", in_chans: int = 3) -> tuple[nn.Module, BackboneSpec, str]:
    """A seeded random backbone and a one-line note on its init (for the extract manifest).

    ``init="fair"`` is the architecture's ordinary random init, as a frozen feature extractor
    needs it: timm's ``zero_init_last`` off where the family has the switch, then
    :func:`sslprobe.fairinit.repair_init_` for zeroed norms, gains and tiny layer scales.
    ``init="train"`` is timm's init as is, the better start for training (BYOL pretraining).
    """
    if init not in INITS:
        raise SSLProbeError(f"init must be one of {', '.join(INITS)} (got '{init}')")
    with torch.random.fork_rng(devices=[]):
        if init == "fair":
            net, took = _create(model, pretrained=False, image_size=image_size, seed=seed, in_chans=in_chans,
                                zero_init_last=False)
            note = repair_init_(net).note(switch="zero_init_last" in took)
        else:
            net, _ = _create(model, pretrained=False, image_size=image_size, seed=seed, in_chans=in_chans)
            note = "timm default (training init: zeroed residual branches and layer scales kept)"
        spec = default_spec(net, model=model, image_size=image_size, small_stem=small_stem, in_chans=in_chans)
        if spec.small_stem and not adapt_small_stem(net):  # its new conv draws here, not from the caller's RNG
            spec = replace(spec, small_stem=False)
    if spec.small_stem:
        _reinit_stem(net, seed)
    return net, spec, note


def create_backbone(
    model: str | None = None,
    *,
    weights: str = "random",
    image_size: int | None = None,
    small_stem: bool | None = None,
    seed: int = 0,
    allow_pickle: bool = False,
    init: str = "fair",
    flag: str = "--weights",
    in_chans: int = 3,
) -> tuple[nn.Module, BackboneSpec]:
    """Build a backbone: ``weights`` is ``random`` (seeded), ``pretrained`` (timm hub) or a file path.

    ``init`` (random only, see :func:`random_backbone`): ``fair`` for frozen random features,
    ``train`` for training from scratch. ``small_stem=None`` picks the small-image stem for random
    weights at ≤ 64 px; trained weights keep the stem they were trained with, and asking for the
    other one is an error. A file written by sslprobe carries its model name and stem; a plain
    timm state dict in safetensors needs ``model``. Pickle files (.pt/.pth) load only with
    ``allow_pickle`` and then only through ``torch.load(weights_only=True)``. ``flag`` is the option
    the error messages name (``--weights`` for extract, ``--init`` for pretrain). ``in_chans=1``
    builds a one-channel (grey) backbone; an sslprobe file carries its own.
    """
    if weights not in ("random", "pretrained"):
        return _from_file(Path(weights), model=model, image_size=image_size, small_stem=small_stem,
                          allow_pickle=allow_pickle, flag=flag)
    if model is None:
        raise SSLProbeError(f"{flag} {weights} needs --model NAME (a timm model, e.g. resnet18)")
    if weights == "random":
        net, spec, _ = random_backbone(model, image_size=image_size, small_stem=small_stem, seed=seed, init=init,
                                       in_chans=in_chans)
        return net, spec
    stem = stem_for_weights(requested=small_stem, trained=False, source=f"timm's pretrained {model}")
    net = _pretrained(model, image_size=image_size, flag=flag, in_chans=in_chans)
    return net, default_spec(net, model=model, image_size=image_size, small_stem=stem, in_chans=in_chans)


def _weights_cfg(model: str) -> Any:
    """timm's default pretrained config of ``model``, or None where it names no weights (tag ``untrained``)."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(model)
    return cfg if cfg is not None and (cfg.hf_hub_id or cfg.url or cfg.file) else None


def hub_weights(model: str) -> str | None:
    """Which weights ``pretrained`` loads for ``model`` (``timm/resnet18.a1_in1k``, or a URL); None: it has none."""
    cfg = _weights_cfg(model)
    return None if cfg is None else cfg.hf_hub_id or cfg.url or cfg.file


def _hub_cached(repo: str) -> str | None:
    """The weights file of ``repo`` in the local Hugging Face cache, if a first online run left it there."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, "model.safetensors")
    return found if isinstance(found, str) else None


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers a TCP connect (HF_HUB_OFFLINE: no; behind a proxy: assumed yes).

    Without this check an offline machine spends ~25 s per file in huggingface_hub's retries before failing.
    """
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def _pretrained(model: str, *, image_size: int | None, flag: str, in_chans: int = 3) -> nn.Module:
    """timm's pretrained ``model``: from the local cache when it is there, else from the hub if it answers."""
    check_model_name(model)
    cfg = _weights_cfg(model)
    if cfg is None:
        raise SSLProbeError(f"timm has no pretrained weights for '{model}'; use {flag} random, or {flag} "
                            "FILE.safetensors for weights of your own")
    repo = cfg.hf_hub_id  # the hub is timm's first source; URL-only weights go through torch.hub's own cache
    cached = _hub_cached(repo) if repo else None
    if cached is None and repo and not hub_reachable():
        raise SSLProbeError(
            f"timm's pretrained weights for '{model}' ({repo}) are not available offline: they are not in the "
            f"local Hugging Face cache and the hub cannot be reached; download them once online, use {flag} random, "
            f"or pass a local file: {flag} FILE.safetensors (a timm state dict of {model}, or an sslprobe "
            "backbone.safetensors)")
    overlay = {"pretrained_cfg_overlay": {"file": cached}} if cached else {}
    try:
        net, _ = _create(model, pretrained=True, image_size=image_size, in_chans=in_chans, **overlay)
    except SSLProbeError:
        raise
    except Exception as e:  # hub unreachable after all, a broken download, …
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise SSLProbeError(
            f"could not load timm pretrained weights for '{model}' ({first}); "
            f"go online once to cache them, or use {flag} random or {flag} FILE.safetensors"
        ) from e
    return net


def stem_for_weights(*, requested: bool | None, trained: bool | None, source: str, kernel: str = "") -> bool:
    """The stem for trained weights: the one they were trained with (``trained``; None: the file cannot tell).

    The small-image stem is a choice for training from scratch; swapping a trained 7×7 stem for a
    random 3×3 one would throw the first layer away, so a ``requested`` stem that differs is an error.
    """
    if trained is None:
        return bool(requested)
    if requested is not None and requested != trained:
        what = f"small-image{kernel} stem" if trained else f"standard{kernel} stem"
        flag = "--no-small-stem" if trained else "--small-stem"
        raise SSLProbeError(f"{source} was trained with the {what}; drop {flag}")
    return trained


def _reinit_stem(net: nn.Module, seed: int) -> None:
    # The replaced first conv took its init from the global RNG; redo it from the seed.
    conv = net.conv1 if isinstance(net.conv1, nn.Conv2d) else net.conv1[0]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")


def _state_stem(state: dict[str, torch.Tensor], net: nn.Module) -> tuple[bool | None, str]:
    """Whether a plain state dict has the small-image stem (None: its shapes cannot tell), and its kernel."""
    conv1, w = getattr(net, "conv1", None), state.get("conv1.weight")
    if not isinstance(getattr(net, "maxpool", None), nn.Module) or conv1 is None:
        return False, ""  # no ResNet-style stem: there is only the standard one
    if not isinstance(conv1, nn.Conv2d) or w is None or w.ndim != 4:
        return None, ""  # a deep stem only loses its max-pool: no tensor shape shows it
    k = tuple(w.shape[-2:])
    if k == tuple(conv1.weight.shape[-2:]):
        return False, f" {k[0]}×{k[1]}"
    return (True, " 3×3") if k == (3, 3) else (None, "")  # another kernel: the load reports the mismatch


def _from_file(path: Path, *, model: str | None, image_size: int | None, small_stem: bool | None,
               allow_pickle: bool, flag: str = "--weights") -> tuple[nn.Module, BackboneSpec]:
    if not path.is_file():
        raise SSLProbeError(f"weights file '{path}' not found; use {flag} random|pretrained or a .safetensors path")
    state, meta = read_weights(path, allow_pickle=allow_pickle)
    if meta.get("format") == FORMAT:
        spec = BackboneSpec.from_metadata(meta, source=f"'{path}'")
        if model is not None and model != spec.model:
            raise SSLProbeError(f"'{path}' holds a {spec.model} backbone but --model {model} was given; drop --model")
        stem_for_weights(requested=small_stem, trained=spec.small_stem, source=f"'{path}'")
        if image_size is not None:
            spec = replace(spec, image_size=int(image_size))
        net, _ = _create(spec.model, pretrained=False, image_size=spec.image_size, in_chans=spec.in_chans)
        if spec.small_stem:
            adapt_small_stem(net)
    else:
        if model is None:
            raise SSLProbeError(f"'{path}' has no sslprobe metadata; say which timm model it is with --model NAME")
        net, _ = _create(model, pretrained=False, image_size=image_size)
        trained, kernel = _state_stem(state, net)
        stem = stem_for_weights(requested=small_stem, trained=trained, source=f"'{path}'", kernel=kernel)
        spec = default_spec(net, model=model, image_size=image_size, small_stem=stem)
        if spec.small_stem and not adapt_small_stem(net):
            spec = replace(spec, small_stem=False)
    state = {k: v for k, v in state.items() if not k.startswith(("fc.", "head.", "classifier."))}
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches raise even with strict=False
        raise SSLProbeError(f"'{path}' does not fit {spec.model}: tensor shapes differ; check --model") from e
    if missing or unexpected:
        raise SSLProbeError(
            f"'{path}' does not fit {spec.model}: {len(missing)} missing keys (e.g. {missing[:2]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:2]}); check --model"
        )
    return net, spec


def weights_kind(path: Path) -> str | None:
    """"safetensors", "torch" (a zip checkpoint or a raw pickle) or None, from the file's first bytes."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError as e:
        raise SSLProbeError(f"cannot read '{path}' ({e.strerror or e})") from None
    if head[:4] == b"PK\x03\x04" or (len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5):
        return "torch"  # torch.save's zip archive, or a raw pickle (PROTO opcode, protocol 2-5)
    if len(head) == 9 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little") < 100 << 20:
        return "safetensors"
    return None


def read_weights(path: Path, *, allow_pickle: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a weights file; safetensors by default, pickle only when allowed.

    Only a pickle's name (.pt/.pth/.bin/.ckpt) lets it be unpickled (a pickle renamed .safetensors is just an
    invalid safetensors file); the first bytes then tell a file that is neither kind — "not a model file",
    not "a pickle" — from a checkpoint (a zip archive or a pickle's protocol byte) or a safetensors file."""
    from safetensors import SafetensorError, safe_open

    kind = weights_kind(path)
    if kind is None and path.suffix != ".safetensors":
        raise SSLProbeError(f"'{path}' is not a model file (neither safetensors nor a torch checkpoint); pass "
                            "a .safetensors backbone (sslprobe pretrain writes one)")
    if path.suffix in (".pt", ".pth", ".bin", ".ckpt") and kind == "torch":
        if not allow_pickle:
            raise SSLProbeError(
                f"'{path}' is a pickle file, which can run code when loaded; convert it to .safetensors "
                "or pass --allow-pickle to load it with torch.load(weights_only=True)"
            )
        try:
            with warnings.catch_warnings():  # torch warns about pickle protocols: the verdict is the message
                warnings.simplefilter("ignore")
                obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            whole = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
            raise SSLProbeError(f"refused to load '{path}' with weights_only=True: {type(e).__name__}: {whole}") from e
        obj = obj.get("state_dict", obj.get("model", obj)) if isinstance(obj, dict) else obj
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise SSLProbeError(f"'{path}' does not hold a state dict of tensors")
        return dict(obj), {}
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            return {k: f.get_tensor(k) for k in f.keys()}, meta  # noqa: SIM118 - safe_open is not iterable
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise SSLProbeError(f"'{path}' is not a valid safetensors file ({str(e)[:120]}); "
                            "export weights with safetensors") from e


def save_backbone(net: nn.Module, spec: BackboneSpec, path: str | os.PathLike, *,
                  start: Mapping[str, Any] | None = None) -> None:
    """Write the backbone's state dict with its spec as metadata, atomically; ``start``: where training began
    (a ``starts.Start`` as a dict: this module sits below ``starts``)."""
    from safetensors.torch import save_file

    from sslprobe.fileio import atomic_path

    state = {k: v.detach().to("cpu").contiguous() for k, v in net.state_dict().items()}
    meta = spec.to_metadata()
    if start is not None:
        meta["init"] = json.dumps(dict(start))
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)


def eval_transform(spec: BackboneSpec):
    """timm's evaluation transform (resize, centre crop, normalise) for this spec."""
    from timm.data import create_transform

    return create_transform(
        input_size=(spec.in_chans, spec.image_size, spec.image_size),
        is_training=False,
        interpolation=spec.interpolation,
        mean=spec.mean,
        std=spec.std,
        crop_pct=spec.crop_pct,
    )
