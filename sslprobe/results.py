"""Typed results: what ``pretrain``, ``extract``, ``probe``, ``compare``, ``finetune`` and ``study`` return.

Each result is a frozen dataclass whose ``to_json()`` is exactly the file the command writes
(report.json, summary.json, manifest.json) and whose ``from_json()`` reads that file back — also one
written before these types existed. Readers (the renderers, plots, the study's numbers) use the
fields, not the keys: the files' layout is written down here, once. (``StudyResult`` lives in
study/run.py: it holds the arms' stages; its JSON is study.json.)

The mapping is by field: a field is the JSON key of its name (``json_key`` renames, e.g. a per-class
row's ``class``). A field made with :func:`optional` is left out of the JSON when it is None (a key
that only some runs have, such as ``test``); a field with a plain default is always written and may
be missing in an older file. ``from_json`` refuses a document with a key the type does not know or
without a required key, naming the key and where it is. This module imports neither torch nor
numpy: the study, the plots and tests read results without them.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from sslprobe.errors import SSLProbeError

R = TypeVar("R", bound="JsonRecord")

TOP5_MIN_CLASSES = 10  # top-5 is shown (tables, results.csv) from this many classes on


class ResultFormatError(SSLProbeError):
    """A results file (report.json, summary.json, …) that does not have the layout its type describes."""


def optional(*, key: str | None = None) -> Any:
    """A field that defaults to None and is left out of the JSON while it is None."""
    return field(default=None, metadata={"omit": True, **({"key": key} if key else {})})


def json_key(key: str) -> Any:
    """A required field whose JSON key is not its Python name (``class``)."""
    return field(metadata={"key": key})


@dataclass(frozen=True)
class _Slot:
    name: str
    key: str
    hint: Any
    omit: bool
    required: bool


def _dump(v: Any) -> Any:
    if isinstance(v, JsonRecord):
        return v.to_json()
    if isinstance(v, (list, tuple)):
        return [_dump(x) for x in v]
    if isinstance(v, Mapping):
        return {k: _dump(x) for k, x in v.items()}
    return v


def _load(hint: Any, v: Any, where: str) -> Any:
    """``v`` (parsed JSON) as ``hint``: records and containers of records are built, plain values kept."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if v is None:
            return None
        inner = [a for a in args if a is not type(None)]
        return _load(inner[0], v, where) if len(inner) == 1 else v
    if _is_record(hint):
        return hint.from_json(v, where=where)
    if origin is list and args:
        _expect(v, list, where)
        return [_load(args[0], x, f"{where}[{i}]") for i, x in enumerate(v)]
    if origin is tuple and args:
        _expect(v, list, where)
        return tuple(v)
    if origin in (dict, Mapping) and len(args) == 2:
        _expect(v, Mapping, where)
        return {k: _load(args[1], x, f"{where}.{k}") for k, x in v.items()}
    return v


def _is_record(hint: Any) -> bool:
    return typing.get_origin(hint) is None and isinstance(hint, type) and issubclass(hint, JsonRecord)


def _read_json(path: str | os.PathLike, what: str) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ResultFormatError(f"cannot read {what} from '{os.fspath(path)}': {e}") from e


def _untyped(hint: Any) -> bool:
    """Whether ``hint`` holds plain JSON only: no record and no typed tuple anywhere inside."""
    if _is_record(hint) or typing.get_origin(hint) is tuple:
        return False
    return all(_untyped(a) for a in typing.get_args(hint))


def _expect(v: Any, kind: type, where: str) -> None:
    if not isinstance(v, kind):
        raise ResultFormatError(f"{where}: expected a JSON {'object' if kind is Mapping else 'array'}, "
                                f"got {type(v).__name__}")


def _plain(v: Any) -> Any:
    """Tuples inside untyped containers as lists, as JSON reads them back (records and typed tuples stay)."""
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


