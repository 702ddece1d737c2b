"""``study()``: does BYOL on these images help? Every arm through one path, one split, one report.

The study is a sequence of named steps (:class:`_Study`): open and hash the images (sources.py) →
the split and its leakage guard (assignment.py) → the folders the commands read (layout.py) → which
arms can run here (plan.py) → each arm's stages (stages.py: pretrain → extract → probe, or
finetune) → paired tests and the verdict → the report (report.py). docs/study.md describes the
rules and the outputs; a rerun of the same call reuses every finished stage (resume.py).
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sslprobe.config.study import StudyConfig
from sslprobe.errors import SSLProbeError
from sslprobe.results import FinetuneResult, PairedTest, ProbeResult, ResultFormatError, read_scored
from sslprobe.study import plan
from sslprobe.study.assignment import SplitRule, assign, guard
from sslprobe.study.layout import Layout, class_dirs, materialise, place_labelled, pool_names
from sslprobe.study.plan import Arm, ArmStatus, StudyOptions
from sslprobe.study.progress import StudyProgress
from sslprobe.study.records import ArmRun, Done, Prepared, StudyRecord
from sslprobe.study.resume import fingerprint
from sslprobe.study.sources import HashCache, Inputs, hash_entries, open_sources

if TYPE_CHECKING:  # pragma: no cover
    from rich.console import Console

    from sslprobe.study.stages import Context


class StudyInterrupted(KeyboardInterrupt):
    """Ctrl-C during a study; ``str()`` says where it stopped and that the same command continues."""


@dataclass(frozen=True)
class StudyResult:
    """What ``study()`` returns: the result rows by arm, the paired tests, the verdict and the files written.

    study.json is its ``to_json()``; ``from_json`` reads one back: its rows are the results as study.json
    keeps them (without the C path and the per-row lists), and ``arms`` is empty (the arms' stages are
    not in the file).
    """

    out: Path
    rows: list[tuple[str, ProbeResult | FinetuneResult]]
    pairs: list[PairedTest]
    verdict: str
    arms: list[ArmRun]
    files: dict[str, str]
    record: dict[str, Any]  # study.json

    def to_json(self) -> dict[str, Any]:
        """study.json's content, in JSON's types (paths as strings, tuples as lists)."""
        return json.loads(json.dumps(self.record, default=os.fspath))

    @classmethod
    def from_json(cls, doc: Mapping[str, Any] | str | os.PathLike) -> StudyResult:
        """A study's result from its study.json (a path or the parsed object)."""
        if not isinstance(doc, Mapping):
            path = Path(doc)
            try:
                doc = json.loads(path.read_text())
            except (OSError, ValueError) as e:
                raise ResultFormatError(f"cannot read a study from '{path}': {e}") from e
        if not isinstance(doc, Mapping) or doc.get("format") != "sslprobe-study":
            raise ResultFormatError("not a study.json (its format is not 'sslprobe-study')")
        files = dict(doc.get("files") or {})
        return cls(out=Path(files["study.json"]).parent if "study.json" in files else Path("."),
                   rows=[(name, read_scored(x)) for name, x in doc.get("results", {}).items()],
                   pairs=[PairedTest.from_json(p) for p in doc.get("paired_tests", [])],
                   verdict=str(doc.get("verdict", "")), arms=[], files=files, record=dict(doc))


def study(config: StudyConfig | str | os.PathLike, /, *, show_progress: bool = False, console: Console | None = None,
          **options: Any) -> StudyResult:
    """Compare the study's arms (default: pixels, random, byol on CPU; every probe arm on a GPU) on labelled data.

    ``config``: a :class:`~sslprobe.config.study.StudyConfig` (every option, its default and its rule;
    docs/study.md), or the data with the options as keywords (``study("photos/", out="study",
    minutes=30, byol={"batch_size": 64})``). ``data``: class subfolders, ``hf:NAME[:SPLIT]``, or a folder
    with ``labels`` (a path,label CSV). ``unlabeled`` adds images to the pretraining pool; ``test`` is a
    fixed test set (else a seeded stratified ``test_fraction`` is drawn once into splits.json). BYOL arms
    train for ``epochs``, ``minutes`` (the schedule fitted to the measured step rate) or ``steps``;
    ``byol`` sets their recipe. The probe: linear and kNN with bootstrap intervals, the label curve at
    ``fractions`` and ``shots`` (``seeds`` draws each), paired tests between arms. Writes report.html,
    report.md, results.csv and study.json into ``out``; a rerun reuses every finished stage.
    """
    c = StudyConfig.of(config, **options)
    from sslprobe.runtime.device import pick_device

    dev = pick_device(c.device)
    opts = StudyOptions.resolve(c, cuda=dev.type == "cuda")
    return _Study(opts, device_type=dev.type, show_progress=show_progress, console=console).run()




