"""`sslprobe study`: the data, the arms, the BYOL recipe and budget they share, the probe protocol (docs/study.md)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sslprobe.config import common
from sslprobe.config import rules as r
from sslprobe.config.base import Config, option
from sslprobe.config.pretrain import OPTIMIZERS, PretrainConfig
from sslprobe.config.probe import SEARCHES
from sslprobe.errors import SSLProbeError

BYOL = "BYOL recipe (every BYOL arm)"  # --help panel
STUDY_ARMS = ("pixels", "random", "random-rescaled", "imagenet", "byol", "byol-imagenet", "finetune-random",
              "finetune-imagenet", "finetune-byol")
ARMS_CPU = ("pixels", "random", "byol")
ARMS_GPU = ("pixels", "random", "random-rescaled", "imagenet", "byol", "byol-imagenet")


def _text(name: str, path: Path | None) -> str | None:
    return None if path is None else str(path)


def _groups(name: str, value: str | None) -> None:
    """--groups: folder or folder:N (N ≥ 1), or a CSV file that exists (study/groups.py reads it)."""
    if value is None or value == "folder" or (value.startswith("folder:") and value[7:].isdigit()
                                              and int(value[7:]) >= 1):
        return
    if value.startswith("folder"):
        raise SSLProbeError(f"{name} '{value}' is not folder:N with N ≥ 1 (folder:1: the first folder level under "
                            "each class is the group)")
    if not Path(value).is_file():
        raise SSLProbeError(f"{name} '{value}' is neither folder:N nor an existing CSV file (columns path,group)")


def _names(name: str, text: str | None) -> tuple[str, ...]:
    return tuple(a for a in (text or "").replace(" ", "").split(",") if a)


@dataclass(frozen=True, kw_only=True)
class ByolRecipe(Config):
    """The BYOL options every BYOL arm of a study shares (the `pretrain` options of the same names)."""

    name = "study"
    batch_size: int = option(PretrainConfig.batch_size, "Images per step.", rule=r.ge(2), panel=BYOL)
    optimizer: str = option(PretrainConfig.optimizer, "auto, lars, sgd or adamw.", rule=r.choice(*OPTIMIZERS),
                            panel=BYOL)
    lr: float | None = option(None, "Base learning rate per 256 images.", rule=r.positive, panel=BYOL)
    tau_base: float | None = option(None, "Target EMA start τ_base.", panel=BYOL)
    warmup_epochs: float | None = option(None, "Warm-up in epochs.", rule=r.ge(0), panel=BYOL)
    proj_hidden: int = option(PretrainConfig.proj_hidden, "Hidden width of projector and predictor.", rule=r.ge(1),
                              panel=BYOL)
    proj_dim: int = option(PretrainConfig.proj_dim, "Output width of projector and predictor.", rule=r.ge(1),
                           cli=False)
    weight_decay: float | None = option(None, "Weight decay (default: fitted).", rule=r.ge(0), cli=False)

    def rules(self) -> None:
        if self.tau_base is not None and not 0 <= self.tau_base < 1:
            raise SSLProbeError(f"--tau-base must be in [0, 1) (got {self.tau_base})")


@dataclass(frozen=True, kw_only=True)
class StudyConfig(common.Runtime, common.ImageInputs):
    """Everything `sslprobe study` / ``sslprobe.study()`` is asked for; the study builds each command's config
    from it (study/stages.py)."""

    name = "study"
    data: str = option(help="Labelled images: class subfolders, hf:NAME[:SPLIT], or a folder of images with --labels.",
                       argument=True, rule=r.image_source)
    out: Path = option(help="Study directory: report.html, report.md, results.csv, study.json, splits.json and every "
                       "stage's outputs.", path=True)
    labels: str | None = option(None, "CSV with columns path,label (paths relative to DATA).", rule=r.exists,
                                path=False, cli_type=Path | None, parse=_text)
    unlabeled: str | None = option(None, "More images for the pretraining pool only (labels ignored; val/test images "
                                   "are kept out).", rule=r.exists)
    test: str | None = option(None, "A fixed labelled test set with DATA's classes (default: a seeded stratified split "
                              "of DATA).", rule=r.exists)
    groups: str | None = option(None, "Keep each group on one side of the split, and resample whole groups in every "
                                "interval and test: folder:N (the first N folder levels under each class folder "
                                "name the group) or a CSV with columns path,group (paths as in --labels; test:PATH "
                                "for a --test image).", rule=_groups)
    arms: tuple[str, ...] = option((), f"Comma-separated arms: {', '.join(STUDY_ARMS)} (default: {','.join(ARMS_CPU)} "
                                   f"on CPU; {','.join(ARMS_GPU)} on a GPU).", rule=r.each(r.choice(*STUDY_ARMS)),
                                   cli_type=str, cli_default=None, parse=_names)
    model: str = option("resnet18", "timm model of every network arm.")
    image_size: int | None = option(None, "Resolution (default: the model's; raw pixels at ≤ 32 px).", rule=r.ge(8))
    layers: str = option("auto", "Layers each network arm may be read at: auto (the two stages before the last, "
                         "and pre-logits), last (pre-logits only) or e.g. 2,3,pre-logits. Each arm's layer is "
                         "chosen by --metric on validation (one C search per layer), then probed in full.",
                         rule=r.layer_list)
    epochs: int | None = option(None, f"BYOL epochs per BYOL arm (default {PretrainConfig.epochs}).", rule=r.ge(1))
    minutes: float | None = option(None, "Training minutes per BYOL arm: the whole schedule (warm-up, cosine, τ) is "
                                   "fitted to the step rate measured here (fine-tune arms get the same minutes).",
                                   rule=r.positive)
    steps: int | None = option(None, "BYOL steps per BYOL arm (the demo's fixed run).", rule=r.ge(1), cli=False)
    byol: ByolRecipe = option(help="The BYOL recipe.", factory=ByolRecipe)
    repeats: int | None = option(None, "Run every seeded stage (BYOL, random init, fine-tuning, label draws) this "
                                 "many times with seeds SEED, SEED+1, …; intervals and tests pool the repeats "
                                 "(default: 1 on CPU; on a GPU 3, sharing --minutes when each gets ≥ 5 of them, "
                                 "else 1). The split stays fixed unless --resplit.", rule=r.ge(1))
    resplit: bool = option(False, "With --repeats: draw a new validation/test split for every repeat (seed SEED+r; "
                           "a fixed --test keeps its test set), so the intervals also cover which images were held "
                           "out (each repeat's own test rows resampled within it: the nested bootstrap).",
                           flag="--resplit")
    primary: tuple[str, str] | None = option(None, "The declared question A,B (default: the best self-supervised arm "
                                              "vs the best baseline, each chosen on validation); every other pair "
                                              "is one Holm-adjusted family.", rule=r.two_names, cli_type=str,
                                              parse=r.pair, show_default=False)
    test_fraction: float = option(0.2, "Test share of each class, drawn once into splits.json.", rule=r.open_unit)
    val_fraction: float = option(0.2, "Validation share of each class after the test draw.", rule=r.open_unit)
    fractions: tuple[float, ...] = option((0.01, 0.1, 1.0), "Label-efficiency fractions of each class, e.g. "
                                          "0.01,0.1,1.0.", rule=r.label_fractions, cli_type=str, parse=r.floats)
    shots: tuple[int, ...] = option((1, 5, 25), "Label-efficiency shots per class, e.g. 1,5,10,25.",
                                    rule=r.each(r.ge(1)), cli_type=str, parse=r.ints)
    seeds: int = option(3, "Draws per label-efficiency point (mean ± std).", rule=r.ge(1))
    knn_k: tuple[int, ...] = option((10, 20, 200), "kNN k values, comma-separated (cosine, T-weighted votes); 'none' "
                                    "skips kNN.", rule=r.each(r.ge(1)), cli_type=str, parse=r.ints)
    search: str = option("grid", "How to choose C on validation: grid (45 C's in 1e-6..1e5, warm-started, early stop) "
                         "or binary (CLIP's coarse-then-bisect, ~14 fits).", rule=r.choice(*SEARCHES))
    metric: str = common.metric("C, kNN k, the fine-tune epoch and learning rate")
    command: str = option("", "The command line that asked for the study, for the report.", cli=False)

    def rules(self) -> None:
        if self.labels is not None and self.data.startswith("hf:"):
            raise SSLProbeError("--labels names files in a folder; a Hugging Face dataset brings its own label column "
                                "(--label-column NAME)")
        for n in self.primary or ():
            if self.arms and n not in self.arms:
                raise SSLProbeError(f"--primary names '{n}', which is not one of --arms ({', '.join(self.arms)})")
        if self.test is not None and not self.data.startswith("hf:") and \
                Path(self.test).resolve() == Path(self.data).resolve():
            raise SSLProbeError(f"--test '{self.test}' is DATA itself; give a separate folder of test images, or "
                                "drop --test to draw a test split from DATA")
        if self.resplit and self.repeats == 1:
            raise SSLProbeError("--resplit draws a new split per repeat; give --repeats 2 or more")
        if sum(v is not None for v in (self.epochs, self.minutes, self.steps)) > 1:
            raise SSLProbeError("--epochs and --minutes are both budgets; give one of them")
