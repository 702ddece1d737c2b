"""The study's images: DATA (labelled), the optional --test set and --unlabeled pool, each image by content hash.

Every image is known by the sha256 of its bytes (``fileio.file_sha256``, the digest the embedding
cache keys rows by), so a copy under another name is the same image: that is what the split and the
leakage guard (assignment.py) match on. Beside it, each image's perceptual fingerprint
(``images.phash``: a 64-bit pHash and an 8×8 thumbnail), by which the guard finds resized or
re-encoded copies. ``hashes.json`` keeps the hashes of files by path, size and modification time and
the fingerprints by content hash, so a rerun reads only new or changed files and decodes only new
content. Images that cannot be read are skipped and listed; bad input (no labels, one class, test
classes that differ) is one line.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sslprobe.cache import content_key
from sslprobe.errors import SSLProbeError
from sslprobe.fileio import file_sha256, write_json
from sslprobe.images.decode import MAX_FILE_BYTES, BadImageError
from sslprobe.images.folders import ImageSet, open_images, split_folders
from sslprobe.images.phash import VERSION as FINGERPRINT_VERSION
from sslprobe.images.phash import Fingerprint, fingerprint

ORIGINS = ("data", "test", "unlabeled")


@dataclass(frozen=True)
class Entry:
    """One readable image: where it came from, its index and id there, its content hash and class name."""

    origin: str  # "data", "test" or "unlabeled"
    index: int
    id: str
    key: str  # sha256 hex of the bytes
    label: str | None  # class name; None when unlabelled
    fingerprint: Fingerprint | None = None  # None when the bytes do not decode
    group: str | None = None  # --groups: the group it belongs to (study/groups.py); None: a group of its own


@dataclass(frozen=True)
class Inputs:
    """The opened sources, their readable images and the unreadable ones (``{"origin", "path", "reason"}``)."""

    sets: dict[str, ImageSet]  # origin → its images
    entries: tuple[Entry, ...]
    skipped: tuple[dict[str, str], ...]
    classes: tuple[str, ...]  # DATA's class names

    def of(self, origin: str) -> list[Entry]:
        return [e for e in self.entries if e.origin == origin]


def split_layout(data: str, *, test: str | None, labels: str | None) -> tuple[dict[str, str], str] | None:
    """DATA that is a dataset already split (subfolders train/ and test/, maybe val/, any case): the options that
    use it as that split — train/ the labelled data, test/ as --test — and the line that says so; else None.
    Such a DATA is never read as the classes "train" and "test"."""
    found = split_folders(data) if test is None and labels is None else None
    if found is None:
        return None
    note = f"DATA '{data}' holds train/ and test/: train/ is the labelled data, test/ the test set (as --test)"
    if "val" in found:
        note += "; val/ is not used (the validation split is drawn from train/; merge val/ into train/ to use it)"
    return {"data": found["train"], "test": found["test"]}, note


def open_sources(data: str, *, labels: str | None, test: str | None, unlabeled: str | None,
                 image_column: str | None, label_column: str | None) -> dict[str, ImageSet]:
    """DATA, --test and --unlabeled as image sets; DATA and --test must be labelled, with the same classes."""
    sets = {"data": open_images(data, image_column=image_column, label_column=label_column, labels=labels)}
    _check_labelled(sets["data"], what=f"DATA '{data}'")
    if len(set(sets["data"].labels) - {-1}) < 2:
        only = sets["data"].classes[next(y for y in sets["data"].labels if y >= 0)]
        raise SSLProbeError(f"DATA '{data}' has one class ('{only}'); a study compares classifiers, so it needs at "
                            "least 2 classes (one subfolder per class, or two labels in --labels)")
    if test is not None:
        sets["test"] = open_images(test, image_column=image_column, label_column=label_column)
        _check_labelled(sets["test"], what=f"--test '{test}'")
        _check_same_classes(sets["data"].classes, sets["test"].classes, test=test)
    if unlabeled is not None:
        sets["unlabeled"] = open_images(unlabeled, image_column=image_column)
    return sets


def _check_labelled(images: ImageSet, *, what: str) -> None:
    if images.classes and any(y >= 0 for y in images.labels):
        return
    raise SSLProbeError(f"{what} has no labels (a plain folder of images); give it one subfolder per class, or pass "
                        "--labels FILE.csv (columns path,label), or hf:NAME with a label column; unlabelled images "
                        "can join pretraining with --unlabeled")


def _check_same_classes(train: tuple[str, ...], held: tuple[str, ...], *, test: str) -> None:
    if set(train) == set(held):
        return
    missing, extra = sorted(set(train) - set(held)), sorted(set(held) - set(train))
    parts = ([f"missing from the test set: {', '.join(missing[:5])}"] if missing else []) + \
        ([f"only in the test set: {', '.join(extra[:5])}"] if extra else [])
    raise SSLProbeError(f"--test '{test}' has other classes than DATA ({'; '.join(parts)}); give the test folder the "
                        "same class subfolders as DATA")


class HashCache:
    """``hashes.json``: sha256 of files by absolute path, reused while size and mtime are unchanged, and
    fingerprints by content hash (under the fingerprint's version: a new definition recomputes them)."""

    def __init__(self, path: Path):
        self.path = path
        self.known: dict[str, list] = {}
        self.known_prints: dict[str, str] = {}
        if path.is_file():
            import json

            try:
                loaded = json.loads(path.read_text())
            except (OSError, ValueError):
                loaded = {}  # a damaged cache is only a slower rerun
            loaded = loaded if isinstance(loaded, dict) else {}
            self.known = loaded.get("files", {}) if isinstance(loaded.get("files"), dict) else {}
            if loaded.get("fingerprint_version") == FINGERPRINT_VERSION and isinstance(loaded.get("fingerprints"),
                                                                                       dict):
                self.known_prints = loaded["fingerprints"]
        self.used: dict[str, list] = {}
        self.prints: dict[str, str] = {}  # content hash → Fingerprint.hex(), or "" where the bytes do not decode

    def sha256(self, path: str) -> str:
        """The file's hash; raises ``BadImageError`` when it cannot be read."""
        try:
            st = os.stat(path)
        except OSError as e:
            raise BadImageError(f"cannot read ({e.strerror or e})") from None
        if st.st_size > MAX_FILE_BYTES:
            raise BadImageError(f"file over {MAX_FILE_BYTES >> 20} MiB")
        was = self.known.get(path)
        if isinstance(was, list) and len(was) == 3 and was[:2] == [st.st_size, st.st_mtime_ns]:
            self.used[path] = was
            return str(was[2])
        try:
            digest = file_sha256(path)
        except OSError as e:
            raise BadImageError(f"cannot read ({e.strerror or e})") from None
        self.used[path] = [st.st_size, st.st_mtime_ns, digest]
        return digest

    def fingerprint(self, key: str, source: Callable[[], bytes | str]) -> Fingerprint | None:
        """The fingerprint of content ``key``, decoded from ``source()`` unless known; None if it does not decode."""
        text = self.prints.get(key, self.known_prints.get(key))
        if isinstance(text, str):
            try:
                found = Fingerprint.from_hex(text) if text else None
                self.prints[key] = text
                return found
            except ValueError:
                pass  # a damaged entry: computed again
        try:
            found = fingerprint(source())
        except BadImageError:
            found = None
        self.prints[key] = found.hex() if found is not None else ""
        return found

    def save(self) -> None:
        write_json(self.path, {"format": "sslprobe-study-hashes", "files": self.used,
                               "fingerprint_version": FINGERPRINT_VERSION, "fingerprints": self.prints})


def image_key(images: ImageSet, i: int, cache: HashCache) -> str:
    """Content hash of image ``i`` (files through ``cache``; dataset rows from their bytes)."""
    if images.kind == "hf":
        return content_key(images.read_bytes(i)).hex()
    return cache.sha256(os.path.join(images.root or "", *images.ids[i].split("/")))


def _source(images: ImageSet, i: int) -> Callable[[], bytes | str]:
    """Where image ``i``'s bytes are read from when its fingerprint is computed: its file, or its dataset row."""
    if images.kind == "hf":
        return lambda: images.read_bytes(i)
    return lambda: os.path.join(images.root or "", *images.ids[i].split("/"))


def hash_entries(sets: dict[str, ImageSet], *, cache: HashCache, progress: Callable[[int], None] | None = None,
                 threads: int = 1) -> Inputs:
    """Every image of every source by content hash and fingerprint; unreadable ones skipped and listed.

    ``threads`` hash and decode at once (PIL and hashlib release the GIL while they work): the first
    study of a folder decodes every image once, a rerun none (``HashCache``).
    """
    entries: list[Entry] = []
    skipped: list[dict[str, str]] = []
    jobs = [(origin, sets[origin], i, label) for origin in ORIGINS if origin in sets
            for i, label in _labelled(sets[origin], keep_labels=origin != "unlabeled")]

    def one(job: tuple[str, ImageSet, int, str | None]) -> Entry | dict[str, str]:
        origin, images, i, label = job
        try:
            key = image_key(images, i, cache)
        except BadImageError as e:
            return {"origin": origin, "path": images.ids[i], "reason": str(e)}
        return Entry(origin, i, images.ids[i], key, label, cache.fingerprint(key, _source(images, i)))

    for done in _mapped(one, jobs, threads=threads):
        if progress is not None:
            progress(1)
        (entries if isinstance(done, Entry) else skipped).append(done)
    cache.save()
    return Inputs(sets=sets, entries=tuple(entries), skipped=tuple(skipped), classes=sets["data"].classes)


def _mapped(fn: Callable, jobs: list, *, threads: int) -> Iterator:
    """``map(fn, jobs)`` in order, on ``threads`` threads when more than one."""
    if threads <= 1 or len(jobs) < 2:
        yield from map(fn, jobs)
        return
    with ThreadPoolExecutor(max_workers=threads) as pool:
        yield from pool.map(fn, jobs)


def _labelled(images: ImageSet, *, keep_labels: bool) -> Iterable[tuple[int, str | None]]:
    for i, y in enumerate(images.labels):
        yield i, (images.classes[y] if keep_labels and y >= 0 else None)


def summary(inputs: Inputs) -> dict[str, Any]:
    """Counts per source for the report."""
    return {origin: {"source": s.source, "kind": s.kind, "images": len(s),
                     "readable": sum(1 for e in inputs.entries if e.origin == origin)}
            for origin, s in inputs.sets.items()}