class JsonRecord:
    """Base of the result types: ``to_json`` / ``from_json`` by field (see the module's docstring).

    A field holding an untyped dict (a recipe, a manifest) keeps it as its JSON reads back: tuples in it
    become lists, so a returned result equals the one ``from_json`` reads from its file.
    """

    def __post_init__(self) -> None:
        for s in self._slots():
            v = getattr(self, s.name)
            if isinstance(v, (dict, list)) and _untyped(s.hint):
                object.__setattr__(self, s.name, _plain(v))

    @classmethod
    @functools.cache
    def _slots(cls) -> tuple[_Slot, ...]:
        hints = typing.get_type_hints(cls)
        return tuple(_Slot(f.name, f.metadata.get("key", f.name), hints[f.name], bool(f.metadata.get("omit")),
                           f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
                     for f in dataclasses.fields(cls))  # type: ignore[arg-type]

    def to_json(self) -> dict[str, Any]:
        """The JSON object this result is written as (key order = field order, as the files have it)."""
        out: dict[str, Any] = {}
        for s in self._slots():
            v = getattr(self, s.name)
            if not (s.omit and v is None):
                out[s.key] = _dump(v)
        return out

    @classmethod
    def from_json(cls: type[R], doc: Mapping[str, Any] | str | os.PathLike, *, where: str | None = None) -> R:
        """The result from a parsed JSON object or a file's path; a missing or unknown key is an error."""
        if isinstance(doc, (str, os.PathLike)):
            return cls.from_json(_read_json(doc, cls.__name__), where=where or os.fspath(doc))
        where = where or cls.__name__
        _expect(doc, Mapping, where)
        slots = cls._slots()
        known = {s.key for s in slots}
        extra = [k for k in doc if k not in known]
        if extra:
            raise ResultFormatError(f"{where}: unexpected key {extra[0]!r} for {cls.__name__} "
                                    f"(known: {', '.join(sorted(known))})")
        kwargs = {}
        for s in slots:
            if s.key in doc:
                kwargs[s.name] = _load(s.hint, doc[s.key], f"{where}.{s.key}")
            elif s.required:
                raise ResultFormatError(f"{where}: missing key {s.key!r} for {cls.__name__}")
        return cls(**kwargs)


# --- metrics -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Intervals(JsonRecord):
    """95 % percentile-bootstrap intervals of top-1, balanced accuracy and macro-F1 over the scored rows (a file
    written before macro-F1 had one reads back without it)."""

    top1: tuple[float, float]
    balanced_accuracy: tuple[float, float]
    macro_f1: tuple[float, float] | None = optional()
    level: float
    resamples: int
    method: str


@dataclass(frozen=True, kw_only=True)
class ClassRow(JsonRecord):
    """One class of a per-class table (``cls``: its index in ``classes``; JSON key ``class``)."""

    cls: int = json_key("class")
    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True, kw_only=True)
class Metrics(JsonRecord):
    """Accuracies of one scored split; the bulky parts are absent from summaries and kNN rows."""

    top1: float
    top5: float
    balanced_accuracy: float
    macro_f1: float
    n: int
    per_class: list[ClassRow] | None = optional()
    confusion: list[list[int]] | None = optional()
    ci: Intervals | None = optional()
    predictions: list[int] | None = optional()

    def value(self, metric: str) -> float | None:
        """``top1``, ``top5``, ``balanced_accuracy`` or ``macro_f1``."""
        return getattr(self, metric)

    def interval(self, metric: str) -> tuple[float, float] | None:
        """The bootstrap interval of ``metric`` (top-1, balanced accuracy and macro-F1 have one), else None."""
        return getattr(self.ci, metric, None) if self.ci is not None else None

    def summary(self) -> Metrics:
        """Without per-class table, confusion matrix and predictions."""
        return dataclasses.replace(self, per_class=None, confusion=None, predictions=None)


@dataclass(frozen=True, kw_only=True)
class CPoint(JsonRecord):
    """One fitted C of the probe's path, scored on validation."""

    C: float
    top1: float
    balanced_accuracy: float
    macro_f1: float | None = optional()  # absent from files written before --metric
    loss: float | None
    iters: int
    converged: bool
    floor_limited: bool


@dataclass(frozen=True, kw_only=True)
class KnnSplits(JsonRecord):
    """kNN at one k: validation and (with a test set) test metrics."""

    val: Metrics | None = optional()
    test: Metrics | None = optional()


