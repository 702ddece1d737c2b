"""One BYOL training step and what it is built from: run configuration, model + optimiser, per-step seeds.

Used by the loop in ``pretrain.py`` and, on their own, by benchmarks that time the step without
the loop (``bench/pretrain_throughput.py``): build a :class:`RunSpec`, call
:func:`build_byol`, then call a :class:`TrainStep` on uint8 batches already on the device.
:class:`StepFeed` gives the loop each step's inputs, wherever the views are made.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch

import sslprobe.distributed as ddp
import sslprobe.optim as optim
import sslprobe.schedules as schedules
from sslprobe.backbone import BackboneSpec
from sslprobe.config.pretrain import DEFAULT_MODEL, PretrainConfig
from sslprobe.errors import SSLProbeError
from sslprobe.pretraining.augment import ViewConfig, blur_note, byol_views, make_view
from sslprobe.pretraining.batches import BatchSource
from sslprobe.pretraining.byol import BYOL, param_groups
from sslprobe.pretraining.recipe import PAPER, fit_defaults, pick_optimizer
from sslprobe.schedules import cosine_to_one, warmup_cosine
from sslprobe.starts import Start, open_start, parse_start

STARTS = ("random", "pretrained")  # the starts ``--init`` names; any other value is a weights file (starts.py)


@dataclass(frozen=True)
class RunSpec:
    """Everything that defines a run (saved as config.json; a resume must match it).

    ``batch_size`` is per process, ``global_batch`` = batch_size × world_size, and ``lr`` is the
    peak rate base_lr × global_batch / 256 (the heads'; the backbone's is ``backbone_lr_scale`` × it).
    The dataclass defaults are the paper's 1000-epoch values (Grill et al. 2020, App. C); a run's
    are fitted to its length and init (:func:`run_config`, ``recipe.py``), and ``defaults`` says how.
    ``start`` is where the backbone began (random, timm's hub weights or a file with its sha256).
    """

    data: str = ""
    model: str = DEFAULT_MODEL
    image_size: int = 224
    small_stem: bool = False
    in_chans: int = 3  # 1: grey images, one channel through the backbone (--grayscale)
    store_size: int = 224  # the side of the decoded store the crops are drawn from (batches.store_side)
    batch_size: int = PretrainConfig.batch_size
    world_size: int = 1
    global_batch: int = PretrainConfig.batch_size
    epochs: int = PretrainConfig.epochs
    max_steps: int | None = None
    steps_per_epoch: int = 1
    total_steps: int = 1
    optimizer: str = "lars"
    lr: float = 0.2
    base_lr: float = 0.2
    weight_decay: float = PAPER.weight_decay
    warmup_steps: int = 0
    tau_base: float = PAPER.tau_base
    start: Start = field(default_factory=Start)
    backbone_lr_scale: float = 1.0
    defaults: str = ""  # which values were fitted and from where (ignored by the resume check: the values are compared)
    proj_hidden: int = PretrainConfig.proj_hidden
    proj_dim: int = PretrainConfig.proj_dim
    seed: int = 0
    views: tuple[ViewConfig, ViewConfig] = field(default_factory=lambda: byol_views(224))
    blur: str = "on"
    sync_batchnorm: str = "n/a (one process)"
    precision: str = "float32"
    device: str = "cpu"
    # the options the run was asked with (PretrainConfig.to_json()): a record, not compared on resume — the values
    # above are what the options resolved to, and a resume may change how a session stops (--stop-at, --max-minutes)
    options: dict = field(default_factory=dict)


def run_config(*, options: PretrainConfig, spec: BackboneSpec, batch: int, steps_per_epoch: int, dist: ddp.Dist,
               device: torch.device, views: tuple[ViewConfig, ViewConfig], max_steps: int | None,
               store_size: int | None = None, start: Start | None = None, batchnorm: bool = True) -> RunSpec:
    """What defines a run, from its options, the backbone it builds and the data it has.

    ``batch`` and ``steps_per_epoch`` are the data's (the batch capped to the images); ``max_steps``
    the run's length (the option's, or the one ``--minutes`` fitted). The derived values are computed
    here alone: global batch, optimiser choice, scaled lr, schedule length and warm-up (at most half
    the run), and the notes on blur, SyncBatchNorm and precision. ``store_size`` is the side of the
    data's store (default: the training size). The options left as None (lr, weight decay, warm-up,
    τ_base, backbone lr scale) follow the run's length in epochs, its optimiser and ``start``
    (:func:`sslprobe.pretraining.recipe.fit_defaults`); ``batchnorm``: whether the backbone has
    BatchNorm (``auto`` picks AdamW where it has none).
    """
    o = options
    data, epochs, optimizer, seed = str(o.data), o.epochs, o.optimizer, o.seed
    gb = batch * dist.world
    name = pick_optimizer(optimizer, batch=gb, batchnorm=batchnorm)
    total = steps_per_epoch * epochs if max_steps is None else max_steps
    start = start or Start()
    fit = fit_defaults(optimizer=name, epochs=total / steps_per_epoch, trained=start.trained, lr=o.lr,
                       weight_decay=o.weight_decay, tau_base=o.tau_base, warmup_epochs=o.warmup_epochs,
                       backbone_lr_scale=o.backbone_lr_scale)
    sync = ("n/a (one process)" if dist.world == 1 else "yes" if ddp.sync_batchnorm_supported(device)
            else "no: SyncBatchNorm has no CPU kernel, each rank normalises over its own slice")
    return RunSpec(
        data=data, model=spec.model, image_size=spec.image_size, small_stem=spec.small_stem, in_chans=spec.in_chans,
        store_size=spec.image_size if store_size is None else store_size, batch_size=batch,
        world_size=dist.world, global_batch=gb, epochs=epochs, max_steps=max_steps, steps_per_epoch=steps_per_epoch,
        total_steps=total, optimizer=name, lr=fit.base_lr * gb / 256, base_lr=fit.base_lr,
        weight_decay=fit.weight_decay,
        warmup_steps=schedules.warmup_steps(fit.warmup_epochs, steps_per_epoch=steps_per_epoch, total=total),
        tau_base=fit.tau_base, start=start, backbone_lr_scale=fit.backbone_lr_scale, defaults=fit.note,
        proj_hidden=o.proj_hidden, proj_dim=o.proj_dim, seed=seed, views=views,
        blur=blur_note(spec.image_size, o.augment.blur),
        sync_batchnorm=sync, precision="bfloat16 autocast" if device.type == "cuda" else "float32",
        device=device.type, options=o.to_json())


def make_optimizer(name: str, model: torch.nn.Module, *, lr: float, weight_decay: float,
                   backbone_lr_scale: float = 1.0) -> torch.optim.Optimizer:
    """LARS, momentum SGD or AdamW over ``model`` with BYOL's parameter groups (no decay/LARS on biases and norms).

    ``backbone_lr_scale``: the backbone's groups run at that fraction of ``lr`` (each group's ``lr_scale``).
    """
    if name not in ("lars", "sgd", "adamw"):
        raise SSLProbeError(f"unknown optimizer '{name}'; use auto, lars, sgd or adamw")
    groups = param_groups(model, weight_decay=weight_decay, backbone_lr_scale=backbone_lr_scale)
    for g in groups:
        g["lr"] = lr * g["lr_scale"]
    return optim.make_optimizer(name, groups, lr=lr, momentum=0.9, trust=1e-3)


def open_init(init: str, *, model: str | None, image_size: int | None, small_stem: bool | None, seed: int,
              in_chans: int) -> tuple[torch.nn.Module, BackboneSpec, Start]:
    """The backbone ``--init`` names (``starts``): timm's training init (zero-initialised residual branches, not
    extract's fair one), hub weights or a file; ``model`` defaults to ``resnet18`` where no file names one."""
    opened = open_start(parse_start(init, names=STARTS), model=model or (DEFAULT_MODEL if init in STARTS else None),
                        image_size=image_size, small_stem=small_stem, seed=seed, random_init="train",
                        in_chans=in_chans, flag="--init")
    return opened.net, opened.spec, opened.start


