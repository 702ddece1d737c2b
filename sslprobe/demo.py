"""``sslprobe demo``: the whole workflow on the built-in Fashion-MNIST sample, as a newcomer would run it.

The sample (sslprobe/sample/fashion_mnist_sample.npz) is 2,000 train / 500 test images, 200 / 50
per class, the first of each class in Fashion-MNIST (Zalando, MIT licence). The demo writes them as
class folders, BYOL-pretrains a small ResNet on the train images (labels unused), embeds both splits
through three "backbones" (raw pixels, random init, BYOL) and probes each.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from rich.console import Console

SAMPLE = "fashion_mnist_sample.npz"


@dataclass(frozen=True)
class DemoRecipe:
    """The short BYOL run the demo uses: sized to finish in ~3 minutes on 2 CPU cores."""

    model: str = "test_resnet"
    image_size: int = 32
    batch_size: int = 128
    steps: int = 250
    optimizer: str = "sgd"
    lr: float = 0.1
    tau_base: float = 0.99
    warmup_epochs: float = 2.0
    proj_hidden: int = 512  # the paper's 4096 would be most of the CPU step at 32 px


def write_sample(out: Path) -> Path:
    """Materialise the packaged sample as ``out/{train,test}/<class>/<i>.png``; reuse it if present."""
    import numpy as np
    from PIL import Image

    done = out / ".complete"
    if done.exists():
        return out
    with resources.files("sslprobe.sample").joinpath(SAMPLE).open("rb") as f:
        arrays = dict(np.load(f))
    classes = [str(c) for c in arrays["classes"]]
    for split in ("train", "test"):
        for i, (img, lab) in enumerate(zip(arrays[f"{split}_images"], arrays[f"{split}_labels"])):
            d = out / split / classes[int(lab)]
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img, "L").save(d / f"{i:05d}.png")
    done.touch()  # written last: a half-written sample is redone, never trusted
    return out


def run_demo(*, out: Path, steps: int | None = None, device: str = "auto",
             console: Console | None = None) -> list[tuple[str, dict]]:
    """Run the three commands for three feature sets and print one comparison table."""
    from sslprobe.extraction.extract import extract
    from sslprobe.pretraining.pretrain import pretrain
    from sslprobe.probing.compare import compare
    from sslprobe.probing.features import resolve_sets
    from sslprobe.probing.report import render_comparison

    console = console or Console()
    r = DemoRecipe() if steps is None else DemoRecipe(steps=steps)
    t0 = time.perf_counter()
    data = write_sample(out / "data")
    train, test = data / "train", data / "test"
    commands: list[str] = []

    def say(cmd: str) -> None:
        commands.append(cmd)
        console.print(f"[bold cyan]$ {cmd}[/]")

    run_dir = out / "runs" / "byol"
    say(f"sslprobe pretrain {train} --out {run_dir} --model {r.model} --image-size {r.image_size} "
        f"--batch-size {r.batch_size} --max-steps {r.steps} --optimizer {r.optimizer} --lr {r.lr} "
        f"--tau-base {r.tau_base} --warmup-epochs {r.warmup_epochs} --proj-hidden {r.proj_hidden} --device {device}")
    t_pre = time.perf_counter()
    pretrain(train, out=run_dir, model=r.model, image_size=r.image_size, batch_size=r.batch_size, max_steps=r.steps,
             optimizer=r.optimizer, lr=r.lr, tau_base=r.tau_base, warmup_epochs=r.warmup_epochs,
             proj_hidden=r.proj_hidden, device=device, workers=0)
    t_pre = time.perf_counter() - t_pre

    backbone = run_dir / "backbone.safetensors"
    sets = {
        "pixels": {"weights": "pixels", "image_size": r.image_size},
        "random": {"weights": "random", "model": r.model, "image_size": r.image_size},
        "byol": {"weights": str(backbone)},
    }
    for tag, kw in sets.items():
        flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in kw.items())
        for split, src in (("train", train), ("test", test)):
            say(f"sslprobe extract {src} --out {out / 'feats' / tag / split} {flags}")
            extract(src, out=out / "feats" / tag / split, device=device, workers=0, show_progress=False, **kw)
    # compare: one protocol for all three, paired tests on the same 500 test images, one verdict
    say("sslprobe compare " + " ".join(f"{tag}={out / 'feats' / tag}" for tag in sets) + f" --out {out / 'reports'}")
    rows = compare({tag: resolve_sets(out / "feats" / tag) for tag in sets}, out=out / "reports", device=device)

    console.print()
    render_comparison(rows, console=console)
    console.print(f"BYOL: {r.steps} steps of batch {r.batch_size} ({r.steps * r.batch_size / 2000:.0f} epochs of the "
                  f"2,000-image sample) in {t_pre:.0f} s; whole demo {time.perf_counter() - t0:.0f} s.")
    console.print("Reproduce or adapt it with the commands above (printed as they ran).")
    return rows
