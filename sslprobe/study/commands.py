"""The command lines a study amounts to: the study itself, and the step-by-step commands behind each stage.

The report prints them so a reader can rerun one stage by hand (README, "Your own folder, step by
step"); they name the folders the study made (layout.py), so they reproduce its numbers.
"""
from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from typing import Any

from sslprobe.options import PRETRAIN, STUDY
from sslprobe.study.plan import StudyOptions


def flags(pairs: Mapping[str, Any]) -> list[str]:
    """``--name value`` for every value that is not None (tuples comma-joined, True as a bare flag)."""
    out: list[str] = []
    for name, v in pairs.items():
        if v is None or v is False:
            continue
        flag = "--" + name.replace("_", "-")
        if v is True:
            out.append(flag)
        else:
            out += [flag, ",".join(map(str, v)) if isinstance(v, (tuple, list)) else str(v)]
    return out


def line(*words: Any) -> str:
    return " ".join(shlex.quote(str(w)) for w in words)


def study_command(o: StudyOptions) -> str:
    """``sslprobe study …`` with every option that differs from its default."""
    b, r = o.budget, o.byol
    opts: dict[str, Any] = {
        "out": o.out, "labels": o.labels, "unlabeled": o.unlabeled, "test": o.test,
        "arms": tuple(a.name for a in o.arms), "model": o.model, "image_size": o.image_size,
        "epochs": b.epochs, "minutes": b.minutes, "batch_size": r.batch_size, "optimizer": r.optimizer,
        "lr": r.lr, "tau_base": r.tau_base, "warmup_epochs": r.warmup_epochs, "proj_hidden": r.proj_hidden,
        "proj_dim": r.proj_dim, "test_fraction": o.test_fraction, "val_fraction": o.val_fraction,
        "fractions": o.fractions or "none", "shots": o.shots or "none", "seeds": o.seeds, "knn_k": o.knn_k,
        "search": o.search, "select": o.select, "seed": o.seed, "device": o.device,
        "image_column": o.image_column, "label_column": o.label_column,
    }
    defaults = {"model": STUDY.model, "batch_size": PRETRAIN.batch_size, "optimizer": PRETRAIN.optimizer,
                "tau_base": PRETRAIN.tau_base, "warmup_epochs": PRETRAIN.warmup_epochs,
                "proj_hidden": PRETRAIN.proj_hidden, "proj_dim": PRETRAIN.proj_dim,
                "test_fraction": STUDY.test_fraction, "val_fraction": STUDY.val_fraction,
                "fractions": STUDY.fractions, "shots": STUDY.shots, "seeds": STUDY.seeds, "knn_k": STUDY.knn_k,
                "search": STUDY.search, "select": STUDY.select, "seed": 0, "device": "auto"}
    kept = {k: v for k, v in opts.items() if k not in defaults or defaults[k] != v}
    if b.steps is not None:  # the demo's fixed-length run has no study flag: say what it was
        kept["max_steps"] = b.steps
    return line("sslprobe", "study", o.data, *flags(kept))


def pretrain_command(pool: Any, *, out: Any, kwargs: Mapping[str, Any]) -> str:
    keys = ("model", "image_size", "batch_size", "epochs", "max_steps", "optimizer", "lr", "tau_base",
            "warmup_epochs", "proj_hidden", "proj_dim", "weight_decay", "seed", "device", "init")
    return line("sslprobe", "pretrain", pool, *flags({"out": out, **{k: kwargs.get(k) for k in keys}}), "--resume")


def extract_command(data: Any, *, out: Any, kwargs: Mapping[str, Any]) -> str:
    keys = ("weights", "model", "image_size", "seed", "device")
    return line("sslprobe", "extract", data, *flags({"out": out, **{k: kwargs.get(k) for k in keys}}))


def compare_command(sets: Sequence[tuple[str, Any]], *, out: Any, o: StudyOptions) -> str:
    probe = {"fractions": o.fractions or None, "shots": o.shots or None, "seeds": o.seeds, "knn_k": o.knn_k,
             "search": o.search, "select": o.select, "seed": o.seed, "device": o.device, "out": out}
    return line("sslprobe", "compare", *(f"{name}={path}" for name, path in sets), *flags(probe))
