"""`sslprobe probe`, `compare` and `predict`: one probe protocol, applied to one or several feature sets."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sslprobe.config import common
from sslprobe.config import rules as r
from sslprobe.config.base import Config, option
from sslprobe.config.extract import FEATURE_DTYPES
from sslprobe.errors import SSLProbeError

SEARCHES = ("grid", "binary")
PRIMARY_HELP = ("The declared question A,B: tested alone at 95 %; every other pair is one Holm-adjusted family "
                "(default: every pair is in the family).")


def _float64_switch(name: str, value: bool) -> str:
    return "float64" if value else "auto"


def _half_switch(name: str, value: bool) -> str:
    return "float16" if value else "float32"


@dataclass(frozen=True, kw_only=True)
class ProbeProtocol(common.Runtime):
    """How a feature set is probed (docs/probe.md): the C search, kNN, the label curve, the solver's precision."""

    name = "probe"
    C: float | None = option(None, "Fix the inverse regularisation C (scikit-learn convention) instead of searching.",
                             flag="--C", rule=r.positive)
    Cs: tuple[float, ...] | None = option(None, "The C grid (default: 45 log-spaced in 1e-6..1e5).", cli=False)
    search: str = option("grid", "How to choose C on validation: grid (45 C's in 1e-6..1e5, warm-started, early stop) "
                         "or binary (CLIP's coarse-then-bisect, ~14 fits).", rule=r.choice(*SEARCHES))
    standardize: bool = option(True, "Standardise features with training statistics.")
    knn_k: tuple[int, ...] = option((10, 20, 200), "kNN k values, comma-separated (cosine, T-weighted votes); 'none' "
                                    "skips kNN.", rule=r.each(r.ge(1)), cli_type=str, parse=r.ints)
    knn_temperature: float = option(0.07, "kNN temperature T (votes weigh exp(similarity / T)).", flag="--knn-t",
                                    rule=r.positive, title="--knn-t (the kNN temperature)")
    fractions: tuple[float, ...] = option((), "Label-efficiency fractions of each class, e.g. 0.01,0.1,1.0.",
                                          rule=r.label_fractions, cli_type=str, parse=r.floats)
    shots: tuple[int, ...] = option((), "Label-efficiency shots per class, e.g. 1,5,10,25.", rule=r.each(r.ge(1)),
                                    cli_type=str, parse=r.ints)
    seeds: int = option(3, "Draws per label-efficiency point (mean ± std).", rule=r.ge(1))
    metric: str = common.metric("C and kNN k")
    dtype: str = option("auto", "Solve in float64 (default: float64 for small problems, else float32; TF32 always "
                        "off).", flag="--float64", cli_type=bool, cli_default=False, parse=_float64_switch,
                        rule=r.choice("auto", "float32", "float64"), title="compute dtype")
    feature_dtype: str = option("float32", "Store standardised features in float16 (half the memory and bytes per "
                                "pass).", flag="--half-features", cli_type=bool, cli_default=False, parse=_half_switch,
                                rule=r.choice(*FEATURE_DTYPES), title="feature storage dtype")
    chunk_rows: int | None = option(None, "Rows per block when streaming the loss/gradient (default: all at once when "
                                    "they fit).", rule=r.ge(1))
    val_fraction: float = option(0.2, "Validation hold-out of TRAIN when no --val is given.", rule=r.open_unit,
                                 cli=False)
    max_iter: int = option(1000, "L-BFGS iterations per fit.", rule=r.ge(1), cli=False)
    patience: int | None = option(5, "Grid C's past the best before the walk stops (None: the whole grid).",
                                  cli=False)
    tol: float = option(1e-4, "The refit's gradient tolerance.", rule=r.positive, cli=False)

    def rules(self) -> None:
        if self.Cs is not None and (not self.Cs or not min(self.Cs) > 0):
            raise SSLProbeError("C values must be positive (e.g. --C 1.0)")


@dataclass(frozen=True, kw_only=True)
class ProbeConfig(Config):
    """Everything `sslprobe probe` / ``sslprobe.probe()`` is asked for: the feature sets and the protocol."""

    name = "probe"
    # A path, or (from Python) a FeatureSet already in memory.
    train: Any = option(help="Training features: a directory from `extract` or a .safetensors file.", argument=True,
                        rule=r.feature_source, cli_type=str)
    val: Any = option(None, "Validation features (default: a stratified 20 % hold-out of TRAIN).",
                      rule=r.feature_source, cli_type=str | None)
    test: Any = option(None, "Test features.", rule=r.feature_source, cli_type=str | None)
    protocol: ProbeProtocol = option(help="The probe protocol.", factory=ProbeProtocol)
    out: Path | None = option(None, "Report directory: report.json, per-class CSV, plots, probe.safetensors.",
                              path=True)


def _sets(name: str, items: list[str] | None) -> tuple[tuple[str, str], ...]:
    """NAME=DIR words as (name, dir) pairs, each name once."""
    pairs: dict[str, str] = {}
    for item in items or ():
        n, sep, path = item.partition("=")
        if not sep or not n or not path:
            raise SSLProbeError(f"'{item}' is not NAME=DIR (e.g. byol=feats/byol)")
        if n in pairs:
            raise SSLProbeError(f"the name '{n}' is used twice; give each feature set its own name")
        pairs[n] = path
    return tuple(pairs.items())


@dataclass(frozen=True, kw_only=True)
class CompareConfig(Config):
    """`sslprobe compare`: named feature sets, each probed with one protocol, then paired tests."""

    name = "compare"
    sets: tuple[tuple[str, str], ...] = option(help="NAME=DIR pairs; DIR is a feature dir, or holds train/ (val/, "
                                               "test/) feature dirs.", argument=True, cli_type=list[str],
                                               parse=_sets, show_default=False)
    protocol: ProbeProtocol = option(help="The probe protocol.", factory=ProbeProtocol)
    primary: tuple[str, str] | None = option(None, PRIMARY_HELP, rule=r.two_names, cli_type=str, parse=r.pair,
                                              show_default=False)
    out: Path | None = option(None, "Report directory: OUT/NAME/ per set and comparison.json.", path=True)

    def rules(self) -> None:
        if not self.sets:
            raise SSLProbeError("nothing to compare; pass NAME=FEATURES pairs")
        names = [n for n, _ in self.sets]
        for n in self.primary or ():
            if n not in names:
                raise SSLProbeError(f"--primary names '{n}', which is not one of the feature sets ({', '.join(names)})")
