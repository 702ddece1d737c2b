"""``sslprobe demo``: the whole workflow on the built-in Fashion-MNIST sample, as a newcomer would run it.

The sample (sslprobe/sample/fashion_mnist_sample.npz) is 2,000 train / 500 test images, 200 / 50
per class, the first of each class in Fashion-MNIST (Zalando, MIT licence). The demo writes them as
class folders and runs ``sslprobe study`` on them: BYOL-pretrains a small ResNet on the train images
(labels unused, the validation fifth held out), embeds every image through three "backbones" (raw
pixels, random init, BYOL), probes each and writes the study's report.
"""
from __future__ import annotations

import sys
import time
from importlib import resources
from pathlib import Path

from rich.console import Console

from sslprobe.config.study import ByolRecipe, StudyConfig

SAMPLE = "fashion_mnist_sample.npz"


DEMO_STEPS = 250  # BYOL steps of batch 128: ~16 epochs of the sample's 1,600 pretraining images


def demo_config(*, out: Path, data: Path, steps: int = DEMO_STEPS, device: str = "auto",
                command: str = "") -> StudyConfig:
    """The demo's study: three arms, a short BYOL run and a small label curve, sized for ~3 minutes on 2 CPU cores."""
    return StudyConfig(
        data=str(data / "train"), out=out / "study", test=str(data / "test"), arms=("pixels", "random", "byol"),
        model="test_resnet", image_size=32, steps=steps,
        # the paper's 4096-wide heads would be most of the CPU step at 32 px
        byol=ByolRecipe(batch_size=128, optimizer="sgd", lr=0.1, tau_base=0.99, warmup_epochs=2.0, proj_hidden=512),
        fractions=(0.1, 1.0), shots=(), seeds=2,  # a small label curve: each 10 % draw is ~5-fold CV fits
        device=device, workers=0, command=command)


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
    """The sample as a study (sslprobe.study): BYOL against raw pixels and random init, the report in out/study.

    The sample's 500 test images are the study's fixed test set; val is drawn from the train images
    and kept out of pretraining, like every val and test image (docs/study.md).
    """
    from sslprobe.study.run import study

    console = console or Console()
    t0 = time.perf_counter()
    data = write_sample(out / "data")
    command = f"sslprobe demo --out {out}" + (f" --steps {steps}" if steps is not None else "") + \
        (f" --device {device}" if device != "auto" else "")
    config = demo_config(out=out, data=data, steps=steps or DEMO_STEPS, device=device, command=command)
    console.print(f"[bold cyan]$ {command}[/]  (a study of {', '.join(config.arms)} on the built-in sample)")
    result = study(config, show_progress=sys.stderr.isatty(), console=console)
    pre = next((a.stages["pretrain"] for a in result.arms if "pretrain" in a.stages), None)
    trained = (f"BYOL: {config.steps} steps of batch {config.byol.batch_size} on the train images less val; "
               if pre else "")
    console.print(f"{trained}whole demo {time.perf_counter() - t0:.0f} s. Open {result.files['report.html']} in a "
                  "browser; the commands behind each stage are in its Commands section.")
    return result.rows