def build_byol(cfg: RunSpec, *, device: torch.device,
               dist: ddp.Dist | None = None) -> tuple[torch.nn.Module, torch.optim.Optimizer, BackboneSpec]:
    """The seeded BYOL module on ``device`` (DDP-wrapped when ``dist.world > 1``), its optimiser, the backbone spec.

    Online and target backbone start alike from ``cfg.start``; the projector and predictor start fresh.
    """
    opened = open_start(cfg.start, model=cfg.model, image_size=cfg.image_size, small_stem=cfg.small_stem,
                        seed=cfg.seed, random_init="train", in_chans=cfg.in_chans, flag="--init")
    backbone, spec = opened.net, opened.spec
    with torch.random.fork_rng(devices=[]):  # seed the heads' init without touching the caller's RNG
        torch.manual_seed(cfg.seed)
        net = BYOL(backbone, feature_dim=backbone.num_features, hidden=cfg.proj_hidden, out=cfg.proj_dim).to(device)
    # channels_last on the CPU too: oneDNN's convolutions run in that layout, and a test_resnet step at 64 px,
    # batch 64 (fp32, 2 cores) took 0.44–0.53 s in it against 0.69–0.71 s contiguous (bench/RESULTS.md, issue 23)
    net = net.to(memory_format=torch.channels_last)
    net = ddp.wrap(net, dist or ddp.Dist(), device)
    opt = make_optimizer(cfg.optimizer, net, lr=cfg.lr, weight_decay=cfg.weight_decay,
                         backbone_lr_scale=cfg.backbone_lr_scale)
    return net, opt, spec