@dataclass(frozen=True, kw_only=True)
class KnnResult(KnnSplits):
    """kNN on the raw features: the k chosen on validation with its metrics (``val``, ``test``), and every k's."""

    k: int
    temperature: float
    selected_by: str
    by_k: dict[str, KnnSplits] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class CurveStats(JsonRecord):
    """A label-budget point's score over its seeded draws, in the curve's metric (``metric`` of its curve: the
    declared --metric; top-1 in files written before it): the mean, the sample std (n − 1) and each draw's."""

    mean: float
    std: float
    runs: list[float]
    predictions: list[list[int]] | None = optional()  # each draw's on the scored rows (not in summaries)


@dataclass(frozen=True, kw_only=True)
class LabelPoint(JsonRecord):
    """What every label-budget point says first: the budget (a fraction or shots per class), the training rows
    it gave, and how many seeded draws scored it."""

    kind: str  # "fraction" or "shots"
    value: float
    n_train: int
    seeds: int


@dataclass(frozen=True, kw_only=True)
class ProbeCurvePoint(LabelPoint):
    """A probe's label-budget point: linear (and kNN) scores over draws, each draw's C and how it was chosen."""

    linear: CurveStats | None = None
    C: list[float] = field(default_factory=list)
    C_rule: list[str] = field(default_factory=list)
    knn: CurveStats | None = None

    @property
    def headline(self) -> CurveStats | None:
        return self.linear

    def stats(self, method: str) -> CurveStats | None:
        """``linear`` or ``knn`` (a probe point has no ``finetune``)."""
        return self.linear if method == "linear" else self.knn if method == "knn" else None


class _Curve:
    """What a probe's and a fine-tune's label curve share for their readers."""

    metric: str | None

    @property
    def scored_by(self) -> str:
        """The metric of the curve's points: its ``metric``, or top1 (what a curve without one was scored by)."""
        return self.metric or "top1"


@dataclass(frozen=True, kw_only=True)
class ProbeCurve(_Curve, JsonRecord):
    """A probe's label-efficiency curve; ``metric``: what its points score (absent from files written before it)."""

    scored_on: str
    metric: str | None = optional()
    knn_k: int | None = optional()
    points: list[ProbeCurvePoint]
    C_selection: str | None = optional()


@dataclass(frozen=True, kw_only=True)
class FinetuneCurvePoint(LabelPoint):
    """A fine-tune's label-budget point: fine-tuned scores over draws, each draw's learning rate, epoch and rule."""

    finetune: CurveStats
    lr: list[float]
    epoch: list[int | None]
    rule: list[str]

    @property
    def headline(self) -> CurveStats | None:
        return self.finetune

    def stats(self, method: str) -> CurveStats | None:
        return self.finetune if method == "finetune" else None


@dataclass(frozen=True, kw_only=True)
class FinetuneCurve(_Curve, JsonRecord):
    """A fine-tune's label-efficiency curve; ``metric``: what its points score (absent from files written before it)."""

    scored_on: str
    metric: str | None = optional()
    points: list[FinetuneCurvePoint]
    selection: str


CurvePoint = ProbeCurvePoint | FinetuneCurvePoint
LabelCurve = ProbeCurve | FinetuneCurve


@dataclass(frozen=True, kw_only=True)
class SelectionInfo(JsonRecord):
    """The declared metric (--metric) that chose C / the epoch, how ties break, and as information the fit split's
    largest / smallest class count (``reason``: why, in files written before --metric)."""

    metric: str
    reason: str | None = optional()
    imbalance: float
    tie_break: str


@dataclass(frozen=True, kw_only=True)
class ReportFiles(JsonRecord):
    """Where a report went: its folder, the files written, why plots were skipped (or None)."""

    dir: str
    files: list[str]
    note: str | None


@dataclass(frozen=True, kw_only=True)
class Difference(JsonRecord):
    """A − B in one metric, with its paired-bootstrap interval at ``level``."""

    value: float
    ci: tuple[float, float]
    level: float


