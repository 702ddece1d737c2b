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
from sslprobe.study.groups import spec_of, with_groups
from sslprobe.study.layout import Layout, class_dirs, materialise, place_labelled, pool_names
from sslprobe.study.plan import Arm, ArmStatus, StudyOptions
from sslprobe.study.progress import StudyProgress
from sslprobe.study.records import ArmRun, Done, Prepared, StudyRecord
from sslprobe.study.resume import fingerprint
from sslprobe.study.sources import HashCache, Inputs, hash_entries, open_sources

if TYPE_CHECKING:  # pragma: no cover
    from rich.console import Console

    from sslprobe.images.folders import ImageSet
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
        c = self.opts.config
        sets = self._open()  # before --out exists: a one-class folder or a test set with other classes leaves nothing
        self.layout.out.mkdir(parents=True, exist_ok=True)
        statuses = plan.arm_statuses(self.opts.arms, model=c.model, image_size=c.image_size)
        runnable = [s.arm for s in statuses if s.runnable]
        if not runnable:
            raise SSLProbeError("none of the arms can run here: " + "; ".join(f"{s.arm.name}: {s.note}"
                                                                             for s in statuses))
        r = self.opts.repeats
        with StudyProgress(show=self.show_progress, stages=1 + r * sum(_stages(a) for a in runnable)) as progress:
            for note in self.opts.notes:
                progress.note(note)
            prepared = self._prepare(progress, sets)
            progress.done()
            ctx = self._context(prepared, progress)
            repeats = {rep: self._repeat(ctx, prepared, rep) for rep in range(1, r)}
            runs = {s.arm.name: ArmRun(s) for s in statuses}
            frozen: list[float] = []  # seconds of the extract + probe stages of the frozen arms so far
            for i, a in enumerate(runnable, start=1):
                t0 = time.perf_counter()
                expect = self._expected(a, frozen)
                if expect:
                    progress.note(f"arm {i}/{len(runnable)} {a.name}: {expect}")
                runs[a.name] = self._arm(ctx, a, status=runs[a.name].status, index=i, arms=len(runnable))
                cost = time.perf_counter() - t0
                if not a.finetune:
                    frozen.append(cost - _pretrain_seconds(runs[a.name]))
                for rep in range(1, r):  # the same arm again with the next seed: every seeded stage reruns
                    progress.note(f"{a.name}: repeat {rep + 1} of {r} (seed {self.opts.config.seed + rep}); the "
                                  f"first took {cost / 60:.1f} min here (less when stages are reused)")
                    again = self._arm(repeats[rep], dataclasses.replace(a, name=repeat_name(a.name, rep)),
                                      status=runs[a.name].status, index=i, arms=len(runnable))
                    runs[a.name] = dataclasses.replace(runs[a.name], repeats=(*runs[a.name].repeats, again.result))
        return self._finish(prepared, list(runs.values()))

    def _expected(self, a: Arm, frozen: list[float]) -> str:
        """What the arm is expected to cost, said before it starts: its training budget, and extract + probe as
        the frozen arms before it took ('' when nothing is known yet)."""
        b, parts, c = self.opts.budget, [], self.opts.config
        if a.byol_init and b.minutes is not None:
            size = plan.input_size(imagenet=a.needs_imagenet, model=c.model, image_size=c.image_size)
            if size and c.image_size and size > c.image_size:  # the same steps on larger images (one input rule)
                parts.append(f"the BYOL steps of --minutes {b.minutes:g}, at {size} px instead of {c.image_size}: "
                             f"roughly {b.minutes * (size / c.image_size) ** 2:.0f} min")
            else:
                parts.append(f"about {b.minutes:g} min of BYOL (plus a few seconds timing it, once per study)")
        if a.finetune:
            parts.append(f"about {b.minutes:g} min of fine-tuning, label curve included" if b.minutes is not None
                         else "fine-tuning for finetune's own epochs")
        elif frozen:
            parts.append(f"about {sum(frozen) / len(frozen) / 60:.1f} min to extract and probe (as the arms before "
                         "it took)")
        return ", then ".join(parts)

    def _open(self) -> dict[str, ImageSet]:
        """Step: DATA, --test and --unlabeled opened and checked (labels, classes): a listing, no image read."""
        c = self.opts.config
        return open_sources(c.data, labels=c.labels, test=c.test, unlabeled=c.unlabeled, image_column=c.image_column,
                            label_column=c.label_column)

    def _prepare(self, progress: StudyProgress, sets: dict[str, ImageSet] | None = None) -> Prepared:
        """Step: hash every image of the opened ``sets`` (default: open them now), then draw (or reuse) the split
        and make the folders the commands read."""
        o = self.opts
        sets = self._open() if sets is None else sets
        progress.stage(arm="", index=0, arms=0, stage="hashing images", total=sum(len(s) for s in sets.values()))
        from sslprobe.runtime.workers import default_workers

        threads = max(1, o.config.workers if o.config.workers is not None else default_workers())
        inputs = hash_entries(sets, cache=HashCache(self.layout.file("hashes.json")), progress=progress.advance,
                              threads=threads)
        return self._split(with_groups(inputs, o.config.groups), self.layout)

    def _split(self, inputs: Inputs, layout: Layout) -> Prepared:
        """Step: the split of ``layout``'s repeat (seed + repeat), its leakage guard and its folders."""
        o = self.opts
        rule = SplitRule(seed=o.config.seed + layout.repeat, test_fraction=o.config.test_fraction,
                         val_fraction=o.config.val_fraction, fixed_test=o.config.test is not None,
                         groups=spec_of(o.config.groups))
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
        except KeyboardInterrupt:
            stage = next(s for s in _stage_names(a) if s not in done)
            # one way on: the study's own (a stage's message would name its own command and flags)
            raise StudyInterrupted(f"interrupted in arm '{a.name}' at {stage}; run the same command again to "
                                   f"continue: {_CONTINUES[stage]}") from None
        return ArmRun(status, result, done)

    def _finish(self, p: Prepared, runs: list[ArmRun]) -> StudyResult:
        """Steps: the declared question, paired tests, the verdict and its notes, the report files, the terminal."""
        from sslprobe.probing.pairs import budget_tests, grouped_intervals, paired_tests
        from sslprobe.study import report, verdict

        c = self.opts.config
        groups = p.row_groups or None  # --groups: intervals and tests resample the test rows' groups
        rows = [(r.status.arm.name, grouped_intervals(r.result, groups, seed=c.seed) if groups else r.result)
                for r in runs if r.result is not None]
        primary = verdict.primary_pair(rows, [r.status.arm for r in runs], metric=c.metric, declared=c.primary)
        repeats = {r.status.arm.name: [r.result, *r.repeats] for r in runs if r.result is not None and r.repeats}
        pairs = paired_tests(rows, metric=c.metric, primary=primary, seed=c.seed, repeats=repeats, groups=groups)
        rows = [(name, dataclasses.replace(r, paired_tests=pairs)) for name, r in rows]
        notes = [*self.opts.notes, *verdict.notes(rows, pairs, metric=c.metric,
                                                   byol=_byol_runs(runs, pool=len(p.pool), batch=c.byol.batch_size))]
        byol = [r.status.arm.name for r in runs if r.result is not None and r.status.arm.byol_init]
        budget_pairs = budget_tests(rows, metric=c.metric, against=byol, seed=c.seed, groups=groups) if byol else []
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


def _pretrain_seconds(run: ArmRun) -> float:
    """Seconds the arm's BYOL run took here (0 when reused or absent), from its log's wall time."""
    done = run.stages.get("pretrain")
    return 0.0 if done is None or done.reused else float(done.info.get("seconds") or 0.0)


def _stage_names(a: Arm) -> tuple[str, ...]:
    """The arm's stages in order: pretrain (BYOL arms), then finetune or extract and probe."""
    return (("pretrain",) if a.byol_init else ()) + (("finetune",) if a.finetune else ("extract", "probe"))


def _stages(a: Arm) -> int:
    return len(_stage_names(a))


_CONTINUES = {"pretrain": "pretraining resumes from its last checkpoint",
              "finetune": "the fine-tune resumes from its last checkpoint, finished stages are reused",
              "extract": "extraction reuses every embedding already in the cache, finished stages are reused",
              "probe": "the probe reruns on the cached embeddings, finished stages are reused"}