def step_seed(seed: int, rank: int, step: int) -> int:
    """Augmentation seed of one step on one rank (splitmix64 of the three): resumable, rank-distinct."""
    x = (seed * 0x9E3779B97F4A7C15 + rank * 0xBF58476D1CE4E5B9 + step) & 0xFFFFFFFFFFFFFFFF
    for mul, shift in ((0xBF58476D1CE4E5B9, 30), (0x94D049BB133111EB, 27)):
        x = ((x ^ (x >> shift)) * mul) & 0xFFFFFFFFFFFFFFFF
    return (x ^ (x >> 31)) & 0x7FFFFFFFFFFFFFFF


@dataclass(frozen=True)
class ViewMaker:
    """The two views of one step as a pure function of (seed, rank, step) and the batch.

    Picklable and free of the model, so DataLoader workers can run it (the CPU path) and give the
    same views, bit for bit, as the training process would: a resume needs nothing but the step.
    """

    views: tuple[ViewConfig, ViewConfig]
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    seed: int
    rank: int = 0

    def __call__(self, x: torch.Tensor, step: int, *, generator: torch.Generator | None = None,
                 aspect: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``x``: a store batch; ``aspect`` (B,): its images' width / height (None: square images)."""
        g = generator if generator is not None else torch.Generator(device=x.device)
        g.manual_seed(step_seed(self.seed, self.rank, step))
        kw = {"size": self.size, "mean": self.mean, "std": self.std, "generator": g, "aspect": aspect}
        return make_view(x, self.views[0], **kw), make_view(x, self.views[1], **kw)


class TrainStep:
    """One BYOL step on a uint8 (B, 3, S, S) batch already on the device; returns device tensors, no host sync.

    ``model_step(v1, v2, step)`` is the same step on ready-made views (the "model-only" rate).
    ``mutating`` is True from the optimiser update to the EMA update: an interrupt there leaves a
    half-updated state that must not be saved.
    """

    def __init__(self, net: torch.nn.Module, opt: torch.optim.Optimizer, *, cfg: RunSpec, spec: BackboneSpec,
                 device: torch.device, rank: int = 0, compile: bool = False):
        self.net, self.opt, self.cfg, self.spec, self.device, self.rank = net, opt, cfg, spec, device, rank
        self.byol: BYOL = net.module if hasattr(net, "module") else net
        self.gen = torch.Generator(device=device)
        self.make_views = ViewMaker(cfg.views, spec.image_size, tuple(spec.mean), tuple(spec.std), cfg.seed, rank)
        self.forward, self.compile_note = net, "off"
        if compile:
            try:
                self.forward, self.compile_note = torch.compile(net), "on"
            except Exception as e:  # noqa: BLE001  (no compiler on this machine, unsupported Python …)
                self.compile_note = f"off ({type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''})"
        self.cuda = device.type == "cuda"
        self.mutating = False
        self._first = True

    def views(self, x: torch.Tensor, step: int,
              aspect: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The two augmented views of step ``step`` (seeded by seed, rank and step, so resumable)."""
        return self.make_views(x, step, generator=self.gen, aspect=aspect)

    def _loss(self, v1: torch.Tensor, v2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.cuda):
            if not self._first or self.forward is self.net:
                return self.forward(v1, v2, return_std=True)
            self._first = False
            try:
                return self.forward(v1, v2, return_std=True)
            except Exception as e:  # noqa: BLE001  (compilation happens at the first call; fall back to eager once)
                self.forward, self.compile_note = self.net, f"off (compile failed: {type(e).__name__})"
                warnings.warn(f"--compile failed ({type(e).__name__}); continuing without it", stacklevel=2)
                return self.forward(v1, v2, return_std=True)

    def model_step(self, v1: torch.Tensor, v2: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward, backward, optimiser and EMA update at schedule position ``step``; (loss, proj_std)."""
        lr = warmup_cosine(step, self.cfg.total_steps, peak=self.cfg.lr, warmup=self.cfg.warmup_steps)
        for g in self.opt.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)
        # the network's layout (build_byol); views made in DataLoader workers arrive contiguous
        v1, v2 = v1.contiguous(memory_format=torch.channels_last), v2.contiguous(memory_format=torch.channels_last)
        loss, proj_std = self._loss(v1, v2)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.mutating = True
        self.opt.step()
        self.byol.update_target(cosine_to_one(step, self.cfg.total_steps, self.cfg.tau_base))
        self.mutating = False
        return loss.detach(), proj_std

    def __call__(self, x: torch.Tensor, step: int,
                 aspect: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model_step(*self.views(x, step, aspect), step)


class StepFeed:
    """Each step's inputs from run step ``start`` on, and the step that takes them, for both places views are made.

    On CPU with the images cached in host memory and workers to spare, the DataLoader workers make
    the views beside the model step (the same views: a pure function of seed, rank and step); else
    the uint8 batch goes to the device and :class:`TrainStep` makes them there (faster on a GPU).
    """

    def __init__(self, source: BatchSource, step: TrainStep, *, start: int):
        self.in_workers = step.device.type == "cpu" and source.can_map
        self._batches = source.mapped(step.make_views, start=start) if self.in_workers else source.batches(start=start)
        self._step = step

    def next(self) -> tuple[int, tuple[torch.Tensor, ...]]:
        """``(step, inputs)``: the two views, or the uint8 batch and its aspects to make them from; ``inputs[0]`` has
        B rows."""
        s, *item = next(self._batches)
        return s, tuple(item[0]) if self.in_workers else tuple(item)

    def train(self, inputs: tuple[torch.Tensor, ...], step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The training step on ``next()``'s inputs: (loss, proj_std) as device tensors."""
        if self.in_workers:
            return self._step.model_step(*inputs, step)
        x, aspect = inputs
        return self._step(x, step, aspect)

    def close(self) -> None:
        """Shut the DataLoader workers down now, not when the generator is collected."""
        self._batches.close()
