"""Find images: class folders, plain folders, Hugging Face datasets.

A DATA argument becomes an ``ImageSet``: ids, labels and class names in a deterministic order, and
reads of one image (decoded or as bytes) that go through ``images.decode``, so every way a file can
be bad is a ``BadImageError`` with a short reason. ``skipped_report`` lists those reasons by path.
"""
from __future__ import annotations

import io
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from sslprobe.errors import SSLProbeError
from sslprobe.images.decode import MAX_FILE_BYTES, MAX_PIXELS, BadImageError, decode_image, read_image_bytes

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class ImageSet:
    """Images found at a DATA argument, in deterministic order.

    ``kind``: "classes" (class subfolders), "folder" (unlabeled, recursive), "labels" (a path,label
    CSV) or "hf". ``ids`` are POSIX paths relative to ``root`` (may hold surrogate escapes for
    non-UTF-8 names), or row indices as strings for "hf". ``labels`` is -1 where unlabeled.
    Picklable for DataLoader workers.
    """

    source: str
    kind: str
    ids: tuple[str, ...]
    labels: tuple[int, ...]
    classes: tuple[str, ...]
    root: str | None
    _dataset: Any = field(default=None, compare=False, repr=False)  # hf: image column only, decode off
    _image_column: str | None = field(default=None, compare=False, repr=False)

    def __len__(self) -> int:
        return len(self.ids)

    def _path(self, i: int) -> str:
        return os.path.join(self.root or "", *self.ids[i].split("/"))

    def read(self, i: int, *, max_pixels: int = MAX_PIXELS) -> Image.Image:
        """Image ``i`` as RGB; raises ``BadImageError``."""
        return decode_image(self._path(i) if self.kind != "hf" else self._hf_value(i), max_pixels=max_pixels)

    def read_bytes(self, i: int, *, max_bytes: int = MAX_FILE_BYTES) -> bytes:
        """Encoded bytes of image ``i`` (PNG-encoded if the dataset holds only decoded pixels).

        Raises ``BadImageError`` for what ``decode_image`` would refuse to open and for files over
        ``max_bytes``, so no file can make this read without bound.
        """
        v = self._path(i) if self.kind != "hf" else self._hf_value(i)
        if isinstance(v, bytes):
            return v
        if isinstance(v, Image.Image):
            buf = io.BytesIO()
            v.save(buf, "PNG")
            return buf.getvalue()
        return read_image_bytes(v, max_bytes=max_bytes)

    def _hf_value(self, i: int) -> bytes | str | Image.Image:
        v = self._dataset[i][self._image_column]
        if isinstance(v, dict):  # Image(decode=False) gives {"bytes", "path"}
            v = v.get("bytes") if v.get("bytes") is not None else v.get("path")
        if isinstance(v, (bytearray, memoryview)):
            v = bytes(v)
        if v is None:
            raise BadImageError("no image in this row")
        if not isinstance(v, (bytes, str, Image.Image)):
            raise BadImageError(f"unsupported value in column '{self._image_column}': {type(v).__name__}")
        return v


def open_images(data: str | os.PathLike, *, image_column: str | None = None,
                label_column: str | None = None, labels: str | os.PathLike | None = None) -> ImageSet:
    """Resolve a DATA argument: a folder, a ``save_to_disk`` dataset folder, or ``hf:NAME[:SPLIT]``.

    A folder whose top level holds no images but whose subfolders do is "classes" (one class per
    subfolder, images found recursively); any other folder is "folder" (unlabeled). Hidden names
    are ignored, directory symlinks followed (a link back to an ancestor is not). The columns
    only apply to Hugging Face data. ``labels``: a CSV with columns path,label naming the images
    of the folder ``data`` (paths relative to it) and their classes: kind "labels".
    """
    s = os.fspath(data)
    if labels is not None:
        return _open_labels(s, os.fspath(labels))
    if s.startswith("hf:"):
        rest = s[3:]
        # first ':' only: split specs may hold one ("train[:10%]"), hub names never do
        name, _, split = (rest, "", "") if os.path.isdir(rest) else rest.partition(":")
        return _open_hf(s, name, split or None, image_column, label_column)
    if not os.path.exists(s):
        raise SSLProbeError(f"'{s}' does not exist; pass a folder of images (or class subfolders) or hf:NAME[:SPLIT]")
    if not os.path.isdir(s):
        raise SSLProbeError(f"'{s}' is a file, not a folder; pass the folder that holds the images")
    if _is_saved_dataset(s):
        return _open_hf(s, s, None, image_column, label_column)
    return _open_folder(s)


