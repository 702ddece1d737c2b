"""What a pretraining run saves, when, and how it continues: resume checks, periodic and stop saves, restore.

``sslprobe/checkpoint.py`` is the file format (tensors + a JSON commit mark, verified on reading);
this module is the run's policy around it. A checkpoint holds the BYOL module (online and target
networks), the optimiser, the global RNG states, the run's configuration, its elapsed time and its
last logged loss. The data order and the augmentation seeds are functions of the step, so with
those the step is all an exact resume needs.
"""
from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import torch

import sslprobe.checkpoint as ckpts
import sslprobe.distributed as ddp
from sslprobe.errors import SSLProbeError
from sslprobe.pretraining.trainstep import RunSpec

# Ignored when comparing a resumed run's configuration: the same run may continue on other hardware, and
# ``defaults`` only says where values came from (the values themselves, and ``start`` with the init file's
# sha256, are compared).
RESUME_IGNORES = ("device", "precision", "sync_batchnorm", "defaults", "options")


def resume_point(out: Path, *, resume: str, cfg: RunSpec) -> ckpts.Checkpoint | None:
    """The checkpoint to continue from, None to start afresh, or an error saying why neither is safe.

    ``resume``: "no" refuses a folder holding an unfinished run (a finished one is overwritten),
    "auto" continues from a checkpoint when there is one, "yes" requires one. A resumed run must
    have the same configuration (bar :data:`RESUME_IGNORES`); the error names the keys that differ.
    """
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


def restore(found: ckpts.Checkpoint, *, byol: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
    """Load a checkpoint's BYOL weights, optimiser state and RNG states into a freshly built run."""
    t = ckpts.load_tensors(found)
    try:
        byol.load_state_dict({k[6:]: v for k, v in t.items() if k.startswith("model.")}, strict=True)
        ckpts.unpack_optimizer(opt, t, found.state["optimizer"])
        ckpts.restore_rng(t)
    except (RuntimeError, KeyError, ValueError, TypeError) as e:
        raise SSLProbeError(f"checkpoint {found.json_path} does not fit this model/optimiser "
                            f"({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}); "
                            "delete it or use a new --out") from None


def finite(net: torch.nn.Module) -> bool:
    """Whether every parameter of ``net`` is finite (one reduction, one host sync)."""
    return bool(torch.isfinite(torch.stack([p.detach().float().sum() for p in net.parameters()])).all())


class Checkpointer:
    """Saves the run into ``directory`` when ``when`` says, when it stops, and never twice at one step.

    Only the main rank writes; every rank meets at a barrier after each save, so no rank runs ahead
    of a checkpoint being written. ``last`` is the newest checkpoint: this session's or the one it
    resumed from. The clock of ``when``'s minutes starts at construction and at each save.
    """

    def __init__(self, directory: Path, *, byol: torch.nn.Module, opt: torch.optim.Optimizer, cfg: RunSpec,
                 dist: ddp.Dist, when: ckpts.SaveEvery, found: ckpts.Checkpoint | None):
        self.directory, self.byol, self.opt, self.cfg, self.dist, self.when = directory, byol, opt, cfg, dist, when
        self.last = found
        self.elapsed_before = float(found.state.get("elapsed_s", 0.0)) if found else 0.0
        self.started = time.monotonic()
        self.saved = (found.step if found else 0, self.started)  # (step, monotonic time) of the last save

    def due(self, step: int) -> bool:
        """Whether ``when`` asks for a save after ``step`` steps (this rank's view; the loop agrees across ranks)."""
        return self.when.due(step=step, last_step=self.saved[0], elapsed_min=(time.monotonic() - self.saved[1]) / 60)

    def save(self, step: int, *, loss: float) -> None:
        """Checkpoint the state after ``step`` steps (refused, with the last good one named, if it is not finite)."""
        if self.dist.main and (self.last is None or self.last.step != step):
            if not finite(self.byol):
                raise SSLProbeError(f"weights became non-finite by step {step}; nothing saved. " + self.last_good())
            opt_t, opt_meta = ckpts.pack_optimizer(self.opt)
            spe = self.cfg.steps_per_epoch
            state = {"config": asdict(self.cfg), "epoch": step // spe, "batch_in_epoch": step % spe,
                     "optimizer": opt_meta,
                     "augment_rng": "reseeded every step from (seed, rank, step) by trainstep.step_seed",
                     "elapsed_s": self.elapsed_before + time.monotonic() - self.started, "loss": loss}
            tensors = {**{f"model.{k}": v for k, v in self.byol.state_dict().items()}, **opt_t, **ckpts.rng_tensors()}
            self.last = ckpts.save(self.directory, step=step, tensors=tensors, state=state)
        self.saved = (step, time.monotonic())
        ddp.barrier(self.dist)

    def stop(self, step: int, *, loss: float, why: str, save: bool = True) -> str:
        """Save at a stop (unless ``save`` is False: the state is not whole) and say what was kept and how to go on."""
        if save:
            self.save(step, loss=loss)
        ck = self.last
        where = f"checkpoint at step {ck.step} in {ck.json_path.parent}" if ck else "no checkpoint (none saved yet)"
        return (f"interrupted ({why}) at step {step} of {self.cfg.total_steps}; {where}. "
                "Continue with the same command plus --resume")

    def last_good(self) -> str:
        """The sentence an error ends with: which checkpoint is intact, if any."""
        if self.last is None:
            return "No checkpoint had been saved yet."
        return (f"The last good checkpoint (step {self.last.step}) is intact: {self.last.json_path}; "
                "--resume continues from it.")
