"""The study's one split and its leakage guard, both by content hash (docs/study.md, "Rules").

``splits.json`` maps the sha256 of every labelled image to train, val or test. It is drawn once —
stratified per class, seeded, each class's images ranked by a hash of seed and content, so the draw
depends on no file name or listing order — and reused on every rerun with the same rule (new images
join train; the test set never changes behind the user's back). A ``--test`` folder is the test
split as given; only val is drawn then.

The guard follows from keying by content: an image whose bytes are in val or test is never in the
pretraining pool nor in train, whatever its name or folder; exact duplicates are listed. Beyond exact
bytes, a resized or re-encoded copy of a val or test image (``images.phash.near_copies``: hashes
within 10 bits, 8×8 thumbnails within 4 grey levels) is kept out of the pool and, when labelled, out
of train too: a copy in train would let the probe and kNN score its test image by memory. Each pair is
listed. With ``--groups`` (study/groups.py) whole groups are drawn, and an ``--unlabeled`` image of a
val or test group stays out of the pool.
"""
from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sslprobe.errors import SSLProbeError
from sslprobe.fileio import write_json
from sslprobe.images.phash import NEAR_BITS, NEAR_LEVELS, near_copies
from sslprobe.study import groups
from sslprobe.study.sources import Entry, Inputs

SPLITS = ("train", "val", "test")
FORMAT = "sslprobe-splits"


@dataclass(frozen=True)
class SplitRule:
    """What decides the draw; a splits.json drawn under another rule is redrawn."""

    seed: int
    test_fraction: float
    val_fraction: float
    fixed_test: bool  # --test given: test is that folder, only val is drawn
    groups: str | None = None  # --groups: folder:N or the CSV's path (study/groups.py); None: each image alone


@dataclass(frozen=True)
class Splits:
    rule: SplitRule
    of_key: dict[str, str]  # content hash → train / val / test
    notes: tuple[str, ...]  # what happened to an earlier splits.json
    group_of: dict[str, str] = field(default_factory=dict)  # --groups: content hash → its group

    def counts(self) -> dict[str, int]:
        return {s: sum(1 for v in self.of_key.values() if v == s) for s in SPLITS}


def _rank(seed: int, key: str) -> bytes:
    return hashlib.sha256(f"{seed}:{key}".encode()).digest()


def _cut(n: int, fraction: float) -> int:
    """How many of a class's n images a fraction takes: round(f·n), at least 1, and never all of them."""
    return 0 if n < 2 else min(max(1, int(n * fraction + 0.5)), n - 1)


def _draw(by_class: dict[str, list[str]], *, rule: SplitRule, test_keys: set[str]) -> dict[str, str]:
    """Per class: the first ``test_fraction`` of the seeded ranking → test (unless --test), the next → val."""
    of_key = {k: "test" for k in test_keys}
    for keys in by_class.values():
        ranked = sorted(keys, key=lambda k: _rank(rule.seed, k))
        n_test = 0 if rule.fixed_test else _cut(len(ranked), rule.test_fraction)
        rest = ranked[n_test:]
        n_val = _cut(len(rest), rule.val_fraction)
        of_key.update({k: "test" for k in ranked[:n_test]})
        of_key.update({k: "val" for k in rest[:n_val]})
        of_key.update({k: "train" for k in rest[n_val:]})
    return of_key


def _classes_of(inputs: Inputs, *, exclude: set[str]) -> dict[str, list[str]]:
    """DATA's labelled content hashes by class (a hash once, under its first label)."""
    seen: set[str] = set()
    by_class: dict[str, list[str]] = defaultdict(list)
    for e in inputs.of("data"):
        if e.label is not None and e.key not in seen and e.key not in exclude:
            seen.add(e.key)
            by_class[e.label].append(e.key)
    return by_class


def _read(path: Path) -> tuple[SplitRule, dict[str, str]] | None:
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
        rule = SplitRule(**doc["rule"])
        of_key = {str(k): str(v) for k, v in doc["splits"].items()}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SSLProbeError(f"'{path}' is not a splits file sslprobe wrote ({type(e).__name__}); move it away to "
                            "draw a new split") from None
    if doc.get("format") != FORMAT or not set(of_key.values()) <= set(SPLITS):
        raise SSLProbeError(f"'{path}' is not a splits file sslprobe wrote; move it away to draw a new split")
    return rule, of_key


def assign(inputs: Inputs, *, rule: SplitRule, path: Path) -> Splits:
    """The split of every labelled image: splits.json's when it was drawn under ``rule``, else a new draw."""
    test_keys = {e.key for e in inputs.of("test")}
    by_class = _classes_of(inputs, exclude=test_keys)
    previous = _read(path)
    notes: list[str] = []
    same = previous is not None and previous[0] == rule
    if previous is not None and not same:
        notes.append(f"{path.name} was drawn under another rule ({_rule_text(previous[0])}); drew a new split")
    if rule.groups is not None:
        of_key = _grouped(inputs, rule, previous[1] if same else None, notes)
    elif same:
        of_key = _reused(previous[1], by_class, test_keys, notes, fixed=rule.fixed_test)
    else:
        of_key = _draw(by_class, rule=rule, test_keys=test_keys)
    group_of = {}
    for e in inputs.entries:
        if e.group is not None and e.key in of_key:
            group_of.setdefault(e.key, e.group)
    splits = Splits(rule, dict(sorted(of_key.items())), tuple(notes), dict(sorted(group_of.items())))
    _check(splits, by_class)
    write_json(path, {"format": FORMAT, "version": 1, "rule": asdict(rule), "counts": splits.counts(),
                      "splits": splits.of_key, **({"groups": splits.group_of} if rule.groups is not None else {})})
    return splits