@dataclass(frozen=True, kw_only=True)
class PairedTest(JsonRecord):
    """A − B on the same test rows in the declared metric, or why the two cannot be paired.

    ``p`` is the paired bootstrap's two-sided p and ``ci`` the interval from the same resamples
    (uncertainty.order_interval), so they never disagree; ``role`` says whether the pair is the
    study's declared question (``primary``, tested at the level alone) or one of the ``family``
    others (``secondary``: Holm-adjusted ``p_adjusted``, ``ci`` widened to the level the adjustment
    used). ``significant`` is ``p_adjusted`` < 1 − 0.95: exactly what the verdict sentence says.
    ``others``: the other metrics' differences at 95 %, unadjusted (descriptive).
    """

    a: str
    b: str
    paired: bool
    reason: str | None = optional()
    budget: str | None = optional()  # a label budget's test ("10 %", "5-shot"); absent: all the labels
    n: int | None = optional()
    metric: str | None = optional()
    role: str | None = optional()
    difference: float | None = optional()
    ci: tuple[float, float] | None = optional()
    level: float | None = optional()
    p: float | None = optional()
    p_adjusted: float | None = optional()
    family: int | None = optional()
    significant: bool | None = optional()
    se: float | None = optional()
    detectable: float | None = optional()  # the difference this test finds with 80 % power
    repeats: int | None = optional()
    resamples: int | None = optional()
    a_only_correct: int | None = optional()
    b_only_correct: int | None = optional()
    others: dict[str, Difference] | None = optional()
    groups: int | None = optional()  # --groups: the test groups resampled and swapped whole (absent: rows)

    @property
    def winner(self) -> str | None:
        """The better arm when the difference is significant, else None."""
        if not self.significant:
            return None
        return self.a if self.difference > 0 else self.b


# --- probe and fine-tune ------------------------------------------------------------------------------------------


class _Scored:
    """What a probe's and a fine-tune's result share for their readers (tables, plots, the study's numbers)."""

    val: Metrics
    test: Metrics | None
    knn: KnnResult | None
    label_efficiency: LabelCurve | None
    classes: list[str]
    n_train: int
    n_val: int
    test_labels: list[int] | None
    test_paths: list[str] | None
    selection: SelectionInfo | None
    files: ReportFiles | None
    warnings: list[str]
    paired_tests: list[PairedTest] | None
    protocol: str

    @property
    def metric(self) -> str:
        """The declared metric (--metric: balanced, top1 or macro-f1) the run chose by and its tables lead with
        (top1 for a file that does not say)."""
        return self.selection.metric if self.selection is not None else "top1"

    def split(self, name: str) -> Metrics | None:
        """The metrics of ``val`` or ``test`` (None when the run had no such split)."""
        return {"val": self.val, "test": self.test}[name]

    @property
    def shows_top5(self) -> bool:
        """Whether tables show top-5: with fewer than TOP5_MIN_CLASSES classes it is 100 % or near it by
        construction (3 classes: every image's class is among the top 5), so it says nothing."""
        return len(self.classes) >= TOP5_MIN_CLASSES

    @property
    def headline_split(self) -> str:
        """The split a report leads with: test when there was one, else val."""
        return "test" if self.test is not None else "val"


@dataclass(frozen=True, kw_only=True)
class ProbeResult(_Scored, JsonRecord):
    """What ``probe`` returns; report.json is its ``to_json()``."""

    C: float
    val: Metrics
    label_efficiency: ProbeCurve | None = optional()
    test: Metrics | None = optional()
    refit_iters: int | None = optional()
    knn: KnnResult | None = None
    val_curve: list[CPoint] = field(default_factory=list)
    search: str | None = optional()
    selection: SelectionInfo | None = optional()
    classes: list[str] = field(default_factory=list)
    n_train: int = 0
    n_fit: int = 0
    n_val: int = 0
    dim: int = 0
    standardize: bool = True
    val_source: str | None = optional()
    device: str | None = optional()
    dtype: str | None = optional()
    feature_dtype: str | None = optional()
    chunk_rows: int | None = None
    seconds: float | None = optional()
    timing: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    inputs: dict[str, str | None] = field(default_factory=dict)
    test_labels: list[int] | None = None
    test_paths: list[str] | None = None
    manifests: dict[str, dict[str, Any]] = field(default_factory=dict)
    files: ReportFiles | None = optional()
    paired_tests: list[PairedTest] | None = optional()  # set by ``compare`` (not in report.json)

    protocol: ClassVar[str] = "linear"