SPLIT_FOLDERS = ("train", "val", "test")


def split_folders(data: str | os.PathLike) -> dict[str, str] | None:
    """``{"train": …, "test": …[, "val": …]}`` when the folder ``data`` holds those subfolders (any case) and
    nothing else but hidden entries, else None: a dataset already split, whose subfolders are not classes."""
    s = os.fspath(data)
    if s.startswith("hf:") or not os.path.isdir(s):
        return None
    found: dict[str, str] = {}
    for entry in os.scandir(s):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir() or entry.name.lower() not in SPLIT_FOLDERS or entry.name.lower() in found:
            return None
        found[entry.name.lower()] = entry.path
    return found if {"train", "test"} <= set(found) else None


def _open_folder(s: str) -> ImageSet:
    root = os.path.abspath(s)
    ids, others = _walk(root)
    if not ids:
        extra = f"; it holds {others} other files" if others else ""
        raise SSLProbeError(f"no images found in '{s}' (looked for {' '.join(IMAGE_EXTENSIONS)}, any case{extra}); "
                            "pass a folder of images or of class subfolders")
    ids.sort()  # code-point order: the same on every filesystem and locale
    tops = [p.split("/", 1)[0] if "/" in p else None for p in ids]
    if None in tops:  # an image at the top level: the whole tree is one unlabeled folder
        return ImageSet(s, "folder", tuple(ids), (-1,) * len(ids), (), root)
    classes = tuple(sorted(set(tops)))
    index = {c: k for k, c in enumerate(classes)}
    return ImageSet(s, "classes", tuple(ids), tuple(index[c] for c in tops), classes, root)


def _open_labels(s: str, csv_path: str) -> ImageSet:
    """The images a path,label CSV names inside the folder ``s``, in path order; bad input is one line."""
    if s.startswith("hf:"):
        raise SSLProbeError("--labels names files in a folder; a Hugging Face dataset brings its own label column "
                            "(--label-column NAME)")
    if not os.path.isdir(s):
        raise SSLProbeError(f"'{s}' is not a folder; with --labels pass the folder the CSV's paths are relative to")
    root = os.path.abspath(s)
    rows = _label_rows(csv_path)
    by_path: dict[str, str] = {}
    for line, path, label in rows:
        rel = _inside(root, path, csv_path=csv_path, line=line)
        if by_path.setdefault(rel, label) != label:
            raise SSLProbeError(f"'{csv_path}' labels '{rel}' both '{by_path[rel]}' and '{label}'; keep one row per "
                                "image")
    missing = [p for p in by_path if not os.path.lexists(os.path.join(root, *p.split("/")))]
    if missing:
        raise SSLProbeError(f"'{csv_path}' names {len(missing)} file(s) not found in '{s}' (first: "
                            f"{', '.join(sorted(missing)[:3])}); paths are relative to that folder: fix them or "
                            "drop those rows")
    ids = sorted(by_path)  # code-point order, as folders
    classes = tuple(sorted(set(by_path.values())))
    index = {c: k for k, c in enumerate(classes)}
    return ImageSet(s, "labels", tuple(ids), tuple(index[by_path[i]] for i in ids), classes, root)


def _label_rows(csv_path: str) -> list[tuple[int, str, str]]:
    """(line, path, label) of every data row of a path,label CSV (header required, no other columns)."""
    out = path_rows(csv_path, column="label")
    if not out:
        raise SSLProbeError(f"'{csv_path}' lists no images; add one path,label row per image")
    return out


