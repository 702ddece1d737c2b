"""Where a study keeps everything under ``--out``, and the image folders it makes for the commands it runs.

The commands a study runs take folders, so the study writes three kinds (links to the user's files,
or the bytes of dataset rows):

    data/labelled/<class>/…      every labelled image of train, val and test (what each arm embeds once)
    data/pool/<hash>.<ext>       the pretraining pool: train and --unlabeled images, none of them val or test
    data/splits/<split>/<class>/…  the three splits as class folders (fine-tune and random-rescaled arms)
    data-r2/…, splits-r2.json    with --resplit, repeat 2's own split and folders (and so on)

A folder is rebuilt only when its listing changed (``.listing`` holds the listing's digest), so a
rerun leaves the files, their times and the embedding cache's view of them alone.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sslprobe.errors import SSLProbeError
from sslprobe.images.folders import IMAGE_EXTENSIONS, ImageSet
from sslprobe.study.sources import Entry, Inputs

LISTING = ".listing"
_MAGIC = ((b"\x89PNG", ".png"), (b"\xff\xd8\xff", ".jpg"), (b"GIF8", ".gif"), (b"BM", ".bmp"),
          (b"II*\x00", ".tif"), (b"MM\x00*", ".tif"))


@dataclass(frozen=True)
class Layout:
    """The paths of one study directory (docs/study.md, "Outputs")."""

    out: Path
    repeat: int = 0  # --resplit: repeat r (from 0) keeps its own split, pool and split folders

    def for_repeat(self, repeat: int) -> Layout:
        """Where repeat ``repeat`` of a ``--resplit`` study keeps its data: ``data-r2/``, ``splits-r2.json``, …"""
        return Layout(self.out, repeat)

    @property
    def data(self) -> Path:
        return self.out / ("data" if self.repeat == 0 else f"data-r{self.repeat + 1}")

    @property
    def splits(self) -> Path:
        return self.out / ("splits.json" if self.repeat == 0 else f"splits-r{self.repeat + 1}.json")

    @property
    def labelled(self) -> Path:
        return self.data / "labelled"

    @property
    def pool(self) -> Path:
        return self.data / "pool"

    def split_folder(self, split: str) -> Path:
        return self.data / "splits" / split

    def arm(self, name: str) -> Path:
        return self.out / "arms" / name

    def pretrain_run(self, init: str, key: str) -> Path:
        return self.out / "pretrain" / f"{init}-{key}"

    @property
    def figures(self) -> Path:
        return self.out / "figures"

    def file(self, name: str) -> Path:
        return self.out / name


@dataclass(frozen=True)
class Placed:
    """A labelled image as the labelled folder holds it: its id there, its split and where it comes from."""

    id: str
    split: str
    entry: Entry


def class_dirs(classes: Sequence[str]) -> dict[str, str]:
    """A folder name for every class name: path separators and a leading dot replaced, collisions numbered."""
    out: dict[str, str] = {}
    used: set[str] = set()
    for c in classes:
        name = c.replace("/", "_").replace("\\", "_").replace("\0", "_").strip()
        if not name or name.startswith("."):
            name = "_" + name
        base, n = name, 1
        while name in used:
            n += 1
            name = f"{base}~{n}"
        used.add(name)
        out[c] = name
    return out


def _relative(images: ImageSet, e: Entry) -> str:
    """The image's path inside its class folder: the part of its id below the class, its CSV path, or its row;
    with an image extension (sniffed when the name has none) and no hidden segment, so a folder walk finds it."""
    if images.kind == "hf":
        return f"{int(e.id):07d}{_sniffed(images, e)}"
    rel = e.id.split("/", 1)[1] if images.kind == "classes" else e.id
    rel = "/".join("_" + part if part.startswith(".") else part for part in rel.split("/"))
    return rel if os.path.splitext(rel)[1].lower() in IMAGE_EXTENSIONS else rel + _sniffed(images, e)


def place_labelled(inputs: Inputs, labelled: Iterable[tuple[Entry, str]], dirs: dict[str, str]) -> list[Placed]:
    """Ids in the labelled folder for every labelled row (test images under a ``test/`` prefix of their class)."""
    out: list[Placed] = []
    taken: set[str] = set()
    for e, split in labelled:
        images = inputs.sets[e.origin]
        rel = _relative(images, e)
        name = f"{dirs[e.label]}/{'test/' if e.origin == 'test' else ''}{rel}"
        stem, dot, ext = name.rpartition(".")
        n = 1
        while name in taken:  # the same relative path under DATA and --test, or a sanitised-class clash
            n += 1
            name = f"{stem}~{n}.{ext}" if dot else f"{ext}~{n}"
        taken.add(name)
        out.append(Placed(name, split, e))
    return out


def _sniffed(images: ImageSet, e: Entry) -> str:
    """An image extension for bytes without one in their name (dataset rows, odd CSV names)."""
    head = images.read_bytes(e.index)[:16]
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return ".webp"
    return next((ext for magic, ext in _MAGIC if head.startswith(magic)), ".png")


def _extension(images: ImageSet, e: Entry) -> str:
    suffix = os.path.splitext(e.id)[1].lower()
    return suffix if images.kind != "hf" and suffix in IMAGE_EXTENSIONS else _sniffed(images, e)


def pool_names(inputs: Inputs, pool: Iterable[Entry]) -> list[tuple[str, Entry]]:
    """A flat, content-named file per pool image: ``<first 20 hex of its hash><ext>``."""
    return [(f"{e.key[:20]}{_extension(inputs.sets[e.origin], e)}", e) for e in pool]


def materialise(dest: Path, files: Sequence[tuple[str, Entry]], inputs: Inputs) -> None:
    """Make ``dest`` hold exactly ``files`` (name → image): links to files, bytes of dataset rows."""
    digest = hashlib.sha256("\n".join(f"{name}\t{_source(inputs.sets[e.origin], e)}\t{e.key}"
                                      for name, e in files).encode())  # a moved DATA folder relinks
    marker = dest / LISTING
    if marker.is_file() and marker.read_text() == digest.hexdigest():
        return
    if dest.exists():
        if not marker.is_file() and any(dest.iterdir()):
            raise SSLProbeError(f"'{dest}' exists and was not made by sslprobe study; choose another --out")
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for name, e in files:
        _place(dest / name, inputs.sets[e.origin], e)
    marker.write_text(digest.hexdigest())  # last: a half-made folder is redone, never trusted


def _source(images: ImageSet, e: Entry) -> str:
    """Where an image's bytes come from: its file, or its dataset row."""
    if images.kind == "hf":
        return f"{images.source}#{e.id}"
    return os.path.join(images.root or "", *e.id.split("/"))


def _place(target: Path, images: ImageSet, e: Entry) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if images.kind == "hf":
        target.write_bytes(images.read_bytes(e.index))
        return
    src = _source(images, e)
    try:
        os.symlink(src, target)
    except OSError:  # no symlinks here (some Windows setups, some filesystems): a copy works everywhere
        shutil.copyfile(src, target)