@dataclass(frozen=True, kw_only=True)
class LayerCandidate(JsonRecord):
    """One layer an arm could be read at, scored on validation by one C search (probing/layers.py)."""

    layer: str
    dim: int
    C: float  # the C the search chose on validation
    val: float  # the declared metric on validation at that C
    val_loss: float | None  # validation cross-entropy at that C (the tie-break)
    fits: int  # C's the search fitted


@dataclass(frozen=True, kw_only=True)
class LayerChoice(JsonRecord):
    """The layer an arm was probed on, chosen by the declared metric on validation only, and every candidate."""

    layer: str
    metric: str
    tie_break: str
    candidates: list[LayerCandidate]

    def candidate(self, layer: str) -> LayerCandidate:
        return next(c for c in self.candidates if c.layer == layer)


@dataclass(frozen=True, kw_only=True)
class FinetuneChoice(JsonRecord):
    """The run and epoch validation chose (``rule``: how)."""

    run: str
    lr: float
    epoch: int | None
    epochs: int
    selected_by: str
    rule: str


@dataclass(frozen=True, kw_only=True)
class EpochPoint(JsonRecord):
    """One epoch of the chosen run's learning curve."""

    epoch: int
    step: int
    train_loss: float
    val_loss: float | None
    val_top1: float | None
    val_balanced: float | None
    lr: float
    seconds: float
    val_macro_f1: float | None = optional()  # absent from files written before --metric

    def val_score(self, metric: str) -> float | None:
        """The validation value of ``metric`` (balanced, top1 or macro-f1) at this epoch."""
        return {"balanced": self.val_balanced, "top1": self.val_top1, "macro-f1": self.val_macro_f1}[metric]


@dataclass(frozen=True, kw_only=True)
class FinetuneResult(_Scored, JsonRecord):
    """What a completed ``finetune`` returns; report.json is its ``to_json()`` (a probe result's keys, and more)."""

    val: Metrics
    test: Metrics | None = optional()
    knn: KnnResult | None = None
    label_efficiency: FinetuneCurve | None = optional()
    protocol: str = "finetune"
    status: str = "complete"
    model: str = ""
    image_size: int | None = None
    small_stem: bool | None = None
    weights: dict[str, Any] = field(default_factory=dict)
    chosen: FinetuneChoice | None = None
    lr_grid: list[dict[str, Any]] = field(default_factory=list)
    learning_curve: list[EpochPoint] = field(default_factory=list)
    recipe: dict[str, Any] = field(default_factory=dict)
    schedule: dict[str, Any] = field(default_factory=dict)
    selection: SelectionInfo | None = optional()
    classes: list[str] = field(default_factory=list)
    n_train: int = 0
    n_fit: int = 0
    n_val: int = 0
    val_source: str | None = optional()
    resumed: list[str] = field(default_factory=list)
    device: str | None = optional()
    precision: str | None = optional()
    distributed: str | None = optional()
    seconds: float | None = optional()
    timing: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    skipped: dict[str, list[Any]] = field(default_factory=dict)
    inputs: dict[str, str | None] = field(default_factory=dict)
    test_labels: list[int] | None = None
    test_paths: list[str] | None = None
    files: ReportFiles | None = optional()
    paired_tests: list[PairedTest] | None = optional()  # set by the study (not in report.json)

    C: ClassVar[None] = None  # a fine-tuned row has no C


@dataclass(frozen=True, kw_only=True)
class FinetuneStopped(JsonRecord):
    """What ``finetune`` returns when it did not finish here: stopped by ``stop_after`` (with the runs it
    left), or a torchrun rank other than 0 (``rank``; rank 0 returns the result)."""

    status: str
    out: str
    runs: list[str] | None = optional()
    rank: int | None = optional()


# --- extract -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ExtractCounts(JsonRecord):
    """Images found at the source, embedded, and skipped as unreadable."""

    found: int
    embedded: int
    skipped: int


@dataclass(frozen=True, kw_only=True)
class CacheInfo(JsonRecord):
    """How an extraction used the embedding cache."""

    enabled: bool
    dir: str | None
    store: str
    fingerprint: dict[str, Any]
    hits: int
    misses: int
    invalid_shards: int
    shards_written: int


