"""The rules options are checked by: one rule, one message ("--epochs must be ≥ 1 (got 0)").

Each is a function of (the option's flag, its value); the factories (:func:`ge`, :func:`choice`, …)
make the rule a field declares. None always means "not given" and passes.
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from sslprobe.config.base import Rule
from sslprobe.errors import SSLProbeError

N = TypeVar("N", int, float)


def at_least(name: str, value: N | None, low: N = 1) -> None:
    """``--epochs 0`` → "--epochs must be ≥ 1 (got 0)"."""
    if value is not None and not value >= low:  # `not >=` also rejects NaN
        raise SSLProbeError(f"{name} must be ≥ {low} (got {value})")


def positive(name: str, value: float | None) -> None:
    """A strictly positive, finite number (learning rates, C, minutes)."""
    if value is not None and not (value > 0 and math.isfinite(value)):
        raise SSLProbeError(f"{name} must be a positive number (got {value})")


def one_of(name: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise SSLProbeError(f"{name} must be one of {', '.join(allowed)} (got '{value}')")


def probability(name: str, value: float | None) -> None:
    if value is not None and not 0 <= value <= 1:
        raise SSLProbeError(f"{name} is a probability in [0, 1] (got {value})")


def open_unit(name: str, value: float | None) -> None:
    """A share strictly between 0 and 1 (test and validation fractions)."""
    if value is not None and not 0 < value < 1:
        raise SSLProbeError(f"{name} must be in (0, 1) (got {value:g})")


def per_view(name: str, values: Sequence[float]) -> None:
    """One probability per view: "--blur-p (view 2) is a probability in [0, 1] (got 2.0)"."""
    for i, v in enumerate(values):
        probability(f"{name} (view {i + 1})", v)


def ge(low: float) -> Rule:
    return lambda name, value: at_least(name, value, low)


def choice(*allowed: str) -> Rule:
    return lambda name, value: one_of(name, value, allowed)


def each(rule: Rule) -> Rule:
    """The rule applied to every item of a tuple option."""
    def check(name: str, values: Sequence[Any] | None) -> None:
        for v in values or ():
            rule(name, v)
    return check


def label_fractions(name: str, values: Sequence[float]) -> None:
    for f in values:
        if not 0 < f <= 1:
            raise SSLProbeError(f"label fractions must lie in (0, 1], got {f:g} (e.g. --fractions 0.01,0.1,1)")


def min_max(low: float, high: float | None = None, *, low_open: bool = True) -> Rule:
    """A MIN MAX pair with low < MIN ≤ MAX (≤ high)."""
    def check(name: str, pair: Sequence[float]) -> None:
        lo_ok = pair[0] > low if low_open else pair[0] >= low
        if len(pair) != 2 or not (lo_ok and pair[0] <= pair[1] and (high is None or pair[1] <= high)):
            bound = f" ≤ {high:g}" if high is not None else ""
            raise SSLProbeError(f"{name} needs {low:g} < MIN ≤ MAX{bound} (got {' '.join(map(str, pair))})")
    return check


def numbers(name: str, text: str | None, kind: type[N]) -> tuple[N, ...]:
    """'0.01,0.1,1' → (0.01, 0.1, 1.0); empty or 'none' → (); a bad item names the option."""
    if text is None or text.strip().lower() in ("", "none"):
        return ()
    try:
        return tuple(kind(t) for t in text.replace(" ", "").split(",") if t)
    except ValueError:
        what = "integers" if kind is int else "numbers"
        raise SSLProbeError(f"{name} takes comma-separated {what}, got '{text}'") from None


def floats(name: str, text: str | None) -> tuple[float, ...]:
    return numbers(name, text, float)


def ints(name: str, text: str | None) -> tuple[int, ...]:
    return numbers(name, text, int)


def image_source(name: str, data: Any) -> None:
    """A folder (or file list) that exists, or ``hf:NAME[:SPLIT]``; checked before any heavy import."""
    if data is None:
        return
    data = str(data)
    if not data.startswith("hf:") and not Path(data).exists():
        raise SSLProbeError(f"'{data}' does not exist; pass a folder of images (or class subfolders) "
                            "or hf:NAME[:SPLIT]")


def feature_source(name: str, path: Any) -> None:
    """A feature directory or file that exists (a feature set already in memory passes)."""
    if isinstance(path, (str, os.PathLike)) and not Path(path).exists():
        raise SSLProbeError(f"'{path}' does not exist; pass a feature directory from `sslprobe extract` "
                            "or a .safetensors file")


def exists(name: str, path: Any) -> None:
    if path is not None and not Path(path).exists():
        raise SSLProbeError(f"{name} '{path}' does not exist")


def init_source(name: str, init: str) -> None:
    """``--init``: random, pretrained, or a safetensors file that exists (pickles are never loaded for training)."""
    if init in ("random", "pretrained"):
        return
    path = Path(init)
    if not path.is_file():
        raise SSLProbeError(f"--init '{init}' is not random, pretrained or an existing file; pass --init random, "
                            "--init pretrained (timm's hub weights) or --init FILE.safetensors")
    if path.suffix in (".pt", ".pth", ".bin", ".ckpt"):
        raise SSLProbeError(f"--init '{init}' is a pickle file, which can run code when loaded; convert it with "
                            "safetensors.torch.save_file(state_dict, 'weights.safetensors') and pass that")


def pair(name: str, text: str | None) -> tuple[str, str] | None:
    """'byol,pixels' → ('byol', 'pixels'): the declared question's two arms (or feature sets), distinct."""
    if text is None or not text.strip():
        return None
    parts = tuple(t for t in text.replace(" ", "").split(",") if t)
    if len(parts) != 2 or parts[0] == parts[1]:
        raise SSLProbeError(f"{name} takes two different names, A,B (got '{text}')")
    return parts


LAYER_WORDS = ("last", "auto")
PRE_LOGITS = "pre-logits"


def layer_tokens(text: str) -> tuple[str, ...]:
    """``--layers``' items: '2, -1,pre-logits' → ('2', '-1', 'pre-logits'); 'last' and 'auto' stand alone."""
    return tuple(t for t in text.replace(" ", "").split(",") if t)


def layer_list(name: str, text: str | None) -> None:
    """``last``, ``auto``, or stage indices (negative counts from the end) and ``pre-logits``, comma-separated."""
    if text is None or text in LAYER_WORDS:
        return
    tokens = layer_tokens(text)
    for t in tokens:
        if t in LAYER_WORDS:
            raise SSLProbeError(f"{name} '{t}' stands alone, not in a list (got '{text}')")
        if t != PRE_LOGITS and not t.lstrip("-").isdigit():
            raise SSLProbeError(f"{name} takes last, auto, or stage numbers and pre-logits, e.g. 2,3,pre-logits "
                                f"(got '{text}')")
    if not tokens:
        raise SSLProbeError(f"{name} names no layer; give last, auto or e.g. 2,3,pre-logits")
    if len(set(tokens)) != len(tokens):
        raise SSLProbeError(f"{name} names a layer twice (got '{text}')")


def two_names(name: str, value: Sequence[str] | None) -> None:
    if value is not None and (len(value) != 2 or value[0] == value[1]):
        raise SSLProbeError(f"{name} takes two different names, A,B (got {','.join(value)})")
