"""One arm's stages, each through the command it stands for: pretrain → extract → probe, or finetune.

Every stage is keyed (resume.py): a finished stage whose key matches is reused without being
called; an unfinished one is called again and continues — pretraining from its checkpoint
(``resume="auto"``), extraction from the embedding cache. Each stage returns a :class:`Done` with
the command line it stands for, so the report can print the study as the commands it ran.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sslprobe.errors import SSLProbeError
from sslprobe.extraction.extract import extract
from sslprobe.fileio import file_sha256
from sslprobe.pretraining.budget import fitted_steps
from sslprobe.pretraining.pretrain import pretrain
from sslprobe.probing.probe import probe
from sslprobe.results import FinetuneResult, ProbeResult
from sslprobe.study.commands import extract_command, flags, line, pretrain_command
from sslprobe.study.layout import Layout
from sslprobe.study.plan import Arm, StudyOptions
from sslprobe.study.progress import StudyProgress
from sslprobe.study.resume import Marker, fingerprint
from sslprobe.study.slices import write_split_features

PIXELS_MAX = 32  # raw pixels at 32 px (or a smaller --image-size): 3,072 numbers an image


@dataclass(frozen=True)
class Context:
    """What every stage of every arm shares: the options, the folders and the keys of the data they saw."""

    opts: StudyOptions
    layout: Layout
    progress: StudyProgress
    device_type: str  # "cpu" or "cuda": both the compute of the rows and the run's config depend on it
    pool_key: str  # the pretraining pool's content
    labelled_key: str  # the labelled folder's listing
    split_key: str  # which labelled image is in which split
    membership: Mapping[str, str]  # labelled-folder id → split
    class_names: Mapping[str, str]  # class folder name → class name


@dataclass(frozen=True)
class Done:
    """A finished stage: its directory, key, the command it stands for, whether it was reused, what it recorded."""

    dir: Path
    key: str
    command: str
    reused: bool
    info: dict[str, Any] = field(default_factory=dict)


def _finish(marker: Marker, d: Path, key: str, command: str, **info: Any) -> Done:
    marker.write(key, command=command, **info)
    return Done(d, key, command, False, info)


def _reuse(marker: Marker, d: Path, key: str) -> Done | None:
    doc = marker.read(key)
    if doc is None:
        return None
    return Done(d, key, str(doc.get("command", "")), True, {k: v for k, v in doc.items() if k not in ("key",
                                                                                                     "command")})


def pretrain_kwargs(ctx: Context, *, init: str) -> dict[str, Any]:
    """The `pretrain` options of a BYOL arm, without its length (see :func:`byol_backbone`)."""
    o, r = ctx.opts, ctx.opts.byol
    kw: dict[str, Any] = {"model": o.model, "image_size": o.image_size, "batch_size": r.batch_size,
                          "optimizer": r.optimizer, "lr": r.lr, "tau_base": r.tau_base,
                          "warmup_epochs": r.warmup_epochs, "proj_hidden": r.proj_hidden, "proj_dim": r.proj_dim,
                          "weight_decay": r.weight_decay, "seed": o.seed, "device": o.device}
    if init != "random":  # only pretrain versions with the keyword have BYOL-from-weights arms (plan.py)
        kw["init"] = init
    return kw


def _length(ctx: Context, kw: Mapping[str, Any]) -> dict[str, Any]:
    """The run length: epochs, the demo's fixed steps, or the steps that fit --minutes on this machine."""
    b = ctx.opts.budget
    if b.epochs is not None:
        return {"epochs": b.epochs}
    if b.steps is not None:
        return {"max_steps": b.steps}
    workdir = ctx.layout.out / "pretrain" / f"budget-{fingerprint([ctx.pool_key, ctx.device_type, kw])}"

    def measure(out: Path, steps: int) -> Path:
        pretrain(ctx.layout.pool, out=out, max_steps=steps, log_every=5, save_every="end", resume="no",
                 show_progress=False, workers=ctx.opts.workers, **{k: v for k, v in kw.items() if k != "init"})
        return out

    fitted = fitted_steps(b.minutes, workdir=workdir, measure=measure)
    return {"max_steps": fitted.max_steps, "fitted": fitted}


def byol_backbone(ctx: Context, arm: Arm, *, index: int, arms: int) -> Done:
    """The arm's BYOL run on the pool (shared by every arm with the same start and options)."""
    init = arm.byol_init or "random"
    kw = pretrain_kwargs(ctx, init=init)
    ctx.progress.stage(arm=arm.name, index=index, arms=arms, stage="timing BYOL steps" if ctx.opts.budget.minutes
                       else "pretrain")
    length = _length(ctx, kw)
    fitted = length.pop("fitted", None)
    kw.update(length)
    key = fingerprint([ctx.pool_key, ctx.device_type, kw])
    d = ctx.layout.pretrain_run(init, key)
    marker = Marker(d)
    command = pretrain_command(ctx.layout.pool, out=d, kwargs=kw)
    done = _reuse(marker, d, key)
    if done is not None:
        return done
    total = kw.get("max_steps")
    ctx.progress.stage(arm=arm.name, index=index, arms=arms, stage=f"pretrain ({ctx.opts.budget.describe()})",
                       total=total)
    with ctx.progress.watching(d / "metrics.jsonl"):
        summary = pretrain(ctx.layout.pool, out=d, resume="auto", show_progress=False, workers=ctx.opts.workers,
                           **kw)
    if not summary.complete:
        raise SSLProbeError(f"BYOL run in '{d}' ended '{summary.status}'; rerun the study to continue it")
    return _finish(marker, d, key, command, steps=summary.steps, final_loss=summary.final_loss,
                   skipped=summary.skipped, resumed_from=summary.resumed_from,
                   fitted=None if fitted is None else asdict(fitted), loss_curve=summary.loss_curve)