def path_rows(csv_path: str, *, column: str, hint: str = "") -> list[tuple[int, str, str]]:
    """(line, path, value) of every data row of a ``path,<column>`` CSV: a header row naming exactly those two
    columns, blank lines skipped, both cells filled in. The one reader of --labels and --groups files;
    ``hint``: another way out, said when the file cannot be read."""
    import csv

    what = f"path,{column}"
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            table = list(csv.reader(f))
    except FileNotFoundError:
        raise SSLProbeError(f"{column}s file '{csv_path}' not found; pass a CSV with columns {what}{hint}") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise SSLProbeError(f"cannot read {column}s file '{csv_path}' ({e}); pass a UTF-8 CSV with columns "
                            f"{what}{hint}") from None
    header = [h.strip().lower() for h in table[0]] if table else []
    if sorted(header) != sorted(["path", column]):
        raise SSLProbeError(f"'{csv_path}' has columns {', '.join(header) or '(none)'}; a {column}s CSV has exactly "
                            f"the columns {what} (a header row, then one row per image)")
    ip, iv = header.index("path"), header.index(column)
    out = []
    for line, row in enumerate(table[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue  # blank lines
        if len(row) != 2 or not row[ip].strip() or not row[iv].strip():
            raise SSLProbeError(f"'{csv_path}' line {line} is not '{what}' with both filled in: {row}")
        out.append((line, row[ip].strip(), row[iv].strip()))
    return out


def _inside(root: str, path: str, *, csv_path: str, line: int) -> str:
    """``path`` as a POSIX id relative to ``root``; an absolute path must lie inside it, '..' never."""
    p = path.replace("\\", "/")
    if os.path.isabs(p):
        rel = os.path.relpath(p, root).replace(os.sep, "/")
        if rel == ".." or rel.startswith("../"):
            raise SSLProbeError(f"'{csv_path}' line {line}: '{path}' is outside '{root}'; list paths relative to "
                                "the data folder")
        p = rel
    parts = [q for q in p.split("/") if q not in ("", ".")]
    if not parts or ".." in parts:
        raise SSLProbeError(f"'{csv_path}' line {line}: '{path}' is not a path inside the data folder; list "
                            "paths relative to it, without '..'")
    return "/".join(parts)


def _walk(root: str) -> tuple[list[str], int]:
    """Image ids (relative POSIX paths) below ``root`` and the count of other files.

    Iterative, so deep trees can't hit the recursion limit. A directory is skipped when it is its
    own ancestor (by device and inode), which stops symlink loops while still following links
    that merely point elsewhere (a class folder linked from another must keep its images).
    """
    ids: list[str] = []
    others = 0
    st = os.stat(root)
    stack = [(root, "", frozenset({(st.st_dev, st.st_ino)}))]
    while stack:
        path, prefix, ancestors = stack.pop()
        try:
            with os.scandir(path) as it:
                entries = list(it)
        except OSError:  # unreadable directory: nothing to list, the walk goes on
            continue
        for e in entries:
            name = os.fsdecode(e.name)
            if name.startswith("."):
                continue
            try:
                is_dir = e.is_dir()  # follows symlinks; False when dangling
                key = (e.stat().st_dev, e.stat().st_ino) if is_dir else None
                is_file = not is_dir and e.is_file()
                dangling = not is_dir and not is_file and e.is_symlink()
            except OSError:  # e.g. a symlink loop: treat it as a broken file so it gets reported
                is_dir, is_file, dangling = False, False, True
            if is_dir:
                if key not in ancestors:
                    stack.append((e.path, prefix + name + "/", ancestors | {key}))
            elif (is_file or dangling) and name.lower().endswith(IMAGE_EXTENSIONS):
                ids.append(prefix + name)  # dangling links stay: read() reports them rather than hiding them
            elif is_file:
                others += 1
    return ids, others


def _is_saved_dataset(path: str) -> bool:
    return any(os.path.isfile(os.path.join(path, f)) for f in ("state.json", "dataset_dict.json"))


def _open_hf(source: str, name: str, split: str | None, image_column: str | None,
             label_column: str | None) -> ImageSet:
    import datasets

    ds = _load_hf(name, split)
    if len(ds) == 0:
        raise SSLProbeError(f"'{source}' has no rows; pass a dataset (or split) that holds images")
    ds = ds.with_format(None)
    feats = ds.features
    icol = _pick_column(feats, image_column, datasets.Image, ("image", "img"), what="image", source=source)
    if icol is None:
        raise SSLProbeError(f"no image column found in '{source}' (columns: {', '.join(feats)}); "
                            "pass --image-column NAME")
    lcol = _pick_column(feats, label_column, datasets.ClassLabel, ("label", "labels"), what="label", source=source)
    labels, classes = _hf_labels(ds, lcol)
    img = ds.select_columns([icol])
    if isinstance(feats[icol], datasets.Image):  # bad bytes then reach decode_image instead of crashing
        img = img.cast_column(icol, datasets.Image(decode=False))
    return ImageSet(source, "hf", tuple(str(i) for i in range(len(ds))), labels, classes, None,
                    _dataset=img, _image_column=icol)


def _load_hf(name: str, split: str | None) -> Any:
    """The dataset (one split) at a ``save_to_disk`` folder or on the hub; every failure one SSLProbeError line."""
    import datasets

    try:
        if not (os.path.isdir(name) and _is_saved_dataset(name)):
            return datasets.load_dataset(name, split=split or "train")
        ds = datasets.load_from_disk(name)
    except Exception as e:  # noqa: BLE001 - datasets/hub raise many types; all become one line
        msg = " ".join(str(e).split())[:200]
        raise SSLProbeError(f"could not load Hugging Face dataset '{name}' ({type(e).__name__}: {msg}); check the "
                            "name and network, or pass a local image folder or a Dataset.save_to_disk folder") from None
    if isinstance(ds, datasets.DatasetDict):
        if (split or "train") not in ds:
            raise SSLProbeError(f"'{name}' has no split '{split or 'train'}' (splits: {', '.join(ds)}); "
                                f"pass hf:{name}:SPLIT")
        return ds[split or "train"]
    if split:
        raise SSLProbeError(f"'{name}' is a single dataset without splits; drop ':{split}'")
    return ds


def _pick_column(feats: dict, given: str | None, ftype: type, names: tuple[str, ...], *, what: str,
                 source: str) -> str | None:
    """``given`` (which must exist), else the first column of feature type ``ftype``, else the first of ``names``."""
    if given is not None:
        if given not in feats:
            raise SSLProbeError(f"no column '{given}' in '{source}' (columns: {', '.join(feats)}); "
                                f"pass --{what}-column NAME")
        return given
    return next((c for c, f in feats.items() if isinstance(f, ftype)), None) or \
        next((c for c in names if c in feats), None)


def _hf_labels(ds: Any, lcol: str | None) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """(labels, classes) of column ``lcol``: a ClassLabel's names, else the sorted distinct values; -1 unlabeled."""
    import datasets

    if lcol is None:
        return (-1,) * len(ds), ()
    values = list(ds[lcol])
    feat = ds.features[lcol]
    if isinstance(feat, datasets.ClassLabel):
        return tuple(-1 if v is None else int(v) for v in values), tuple(feat.names)
    uniq = {v for v in values if v is not None}
    try:
        order = sorted(uniq)
    except TypeError:
        order = sorted(uniq, key=str)
    index = {v: k for k, v in enumerate(order)}
    return tuple(-1 if v is None else index[v] for v in values), tuple(str(v) for v in order)


def skipped_report(images: ImageSet, skipped: Iterable[tuple[int, str]]) -> list[dict]:
    """``[{'path', 'reason'}]`` sorted by path, one entry per image (repeats across epochs dropped)."""
    first: dict[int, str] = {}
    for i, reason in skipped:
        first.setdefault(int(i), reason)
    return sorted(({"path": images.ids[i], "reason": r} for i, r in first.items()), key=lambda d: d["path"])