class _Study:
    """The steps of one study call: prepare → plan → arms → compare → report."""

    def __init__(self, opts: StudyOptions, *, device_type: str, show_progress: bool, console: Console | None):
        self.opts, self.device_type, self.console = opts, device_type, console
        self.layout = Layout(opts.out)
        self.t0 = time.perf_counter()
        self.show_progress = show_progress

    def run(self) -> StudyResult:
        self.layout.out.mkdir(parents=True, exist_ok=True)
        c = self.opts.config
        statuses = plan.arm_statuses(self.opts.arms, model=c.model, image_size=c.image_size)
        runnable = [s.arm for s in statuses if s.runnable]
        if not runnable:
            raise SSLProbeError("none of the arms can run here: " + "; ".join(f"{s.arm.name}: {s.note}"
                                                                             for s in statuses))
        r = self.opts.repeats
        with StudyProgress(show=self.show_progress, stages=1 + r * sum(_stages(a) for a in runnable)) as progress:
            prepared = self._prepare(progress)
            progress.done()
            ctx = self._context(prepared, progress)
            repeats = {rep: self._repeat(ctx, prepared, rep) for rep in range(1, r)}
            runs = {s.arm.name: ArmRun(s) for s in statuses}
            for i, a in enumerate(runnable, start=1):
                t0 = time.perf_counter()
                runs[a.name] = self._arm(ctx, a, status=runs[a.name].status, index=i, arms=len(runnable))
                cost = time.perf_counter() - t0
                for rep in range(1, r):  # the same arm again with the next seed: every seeded stage reruns
                    progress.note(f"{a.name}: repeat {rep + 1} of {r} (seed {self.opts.config.seed + rep}); the "
                                  f"first took {cost / 60:.1f} min here (less when stages are reused)")
                    again = self._arm(repeats[rep], dataclasses.replace(a, name=repeat_name(a.name, rep)),
                                      status=runs[a.name].status, index=i, arms=len(runnable))
                    runs[a.name] = dataclasses.replace(runs[a.name], repeats=(*runs[a.name].repeats, again.result))
        return self._finish(prepared, list(runs.values()))

    def _prepare(self, progress: StudyProgress) -> Prepared:
        """Step: hash every image, then draw (or reuse) the split and make the folders the commands read."""
        o = self.opts
        sets = open_sources(o.config.data, labels=o.config.labels, test=o.config.test, unlabeled=o.config.unlabeled,
                            image_column=o.config.image_column, label_column=o.config.label_column)
        progress.stage(arm="", index=0, arms=0, stage="hashing images", total=sum(len(s) for s in sets.values()))
        inputs = hash_entries(sets, cache=HashCache(self.layout.file("hashes.json")), progress=progress.advance)
        return self._split(inputs, self.layout)

    def _split(self, inputs: Inputs, layout: Layout) -> Prepared:
        """Step: the split of ``layout``'s repeat (seed + repeat), its leakage guard and its folders."""
        o = self.opts
        rule = SplitRule(seed=o.config.seed + layout.repeat, test_fraction=o.config.test_fraction,
                         val_fraction=o.config.val_fraction, fixed_test=o.config.test is not None)
        splits = assign(inputs, rule=rule, path=layout.splits)
        g = guard(inputs, splits)
        if len(g.pool) < 2 and any(a.byol_init for a in o.arms):
            raise SSLProbeError(f"the pretraining pool has {len(g.pool)} image(s) once val and test are held out; "
                                "add images (or --unlabeled POOL)")
        dirs = class_dirs(inputs.classes)
        placed = place_labelled(inputs, g.labelled, dirs)
        materialise(layout.labelled, [(p.id, p.entry) for p in placed], inputs)
        pool = pool_names(inputs, g.pool)
        if any(a.byol_init for a in self.opts.arms):
            materialise(layout.pool, pool, inputs)
        # finetune reads the splits as class folders; random-rescaled calibrates on the train folder
        if any(a.finetune or a.weights == "random-rescaled" for a in self.opts.arms):
            for split in ("train", "val", "test"):
                materialise(layout.split_folder(split), [(q.id, q.entry) for q in placed if q.split == split],
                            inputs)
        return Prepared(inputs, splits, g, placed, pool, {v: k for k, v in dirs.items()})

    def _context(self, p: Prepared, progress: StudyProgress, layout: Layout | None = None) -> Context:
        from sslprobe.study.stages import Context

        return Context(opts=self.opts, layout=layout or self.layout, progress=progress,
                       device_type=self.device_type,
                       pool_key=fingerprint(sorted(e.key for e in p.guard.pool)), pool_size=len(p.pool),
                       labelled_key=fingerprint([(q.id, q.entry.key, q.entry.label) for q in p.placed]),
                       split_key=fingerprint({q.id: q.split for q in p.placed}),
                       membership={q.id: q.split for q in p.placed}, class_names=p.class_names)

    def _repeat(self, ctx: Context, prepared: Prepared, rep: int) -> Context:
        """The context of repeat ``rep``: the seed moved on by ``rep``; with --resplit also its own split."""
        c = self.opts.config
        opts = dataclasses.replace(self.opts, config=c.replace(seed=c.seed + rep))
        if not c.resplit:
            return dataclasses.replace(ctx, opts=opts)
        layout = self.layout.for_repeat(rep)
        return dataclasses.replace(self._context(self._split(prepared.inputs, layout), ctx.progress, layout),
                                   opts=opts)

    def _arm(self, ctx: Context, a: Arm, *, status: ArmStatus, index: int, arms: int) -> ArmRun:
        """Step: one arm's stages; Ctrl-C inside becomes a StudyInterrupted that says how to go on."""
        from sslprobe.study import stages

        done: dict[str, Done] = {}
        try:
            weights = None
            if a.byol_init is not None:
                done["pretrain"] = stages.byol_backbone(ctx, a, index=index, arms=arms)
                ctx.progress.done()
                weights = done["pretrain"].dir / "backbone.safetensors"
            if a.finetune:
                done["finetune"], result = stages.finetuned(ctx, a, weights, index=index, arms=arms)
            else:
                done["extract"] = stages.extracted(ctx, a, weights, index=index, arms=arms)
                ctx.progress.done()
                done["probe"], result = stages.probed(ctx, a, done["extract"], index=index, arms=arms)
            ctx.progress.done()
        except KeyboardInterrupt as e:
            order = ("pretrain", "finetune") if a.finetune else ("pretrain", "extract", "probe")
            stage = next((s for s in order if s not in done), order[-1])
            why = f" ({e})" if str(e) else ""
            raise StudyInterrupted(f"interrupted in arm '{a.name}' at {stage}{why}; run the same command again to "
                                   "continue: finished stages are reused, pretraining resumes from its checkpoint "
                                   "and extraction from the embedding cache") from None
        return ArmRun(status, result, done)

    def _finish(self, p: Prepared, runs: list[ArmRun]) -> StudyResult:
        """Steps: the declared question, paired tests, the verdict and its notes, the report files, the terminal."""
        from sslprobe.probing.pairs import budget_tests, paired_tests
        from sslprobe.study import report, verdict

        c = self.opts.config
        rows = [(r.status.arm.name, r.result) for r in runs if r.result is not None]
        primary = verdict.primary_pair(rows, [r.status.arm for r in runs], metric=c.metric, declared=c.primary)
        repeats = {r.status.arm.name: [r.result, *r.repeats] for r in runs if r.result is not None and r.repeats}
        pairs = paired_tests(rows, metric=c.metric, primary=primary, seed=c.seed, repeats=repeats)
        rows = [(name, dataclasses.replace(r, paired_tests=pairs)) for name, r in rows]
        notes = verdict.notes(rows, pairs, metric=c.metric, byol=_byol_runs(runs, pool=len(p.pool),
                                                                             batch=c.byol.batch_size))
        byol = [r.status.arm.name for r in runs if r.result is not None and r.status.arm.byol_init]
        budget_pairs = budget_tests(rows, metric=c.metric, against=byol, seed=c.seed) if byol else []
        record = StudyRecord(opts=self.opts, prepared=p, runs=runs, rows=rows, pairs=pairs, primary=primary,
                             verdict=verdict.headline(pairs, repeats=self.opts.repeats), notes=notes,
                             budget_pairs=budget_pairs,
                             seconds=time.perf_counter() - self.t0, device_type=self.device_type)
        files, doc = report.write_all(record, self.layout)
        if self.console is not None:
            report.render_terminal(record, files, console=self.console)
        return StudyResult(self.layout.out, rows, pairs, record.verdict, runs, files, doc)


def _byol_runs(runs: list[ArmRun], *, pool: int, batch: int) -> dict[str, dict]:
    """Each BYOL arm's run as the budget sentence reads it: steps, batch, pool, the measured images/s."""
    out = {}
    for r in runs:
        done = r.stages.get("pretrain")
        if done is None or r.result is None:
            continue
        fitted = done.info.get("fitted") or {}
        rate = fitted.get("steps_per_second")
        out[r.status.arm.name] = {"steps": int(done.info.get("steps") or 0), "batch": min(batch, pool), "pool": pool,
                                  "images_per_second": rate * min(batch, pool) if rate else None}
    return out


def repeat_name(name: str, rep: int) -> str:
    """Where repeat ``rep`` (from 0) of an arm keeps its stages: the arm's own folder for the first."""
    return name if rep == 0 else f"{name}-r{rep + 1}"


def _stages(a: Arm) -> int:
    return (1 if a.byol_init else 0) + (1 if a.finetune else 2)
