"""``--groups``: images that belong together (one patient, wafer, scene, field plot) stay on one side of the split.

Two ways to say which group an image is in (docs/study.md, "Groups"):

- ``folder:N`` — the first N folder levels under each class folder (``DATA/CLASS/GROUP/…/image``; in a
  plain folder — ``--unlabeled``, a ``--labels`` folder — the first N levels from the top). The same
  name under two classes is one group: a patient with images of two classes is one patient.
- ``FILE.csv`` with columns ``path,group``: paths relative to DATA, ``test:PATH`` for a ``--test`` image
  and ``unlabeled:PATH`` for an ``--unlabeled`` one. Every labelled image needs a group; an unlabeled
  image without one is its own.

The draw's unit is a group, joined with every group it shares an image's bytes with (the split is by
content, so two groups holding the same bytes cannot be told apart). Units are taken in a seeded order
(a hash of seed and unit, independent of listing order) and each goes where it brings the per-class
counts closest to their targets — test ``test_fraction`` of each class, val ``val_fraction`` of the rest
— in squared error: the greedy balancing of stratified group k-fold (scikit-learn's
``StratifiedGroupKFold``), as stratified as whole groups allow. A split no unit went to (groups larger
than its share: 6 groups of 6 images for a 3-image val share) takes train's smallest unit. A ``--test``
group's images in DATA go with it to test, so they are kept out of train, val and the pool.
"""
from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter, defaultdict
from collections.abc import Mapping
from pathlib import Path

from sslprobe.errors import SSLProbeError
from sslprobe.images.folders import ImageSet, path_rows
from sslprobe.study.sources import Entry, Inputs

SPLITS = ("train", "val", "test")
PREFIXES = ("test", "unlabeled")  # a groups CSV names --test and --unlabeled images as PREFIX:PATH


def folder_levels(spec: str) -> int | None:
    """N of ``folder:N`` (``folder`` alone is ``folder:1``), None for a CSV path."""
    if spec == "folder":
        return 1
    if spec.startswith("folder:") and spec[7:].isdigit() and int(spec[7:]) >= 1:
        return int(spec[7:])
    return None


def with_groups(inputs: Inputs, spec: str | None) -> Inputs:
    """``inputs`` with each entry's group set by ``spec`` (unchanged without --groups)."""
    if spec is None:
        return inputs
    levels = folder_levels(spec)
    table = None if levels is not None else _read_csv(spec)
    out: list[Entry] = []
    missing: list[str] = []
    for e in inputs.entries:
        images = inputs.sets[e.origin]
        group = _from_folder(images, e.id, levels) if levels is not None else table.get(_csv_name(e))
        if group is None and e.label is not None:
            missing.append(_csv_name(e) if levels is None else f"{e.origin}:{e.id}")
        out.append(dataclasses.replace(e, group=group))
    if missing:
        raise SSLProbeError(_missing(spec, levels, missing))
    return dataclasses.replace(inputs, entries=tuple(out))


def _from_folder(images: ImageSet, id_: str, levels: int) -> str | None:
    if images.kind == "hf":
        raise SSLProbeError(f"--groups folder:{levels} reads folder levels; a Hugging Face dataset has none (pass "
                            "--groups FILE.csv with columns path,group, the path being the row number)")
    folders = id_.split("/")[1 if images.kind == "classes" else 0:-1]
    return "/".join(folders[:levels]) if len(folders) >= levels else None


def _csv_name(e: Entry) -> str:
    return e.id if e.origin == "data" else f"{e.origin}:{e.id}"


def _missing(spec: str, levels: int | None, missing: list[str]) -> str:
    first = ", ".join(missing[:3])
    if levels is not None:
        return (f"--groups folder:{levels}: {len(missing)} labelled image(s) sit less than {levels} folder level(s) "
                f"below their class (first: {first}); put each in CLASS/GROUP/… or pass --groups FILE.csv")
    return (f"--groups '{spec}' names no group for {len(missing)} labelled image(s) (first: {first}); add a "
            "path,group row for each (test:PATH for a --test image)")