def _grouped(inputs: Inputs, rule: SplitRule, old: dict[str, str] | None, notes: list[str]) -> dict[str, str]:
    """--groups: whole groups to a split (study/groups.py), the earlier splits.json's while no group spans two."""
    labelled = [e for e in inputs.entries if e.origin == "test" or (e.origin == "data" and e.label is not None)]
    by_unit = groups.units(labelled)
    test_keys = {e.key for e in inputs.of("test")}
    fixed = {u: "test" for u, keys in by_unit.items() if test_keys.intersection(keys)}
    if old is not None:
        of_key = groups.reused(old, by_unit, fixed, fixed_test=rule.fixed_test)
        if of_key is not None:
            new = sum(1 for k in of_key if k not in old)
            notes.append("reused splits.json" + (f"; {new} new image(s) joined their group's split" if new else ""))
            return of_key
        notes.append("a group now holds images of two splits (shared bytes joined two groups); drew a new split")
    label_of: dict[str, str] = {}
    for e in labelled:
        label_of.setdefault(e.key, e.label)
    return groups.draw(by_unit, label_of, seed=rule.seed, test_fraction=rule.test_fraction,
                       val_fraction=rule.val_fraction, fixed=fixed, fixed_test=rule.fixed_test)


def _reused(old: dict[str, str], by_class: dict[str, list[str]], test_keys: set[str], notes: list[str], *,
            fixed: bool) -> dict[str, str]:
    """The earlier assignment for the images still present; new images join train, --test images are test.

    With --test the test split is the folder as it is now: an image that left it is a new DATA image.
    """
    current = {k for keys in by_class.values() for k in keys}
    of_key = {k: s for k, s in old.items() if k in current and not (fixed and s == "test")}
    of_key.update({k: "test" for k in test_keys})
    new = sorted(current - set(of_key))
    of_key.update({k: "train" for k in new})
    gone = len(set(old) - current - test_keys)
    notes.append("reused splits.json" + (f"; {len(new)} new image(s) joined train" if new else "")
                 + (f"; {gone} image(s) no longer found" if gone else ""))
    return of_key


def _rule_text(rule: SplitRule) -> str:
    return ", ".join(f"{k}={v}" for k, v in asdict(rule).items())


def _check(splits: Splits, by_class: dict[str, list[str]]) -> None:
    counts = splits.counts()
    grouped = (f"; with --groups every split takes whole groups ({len(set(splits.group_of.values()))} here): give "
               "more groups") if splits.rule.groups is not None else ""
    for s in SPLITS:
        if not counts[s]:
            raise SSLProbeError(f"the {s} split is empty ({sum(len(v) for v in by_class.values())} labelled images); "
                                f"a study needs a few images per class (or pass --test DIR){grouped}")
    in_train = {c for c, keys in by_class.items() if any(splits.of_key.get(k) == "train" for k in keys)}
    if len(in_train) < 2:
        raise SSLProbeError("fewer than 2 classes have train images; add images (a class needs 3 for train, val "
                            "and test)")


@dataclass(frozen=True)
class Guard:
    """What the study uses after the leakage guard, and what the guard kept out or found."""

    labelled: tuple[tuple[Entry, str], ...]  # every labelled row the probe sees, with its split
    pool: tuple[Entry, ...]  # the pretraining pool: one entry per content hash, none of them val or test
    kept_out: tuple[dict[str, str], ...]  # {"origin", "path", "from", "why"}
    duplicates: tuple[dict[str, Any], ...]  # groups of identical bytes: {"key", "split", "paths"}
    conflicts: tuple[dict[str, Any], ...]  # identical bytes labelled differently: {"key", "labels", "paths"}
    near: tuple[dict[str, Any], ...] = ()  # near copies: {"held", "split", "copy", "kept_out_of", "bits", "levels"}

    def summary(self) -> dict[str, Any]:
        return {"pool": len(self.pool), "kept_out": len(self.kept_out), "duplicate_groups": len(self.duplicates),
                "label_conflicts": len(self.conflicts), "near_copies": len(self.near),
                "near_rule": {"bits": NEAR_BITS, "levels": NEAR_LEVELS}}


