"""What a study has done, as plain dataclasses: a finished stage (Done), an arm's outcome (ArmRun), the data
side before any arm (Prepared), and everything the report shows (StudyRecord).

run.py makes them, stages.py makes Done, report.py and document.py read them; this module imports none of
those, so the study's imports go one way: run → report → document → records.
"""
from __future__ import annotations

import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sslprobe.probing.report import pair_sentence
from sslprobe.results import FinetuneResult, LayerChoice, PairedTest, ProbeResult
from sslprobe.study.assignment import Guard, Splits
from sslprobe.study.commands import compare_command, study_command
from sslprobe.study.layout import Placed
from sslprobe.study.plan import ArmStatus, StudyOptions
from sslprobe.study.sources import Inputs
from sslprobe.version import __version__


@dataclass(frozen=True)
class Done:
    """A finished stage: its directory, key, the command it stands for, whether it was reused, what it recorded."""

    dir: Path
    key: str
    command: str
    reused: bool
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ArmRun:
    """One arm's outcome: its status, and when it ran, its result (report.json) and its stages."""

    status: ArmStatus
    result: ProbeResult | FinetuneResult | None = None
    stages: dict[str, Done] = field(default_factory=dict)
    repeats: tuple[ProbeResult | FinetuneResult, ...] = ()  # --repeats: the same arm with the next seeds

    @property
    def input(self) -> dict[str, Any] | None:
        """What the arm's network (or pixels) saw: resolution, crop, interpolation and stem (docs/study.md,
        "One input"), from its extract stage or its fine-tune."""
        done = self.stages.get("extract")
        if done is not None and done.info.get("input"):
            return dict(done.info["input"])
        r = self.result
        if isinstance(r, FinetuneResult) and r.image_size:
            return {"image_size": r.image_size, "small_stem": bool(r.small_stem)}
        return None

    @property
    def layer(self) -> LayerChoice | None:
        """The layer its probe stage chose on validation (None: one layer only, or a fine-tune arm)."""
        probe = self.stages.get("probe")
        doc = None if probe is None else probe.info.get("layer")
        return LayerChoice.from_json(doc) if doc else None


def input_text(seen: dict[str, Any] | None) -> str:
    """'32 px, small 3×3 stem, centre crop 95 %, bilinear' (the parts that are known)."""
    if not seen:
        return ""
    parts = [f"{seen['image_size']} px"]
    if seen.get("small_stem") is not None:
        parts.append("small 3×3 stem" if seen["small_stem"] else "the model's own stem")
    if seen.get("crop_pct") is not None:
        parts.append(f"centre crop {100 * float(seen['crop_pct']):g} %")
    if seen.get("interpolation"):
        parts.append(str(seen["interpolation"]))
    return ", ".join(parts)


@dataclass(frozen=True)
class Prepared:
    """The data side of a study, before any arm: images, split, guard and the folders made from them."""

    inputs: Inputs
    splits: Splits
    guard: Guard
    placed: list[Placed]
    pool: list[tuple[str, Any]]
    class_names: dict[str, str]  # class folder → class name

    @property
    def row_groups(self) -> dict[str, str]:
        """--groups: labelled-folder id → group (the test rows' paths, as the paired tests read them)."""
        return {q.id: q.entry.group for q in self.placed if q.entry.group is not None}


@dataclass(frozen=True)
class StudyRecord:
    """Everything the report shows, gathered once the arms have run."""

    opts: StudyOptions
    prepared: Prepared
    runs: list[ArmRun]
    rows: list[tuple[str, ProbeResult | FinetuneResult]]
    pairs: list[PairedTest]
    primary: tuple[str, str] | None  # the declared question (study/verdict.py)
    verdict: str
    notes: list[str]  # what the test set can detect, near-chance arms, grid edges, short BYOL runs
    budget_pairs: list[PairedTest]  # each BYOL arm against the others at every label budget, one family
    seconds: float
    device_type: str

    @property
    def skipped(self) -> list[dict[str, str]]:
        """Unreadable images from hashing, extraction and pretraining, once each, by their own paths."""
        where = {q.id: f"{q.entry.origin}:{q.entry.id}" for q in self.prepared.placed}
        where.update({name: f"{e.origin}:{e.id}" for name, e in self.prepared.pool})
        seen: dict[str, str] = {f"{s['origin']}:{s['path']}": s["reason"] for s in self.prepared.inputs.skipped}
        for run in self.runs:
            for stage in run.stages.values():
                for s in stage.info.get("skipped") or []:
                    seen.setdefault(where.get(s["path"], s["path"]), s["reason"])
        return [{"path": p, "reason": why} for p, why in sorted(seen.items())]

    def repeated(self) -> list[tuple[str, list[ProbeResult | FinetuneResult]]]:
        """Each arm's results over its repeats (the first is its row), for the arms that have repeats."""
        return [(r.status.arm.name, [r.result, *r.repeats]) for r in self.runs if r.result is not None and r.repeats]

    def layers(self) -> dict[str, str]:
        """The layer each network probe arm was read at (chosen on validation, or its only one)."""
        out = {}
        for run in self.runs:
            a, x = run.status.arm, run.result
            if isinstance(x, ProbeResult) and a.weights != "pixels":
                out[a.name] = run.layer.layer if run.layer else str(x.manifests.get("train", {}).get("layer", ""))
        return out

    def byol_names(self) -> list[str]:
        return [r.status.arm.name for r in self.runs if r.result is not None and r.status.arm.byol_init]

    def budget_sentences(self) -> list[str]:
        """The label-budget tests in words (one Holm family: probing.pairs.budget_tests)."""
        return [pair_sentence(p) for p in self.budget_pairs if p.paired]

    def command(self) -> str:
        return self.opts.config.command or study_command(self.opts)

    def stage_commands(self) -> list[str]:
        cmds: list[str] = []
        for run in self.runs:
            for stage in run.stages.values():
                if stage.command and stage.command not in cmds:
                    cmds.append(stage.command)
        sets = [(name, self.opts.out / "arms" / name / "features") for name, _ in self.rows]
        cmds.append(compare_command(sets, out=self.opts.out / "compare", protocol=self.opts.protocol()))
        return cmds

    def versions(self) -> dict[str, str]:
        import numpy
        import rich
        import timm
        import torch

        v = {"sslprobe": __version__, "python": platform.python_version(), "torch": torch.__version__,
             "timm": timm.__version__, "numpy": numpy.__version__, "rich": getattr(rich, "__version__", "?")}
        try:
            import matplotlib

            v["matplotlib"] = matplotlib.__version__
        except ImportError:
            v["matplotlib"] = "not installed (no figures)"
        v["machine"] = f"{platform.platform()}, {platform.machine()}"
        if self.device_type == "cuda":
            v["gpu"] = torch.cuda.get_device_name(0)
        return v
