"""One extraction of the labelled folder, cut into the train, val and test feature sets the probe reads.

Each arm embeds the labelled folder once (one network for all three splits: a data-dependent init
such as random-rescaled must not differ between train and test), then its rows are written out by
split as ordinary ``extract`` feature directories, so ``sslprobe compare`` reproduces the probe
stage from them. Class names come back from the folder names the layout had to make safe. An
extraction of several layers (``--layers``) is cut layer by layer: the candidates' train and val rows
in memory for the layer choice (``split_sets``), the chosen layer's three splits on disk.
"""
from __future__ import annotations

import json
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from sslprobe.errors import SSLProbeError
from sslprobe.fileio import atomic_path, write_json
from sslprobe.probing.features import FeatureSet, load_features, validated
from sslprobe.study.assignment import SPLITS


def layer_dirs(extracted: Path) -> dict[str, Path]:
    """Each layer an extraction holds and its feature directory, shallow to deep (one for a single layer)."""
    try:
        manifest = json.loads((extracted / "manifest.json").read_text())
    except (OSError, ValueError) as e:
        raise SSLProbeError(f"cannot read '{extracted / 'manifest.json'}' ({e}); rerun the study") from None
    layers = manifest.get("layers") or {manifest.get("layer", "pre-logits"): "."}
    return {name: extracted / d for name, d in layers.items()}


def _by_split(extracted: Path, membership: Mapping[str, str],
              class_names: Mapping[str, str]) -> tuple[FeatureSet, list[str], dict[str, list[int]]]:
    """The extraction, its class names, and its row indices by split."""
    fs = load_features(extracted)
    if fs.paths is None:
        raise SSLProbeError(f"'{extracted}' lists no row paths; rerun the study to extract it again")
    unknown = [p for p in fs.paths if p not in membership]
    if unknown:
        raise SSLProbeError(f"'{extracted}' holds rows the study's split does not know (e.g. {unknown[0]}); "
                            "delete it and rerun")
    rows = {split: [i for i, p in enumerate(fs.paths) if membership[p] == split] for split in SPLITS}
    for split, idx in rows.items():
        if not idx:
            raise SSLProbeError(f"no readable {split} image in '{extracted}'; check the skipped files")
    return fs, [class_names.get(c, c) for c in fs.classes], rows


def split_sets(extracted: Path, *, membership: Mapping[str, str], class_names: Mapping[str, str],
               splits: Sequence[str]) -> dict[str, FeatureSet]:
    """The rows of ``extracted`` of the named splits only, as feature sets in memory."""
    fs, classes, rows = _by_split(extracted, membership, class_names)
    out = {}
    for split in splits:
        idx = torch.tensor(rows[split], dtype=torch.long)
        out[split] = validated(fs.features[idx], fs.labels[idx], classes=classes, paths=[fs.paths[i] for i in
                                                                                        rows[split]],
                               source=f"{extracted} ({split})", manifest=fs.manifest)
    return out


def write_split_features(extracted: Path, *, membership: Mapping[str, str], class_names: Mapping[str, str],
                         out: Path) -> dict[str, Path]:
    """``out/{train,val,test}`` from the rows of ``extracted`` by ``membership`` (labelled-folder id → split)."""
    fs, classes, rows = _by_split(extracted, membership, class_names)
    return {split: _write(fs, rows[split], classes=classes, split=split, out=out / split, source=extracted)
            for split in SPLITS}


def _write(fs: FeatureSet, rows: list[int], *, classes: list[str], split: str, out: Path, source: Path) -> Path:
    """One feature directory as ``extract`` writes it: the features file first, then its manifest."""
    from safetensors.torch import save_file

    idx = torch.tensor(rows, dtype=torch.long)
    run_id = secrets.token_hex(8)
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)  # never a new features file beside an old manifest
    with atomic_path(out / "features.safetensors") as tmp:
        save_file({"features": fs.features[idx].contiguous(), "labels": fs.labels[idx].contiguous()}, str(tmp),
                  metadata={"classes": json.dumps(classes), "run_id": run_id})
    keep = {k: v for k, v in fs.manifest.items() if k not in ("paths", "classes", "counts", "skipped", "run_id",
                                                               "layers")}
    write_json(out / "manifest.json", {**keep, "run_id": run_id, "classes": classes,
                                       "paths": [fs.paths[i] for i in rows], "study_split": split,
                                       "cut_from": str(source), "counts": {"embedded": len(rows)}})
    return out
