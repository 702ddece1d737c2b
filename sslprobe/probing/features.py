"""Feature sets as ``extract`` writes them: loading, validation and class-name alignment.

A feature set is an (N, D) matrix with labels (-1 = unlabeled), class names, optional row paths and
the manifest ``extract`` wrote. Everything the probe reads passes ``_validated`` once, so NaN/inf
rows, label/class mismatches and shape errors surface as one-line ``SSLProbeError``s.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import torch

from sslprobe.errors import SSLProbeError


@dataclass(frozen=True, eq=False)
class FeatureSet:
    """Cached embeddings with labels (-1 = unlabeled) and class names, as ``extract`` writes them."""

    features: torch.Tensor  # (N, D) float32
    labels: torch.Tensor  # (N,) int64
    classes: tuple[str, ...]
    paths: tuple[str, ...] | None = None
    source: str = "<tensors>"
    manifest: dict = field(default_factory=dict)

    @classmethod
    def from_arrays(cls, features: Any, labels: Any, *, classes: Sequence[str] | None = None,
                    paths: Sequence[str] | None = None, source: str = "<arrays>") -> FeatureSet:
        """Validate numpy arrays or tensors into a FeatureSet (float32 features, int64 labels)."""
        return validated(torch.as_tensor(features), torch.as_tensor(labels), classes=classes, paths=paths,
                         source=source)

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])


def validated(features: torch.Tensor, labels: torch.Tensor, *, classes: Sequence[str] | None = None,
              paths: Sequence[str] | None = None, source: str = "<tensors>",
              manifest: dict | None = None) -> FeatureSet:
    """Check shapes, finiteness and labels, and build a FeatureSet (float32 features, int64 labels)."""
    if features.ndim != 2 or features.shape[0] == 0 or features.shape[1] == 0:
        raise SSLProbeError(f"'{source}': features must be a non-empty (N, D) matrix, got shape "
                            f"{tuple(features.shape)}; re-extract the feature set")
    if labels.ndim != 1 or labels.shape[0] != features.shape[0]:
        raise SSLProbeError(f"'{source}': {features.shape[0]} feature rows but labels of shape "
                            f"{tuple(labels.shape)}; re-extract the feature set")
    if labels.is_floating_point() and not bool((labels == labels.round()).all()):  # NaN ≠ NaN fails too
        raise SSLProbeError(f"'{source}': labels must be whole numbers (class indices, -1 = unlabeled); re-extract")
    if labels.dtype == torch.bool or labels.is_complex():
        raise SSLProbeError(f"'{source}': labels of dtype {labels.dtype} are not class indices; re-extract")
    if not (features.is_floating_point() or features.dtype in (torch.int32, torch.int64, torch.uint8)):
        raise SSLProbeError(f"'{source}': features of dtype {features.dtype} are not numbers; re-extract")
    bad = ~torch.isfinite(features).all(1)
    if bad.any():
        first = f" (first: {paths[int(bad.nonzero()[0])]})" if paths else ""
        raise SSLProbeError(f"'{source}' contains NaN/inf features in {int(bad.sum())} rows{first}; "
                            "re-extract (check the backbone weights, or use --dtype float32)")
    features, labels = features.to(torch.float32).contiguous(), labels.to(torch.int64)
    if not torch.isfinite(features).all():  # float64 values beyond float32's range
        raise SSLProbeError(f"'{source}': features overflow float32; rescale them or re-extract")
    top = int(labels.max())
    if classes is None:
        classes = [str(i) for i in range(top + 1)]
    if isinstance(classes, (str, bytes)) or not isinstance(classes, Sequence) or \
            not all(isinstance(c, (str, int)) for c in classes):
        raise SSLProbeError(f"'{source}': the class list must be a list of names; re-extract the feature set")
    if int(labels.min()) < -1 or top >= len(classes):
        raise SSLProbeError(f"'{source}': labels must lie in [-1, {len(classes)}) for {len(classes)} "
                            "classes; the labels and class list disagree, re-extract")
    if paths is not None and (isinstance(paths, (str, bytes)) or not isinstance(paths, Sequence)
                              or not all(isinstance(p, str) for p in paths)):
        raise SSLProbeError(f"'{source}': manifest 'paths' must be a list of file names; re-extract")
    if paths is not None and len(paths) != features.shape[0]:
        raise SSLProbeError(f"'{source}': manifest lists {len(paths)} paths for {features.shape[0]} "
                            "feature rows; re-extract the feature set")
    return FeatureSet(features, labels, tuple(str(c) for c in classes),
                      None if paths is None else tuple(paths), source, manifest or {})


def as_feature_set(x: str | os.PathLike | FeatureSet, *, labels_required: bool = True) -> FeatureSet:
    """A path is loaded, a FeatureSet (possibly built by hand, skipping checks) is re-validated."""
    if isinstance(x, FeatureSet):
        return validated(x.features, x.labels, classes=x.classes, paths=x.paths, source=x.source,
                         manifest=x.manifest)
    return load_features(x, labels_required=labels_required)


def load_features(path: str | os.PathLike, *, labels_required: bool = True) -> FeatureSet:
    """Read an ``extract`` feature dir (features.safetensors + manifest.json) or a bare .safetensors.

    A bare file takes class names from its metadata key "classes" (a JSON list), else "0".."K-1".
    ``labels_required=False`` (prediction) accepts a file without labels: every row is unlabeled.
    """
    from safetensors import SafetensorError, safe_open

    p = Path(path)
    if not p.exists():
        raise SSLProbeError(f"feature set '{p}' not found; run `sslprobe extract … --out {p}` first")
    manifest: dict = {}
    if p.is_dir():
        file = p / "features.safetensors"
        if not file.is_file():
            raise SSLProbeError(f"'{p}' has no features.safetensors; point at an `sslprobe extract` output dir")
        if (p / "manifest.json").is_file():
            try:
                manifest = json.loads((p / "manifest.json").read_text())
            except (OSError, ValueError) as e:
                raise SSLProbeError(f"cannot read '{p / 'manifest.json'}' ({e}); re-extract") from None
    elif p.suffix == ".safetensors":
        file = p
    else:
        raise SSLProbeError(f"'{p}' is neither a feature dir nor a .safetensors file")
    try:
        with safe_open(str(file), framework="pt", device="cpu") as f:
            keys = set(f.keys())
            missing = [k for k in ("features", "labels") if k not in keys and (labels_required or k == "features")]
            if missing:
                raise SSLProbeError(f"'{file}' has no tensor(s) {', '.join(missing)}; "
                                    "expected 'features' (N, D) and 'labels' (N,), re-extract")
            features, meta = f.get_tensor("features"), f.metadata() or {}
            labels = f.get_tensor("labels") if "labels" in keys else torch.full((features.shape[0],), -1)
    except SSLProbeError:
        raise
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:  # corrupt or truncated file
        raise SSLProbeError(f"cannot read '{file}' ({e}); re-extract the feature set") from None
    if not isinstance(manifest, dict):
        raise SSLProbeError(f"'{p}': manifest.json is not a JSON object; re-extract")
    # a run interrupted between writing the two files leaves a new features file next to the old
    # manifest; when both carry the writer's run id they must agree
    if manifest and "run_id" in meta and manifest.get("run_id") != meta["run_id"]:
        raise SSLProbeError(f"'{p}': features.safetensors and manifest.json come from different extract runs "
                            "(interrupted?); re-run the extract")
    _check_inside(manifest.get("paths"), p)
    classes = manifest.get("classes")
    if classes is None and "classes" in meta:
        try:
            classes = json.loads(meta["classes"])
        except ValueError:
            raise SSLProbeError(f"'{file}': metadata 'classes' is not a JSON list; re-extract") from None
    return validated(features, labels, classes=classes, paths=manifest.get("paths"), source=str(p),
                     manifest=manifest)


def _check_inside(paths: Any, source: Path) -> None:
    """Manifest paths are relative names inside the data folder: no absolute paths, no '..'.

    They are reported and written to CSVs, and a path escaping its folder means the manifest was
    not written by ``extract`` (or was tampered with).
    """
    if not isinstance(paths, list):
        return  # absent, or the wrong type: ``validated`` says so
    for q in paths:
        if isinstance(q, str) and (q.startswith("/") or ".." in PurePosixPath(q).parts):
            raise SSLProbeError(f"'{source}': manifest path '{q}' points outside the data folder; "
                                "re-extract the feature set")


def align_labels(fs: FeatureSet, names: list[str]) -> torch.Tensor:
    """Labels of ``fs`` re-indexed into ``names`` (extended in place with unseen class names).

    Sets name their classes; bare files without names ("0".."K-1") match by index instead.
    """
    generated = fs.classes == tuple(str(i) for i in range(len(fs.classes)))
    if generated and not set(fs.classes) & set(names):
        lut = list(range(len(fs.classes)))
        names.extend(str(i) for i in range(len(names), len(fs.classes)))
    else:
        lut = []
        for c in fs.classes:
            if c not in names:
                names.append(c)
            lut.append(names.index(c))
    return torch.where(fs.labels >= 0, torch.tensor(lut + [-1])[fs.labels], -1)


def check_widths(sets: Mapping[str, FeatureSet | None], *, reference: str = "train") -> None:
    """All feature sets must have the reference set's width (same model and layer)."""
    ref = sets[reference]
    for name, other in sets.items():
        if other is not None and other.dim != ref.dim:
            raise SSLProbeError(f"feature widths differ: {reference} has {ref.dim}, {name} has {other.dim}; "
                                "extract both with the same model and layer")


