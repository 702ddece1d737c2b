"""The study's verdict as a whole: the question declared before any number is seen, and what the numbers can say.

The primary contrast is the best self-supervised arm against the best baseline, each chosen by the
declared metric on validation — never on test — unless ``--primary A,B`` names another (docs/study.md,
"Verdict"). Every other pair is secondary (probing/pairs.py: one Holm family). Beside the verdict the
report says what this test set could detect at 80 % power, which arms are near chance, which choices
sit at the edge of their grid, and, for BYOL arms, how far the run was from its recipe's length.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from sslprobe.config.common import METRIC_WORDS
from sslprobe.errors import SSLProbeError
from sslprobe.probing.report import verdict_sentence
from sslprobe.probing.search import DEFAULT_CS
from sslprobe.probing.uncertainty import METRIC_KEYS
from sslprobe.results import FinetuneResult, Metrics, PairedTest, ProbeResult
from sslprobe.study.plan import Arm

Scored = ProbeResult | FinetuneResult
# Published BYOL schedules: 300 epochs (the ablations) to 1,000 (the headline; Grill et al. 2020, §4 and App. C);
# small-image recipes train as long (solo-learn's CIFAR BYOL: 1,000 epochs).
RECIPE_EPOCHS = (300, 1000)
FEW_EPOCHS = 30  # below this a study says so before it starts and beside every BYOL row


def primary_pair(rows: Sequence[tuple[str, Scored]], arms: Sequence[Arm], *, metric: str,
                 declared: tuple[str, str] | None = None) -> tuple[str, str] | None:
    """(best self-supervised arm, best baseline), each by ``metric`` on validation, or the declared pair."""
    if declared is not None:
        missing = [n for n in declared if n not in dict(rows)]
        if missing:
            raise SSLProbeError(f"--primary names {', '.join(missing)}, which did not run here (ran: "
                                f"{', '.join(n for n, _ in rows)})")
        return declared
    ssl = {a.name for a in arms if a.byol_init}
    key = METRIC_KEYS[metric]

    def best(names: list[str]) -> str | None:
        scored = [(r.val.value(key), n) for n, r in rows if n in names and r.val is not None]
        return max(scored)[1] if scored else None

    a, b = best([n for n, _ in rows if n in ssl]), best([n for n, _ in rows if n not in ssl])
    return (a, b) if a is not None and b is not None else None


def headline(pairs: Sequence[PairedTest], *, repeats: int = 1) -> str:
    """The verdict sentence, and what one seed means when there was one."""
    text = verdict_sentence(pairs)
    if text and repeats == 1:
        text += (" One seed: this compares these checkpoints on this test set, not the methods (--repeats R reruns "
                 "every seeded stage).")
    return text


def chance(metrics: Metrics, metric: str) -> float | None:
    """What guessing scores on these test rows: 1/K for balanced accuracy, the majority share for top-1, and for
    macro-F1 uniform guessing's mean of 2·p_k·(1/K) / (p_k + 1/K) over the classes present."""
    if not metrics.per_class:
        return None
    support = [c.support for c in metrics.per_class if c.support > 0]
    n, k = sum(support), len(support)
    if metric == "balanced":
        return 1 / k
    if metric == "top1":
        return max(support) / n
    return sum(2 * (s / n) / k / (s / n + 1 / k) for s in support) / k


def detectable_sentence(pairs: Sequence[PairedTest]) -> str | None:
    """'With 500 test images, differences under about 6 points of balanced accuracy cannot be told apart.'"""
    tested = [p for p in pairs if p.paired and p.detectable is not None]
    if not tested:
        return None
    lead = next((p for p in tested if p.role == "primary"), None)
    mde = lead.detectable if lead else sorted(p.detectable for p in tested)[len(tested) // 2]
    which = "the primary contrast" if lead else "a typical pair"
    return (f"With {tested[0].n:,} test images, differences under about {100 * mde:.1f} points of "
            f"{METRIC_WORDS.get(tested[0].metric, tested[0].metric)} cannot be told apart (80 % power at the 5 % "
            f"level, from the bootstrap spread of {which}).")


def cautions(rows: Sequence[tuple[str, Scored]], *, metric: str) -> list[str]:
    """Arms whose interval includes chance, and choices made at the edge of their grid."""
    key, out = METRIC_KEYS[metric], []
    for name, r in rows:
        m = r.split(r.headline_split)
        level, ci = (chance(m, metric), m.interval(key)) if m is not None else (None, None)
        if level is not None and ci is not None and ci[0] <= level:
            out.append(f"{name} is near chance: its {METRIC_WORDS[metric]} interval [{100 * ci[0]:.1f}, "
                       f"{100 * ci[1]:.1f}] includes the {100 * level:.1f} % that guessing scores here.")
        out += _edges(name, r)
    return out


def _edges(name: str, r: Scored) -> list[str]:
    out = []
    if isinstance(r, ProbeResult) and r.search not in (None, "fixed") and r.val_curve:
        tried = [p.C for p in r.val_curve]
        if min(tried) == r.C or max(DEFAULT_CS) <= r.C:
            side = "smallest" if min(tried) == r.C else "largest"
            out.append(f"{name}: C = {r.C:.3g} is the {side} C tried; the best may lie beyond the grid.")
    if r.knn is not None and len(r.knn.by_k) > 1:
        ks = sorted(int(k) for k in r.knn.by_k)
        if r.knn.k in (ks[0], ks[-1]):
            out.append(f"{name}: kNN k = {r.knn.k} is the {'smallest' if r.knn.k == ks[0] else 'largest'} k tried.")
    return out


def budget_sentence(name: str, *, steps: int, batch: int, pool: int, images_per_second: float | None) -> str | None:
    """What a short BYOL run is, in words beside its row: epochs trained against the recipe's range, and what
    the recipe's shortest schedule would take at the rate measured here."""
    if pool <= 0 or steps <= 0:
        return None
    epochs = steps * batch / pool
    if epochs >= FEW_EPOCHS:
        return None
    low, high = RECIPE_EPOCHS
    text = (f"{name}: BYOL trained {epochs:.1f} epochs ({steps} steps of {batch} on {pool:,} images); BYOL's recipes "
            f"train {low}–{high:,} epochs, so this row says little about the method.")
    if images_per_second:
        hours = low * pool / images_per_second / 3600
        text += (f" At the {images_per_second:.0f} images/s measured here, {low} epochs would take about "
                 f"{hours:.1f} h; a GPU, a smaller model or a smaller --image-size buys more epochs in the same time.")
    return text


def notes(rows: Sequence[tuple[str, Scored]], pairs: Sequence[PairedTest], *, metric: str,
          byol: Mapping[str, dict]) -> list[str]:
    """Everything the report says beside the verdict, in order: detectability, cautions, short BYOL runs."""
    out = [s for s in (detectable_sentence(pairs),) if s]
    out += cautions(rows, metric=metric)
    out += [s for name, b in byol.items() if (s := budget_sentence(name, **b))]
    return out


__all__ = ["FEW_EPOCHS", "RECIPE_EPOCHS", "budget_sentence", "cautions", "chance", "detectable_sentence", "headline",
           "notes", "primary_pair"]
