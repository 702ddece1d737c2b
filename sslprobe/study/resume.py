"""How a study resumes: every stage's outputs carry a done marker keyed by the options that made them.

A stage (one arm's pretraining, extraction, probe or fine-tune) writes ``.study-done.json`` last,
holding the fingerprint of everything its outputs depend on. A rerun whose fingerprint matches
reuses the outputs without calling the stage; a changed option changes the fingerprints of exactly
the stages it feeds (docs/study.md, "Resuming"). Within a stage, pretraining resumes from its
checkpoint and extraction from the embedding cache.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from sslprobe.fileio import write_json

MARKER = ".study-done.json"


def _plain(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot fingerprint {type(value).__name__}")


def fingerprint(value: Any) -> str:
    """16 hex digits of the sha256 of ``value`` as canonical JSON (dataclasses and paths included)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=_plain)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Marker:
    """The done marker of one stage directory."""

    def __init__(self, directory: Path):
        self.path = directory / MARKER

    def read(self, key: str) -> dict[str, Any] | None:
        """What the finished stage recorded, when it finished under ``key``; else None."""
        try:
            doc = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        return doc if isinstance(doc, dict) and doc.get("key") == key else None

    def write(self, key: str, **info: Any) -> None:
        write_json(self.path, {"key": key, **info})

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
