#!/usr/bin/env python3
"""The study a user would run: does BYOL on Fashion-MNIST beat the baselines, with how many labels?

Every row goes through the same path (``sslprobe.extraction.extract`` → ``sslprobe.probing.probe``: linear probe with
C chosen on a 20 % hold-out and refit, kNN k=20, label-efficiency curves):

  raw pixels          the resized pixels themselves (``--weights pixels``)
  random init         the backbone at its seeded random initialisation
  BYOL N steps        ``sslprobe.pretraining.pretrain`` snapshots of ONE run at increasing step budgets
                      (``stop_at`` + ``resume``; the schedule is the full run's, so a snapshot is
                      "this run after N steps", as in a training curve)
  lightly BYOL        lightly's implementation (BYOLTransform in DataLoader workers, its heads, loss
                      and momentum update) on the same backbone, heads, optimiser, lr schedule,
                      batch and step budget as the largest BYOL row: the reference of issue 7

The lightly row's loss is scaled to sslprobe's gradient (option (b) of the fairness fix, not
"lightly's own recipe"). sslprobe's loss (``sslprobe.pretraining.byol``) is the paper's symmetrised
‖p̂₁ − ẑ₂‖² + ‖p̂₂ − ẑ₁‖² = (2 − 2cos₁₂) + (2 − 2cos₂₁) = 4 − 2(cos₁₂ + cos₂₁) per image, while
lightly's is 0.5·(NCS(p₀, z₁) + NCS(p₁, z₀)) = −0.5(cos₀₁ + cos₁₀), NCS = −mean cos. So
sslprobe's = 4 + 4 × lightly's, and its gradient is exactly 4× lightly's: trained with lightly's
loss as is but sslprobe's optimiser and lr, the lightly row took 4× smaller SGD steps on every
weight (under LARS the trust ratio cancels the scale on the adapted weights, not on biases and
BatchNorm), which confounded the BYOL-vs-lightly comparison. The row therefore minimises
``LIGHTLY_LOSS_SCALE`` (= 4) × lightly's loss: the same gradient as sslprobe's loss, hence the same
step under SGD and under LARS, and the same weight decay (multiplying the lr by 4 instead would
also have multiplied the decay, so it is the loss that is scaled). Why not (a), lightly's
examples/pytorch/byol.py recipe: it differs from sslprobe's in far more than the lr (plain SGD
lr 0.06 with no momentum, no weight decay, no warm-up or lr schedule, the momentum τ stepped per
epoch from 0.996, batch 256), so its row would measure those choices, not the implementation.
study.json's "lightly" entry records the optimiser, lrs, warm-up, weight decay and loss scale used.

Profiles:
  cpu  timm test_resnet (0.37 M params), 32 px, small-image stem, 512-wide heads, batch 128 —
       fits in ≤ 30 minutes on 2 cores (the model is small; the protocol is the real one)
  gpu  ResNet-18, small-image stem, 32 px, the paper's 4096-wide heads, batch 512, LARS

    python bench/study_fashion_mnist.py --profile cpu --work /tmp/study
    python bench/study_fashion_mnist.py --profile gpu --work /tmp/study-gpu

Writes WORK/study.json (every number and wall time), WORK/study.md (the table) and the
label-efficiency plot at --plot (default docs/study_label_efficiency_<profile>.png).
lightly is a bench-only dependency (``pip install -e .[bench]``); ``--no-lightly`` skips its row.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

# As the CLI does: busy-waiting OpenMP threads slow 4-20x when another process holds a core.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

from sslprobe.backbone import create_backbone, save_backbone
from sslprobe.extraction.extract import extract
from sslprobe.fileio import write_json
from sslprobe.pretraining.pretrain import pretrain
from sslprobe.probing.compare import compare

ROOT = Path(__file__).resolve().parents[1]
FMNIST_SCRIPT = ROOT.parent / "shared" / "data" / "fashion_mnist.py"

PROFILES = {
    "cpu": {"model": "test_resnet", "image_size": 32, "batch": 128, "budgets": (200, 600), "proj_hidden": 512,
            "optimizer": "sgd", "lr": 0.1, "tau_base": 0.99, "warmup_epochs": 0.2, "workers": 1,
            "extract_batch": 256},
    "gpu": {"model": "resnet18", "image_size": 32, "batch": 512, "budgets": (500, 1000, 2000), "proj_hidden": 4096,
            "optimizer": "lars", "lr": None, "tau_base": 0.99, "warmup_epochs": 1.0, "workers": 8,
            "extract_batch": 1024},
}
FRACTIONS = (0.01, 0.1, 1.0)
LIGHTLY_WD = 1.5e-6  # both BYOL rows are given this decay explicitly (pretrain() would fit 1e-6 here)
SHOTS = (1, 5, 25)


def fashion_mnist(root: Path, *, per_class: int | None) -> Path:
    """Fashion-MNIST as class folders (all 60,000 train / 10,000 test unless ``per_class``), written once."""
    if not (root / ".complete").exists():
        cut = [] if per_class is None else ["--per-class", str(per_class), "--test-per-class", str(per_class)]
        subprocess.run([sys.executable, str(FMNIST_SCRIPT), str(root), *cut], check=True)
        (root / ".complete").touch()
    return root


# sslprobe's loss = 4 + LIGHTLY_LOSS_SCALE × lightly's (module docstring): the same gradient, hence step.
LIGHTLY_LOSS_SCALE = 4.0


def lightly_row(steps: int) -> str:
    """The lightly row's name, saying how it was made fair (it is also the table and plot label)."""
    return f"lightly BYOL {steps} steps (lightly loss ×{LIGHTLY_LOSS_SCALE:g} = sslprobe's gradient scale)"


