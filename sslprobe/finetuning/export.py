"""The fine-tuned network as a file timm loads, with its class names; prediction on a folder of images with it.

``model.safetensors`` holds the state dict of ``timm.create_model(model, num_classes=K)`` (timm's key
names, the head included; no pickle) and metadata: the backbone spec in the format of
``backbone.safetensors`` (so ``extract --weights model.safetensors`` embeds with the fine-tuned
backbone, its head dropped), ``classes`` (a JSON list in the head's row order) and ``finetune``
(what trained it). In plain timm::

    meta = safe_open(path, "pt").metadata()
    net = timm.create_model(json.loads(meta["model"]), num_classes=len(json.loads(meta["classes"])))
    if json.loads(meta["small_stem"]):  # ResNets trained from scratch at ≤ 64 px
        sslprobe.backbone.adapt_small_stem(net)
    net.load_state_dict(safetensors.torch.load_file(path))

Preprocessing: resize, centre crop and normalise with the spec's ``image_size``, ``crop_pct``,
``interpolation``, ``mean`` and ``std`` (``backbone.eval_transform``). A ``random-rescaled`` start
adds biases to convolutions that had none and no BatchNorm reads; :func:`load_finetuned` adds them
back before loading.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sslprobe.backbone import FORMAT, BackboneSpec, create_backbone, eval_transform, read_weights
from sslprobe.errors import SSLProbeError
from sslprobe.finetuning.augment import normalize

MODEL_FILE = "model.safetensors"


@dataclass
class Finetuned:
    """A fine-tuned network (eval mode, CPU), its preprocessing and its class names."""

    net: nn.Module
    spec: BackboneSpec
    classes: tuple[str, ...]
    info: dict[str, Any] = field(default_factory=dict)


def save_finetuned(net: nn.Module, spec: BackboneSpec, classes: tuple[str, ...], path: str | os.PathLike, *,
                   info: dict[str, Any]) -> None:
    """Write the network's timm state dict with the spec, class names and ``info`` (plain JSON) as metadata,
    atomically."""
    from safetensors.torch import save_file

    from sslprobe.fileio import atomic_path

    state = {k: v.detach().to("cpu").contiguous() for k, v in net.state_dict().items()}
    meta = {**spec.to_metadata(), "classes": json.dumps(list(classes)), "finetune": json.dumps(info)}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)


def _add_biases(net: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Zero biases on the layers the file has a bias for and the fresh network lacks (a rescaled init adds them)."""
    have = net.state_dict()
    for key, v in state.items():
        if key.endswith(".bias") and key not in have:
            try:
                mod = net.get_submodule(key[:-5])
            except AttributeError:
                continue  # not a layer of this network: the strict load reports it
            if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)) and mod.bias is None:
                mod.bias = nn.Parameter(torch.zeros_like(v))


def load_finetuned(path: str | os.PathLike) -> Finetuned:
    """Read ``model.safetensors`` written by ``sslprobe finetune`` (or its run directory)."""
    p = Path(path)
    if p.is_dir():
        p = p / MODEL_FILE
    if not p.is_file():
        raise SSLProbeError(f"fine-tuned model '{p}' not found; run `sslprobe finetune … --out DIR` and pass "
                            f"DIR/{MODEL_FILE}")
    state, meta = read_weights(p)
    if meta.get("format") != FORMAT or "classes" not in meta:
        raise SSLProbeError(f"'{p}' is not a fine-tuned network from `sslprobe finetune` (no class names); a "
                            "probe.safetensors goes with --probe on extracted features")
    spec = BackboneSpec.from_metadata(meta, source=f"'{p}'")
    try:
        classes = tuple(str(c) for c in json.loads(meta["classes"]))
        info = json.loads(meta.get("finetune", "{}"))
    except ValueError:
        raise SSLProbeError(f"'{p}': metadata 'classes' is not a JSON list; re-export the model") from None
    net, _ = create_backbone(spec.model, weights="random", init="train", image_size=spec.image_size,
                             small_stem=spec.small_stem, in_chans=spec.in_chans)
    net.reset_classifier(len(classes))
    _add_biases(net, state)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0][:160]
        raise SSLProbeError(f"'{p}' does not fit {spec.model} with {len(classes)} classes ({first}); "
                            "re-export the model") from None
    return Finetuned(net.eval(), spec, classes, info)


@dataclass
class ImagePredictions:
    """One row per readable image (path, prediction, probability), and the unreadable ones with reasons."""

    rows: list[dict]
    skipped: list[dict]


@torch.inference_mode()
def predict_images(data: str | os.PathLike, *, model: str | os.PathLike | Finetuned,
                   out: str | os.PathLike | None = None, batch_size: int = 128, device: str = "auto",
                   workers: int | None = None, image_column: str | None = None,
                   show_progress: bool = False) -> ImagePredictions:
    """Classify every readable image at ``data`` (labels, if any, ignored); ``out`` also writes the CSV."""
    from torch.utils.data import DataLoader

    from sslprobe.images.datasets import ImageDataset, collate
    from sslprobe.images.folders import open_images, skipped_report
    from sslprobe.images.transforms import Uint8Transform
    from sslprobe.probing.predict import write_predictions
    from sslprobe.runtime.device import pick_device
    from sslprobe.runtime.progress import progress_bar
    from sslprobe.runtime.workers import default_workers

    ft = model if isinstance(model, Finetuned) else load_finetuned(model)
    dev = pick_device(device)
    net = ft.net.to(dev).eval().to(memory_format=torch.channels_last)  # the layout it was trained and scored in
    cuda = dev.type == "cuda"
    images = open_images(data, image_column=image_column)
    tf = Uint8Transform.from_timm(eval_transform(ft.spec), channels=ft.spec.in_chans)
    loader = DataLoader(ImageDataset(images, tf, draft=tf.draft), batch_size=batch_size, collate_fn=collate,
                        num_workers=default_workers() if workers is None else workers)
    rows, skipped = [], []
    with progress_bar(show_progress) as bar:
        task = bar.add_task("predict", total=len(images))
        for b in loader:
            skipped.extend(b.skipped)
            bar.advance(task, len(b.indices) + len(b.skipped))
            if not len(b.indices):
                continue
            x = normalize(b.images.to(dev), mean=ft.spec.mean, std=ft.spec.std)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                scores = net(x.contiguous(memory_format=torch.channels_last)).float()
            prob, pred = torch.softmax(scores, 1).max(1)
            rows += [{"path": images.ids[i], "prediction": ft.classes[c], "probability": q}
                     for i, c, q in zip(b.indices.tolist(), pred.tolist(), prob.tolist())]
    if out is not None:
        write_predictions(rows, out)
    return ImagePredictions(rows, skipped_report(images, skipped))


__all__ = ["MODEL_FILE", "Finetuned", "ImagePredictions", "load_finetuned", "predict_images", "save_finetuned"]