def resolve_sets(path: str | os.PathLike) -> dict[str, Path | None]:
    """A feature dir → {"train": it}; a dir holding train/ (val/, test/) feature dirs → each of them."""
    p = Path(path)
    if not p.exists():
        raise SSLProbeError(f"'{p}' does not exist; pass a feature dir from `sslprobe extract` or a folder "
                            "with train/ and test/ feature dirs")
    if (p / "train").is_dir():
        return {s: (p / s if (p / s).exists() else None) for s in ("train", "val", "test")}
    return {"train": p, "val": None, "test": None}


def labelled_paths(fs: FeatureSet | None) -> list[str] | None:
    """Row paths of the labelled rows of ``fs`` (the rows the test metrics score), if it has paths."""
    if fs is None or not fs.paths:
        return None
    return [p for p, y in zip(fs.paths, fs.labels.tolist()) if y >= 0]


def manifest_summary(manifest: Mapping[str, Any]) -> dict:
    """The feature manifest without its per-row lists (paths can be millions of entries)."""
    return {k: (f"<{len(v)} entries>" if k == "paths" and isinstance(v, list) else v) for k, v in manifest.items()}


__all__ = ["FeatureSet", "align_labels", "as_feature_set", "check_widths", "labelled_paths", "load_features",
           "manifest_summary", "resolve_sets", "validated"]
