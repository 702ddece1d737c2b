"""`sslprobe compare`: several feature sets through one probe protocol, then paired tests between them
(``pairs.paired_tests``: is A's lead over B more than the noise of the test set?)."""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from sslprobe.config.probe import CompareConfig, ProbeConfig, ProbeProtocol
from sslprobe.errors import SSLProbeError
from sslprobe.fileio import write_json
from sslprobe.probing.features import resolve_sets
from sslprobe.probing.pairs import paired_tests
from sslprobe.probing.probe import Source, probe
from sslprobe.probing.report import summary
from sslprobe.results import ProbeResult


def compare(config: CompareConfig | Mapping[str, Mapping[str, Source | None]], /, *,
            out: str | os.PathLike | None = None, show_progress: bool = False,
            **options: Any) -> list[tuple[str, ProbeResult]]:
    """Probe several feature sets with one protocol, then paired tests.

    ``config``: a :class:`~sslprobe.config.probe.CompareConfig` (NAME=DIR pairs and the protocol), or
    ``{name: {"train": …, "val": …, "test": …}}`` with the protocol's options as keywords. Each set gets
    its own report dir ``out/NAME``; ``out/comparison.json`` holds the headline rows and the paired tests
    between every two sets scored on the same test images (``paired_tests``), which every returned result
    also carries.
    """
    primary = None
    if isinstance(config, CompareConfig):
        protocol, out, primary = config.protocol, config.out, config.primary
        sets = {name: resolve_sets(path) for name, path in config.sets}
    else:
        primary = options.pop("primary", None)
        protocol, sets = ProbeProtocol.build(**options), dict(config)
    if not sets:
        raise SSLProbeError("nothing to compare; pass NAME=FEATURES pairs")
    rows = []
    for name, s in sets.items():
        r = probe(ProbeConfig(train=s["train"], val=s.get("val"), test=s.get("test"), protocol=protocol,
                              out=None if out is None else Path(out) / name), show_progress=show_progress)
        rows.append((name, r))
    pairs = paired_tests(rows, metric=protocol.metric, primary=primary, seed=protocol.seed)
    rows = [(name, replace(r, paired_tests=pairs)) for name, r in rows]
    if out is not None:
        write_json(Path(out) / "comparison.json",
                   {"sets": {name: summary(r, drop=("val_curve", "paired_tests")) for name, r in rows},
                    "paired_tests": [p.to_json() for p in pairs]})
    return rows


__all__ = ["compare"]