def train_lightly(data: Path, *, out: Path, p: dict, steps: int, seed: int, device: str) -> dict:
    """lightly's BYOL loop (its examples/pytorch/byol.py) for ``steps`` steps with sslprobe's optimiser, lr
    schedule and gradient scale; returns what was used (optimiser, lrs, loss scale, ...) and the wall seconds."""
    import copy

    from lightly.loss import NegativeCosineSimilarity
    from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
    from lightly.models.utils import deactivate_requires_grad, update_momentum
    from lightly.transforms import BYOLTransform, BYOLView1Transform, BYOLView2Transform
    from lightly.utils.scheduler import cosine_schedule
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder

    from sslprobe.pretraining.recipe import default_lr
    from sslprobe.pretraining.trainstep import make_optimizer
    from sslprobe.schedules import warmup_cosine

    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       "cpu" if device == "auto" else device)
    bb, spec = create_backbone(p["model"], init="train", image_size=p["image_size"], seed=seed)  # as pretrain()
    torch.manual_seed(seed)
    proj = BYOLProjectionHead(bb.num_features, p["proj_hidden"], 256)
    pred = BYOLPredictionHead(256, p["proj_hidden"], 256)
    online = torch.nn.ModuleDict({"backbone": bb, "proj": proj, "pred": pred}).to(dev)
    bb_m, proj_m = copy.deepcopy(bb).to(dev), copy.deepcopy(proj).to(dev)
    deactivate_requires_grad(bb_m)
    deactivate_requires_grad(proj_m)
    # The paper's blur policy, as sslprobe applies it: none at ≤ 64 px.
    blur = (1.0, 0.1) if spec.image_size > 64 else (0.0, 0.0)
    norm = {"mean": list(spec.mean), "std": list(spec.std)}
    tf = BYOLTransform(
        view_1_transform=BYOLView1Transform(input_size=spec.image_size, gaussian_blur=blur[0], normalize=norm),
        view_2_transform=BYOLView2Transform(input_size=spec.image_size, gaussian_blur=blur[1], normalize=norm))
    loader = DataLoader(ImageFolder(str(data), transform=tf), batch_size=p["batch"], shuffle=True, drop_last=True,
                        num_workers=p["workers"], persistent_workers=p["workers"] > 0, pin_memory=dev.type == "cuda",
                        generator=torch.Generator().manual_seed(seed))
    opt_name = p["optimizer"]
    base = p["lr"] if p["lr"] is not None else default_lr(opt_name)
    peak, wd = base * p["batch"] / 256, LIGHTLY_WD  # as pretrain(): base lr per 256 images; the same decay
    opt = make_optimizer(opt_name, online, lr=peak, weight_decay=wd)
    crit = NegativeCosineSimilarity()
    warm = min(round(p["warmup_epochs"] * len(loader)), steps // 2)  # pretrain()'s warm-up steps
    cuda = dev.type == "cuda"
    t0, k = time.perf_counter(), 0
    while k < steps:
        for (x0, x1), _ in loader:
            if k == steps:
                break
            lr = warmup_cosine(k, steps, peak=peak, warmup=warm)  # pretrain()'s schedule, every group alike
            for g in opt.param_groups:
                g["lr"] = lr
            m = cosine_schedule(k, steps, p["tau_base"], 1)
            update_momentum(bb, bb_m, m=m)
            update_momentum(proj, proj_m, m=m)
            x0, x1 = x0.to(dev, non_blocking=True), x1.to(dev, non_blocking=True)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                p0, p1 = pred(proj(bb(x0))), pred(proj(bb(x1)))
                with torch.no_grad():
                    z0, z1 = proj_m(bb_m(x0)), proj_m(bb_m(x1))
                loss = 0.5 * (crit(p0.float(), z1.float()) + crit(p1.float(), z0.float()))  # lightly's loss
            (LIGHTLY_LOSS_SCALE * loss).backward()  # sslprobe's gradient scale (module docstring)
            opt.step()
            opt.zero_grad(set_to_none=True)
            k += 1
            if k % 50 == 0:
                print(f"  lightly step {k}/{steps} loss {loss.item():.4f} (as sslprobe's: "
                      f"{4 + LIGHTLY_LOSS_SCALE * loss.item():.4f}) "
                      f"{k * p['batch'] / (time.perf_counter() - t0):.0f} img/s", file=sys.stderr)
    secs = time.perf_counter() - t0
    save_backbone(bb, spec, out)
    return {"fairness": f"(b) identical gradient scale: lightly's loss x {LIGHTLY_LOSS_SCALE:g} (= sslprobe's "
                        "gradient), sslprobe's optimiser, lr and lr schedule",
            "loss": "loss_scale * 0.5 * (NCS(p0, z1) + NCS(p1, z0))",
            "loss_scale": LIGHTLY_LOSS_SCALE, "optimizer": opt_name, "base_lr": base, "peak_lr": peak,
            "lr_schedule": "sslprobe.schedules.warmup_cosine (linear warm-up, cosine to 0)", "warmup_steps": warm,
            "weight_decay": wd, "momentum": 0.9 if opt_name in ("sgd", "lars") else None,
            "tau": f"lightly cosine_schedule(step, {steps}, {p['tau_base']}, 1), EMA before each step",
            "batch": p["batch"], "steps": steps, "lightly": _lightly_version(), "train_s": round(secs, 1)}


def _lightly_version() -> str:
    import lightly

    return getattr(lightly, "__version__", "?")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    ap.add_argument("--work", type=Path, default=Path("/tmp/sslprobe-study"))
    ap.add_argument("--budgets", type=str, default=None, help="comma-separated BYOL step budgets (override)")
    ap.add_argument("--no-lightly", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--plot", type=Path, default=None)
    ap.add_argument("--per-class", type=int, default=None, help="smoke test on N images per class")
    ap.add_argument("--layers", choices=("auto", "last"), default="auto",
                    help="auto (the study's default): each row's best of its last stages, chosen on the C search's "
                         "hold-out; last: the pooled last layer only")
    a = ap.parse_args()
    p = dict(PROFILES[a.profile])
    if a.budgets:
        p["budgets"] = tuple(int(b) for b in a.budgets.split(","))
    budgets = sorted(p["budgets"])
    work = a.work
    work.mkdir(parents=True, exist_ok=True)
    data = fashion_mnist(work / "fashion-mnist", per_class=a.per_class)
    train, test = data / "train", data / "test"
    cache = work / "cache"
    times: dict[str, float] = {}
    # One input rule (docs/study.md "One input"): the pixel row takes the network rows' size and centre crop.
    weights: dict[str, dict] = {"raw pixels": {"weights": "pixels", "model": p["model"]},
                                "random init": {"weights": "random", "model": p["model"]}}

    # One BYOL run, snapshotted at each budget (resume continues it exactly).
    run = work / "byol-run"
    t_train = 0.0
    for b in budgets:
        snap = work / f"byol-{b}.safetensors"
        if not snap.exists():
            t0 = time.perf_counter()
            pretrain(train, out=run, model=p["model"], image_size=p["image_size"], batch_size=p["batch"],
                     max_steps=budgets[-1], stop_at=b if b < budgets[-1] else None, optimizer=p["optimizer"],
                     lr=p["lr"], tau_base=p["tau_base"], warmup_epochs=p["warmup_epochs"], weight_decay=LIGHTLY_WD,
                     proj_hidden=p["proj_hidden"], seed=a.seed, device=a.device, workers=p["workers"],
                     resume="auto", save_every="10m")
            t_train += time.perf_counter() - t0
            shutil.copyfile(run / "backbone.safetensors", snap)
        times[f"BYOL {b} steps (training, cumulative)"] = round(t_train, 1)
        weights[f"BYOL {b} steps"] = {"weights": str(snap)}
    lightly_info = None
    if not a.no_lightly:
        # A new name: a snapshot from before the fix (lightly-N.safetensors, unscaled loss) is not reused.
        snap = work / f"lightly-{budgets[-1]}-loss-x{LIGHTLY_LOSS_SCALE:g}.safetensors"
        info_path = snap.with_suffix(".json")
        if not (snap.exists() and info_path.exists()):
            lightly_info = train_lightly(train, out=snap, p=p, steps=budgets[-1], seed=a.seed, device=a.device)
            write_json(info_path, lightly_info)
        else:
            lightly_info = json.loads(info_path.read_text())
        times[f"lightly BYOL {budgets[-1]} steps (training)"] = lightly_info["train_s"]
        weights[lightly_row(budgets[-1])] = {"weights": str(snap)}

    sets = {}
    for name, w in weights.items():
        key = name.replace(" ", "-")
        t0 = time.perf_counter()
        for split, folder in (("train", train), ("test", test)):
            extract(folder, out=work / "feats" / key / split, model=w.get("model"), weights=w["weights"],
                    image_size=w.get("image_size", p["image_size"]), batch_size=p["extract_batch"],
                    seed=a.seed, device=a.device, cache_dir=cache,
                    layers="last" if w["weights"] == "pixels" else a.layers)
        times[f"{name} (extract train+test)"] = round(time.perf_counter() - t0, 1)
        sets[name] = {"train": work / "feats" / key / "train", "test": work / "feats" / key / "test"}

    t0 = time.perf_counter()
    layer_choices = choose_layers(sets, seed=a.seed, device=a.device)
    times["layer choice (all rows)"] = round(time.perf_counter() - t0, 1)

    t0 = time.perf_counter()
    rows = compare(sets, out=work / "reports", fractions=FRACTIONS, shots=SHOTS, seeds=3, seed=a.seed,
                   device=a.device, show_progress=True)
    times["probe + kNN + label efficiency (all rows)"] = round(time.perf_counter() - t0, 1)

    from sslprobe.probing.report import summary  # without the draws' predictions (megabytes at 10k rows)

    result = {"profile": a.profile, "recipe": p, "fractions": FRACTIONS, "shots": SHOTS, "seeds": 3,
              "hardware": f"{platform.machine()}, {torch.get_num_threads()} threads, "
                          + (torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU only"),
              "torch": torch.__version__, "lightly": lightly_info, "times_s": times, "layers": a.layers,
              "rows": {}}
    for name, r in rows:
        knn_test = r.knn.test if r.knn is not None else None
        result["rows"][name] = {"linear_top1": r.test.top1, "linear_top1_ci": r.test.interval("top1"),
                                "balanced_accuracy": r.test.balanced_accuracy,
                                "knn_top1": knn_test.top1 if knn_test is not None else None,
                                "knn_top1_ci": knn_test.interval("top1") if knn_test is not None else None,
                                "knn_k": r.knn.k if r.knn is not None else None, "C": r.C, "dim": r.dim,
                                "selection": r.selection.to_json() if r.selection else None, "warnings": r.warnings,
                                "layer": layer_choices.get(name),
                                "label_efficiency": r.label_efficiency and summary(r.label_efficiency)["points"]}
    result["paired_tests"] = [q.to_json() for q in rows[0][1].paired_tests or []]
    write_json(work / "study.json", result)
    md = table(result)
    (work / "study.md").write_text(md)
    print(md)
    plot_path = a.plot or ROOT / "docs" / f"study_label_efficiency_{a.profile}.png"
    plot(result, plot_path)
    print(f"plot: {plot_path}")


def choose_layers(sets: dict[str, dict[str, Path]], *, seed: int, device: str) -> dict[str, dict]:
    """Each row's best layer, as the study chooses it (sslprobe.probing.layers): one C search per candidate on the
    same 20 % hold-out of train the probe then uses for C; the test rows never reach it. Rewrites ``sets`` to the
    chosen layers' folders and returns the choices (a row with one layer is left as it is)."""
    from sslprobe.config.probe import ProbeProtocol
    from sslprobe.probing.features import load_features
    from sslprobe.probing.layers import choose_layer
    from sslprobe.study.slices import layer_dirs

    protocol, choices = ProbeProtocol(seed=seed, device=device), {}
    for name, s in sets.items():
        train, test = layer_dirs(s["train"]), layer_dirs(s["test"])
        if len(train) < 2:
            continue
        choice = choose_layer({layer: (load_features(d), None) for layer, d in train.items()}, protocol=protocol)
        s["train"], s["test"] = train[choice.layer], test[choice.layer]
        choices[name] = choice.to_json()
        print(f"{name}: layer {choice.layer} (validation " + ", ".join(
            f"{c.layer} {100 * c.val:.1f}" for c in choice.candidates) + ")")
    return choices


def _cell(point: dict | None, method: str) -> str:
    s = (point or {}).get(method)
    if not s:
        return "–"
    return f"{100 * s['mean']:.1f}" + (f" ± {100 * s['std']:.1f}" if s.get("std") else "")


def _ci(value: float, ci: list[float] | None) -> str:
    return f"{100 * value:.1f} %" + (f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else "")


def table(result: dict) -> str:
    """Markdown: linear and kNN top-1 per row, then the label-efficiency points (linear, mean ± std)."""
    pts = next(iter(result["rows"].values()))["label_efficiency"] or []
    heads = [f"{100 * q['value']:g} %" if q["kind"] == "fraction" else f"{q['value']:g}-shot" for q in pts]
    out = ["| features | linear top-1 [95 % CI] | kNN top-1 [95 % CI] | " + " | ".join(f"linear {h}" for h in heads)
           + " |", "| --- | --- | --- | " + " | ".join("---" for _ in heads) + " |"]
    for name, r in result["rows"].items():
        le = r["label_efficiency"] or []
        knn = "–" if r["knn_top1"] is None else f"{_ci(r['knn_top1'], r.get('knn_top1_ci'))} (k={r.get('knn_k')})"
        layer = f" ({r['layer']['layer']}, chosen on the hold-out)" if r.get("layer") else ""
        out.append(f"| {name}{layer} | {_ci(r['linear_top1'], r.get('linear_top1_ci'))} | {knn} | "
                   + " | ".join(_cell(q, "linear") for q in le) + " |")
    out.append("")
    pairs = [q for q in result.get("paired_tests", []) if q.get("paired")]
    if pairs:
        from sslprobe.probing.report import verdict_sentence
        from sslprobe.results import PairedTest

        out += ["| A | B | Δ (metric) [CI at its level] | p | p adjusted | significant |",
                "| --- | --- | --- | --- | --- | --- |"]
        out += [f"| {q['a']} | {q['b']} | {100 * q['difference']:+.1f} [{100 * q['ci'][0]:+.1f}, "
                f"{100 * q['ci'][1]:+.1f}] ({q['metric']}, {100 * q['level']:.3g} %) | {q['p']:.2g} | "
                f"{q['p_adjusted']:.2g} | {'yes' if q['significant'] else 'no'} |" for q in pairs]
        out += ["", verdict_sentence([PairedTest.from_json(q) for q in pairs]), ""]
    out.append("Wall times (s): " + "; ".join(f"{k} {v}" for k, v in result["times_s"].items()))
    return "\n".join(out) + "\n"


def plot(result: dict, path: Path) -> None:
    """Linear-probe test top-1 against labels per class, one line per feature set (mean ± std band)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, r in result["rows"].items():
        pts = sorted(r["label_efficiency"] or [], key=lambda q: q["n_train"])
        x = [q["n_train"] / 10 for q in pts]  # 10 balanced classes
        m = [100 * q["linear"]["mean"] for q in pts]
        s = [100 * q["linear"]["std"] for q in pts]
        (line,) = ax.plot(x, m, marker="o", label=name)
        ax.fill_between(x, [a - b for a, b in zip(m, s)], [a + b for a, b in zip(m, s)], alpha=0.15,
                        color=line.get_color())
    ax.set_xscale("log")
    ax.set_xlabel("labelled training images per class (log scale)")
    ax.set_ylabel("linear probe test top-1 (%)")
    ax.set_title(f"Fashion-MNIST label efficiency ({result['profile']} profile)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
