"""`sslprobe extract`: which network (or pixels) embeds the images, how, and through which cache."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sslprobe.config import common
from sslprobe.config import rules as r
from sslprobe.config.base import option
from sslprobe.errors import SSLProbeError

POOLS = ("auto", "cls", "mean")
FEATURE_DTYPES = ("float32", "float16")
DECODERS = ("cpu", "gpu")
NAMED_WEIGHTS = ("random", "random-rescaled", "pretrained", "pixels")
NEEDS_MODEL = ("random", "random-rescaled", "pretrained")


def _cache_switch(name: str, value: bool) -> bool:
    return not value


@dataclass(frozen=True, kw_only=True)
class ExtractConfig(common.Runtime, common.ImageInputs):
    """Everything `sslprobe extract` / ``sslprobe.extract()`` is asked for (docs/extract.md)."""

    name = "extract"
    data: str = option(help="Folder of images or class subfolders, or hf:NAME[:SPLIT].", argument=True,
                       rule=r.image_source)
    out: Path = option(help="Output directory: features.safetensors + manifest.json.", path=True)
    weights: str = option("random", "random, random-rescaled (data-dependent init), pretrained (timm hub), pixels, or "
                          "a .safetensors file.")
    model: str | None = option(None, "timm model name (not needed for sslprobe backbone files; with --weights pixels, "
                               "the model whose eval crop the pixels take).")
    image_size: int | None = option(None, "Override the evaluation resolution.", rule=r.ge(1))
    small_stem: bool | None = common.small_stem()
    layer: str = option("pre-logits", "pre-logits (pooled, default) or a stage/block index, e.g. 2 or -2 "
                        "(global-average-pooled).")
    layers: str = option("last", "last (the one layer --layer names, written as always), auto (the two stages before "
                         "the last, and pre-logits: docs/extract.md) or a list such as 2,3,pre-logits: every layer "
                         "from one forward pass, each cached on its own; the deepest in OUT, the others in "
                         "OUT/layers/NAME.", rule=r.layer_list)
    pool: str = option("auto", "auto (the model's own), cls (ViT class token) or mean (of patch tokens / feature "
                       "map).", rule=r.choice(*POOLS))
    dtype: str = option("float32", "Storage dtype of features: float32 or float16.", rule=r.choice(*FEATURE_DTYPES))
    batch_size: int = option(128, "Images per forward pass.", rule=r.ge(1))
    cache_dir: Path | None = option(None, "Embedding cache (default: $SSLPROBE_CACHE_DIR or ~/.cache/sslprobe).",
                                    path=True)
    use_cache: bool = option(True, "Compute everything and leave the cache untouched.", flag="--no-cache",
                             cli_type=bool, cli_default=False, parse=_cache_switch)
    decode: str = option("cpu", "JPEG decoding: cpu (PIL, draft mode) or gpu (nvJPEG on CUDA, CPU fallback).",
                         rule=r.choice(*DECODERS))
    allow_pickle: bool = common.allow_pickle()
    labels: Path | None = option(None, "CSV with columns path,label naming DATA's images and their classes (paths "
                                 "relative to DATA).", path=False)
    calibration: str | None = option(None, "random-rescaled: the images it calibrates on (default: DATA), e.g. the "
                                     "training folder, so that the test folder is embedded by the same network and "
                                     "no validation or test image shapes it.", rule=r.image_source)
    shard_rows: int = option(4096, "Rows per cache shard.", rule=r.ge(1), cli=False)

    def rules(self) -> None:
        if self.weights in NEEDS_MODEL and self.model is None:
            raise SSLProbeError(f"--weights {self.weights} needs --model NAME (a timm model, e.g. resnet18)")
        if self.calibration is not None and self.weights != "random-rescaled":
            raise SSLProbeError(f"--calibration only applies to --weights random-rescaled (not {self.weights})")
        if self.layers != "last" and self.layer != "pre-logits":
            raise SSLProbeError(f"--layer picks one layer and --layers {self.layers} several; give one of them "
                                "(e.g. --layers 2,pre-logits)")
        if not self.use_cache and self.cache_dir is not None:
            raise SSLProbeError("--no-cache and --cache-dir contradict each other; pass one of them")