def _read_csv(path: str) -> dict[str, str]:
    """path → group of a path,group CSV (header required, no other columns, one group per path)."""
    out: dict[str, str] = {}
    for _, name, group in path_rows(path, column="group", hint=", or --groups folder:N"):
        name = name.replace("\\", "/")
        if out.setdefault(name, group) != group:
            raise SSLProbeError(f"'{path}' puts '{name}' in groups '{out[name]}' and '{group}'; keep one row per image")
    return out


def spec_of(value: str | Path | None) -> str | None:
    """The rule's form of --groups: ``folder:N``, or the CSV's absolute path."""
    if value is None:
        return None
    text = str(value)
    return f"folder:{folder_levels(text)}" if folder_levels(text) is not None else str(Path(text).resolve())


# --- the group-aware draw ---


def units(entries: list[Entry]) -> dict[str, list[str]]:
    """The draw's units: unit name → its content hashes. A unit is a group joined with every group it shares
    an image's bytes with (union-find over groups and hashes); an image without a group is a unit of its own."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for e in entries:
        a, b = find(f"k:{e.key}"), find(f"g:{e.group}" if e.group is not None else f"k:{e.key}")
        if a != b:
            parent[max(a, b)] = min(a, b)
    members: dict[str, set[str]] = defaultdict(set)
    names: dict[str, set[str]] = defaultdict(set)
    for e in entries:
        root = find(f"k:{e.key}")
        members[root].add(e.key)
        names[root].add(e.group if e.group is not None else e.key[:16])
    return {"+".join(sorted(names[r])): sorted(keys) for r, keys in members.items()}


def draw(by_unit: Mapping[str, list[str]], label_of: Mapping[str, str], *, seed: int, test_fraction: float,
         val_fraction: float, fixed: Mapping[str, str], fixed_test: bool) -> dict[str, str]:
    """Content hash → split, whole units at a time: the units of ``fixed`` (unit → split: those holding a --test
    image) where they are, the others in a seeded order, each to the split whose per-class counts it brings
    closest to their targets. ``fixed_test``: test is --test as given; only val is drawn."""
    total = Counter(label_of[k] for unit, keys in by_unit.items() if unit not in fixed for k in keys)
    test_share = 0.0 if fixed_test else test_fraction
    target = {"test": {c: test_share * n for c, n in total.items()}}
    target["val"] = {c: val_fraction * (n - target["test"][c]) for c, n in total.items()}
    target["train"] = {c: n - target["test"][c] - target["val"][c] for c, n in total.items()}
    have: dict[str, Counter] = {s: Counter() for s in SPLITS}
    placed: dict[str, str] = {}
    allowed = ("train", "val") if fixed_test else SPLITS
    order = sorted((u for u in by_unit if u not in fixed),
                   key=lambda u: hashlib.sha256(f"{seed}:{u}".encode()).digest())  # seeded, not listing order
    for unit in order:
        counts = Counter(label_of[k] for k in by_unit[unit])

        def cost(s: str, counts: Counter = counts) -> float:  # the squared error's increase: Σ u(2(a − t) + u)
            return sum(u * (2 * (have[s][c] - target[s][c]) + u) for c, u in counts.items())

        placed[unit] = min(allowed, key=cost)
        have[placed[unit]].update(counts)
    for s in allowed[1:]:  # a split no unit went to (groups larger than its share) takes train's smallest unit
        donors = [u for u in order if placed[u] == "train"]
        if s not in placed.values() and len(donors) > 1:
            placed[min(donors, key=lambda u: len(by_unit[u]))] = s
    of_key = {k: fixed[u] for u, keys in by_unit.items() if u in fixed for k in keys}
    of_key.update({k: placed[u] for u in order for k in by_unit[u]})
    return of_key


def reused(old: Mapping[str, str], by_unit: Mapping[str, list[str]], fixed: Mapping[str, str], *,
           fixed_test: bool) -> dict[str, str] | None:
    """The earlier assignment kept unit by unit: a new image joins its unit's split (train for a new unit).
    None when a unit now spans two splits (new images joined two groups): the split must be drawn again.
    With --test the test split is the folder as it is now (``fixed``)."""
    of_key: dict[str, str] = {}
    for unit, keys in by_unit.items():
        before = {old[k] for k in keys if k in old and not (fixed_test and old[k] == "test")}
        if unit in fixed:
            before = {fixed[unit]}
        if len(before) > 1:
            return None
        split = next(iter(before), "train")
        of_key.update({k: split for k in keys})
    return of_key