@dataclass(frozen=True, kw_only=True)
class ExtractResult(JsonRecord):
    """What ``extract`` returns; manifest.json is its ``to_json()``.

    ``weights_info`` holds the weights' entries (``weights`` and, by kind, e.g. ``weights_sha256``,
    ``init``): the file has them as top-level keys after ``model``, so ``from_json`` takes every key it
    does not otherwise know as one of them. ``layers`` only when ``extract --layers`` wrote several.
    """

    format: str = "sslprobe-features"
    run_id: str
    source: str
    kind: str
    model: str
    weights_info: dict[str, Any]
    preprocessing: dict[str, Any]
    layer: str
    pool: str
    dtype: str
    dim: int
    classes: list[str]
    paths: list[str]
    counts: ExtractCounts
    skipped: list[dict[str, str]]
    cache: CacheInfo
    device: str
    world_size: int
    timings: dict[str, float]
    seconds: float
    versions: dict[str, str]
    layers: dict[str, str] | None = optional()  # --layers: each layer's feature dir relative to this one ("." itself)

    def to_json(self) -> dict[str, Any]:
        d = super().to_json()
        weights = d.pop("weights_info")
        at = list(d).index("model") + 1
        items = list(d.items())
        return dict([*items[:at], *weights.items(), *items[at:]])

    @classmethod
    def from_json(cls, doc: Mapping[str, Any] | str | os.PathLike, *, where: str | None = None) -> ExtractResult:
        if isinstance(doc, (str, os.PathLike)):
            return cls.from_json(_read_json(doc, cls.__name__), where=where or os.fspath(doc))
        where = where or cls.__name__
        _expect(doc, Mapping, where)
        known = {s.key for s in cls._slots()} - {"weights_info"}
        rest = {k: v for k, v in doc.items() if k not in known}
        return super().from_json({**{k: v for k, v in doc.items() if k in known}, "weights_info": rest}, where=where)


# --- pretrain ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class PretrainResult(JsonRecord):
    """What ``pretrain`` returns; summary.json is its ``to_json()``."""

    out: str
    status: str  # "complete", or why the run stopped early (it continues with --resume)
    steps: int
    total_steps: int
    resumed_from: int | None = None
    final_loss: float | None = None
    images: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)
    model: str | None = None
    image_size: int | None = None
    small_stem: bool | None = None
    device: str | None = None
    world_size: int = 1
    optimizer: str | None = None
    compile: str | None = None
    knn_top1: float | None = None
    budget: dict[str, Any] | None = None  # --minutes: the fitted budget (pretraining.budget.FittedBudget)
    checkpoint: str | None = None
    warnings: list[str] = field(default_factory=list)
    loss_curve: str | None = None  # the PNG's path, or why it was skipped

    @property
    def complete(self) -> bool:
        return self.status == "complete"


def read_scored(doc: Mapping[str, Any] | str | os.PathLike) -> ProbeResult | FinetuneResult:
    """A probe's or a fine-tune's report.json (a fine-tune's says ``"protocol": "finetune"``)."""
    if isinstance(doc, (str, os.PathLike)):
        parsed = _read_json(doc, "a report")
        kind = FinetuneResult if isinstance(parsed, Mapping) and parsed.get("protocol") == "finetune" else ProbeResult
        return kind.from_json(parsed, where=os.fspath(doc))
    return (FinetuneResult if doc.get("protocol") == "finetune" else ProbeResult).from_json(doc)


__all__ = ["CPoint", "CacheInfo", "ClassRow", "CurvePoint", "CurveStats", "Difference", "EpochPoint",
           "ExtractCounts", "ExtractResult", "FinetuneChoice", "FinetuneCurve", "FinetuneCurvePoint",
           "FinetuneResult", "FinetuneStopped", "Intervals", "JsonRecord", "KnnResult", "KnnSplits", "LabelCurve",
           "LabelPoint", "LayerCandidate", "LayerChoice", "Metrics", "PairedTest", "PretrainResult", "ProbeCurve",
           "ProbeCurvePoint", "ProbeResult", "ReportFiles", "ResultFormatError", "SelectionInfo", "json_key",
           "optional", "read_scored"]
