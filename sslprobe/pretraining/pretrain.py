"""The BYOL training loop: data to the device, views there, optimiser, checkpoints, logging, outputs.

Writes into ``out``: ``backbone.safetensors`` (online backbone, timm state dict + rebuild
metadata), ``config.json``, ``metrics.jsonl``, ``summary.json``, ``loss_curve.png`` (with
matplotlib) and ``checkpoints/`` (see ``checkpoint.py``). One step (config, model, optimiser,
views, update) is ``trainstep.py``; the data order ``batches.py``; logging ``monitor.py``.
"""
from __future__ import annotations

import math
import os
import signal
import threading
import time
import warnings
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from sslprobe import checkpoint as ckpts
from sslprobe import distributed as ddp
from sslprobe.backbone import create_backbone, save_backbone
from sslprobe.errors import SSLProbeError
from sslprobe.fileio import write_json
from sslprobe.images.folders import ImageSet, open_images, skipped_report
from sslprobe.pretraining.augment import blur_note, byol_views
from sslprobe.pretraining.batches import BatchSource
from sslprobe.pretraining.byol import tau_at
from sslprobe.pretraining.monitor import KnnEval, MetricsLog, check_collapse, describe, loss_curve

from sslprobe.pretraining.trainstep import PretrainConfig, TrainStep, build_byol, default_lr, pick_optimizer
from sslprobe.runtime import default_workers, pick_device, progress_bar

# Ignored when comparing a resumed run's configuration: the same run may continue on other hardware.
RESUME_IGNORES = ("device", "precision", "sync_batchnorm")


class PretrainInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) during pretraining; ``str()`` says what was saved and how to resume."""


class _Signals:
    """SIGINT/SIGTERM set a flag the loop checks between steps; a second Ctrl-C interrupts at once."""

    def __init__(self):
        self.hit: str | None = None
        self.old: dict[int, Any] = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.hit is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.hit = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, h in self.old.items():
            signal.signal(sig, h)
        return False


def pretrain(data: str | os.PathLike, *, out: str | os.PathLike, model: str = "resnet18", image_size: int | None = None,
             small_stem: bool | None = None, batch_size: int = 256, epochs: int = 100, max_steps: int | None = None,
             optimizer: str = "auto", lr: float | None = None, weight_decay: float = 1.5e-6, warmup_epochs: float = 10.0,
             tau_base: float = 0.996, proj_hidden: int = 4096, proj_dim: int = 256, blur: bool | None = None,
             augment: Mapping[str, Any] | None = None, seed: int = 0, device: str = "auto", workers: int | None = None,
             resume: str = "no", save_every: str = "10m", max_minutes: float | None = None, stop_at: int | None = None,
             compile: bool = False, eval_train: str | os.PathLike | None = None,
             eval_test: str | os.PathLike | None = None, eval_every: int = 1, log_every: int = 10,
             image_column: str | None = None, label_column: str | None = None, show_progress: bool = True) -> dict[str, Any]:
    """BYOL-pretrain a timm backbone on the images at ``data`` (labels, if any, are ignored).

    ``optimizer="auto"`` is LARS for a global batch ≥ 256 (the paper's) and SGD below; ``lr`` is
    the base rate per 256 images, scaled with the global batch. ``augment`` overrides
    :func:`sslprobe.pretraining.augment.byol_views` arguments. ``resume``: "no" (refuses to discard an
    unfinished run in ``out``), "auto" (continue if a checkpoint exists) or "yes" (must continue).
    ``save_every``: see :func:`sslprobe.checkpoint.parse_save_every`. ``max_minutes``/``stop_at``
    stop early with a checkpoint, keeping the full run's schedule. ``small_stem``: the small-image
    stem for ResNets (default: at ≤ 64 px); config.json records it, so a resume must match.
    Ctrl-C saves and raises :class:`PretrainInterrupted`. Returns a summary dict (also summary.json).
    """
    for name, val in (("batch_size", batch_size), ("epochs", epochs), ("proj_hidden", proj_hidden),
                      ("proj_dim", proj_dim), ("log_every", log_every), ("eval_every", eval_every)):
        if val < 1:
            raise SSLProbeError(f"--{name.replace('_', '-')} must be ≥ 1 (got {val})")
    for name, val in (("max_steps", max_steps), ("stop_at", stop_at)):
        if val is not None and val < 1:
            raise SSLProbeError(f"--{name.replace('_', '-')} must be ≥ 1 (got {val})")
    if lr is not None and not lr > 0:  # also refuses NaN
        raise SSLProbeError(f"--lr must be a positive number (got {lr})")
    if max_minutes is not None and max_minutes <= 0:
        raise SSLProbeError(f"--max-minutes must be positive (got {max_minutes})")
    if image_size is not None and image_size < 8:
        raise SSLProbeError(f"--image-size must be ≥ 8 (got {image_size})")
    if optimizer not in ("auto", "lars", "sgd", "adamw"):
        raise SSLProbeError(f"unknown optimizer '{optimizer}'; use auto, lars, sgd or adamw")
    if not 0 <= tau_base < 1:
        raise SSLProbeError(f"--tau-base must be in [0, 1) (got {tau_base})")
    if resume not in ("no", "auto", "yes"):
        raise SSLProbeError(f"--resume '{resume}' not understood; use --resume (must continue) or --resume auto")
    if (eval_train is None) != (eval_test is None):
        raise SSLProbeError("online kNN evaluation needs both --eval-train and --eval-test")
    when = ckpts.parse_save_every(save_every)
    images = open_images(data, image_column=image_column, label_column=label_column)
    if len(images) < 2:
        raise SSLProbeError(f"'{data}' has {len(images)} image; BYOL needs at least 2 (ideally thousands)")
    dev = pick_device(device)
    dist, dev = ddp.setup(dev)
    try:
        # timm's training init (zero-initialised residual branches), not extract's fair one
        _, spec = create_backbone(model, weights="random", init="train", image_size=image_size, small_stem=small_stem,
                                  seed=seed)
        try:
            views = byol_views(spec.image_size, blur=blur, **(augment or {}))
        except TypeError as e:
            raise SSLProbeError(f"unknown augmentation option: {e}") from None
        nw = default_workers() if workers is None else workers
        source = BatchSource(images, store=spec.image_size, batch=batch_size, device=dev, seed=seed, workers=nw,
                             rank=dist.rank, world=dist.world, show_progress=show_progress)
        gb = source.batch * dist.world
        opt_name = pick_optimizer(optimizer, batch=gb)
        base_lr = lr if lr is not None else default_lr(opt_name)
        spe = source.steps_per_epoch
        total = spe * epochs if max_steps is None else max_steps
        cfg = PretrainConfig(
            data=str(data), model=spec.model, image_size=spec.image_size, small_stem=spec.small_stem,
            batch_size=source.batch, world_size=dist.world, global_batch=gb, epochs=epochs, max_steps=max_steps,
            steps_per_epoch=spe, total_steps=total, optimizer=opt_name, lr=base_lr * gb / 256, base_lr=base_lr,
            weight_decay=weight_decay, warmup_steps=min(round(warmup_epochs * spe), total // 2),
            tau_base=tau_base, proj_hidden=proj_hidden, proj_dim=proj_dim, seed=seed, views=views,
            blur=blur_note(spec.image_size, blur),
            sync_batchnorm=("n/a (one process)" if dist.world == 1 else "yes" if ddp.sync_batchnorm_supported(dev)
                            else "no: SyncBatchNorm has no CPU kernel, each rank normalises over its own slice"),
            precision="bfloat16 autocast" if dev.type == "cuda" else "float32", device=dev.type,
        )
        return _run(cfg, source=source, images=images, out=Path(out), dist=dist, dev=dev, resume=resume, when=when,
                    max_minutes=max_minutes, stop_at=stop_at, compile=compile, log_every=log_every,
                    eval_every=eval_every, show_progress=show_progress,
                    knn=KnnEval(eval_train, eval_test, size=spec.image_size, device=dev, workers=nw)
                    if eval_train is not None and dist.main else None)
    finally:
        ddp.teardown(dist)


def _resolve_resume(out: Path, resume: str, cfg: PretrainConfig) -> ckpts.Checkpoint | None:
    found = ckpts.find_latest(out / "checkpoints")
    if resume == "yes" and found is None:
        raise SSLProbeError(f"--resume: no usable checkpoint in {out / 'checkpoints'}; run without --resume to start")
    if found is None:
        return None
    done = found.step >= found.state["config"]["total_steps"]
    if resume == "no":
        if not done:
            raise SSLProbeError(
                f"'{out}' holds an unfinished run (checkpoint at step {found.step} of "
                f"{found.state['config']['total_steps']}); continue it with --resume, or delete "
                f"{out / 'checkpoints'} (or pick another --out) to start over")
        return None  # a finished run is overwritten, like any output folder
    diff = ckpts.config_diff(found.state["config"], asdict(cfg), ignore=RESUME_IGNORES)
    if diff:
        shown = "; ".join(f"{k}: {a!r} → {b!r}" for k, (a, b) in list(diff.items())[:8])
        raise SSLProbeError(f"cannot resume from {found.json_path}: the configuration differs in {len(diff)} key(s): "
                            f"{shown}; rerun with the original options, or use a new --out for a new run")
    return found


def _finite(net: torch.nn.Module) -> bool:
    return bool(torch.isfinite(torch.stack([p.detach().float().sum() for p in net.parameters()])).all())


def _run(cfg: PretrainConfig, *, source: BatchSource, images: ImageSet, out: Path, dist: ddp.Dist, dev: torch.device,
         resume: str, when: ckpts.SaveEvery, max_minutes: float | None, stop_at: int | None, compile: bool,
         log_every: int, eval_every: int, show_progress: bool, knn: KnnEval | None) -> dict[str, Any]:
    found = _resolve_resume(out, resume, cfg)
    start = found.step if found else 0
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
        if found is None and (out / "checkpoints").is_dir():  # a finished run being overwritten
            for f in (out / "checkpoints").iterdir():
                f.unlink()
        write_json(out / "config.json", asdict(cfg))
    net, opt, spec = build_byol(cfg, device=dev, dist=dist)
    step_fn = TrainStep(net, opt, cfg=cfg, spec=spec, device=dev, rank=dist.rank, compile=compile)
    byol, spe, total = step_fn.byol, cfg.steps_per_epoch, cfg.total_steps
    elapsed0 = 0.0
    if found is not None:
        t = ckpts.load_tensors(found)
        try:
            byol.load_state_dict({k[6:]: v for k, v in t.items() if k.startswith("model.")}, strict=True)
            ckpts.unpack_optimizer(opt, t, found.state["optimizer"])
            ckpts.restore_rng(t)
        except (RuntimeError, KeyError, ValueError, TypeError) as e:
            raise SSLProbeError(f"checkpoint {found.json_path} does not fit this model/optimiser "
                                f"({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}); "
                                "delete it or use a new --out") from None
        elapsed0 = float(found.state.get("elapsed_s", 0.0))
    end = min(total, stop_at or total)
    log = MetricsLog(out / "metrics.jsonl", resume_step=start) if dist.main else None
    loss0 = found.state.get("loss") if found is not None else None  # a resumed finished run logs nothing new
    r: dict[str, Any] = {"loss": float("nan") if loss0 is None else loss0, "ckpt": found, "knn": None, "warnings": [],
                         "status": "complete"}
    acc = [torch.zeros((), device=dev), torch.zeros((), device=dev), 0]  # loss sum, proj_std sum, steps
    t_run, t_log, wait, imgs, last_save = time.monotonic(), time.perf_counter(), 0.0, 0, (start, time.monotonic())

    def save(step: int) -> None:
        if dist.main and (r["ckpt"] is None or r["ckpt"].step != step):
            if not _finite(byol):
                raise SSLProbeError(f"weights became non-finite by step {step}; nothing saved. " + _last_good(r["ckpt"]))
            tensors = {f"model.{k}": v for k, v in byol.state_dict().items()}
            opt_t, opt_meta = ckpts.pack_optimizer(opt)
            state = {"config": asdict(cfg), "epoch": step // spe, "batch_in_epoch": step % spe, "optimizer": opt_meta,
                     "augment_rng": "reseeded every step from (seed, rank, step) by pretrain.step_seed",
                     "elapsed_s": elapsed0 + time.monotonic() - t_run, "loss": r["loss"]}
            r["ckpt"] = ckpts.save(out / "checkpoints", step=step, tensors={**tensors, **opt_t, **ckpts.rng_tensors()},
                                   state=state)
        ddp.barrier(dist)

    def flush(step: int, bar: Any, task: Any) -> None:
        nonlocal t_log, wait, imgs
        loss, pstd = float(acc[0]) / acc[2], float(acc[1]) / acc[2]  # the only host sync: once per log
        acc[0].zero_(), acc[1].zero_()
        acc[2] = 0
        if ddp.agree([not math.isfinite(loss)], dist, dev)[0]:
            raise SSLProbeError(f"loss became {loss} at step {step}; stopped without saving. Lower --lr or use "
                                f"--optimizer sgd in a new run. " + _last_good(r["ckpt"]))
        now = time.perf_counter()
        dt = max(now - t_log, 1e-9)
        lr, tau = opt.param_groups[0]["lr"], tau_at(step - 1, total, cfg.tau_base)
        rec = {"step": step, "epoch": (step - 1) // spe, "loss": round(loss, 6), "lr": lr, "tau": tau,
               "img_per_s": round(imgs / dt, 1), "data_wait": round(wait / dt, 4), "proj_std": round(pstd, 6)}
        r["loss"] = loss
        msg = check_collapse(pstd, proj_dim=cfg.proj_dim, step=step)
        if msg and not r["warnings"]:
            r["warnings"].append(msg)
            if dist.main:
                warnings.warn(msg, RuntimeWarning, stacklevel=3)
        if log is not None:
            log.write({**rec, **({"collapsed": True} if msg else {})})
        bar.update(task, completed=step, description=describe(epoch=rec["epoch"], step=step, total=total, loss=loss,
                                                               lr=lr, tau=tau, rate=imgs / dt, wait=wait / dt))
        t_log, wait, imgs = now, 0.0, 0

    net.train()
    step = start
    try:
        with _Signals() as sig, progress_bar(show_progress and dist.main) as bar:
            task = bar.add_task("pretrain", total=total, completed=start)
            # On CPU the views are made in the DataLoader workers, beside the model step (the same
            # views: a pure function of seed, rank and step); on a GPU they are made there, faster.
            in_workers = dev.type == "cpu" and source.can_map
            batches = source.mapped(step_fn.make_views, start=start) if in_workers else source.batches(start=start)
            while step < end:
                t0 = time.perf_counter()
                s, item = next(batches)
                wait += time.perf_counter() - t0
                loss, pstd = step_fn.model_step(*item, s) if in_workers else step_fn(item, s)
                step = s + 1
                acc[0] += loss
                acc[1] += pstd
                acc[2] += 1
                imgs += (item[0] if in_workers else item).shape[0] * dist.world
                logging = step % log_every == 0 or step == end
                if logging:
                    flush(step, bar, task)
                if dist.world == 1 or logging:  # collective decisions only where ranks sync anyway
                    elapsed = (time.monotonic() - t_run) / 60
                    hit, time_up, due = ddp.agree([sig.hit is not None, max_minutes is not None and elapsed >= max_minutes,
                                                   when.due(step=step, last_step=last_save[0],
                                                            elapsed_min=(time.monotonic() - last_save[1]) / 60)], dist, dev)
                    if hit:
                        save(step)
                        raise PretrainInterrupted(_interrupted(step, total, r["ckpt"], sig.hit or "signal"))
                    if time_up and step < end:
                        r["status"] = f"stopped: --max-minutes {max_minutes:g} reached"
                        break
                    if due and step < end:
                        save(step)
                        last_save = (step, time.monotonic())
                if knn is not None and step % spe == 0 and (step // spe) % eval_every == 0:
                    r["knn"] = knn(byol.backbone, mean=spec.mean, std=spec.std)
                    log.write({"step": step, "epoch": step // spe - 1, "knn_top1": round(r["knn"], 4)})
            if r["status"] == "complete" and step < total:
                r["status"] = f"stopped: --stop-at {stop_at}"
            if knn is not None and step == total and step % spe:  # the final weights, when no epoch ended here
                r["knn"] = knn(byol.backbone, mean=spec.mean, std=spec.std)
                log.write({"step": step, "epoch": step // spe, "knn_top1": round(r["knn"], 4)})
            if acc[2]:
                flush(step, bar, task)
            save(step)
    except KeyboardInterrupt as e:
        if isinstance(e, PretrainInterrupted):
            raise
        # A KeyboardInterrupt not caught by the handler (second Ctrl-C, or raised inside the step): the
        # state is whole unless it came between the optimiser and the EMA update.
        if dist.world == 1 and not step_fn.mutating:
            save(step)
        raise PretrainInterrupted(_interrupted(step, total, r["ckpt"], "KeyboardInterrupt")) from None
    finally:
        if "batches" in locals():
            batches.close()  # shuts the workers down now, not when the generator is collected
        if log is not None:
            log.close()
    if dist.main:
        save_backbone(byol.backbone, spec, out / "backbone.safetensors")
    summary = {
        "out": str(out), "status": r["status"], "steps": step, "total_steps": total, "resumed_from": found.step if found else None,
        "final_loss": r["loss"], "images": len(images), "skipped": skipped_report(images, source.skipped),
        "model": spec.model, "image_size": spec.image_size, "small_stem": spec.small_stem, "device": str(dev),
        "world_size": dist.world, "optimizer": cfg.optimizer, "compile": step_fn.compile_note, "knn_top1": r["knn"],
        "checkpoint": str(r["ckpt"].json_path) if r["ckpt"] else None, "warnings": r["warnings"],
        "loss_curve": loss_curve(log.records(), out / "loss_curve.png") if log is not None else None,
    }
    if dist.main:
        write_json(out / "summary.json", summary)
    return summary


def _last_good(ck: ckpts.Checkpoint | None) -> str:
    if ck is None:
        return "No checkpoint had been saved yet."
    return f"The last good checkpoint (step {ck.step}) is intact: {ck.json_path}; --resume continues from it."


def _interrupted(step: int, total: int, ck: ckpts.Checkpoint | None, why: str) -> str:
    where = f"checkpoint at step {ck.step} in {ck.json_path.parent}" if ck else "no checkpoint (none saved yet)"
    return f"interrupted ({why}) at step {step} of {total}; {where}. Continue with the same command plus --resume"
