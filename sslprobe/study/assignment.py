"""The study's one split and its leakage guard, both by content hash (docs/study.md, "Rules").

``splits.json`` maps the sha256 of every labelled image to train, val or test. It is drawn once —
stratified per class, seeded, each class's images ranked by a hash of seed and content, so the draw
depends on no file name or listing order — and reused on every rerun with the same rule (new images
join train; the test set never changes behind the user's back). A ``--test`` folder is the test
split as given; only val is drawn then.

The guard follows from keying by content: an image whose bytes are in val or test is never in the
pretraining pool nor in train, whatever its name or folder; exact duplicates are listed.
"""
from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sslprobe.errors import SSLProbeError
from sslprobe.fileio import write_json
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


@dataclass(frozen=True)
class Splits:
    rule: SplitRule
    of_key: dict[str, str]  # content hash → train / val / test
    notes: tuple[str, ...]  # what happened to an earlier splits.json

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
    if previous is not None and previous[0] == rule:
        of_key = _reused(previous[1], by_class, test_keys, notes, fixed=rule.fixed_test)
    else:
        if previous is not None:
            notes.append(f"{path.name} was drawn under another rule ({_rule_text(previous[0])}); drew a new split")
        of_key = _draw(by_class, rule=rule, test_keys=test_keys)
    splits = Splits(rule, dict(sorted(of_key.items())), tuple(notes))
    _check(splits, by_class)
    write_json(path, {"format": FORMAT, "version": 1, "rule": asdict(rule), "counts": splits.counts(),
                      "splits": splits.of_key})
    return splits


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
    for s in SPLITS:
        if not counts[s]:
            raise SSLProbeError(f"the {s} split is empty ({sum(len(v) for v in by_class.values())} labelled images); "
                                "a study needs a few images per class (or pass --test DIR)")
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

    def summary(self) -> dict[str, Any]:
        return {"pool": len(self.pool), "kept_out": len(self.kept_out), "duplicate_groups": len(self.duplicates),
                "label_conflicts": len(self.conflicts)}


def guard(inputs: Inputs, splits: Splits) -> Guard:
    """Labelled rows by split and the pretraining pool, neither holding val or test content in train."""
    held = {k for k, s in splits.of_key.items() if s in ("val", "test")}
    labelled: list[tuple[Entry, str]] = []
    kept_out: list[dict[str, str]] = []
    for e in inputs.entries:
        if e.origin == "test":
            labelled.append((e, "test"))
        elif e.origin == "data" and e.label is not None:
            if splits.rule.fixed_test and splits.of_key[e.key] == "test":
                kept_out.append(_out(e, "train, val and the pretraining pool", "the same bytes are a --test image"))
            else:
                labelled.append((e, splits.of_key[e.key]))
    pool: dict[str, Entry] = {}
    for e in inputs.entries:
        if e.origin == "test" or (e.origin == "data" and e.label is not None and splits.of_key[e.key] != "train"):
            continue
        if e.key in held:
            kept_out.append(_out(e, "the pretraining pool", f"the same bytes are a {splits.of_key[e.key]} image"))
        else:
            pool.setdefault(e.key, e)
    return Guard(tuple(labelled), tuple(pool.values()), tuple(kept_out), _groups(inputs.entries, splits),
                 _conflicts(inputs.entries))


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
