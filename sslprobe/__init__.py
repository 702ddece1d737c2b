"""sslprobe: BYOL pretraining, cached embeddings and linear probes on your own image folders.

``from sslprobe import pretrain, extract, probe, compare, predict, finetune, study`` gives the library functions
behind the commands. They are imported lazily so that ``import sslprobe`` (and ``sslprobe --help``) stays
fast and loads no torch.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sslprobe.errors import SSLProbeError
from sslprobe.version import __version__

__all__ = ["SSLProbeError", "__version__", "compare", "extract", "finetune", "predict", "pretrain", "probe",
           "study"]

_LAZY = {
    "pretrain": "sslprobe.pretraining.pretrain",
    "extract": "sslprobe.extraction.extract",
    "probe": "sslprobe.probing.probe",
    "compare": "sslprobe.probing.compare",
    "predict": "sslprobe.probing.predict",
    "finetune": "sslprobe.finetuning.finetune",
    "study": "sslprobe.study.run",
}

if TYPE_CHECKING:  # pragma: no cover
    from sslprobe.extraction.extract import extract
    from sslprobe.finetuning.finetune import finetune
    from sslprobe.pretraining.pretrain import pretrain
    from sslprobe.probing.compare import compare
    from sslprobe.probing.predict import predict
    from sslprobe.probing.probe import probe
    from sslprobe.study.run import study


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sslprobe' has no attribute {name!r}")
