"""One extraction of the labelled folder, cut into the train, val and test feature sets the probe reads.

Each arm embeds the labelled folder once (one network for all three splits: a data-dependent init
such as random-rescaled must not differ between train and test), then its rows are written out by
split as ordinary ``extract`` feature directories, so ``sslprobe compare`` reproduces the probe
stage from them. Class names come back from the folder names the layout had to make safe.
"""
from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from pathlib import Path

import torch

from sslprobe.errors import SSLProbeError
from sslprobe.fileio import atomic_path, write_json
from sslprobe.probing.features import FeatureSet, load_features
from sslprobe.study.assignment import SPLITS


def write_split_features(extracted: Path, *, membership: Mapping[str, str], class_names: Mapping[str, str],
                         out: Path) -> dict[str, Path]:
    """``out/{train,val,test}`` from the rows of ``extracted`` by ``membership`` (labelled-folder id → split)."""
    fs = load_features(extracted)
    if fs.paths is None:
        raise SSLProbeError(f"'{extracted}' lists no row paths; rerun the study to extract it again")
    unknown = [p for p in fs.paths if p not in membership]
    if unknown:
        raise SSLProbeError(f"'{extracted}' holds rows the study's split does not know (e.g. {unknown[0]}); "
                            "delete it and rerun")
    classes = [class_names.get(c, c) for c in fs.classes]
    written = {}
    for split in SPLITS:
        rows = [i for i, p in enumerate(fs.paths) if membership[p] == split]
        if not rows:
            raise SSLProbeError(f"no readable {split} image in '{extracted}'; check the skipped files")
        written[split] = _write(fs, rows, classes=classes, split=split, out=out / split, source=extracted)
    return written


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
    keep = {k: v for k, v in fs.manifest.items() if k not in ("paths", "classes", "counts", "skipped", "run_id")}
    write_json(out / "manifest.json", {**keep, "run_id": run_id, "classes": classes,
                                       "paths": [fs.paths[i] for i in rows], "study_split": split,
                                       "cut_from": str(source), "counts": {"embedded": len(rows)}})
    return out
