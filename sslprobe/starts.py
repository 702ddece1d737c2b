"""Where a network starts: the one reading of a ``--weights`` / ``--init`` argument and the backbone it opens.

:func:`parse_start` turns the argument into a :class:`Start` — ``random``, ``random-rescaled``,
``pretrained`` (timm's hub weights), ``pixels`` (no network: extract's raw-pixel baseline) or a
weights ``file`` (safetensors; a pickle only with ``allow_pickle``). :func:`open_start` builds the
backbone of a start and pins it down: the hub weights it loaded, or the file's absolute path and
sha256. Pretraining, extraction and fine-tuning all read their argument here; each keeps only what
only it does (extract's cache fingerprint and the rescale on calibration images, fine-tuning's
report entry, pretraining's config.json). A start can be opened again from its record — a resumed
pretraining run rebuilds its backbone from the ``Start`` in config.json.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from torch import nn

from sslprobe.backbone import BackboneSpec, create_backbone, hub_weights, random_backbone
from sslprobe.errors import SSLProbeError

NAMES = ("random", "random-rescaled", "pretrained", "pixels")  # every other argument is a weights file
TRAINED = ("pretrained", "file")


@dataclass(frozen=True)
class Start:
    """Where a backbone starts (pretraining's config.json, the resume check and the exported metadata record it).

    ``init``: ``random``, ``random-rescaled``, ``pretrained``, ``pixels`` or ``file``. ``weights``:
    the hub weights (``timm/resnet18.a1_in1k``) of ``pretrained``, the path of a ``file`` (absolute
    once opened); ``sha256``: a file's content. The three fields are the record, so an opened start
    serialises as it always has.
    """

    init: str = "random"
    weights: str | None = None
    sha256: str | None = None

    @property
    def trained(self) -> bool:
        """Trained weights (hub or file) rather than a random init."""
        return self.init in TRAINED


def parse_start(arg: str, *, names: tuple[str, ...] = NAMES) -> Start:
    """The start an argument names: one of ``names`` (a command takes those it has), else a weights file."""
    if arg in names:
        return Start(arg)
    return Start("file", weights=str(arg))


@dataclass
class Opened:
    """A start's backbone: the network, its spec (model name, stem, channels, preprocessing), the start pinned
    down (hub weights; a file's absolute path and sha256), and a random init's one-line note ("" otherwise)."""

    net: nn.Module
    spec: BackboneSpec
    start: Start
    note: str = ""

    @property
    def hub_tag(self) -> Any:
        """The tag of timm's pretrained weights the network carries (None for other starts)."""
        if self.start.init != "pretrained":
            return None  # timm gives random networks a pretrained_cfg too: it names no weights they hold
        return (getattr(self.net, "pretrained_cfg", None) or {}).get("tag")


def open_start(start: Start, *, model: str | None, image_size: int | None = None, small_stem: bool | None = None,
               seed: int = 0, random_init: str = "fair", in_chans: int = 3, allow_pickle: bool = False,
               flag: str = "--weights") -> Opened:
    """Build the backbone of ``start``.

    ``random``: the seeded random init ``random_init`` names (``fair`` for frozen features, ``train``
    for training, see ``backbone.random_backbone``); ``random-rescaled``: the fair one, to be rescaled
    on data by the caller (``fairinit.rescale_init_``); ``pretrained``: timm's hub weights; ``file``:
    an sslprobe backbone (it names its model, stem and channels) or a timm state dict of ``model``.
    ``flag`` is the option the error messages name (``--weights``, or pretraining's ``--init``).
    """
    if start.init == "pixels":
        raise SSLProbeError(f"{flag} pixels has no network; use random, pretrained or a weights file")
    if start.init in ("random", "random-rescaled", "pretrained") and model is None:
        raise SSLProbeError(f"{flag} {start.init} needs --model NAME (a timm model, e.g. resnet18)")
    if start.init in ("random", "random-rescaled"):
        init = random_init if start.init == "random" else "fair"
        net, spec, note = random_backbone(model, image_size=image_size, small_stem=small_stem, seed=seed, init=init,
                                          in_chans=in_chans)
        return Opened(net, spec, Start(start.init), note)
    if start.init == "pretrained":
        net, spec = create_backbone(model, weights="pretrained", image_size=image_size, small_stem=small_stem,
                                    flag=flag, in_chans=in_chans)
        return Opened(net, spec, Start("pretrained", weights=hub_weights(spec.model)))
    if start.init != "file" or not start.weights:
        raise SSLProbeError(f"{flag}: unknown start '{start.init}'")
    from sslprobe.fileio import file_sha256

    net, spec = create_backbone(model, weights=start.weights, image_size=image_size, small_stem=small_stem,
                                allow_pickle=allow_pickle, flag=flag, in_chans=in_chans)
    path = Path(start.weights)
    return Opened(net, spec, replace(start, weights=str(path.resolve()), sha256=file_sha256(path)))


__all__ = ["NAMES", "Opened", "Start", "TRAINED", "open_start", "parse_start"]