def extract_kwargs(ctx: Context, arm: Arm, weights: Path | None) -> dict[str, Any]:
    """`extract` options for the arm: pixels at ≤ 32 px, named weights with the model, BYOL's file on its own."""
    o = ctx.opts
    if arm.weights == "pixels":
        return {"weights": "pixels", "image_size": min(o.image_size or PIXELS_MAX, PIXELS_MAX)}
    if weights is not None:
        return {"weights": str(weights)}
    return {"weights": arm.weights, "model": o.model, "image_size": o.image_size}


def extracted(ctx: Context, arm: Arm, weights: Path | None, *, index: int, arms: int) -> Done:
    """The labelled folder embedded once by the arm's network (every row through the cache)."""
    kw = extract_kwargs(ctx, arm, weights)
    ident = file_sha256(weights) if weights is not None else kw["weights"]
    key = fingerprint([ctx.labelled_key, ctx.device_type, ident, kw.get("model"), kw.get("image_size"),
                       ctx.opts.seed])
    d = ctx.layout.arm(arm.name) / "extract"
    marker = Marker(d)
    command = extract_command(ctx.layout.labelled, out=d, kwargs={**kw, "seed": ctx.opts.seed,
                                                                  "device": ctx.opts.device})
    done = _reuse(marker, d, key)
    if done is not None:
        return done
    ctx.progress.stage(arm=arm.name, index=index, arms=arms, stage="extract")
    m = extract(ctx.layout.labelled, out=d, seed=ctx.opts.seed, device=ctx.opts.device, workers=ctx.opts.workers,
                show_progress=False, **kw)
    return _finish(marker, d, key, command, skipped=m.skipped, dim=m.dim, seconds=m.seconds,
                   cache={"hits": m.cache.hits, "misses": m.cache.misses})


def probe_options(o: StudyOptions) -> dict[str, Any]:
    return {"fractions": o.fractions, "shots": o.shots, "seeds": o.seeds, "knn_k": o.knn_k, "search": o.search,
            "select": o.select, "seed": o.seed}


def probed(ctx: Context, arm: Arm, features: Done, *, index: int, arms: int) -> tuple[Done, ProbeResult]:
    """The arm's rows cut by split, then one probe (linear, kNN, label curve); a reused probe's result is read
    back from its report.json."""
    d = ctx.layout.arm(arm.name)
    key = fingerprint([features.key, ctx.split_key, probe_options(ctx.opts), ctx.device_type])
    marker = Marker(d / "probe")
    done = _reuse(marker, d / "probe", key)
    if done is not None:
        return done, ProbeResult.from_json(d / "probe" / "report.json")
    ctx.progress.stage(arm=arm.name, index=index, arms=arms, stage="probe (linear, kNN, label efficiency)")
    paths = write_split_features(features.dir, membership=ctx.membership, class_names=ctx.class_names,
                                 out=d / "features")
    result = probe(paths["train"], val=paths["val"], test=paths["test"], device=ctx.opts.device, out=d / "probe",
                   show_progress=False, **probe_options(ctx.opts))
    return _finish(marker, d / "probe", key, ""), result


def finetune_kwargs(ctx: Context, arm: Arm, weights: Path | None) -> dict[str, Any]:
    """`finetune` options: the arm's start, the study's label curve, and --minutes when that is the budget
    (else finetune's own epochs: BYOL's epoch count is no fine-tuning schedule)."""
    o = ctx.opts
    kw: dict[str, Any] = {"weights": str(weights)} if weights is not None else \
        {"weights": arm.weights, "model": o.model, "image_size": o.image_size}
    if o.budget.minutes is not None:
        kw["minutes"] = o.budget.minutes
    return {**kw, "fractions": o.fractions, "shots": o.shots, "seeds": o.seeds, "select": o.select, "seed": o.seed}


def finetuned(ctx: Context, arm: Arm, weights: Path | None, *, index: int,
              arms: int) -> tuple[Done, FinetuneResult]:
    """The arm's network fine-tuned on the train split (epoch chosen on val, test scored once)."""
    from sslprobe.finetuning.finetune import finetune

    kw = finetune_kwargs(ctx, arm, weights)
    ident = file_sha256(weights) if weights is not None else kw["weights"]
    key = fingerprint([ctx.labelled_key, ctx.split_key, ctx.device_type, ident, kw])
    d = ctx.layout.arm(arm.name) / "finetune"
    marker = Marker(d)
    split = ctx.layout.split_folder
    command = line("sslprobe", "finetune", split("train"), *flags({"val": split("val"), "test": split("test"),
                                                                     "out": d, **kw, "device": ctx.opts.device}),
                   "--resume")
    done = _reuse(marker, d, key)
    if done is not None:
        return done, FinetuneResult.from_json(d / "report.json")
    ctx.progress.stage(arm=arm.name, index=index, arms=arms, stage="fine-tune")
    result = finetune(split("train"), out=d, val=split("val"), test=split("test"), device=ctx.opts.device,
                      workers=ctx.opts.workers, resume="auto", show_progress=False, **kw)
    if not isinstance(result, FinetuneResult) or result.status != "complete":
        raise SSLProbeError(f"the fine-tune in '{d}' ended '{result.status}'; rerun the study to continue")
    return _finish(marker, d, key, command), result
