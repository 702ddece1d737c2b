"""The command lines a study amounts to: the study itself, and the step-by-step commands behind each stage.

The report prints them so a reader can rerun one stage by hand (README, "Your own folder, step by
step"); they name the folders the study made (layout.py), so they reproduce its numbers.
"""
from __future__ import annotations

import shlex
from collections.abc import Sequence
from typing import Any

from sslprobe.config.base import Config
from sslprobe.config.probe import ProbeProtocol
from sslprobe.study.plan import StudyOptions


def line(*words: Any) -> str:
    return " ".join(shlex.quote(str(w)) for w in words)


def study_command(o: StudyOptions) -> str:
    """``sslprobe study …`` with every option that differs from its default."""
    words = o.config.flags()
    if o.budget.steps is not None:  # the demo's fixed-length run has no study flag: say what it was
        words += ["--max-steps", str(o.budget.steps)]
    return line("sslprobe", "study", o.config.data, *words)


def command(name: str, config: Config, *arguments: Any) -> str:
    """``sslprobe NAME ARGUMENTS --flags`` for a stage's config (its defaults left out)."""
    return line("sslprobe", name, *arguments, *config.flags())


def compare_command(sets: Sequence[tuple[str, Any]], *, out: Any, protocol: ProbeProtocol) -> str:
    return line("sslprobe", "compare", *(f"{name}={path}" for name, path in sets), *protocol.flags(), "--out", out)