def guard(inputs: Inputs, splits: Splits) -> Guard:
    """Labelled rows by split and the pretraining pool, neither holding val or test content (nor a near copy of
    it) in train, nor an --unlabeled image of a val or test group in the pool."""
    held = {k for k, s in splits.of_key.items() if s in ("val", "test")}
    near = _near(inputs, splits, held)
    test_keys = {e.key for e in inputs.of("test")}
    held_groups = {e.group: splits.of_key[e.key] for e in inputs.entries if e.group is not None and e.key in held}
    labelled: list[tuple[Entry, str]] = []
    kept_out: list[dict[str, str]] = []
    for e in inputs.entries:
        if e.origin == "test":
            labelled.append((e, "test"))
        elif e.origin == "data" and e.label is not None:
            if splits.rule.fixed_test and splits.of_key[e.key] == "test":
                why = ("the same bytes are a --test image" if e.key in test_keys else
                       f"its group '{e.group}' is a --test group")
                kept_out.append(_out(e, "train, val and the pretraining pool", why))
            elif e.key in near and splits.of_key[e.key] == "train":
                kept_out.append(_out(e, "train and the pretraining pool", _near_why(near[e.key])))
            else:
                labelled.append((e, splits.of_key[e.key]))
    pool: dict[str, Entry] = {}
    for e in inputs.entries:
        if e.origin == "test" or (e.origin == "data" and e.label is not None and
                                  (splits.of_key[e.key] != "train" or e.key in near)):
            continue
        if e.key in held:
            kept_out.append(_out(e, "the pretraining pool", f"the same bytes are a {splits.of_key[e.key]} image"))
        elif e.key in near:
            kept_out.append(_out(e, "the pretraining pool", _near_why(near[e.key])))
        elif e.group in held_groups:
            kept_out.append(_out(e, "the pretraining pool", f"its group '{e.group}' is a {held_groups[e.group]} "
                                                            "group"))
        else:
            pool.setdefault(e.key, e)
    return Guard(tuple(labelled), tuple(pool.values()), tuple(kept_out), _groups(inputs.entries, splits),
                 _conflicts(inputs.entries), tuple(near.values()))


def _pool_candidate(e: Entry, splits: Splits) -> bool:
    """Whether an image would enter the pretraining pool: an --unlabeled one, or DATA's unlabelled or train."""
    return e.origin == "unlabeled" or (e.origin == "data" and (e.label is None or splits.of_key[e.key] == "train"))


def _near(inputs: Inputs, splits: Splits, held: set[str]) -> dict[str, dict[str, Any]]:
    """Content hash of each pool candidate that is a near copy of a val or test image → the pair (the closest
    held-out image when several are near); exact copies are the content rule's, not listed here."""
    shown: dict[str, Entry] = {}
    for e in sorted(inputs.entries, key=lambda e: e.origin != "test"):  # a held-out image shown as --test's
        if e.fingerprint is not None:
            shown.setdefault(e.key, e)
    held_keys = sorted(k for k in held if k in shown)
    copies = sorted({e.key for e in inputs.entries if e.key in shown and e.key not in held and
                     _pool_candidate(e, splits)})
    found = near_copies([shown[k].fingerprint for k in held_keys], [shown[k].fingerprint for k in copies])
    out: dict[str, dict[str, Any]] = {}
    for i, j, bits, levels in zip(found.query, found.pool, found.bits, found.levels):
        h, c = held_keys[i], copies[j]
        if c in out and (out[c]["bits"], out[c]["levels"]) <= (int(bits), round(float(levels), 2)):
            continue
        labelled = shown[c].origin == "data" and shown[c].label is not None
        out[c] = {"held": f"{shown[h].origin}:{shown[h].id}", "split": splits.of_key[h],
                  "copy": f"{shown[c].origin}:{shown[c].id}",
                  "kept_out_of": "train and the pretraining pool" if labelled else "the pretraining pool",
                  "bits": int(bits), "levels": round(float(levels), 2)}
    return dict(sorted(out.items(), key=lambda kv: (kv[1]["held"], kv[1]["copy"])))


def _near_why(pair: dict[str, Any]) -> str:
    return (f"a near copy of {pair['split']} image {pair['held']} (hashes {pair['bits']} bits, thumbnails "
            f"{pair['levels']:g} grey levels apart)")


def _out(e: Entry, where: str, why: str) -> dict[str, str]:
    return {"origin": e.origin, "path": e.id, "from": where, "why": why}


def _by_key(entries: Iterable[Entry]) -> dict[str, list[Entry]]:
    groups: dict[str, list[Entry]] = defaultdict(list)
    for e in entries:
        groups[e.key].append(e)
    return groups


def _groups(entries: Iterable[Entry], splits: Splits) -> tuple[dict[str, Any], ...]:
    return tuple({"key": k, "split": splits.of_key.get(k, "pool"), "paths": [f"{e.origin}:{e.id}" for e in g]}
                 for k, g in _by_key(entries).items() if len(g) > 1)


def _conflicts(entries: Iterable[Entry]) -> tuple[dict[str, Any], ...]:
    out = []
    for k, g in _by_key(e for e in entries if e.label is not None).items():
        labels = sorted({e.label for e in g if e.label is not None})
        if len(labels) > 1:
            out.append({"key": k, "labels": labels, "paths": [f"{e.origin}:{e.id}" for e in g]})
    return tuple(out)
