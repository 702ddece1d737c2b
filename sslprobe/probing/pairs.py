"""Paired tests between the probe results of a comparison: is A's lead over B more than noise?

Two feature sets are paired when they were scored on the same test images: the same row paths
when both manifests list them, else the same labels row by row. Each pair gets the top-1 and
balanced-accuracy differences with paired-bootstrap intervals and McNemar's exact p
(``uncertainty.paired_difference``); a pair that cannot be paired says why instead.
"""
from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import torch

from sslprobe.probing.uncertainty import paired_difference
from sslprobe.results import FinetuneResult, PairedTest, ProbeResult

Scored = ProbeResult | FinetuneResult


def _test_rows(r: Scored) -> tuple[list[str], list[int], list[int]] | None:
    """(class names of the test labels in row order, the labels, the linear predictions) or None."""
    if r.test is None or r.test.predictions is None or r.test_labels is None:
        return None
    names = r.classes
    return [names[i] for i in r.test_labels], r.test_labels, r.test.predictions


def _why_unpaired(a: Scored, b: Scored) -> str | None:
    ra, rb = _test_rows(a), _test_rows(b)
    if ra is None or rb is None:
        return "no test set on both sides"
    if len(ra[0]) != len(rb[0]):
        return f"different test sets ({len(ra[0])} vs {len(rb[0])} rows)"
    if a.test_paths and b.test_paths and a.test_paths != b.test_paths:
        return "different test images (row paths differ)"
    if ra[0] != rb[0]:
        return "different test labels row by row"
    return None


def _renumbered(pred: list[int], classes: list[str], index: dict[str, int]) -> torch.Tensor:
    """Predictions as indices of ``index`` (a class the test labels lack is -1: always wrong)."""
    return torch.tensor([index.get(classes[p], -1) for p in pred])


def paired_tests(rows: Sequence[tuple[str, Scored]], *, seed: int = 0) -> list[PairedTest]:
    """One entry per pair of results (in the given order): differences A − B or why they are unpaired."""
    out = []
    for (na, a), (nb, b) in combinations(rows, 2):
        why = _why_unpaired(a, b)
        if why is not None:
            out.append(PairedTest(a=na, b=nb, paired=False, reason=why))
            continue
        names, _, pa = _test_rows(a)
        pb = _test_rows(b)[2]
        index = {c: i for i, c in enumerate(sorted(set(names)))}  # one class numbering for both sides
        labels = torch.tensor([index[c] for c in names])
        diff = paired_difference(_renumbered(pa, a.classes, index), _renumbered(pb, b.classes, index), labels,
                                 num_classes=len(index), seed=seed)
        out.append(PairedTest.from_json({"a": na, "b": nb, "paired": True, "n": len(names), **diff}))
    return out


__all__ = ["paired_tests"]
