"""Shared fixtures: small generated image folders (nothing checked in, nothing downloaded)."""
import os
from pathlib import Path

# Before torch loads: busy-waiting OpenMP threads make tiny tests 4-10x slower whenever another
# process holds one of CI's 2 cores (a 4-step pretrain: 0.54 s passive, 2-8 s spinning).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pytest
from PIL import Image


def write_class_folder(root: Path, *, classes=("dark", "light"), per_class: int = 12, size=(20, 24),
                       seed: int = 0) -> Path:
    """Class subfolders of noisy images whose brightness depends on the class (linearly separable)."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        base = 40 + 170 * c / max(len(classes) - 1, 1)
        for i in range(per_class):
            arr = rng.normal(base, 25, (*size, 3)).clip(0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / name / f"{i:03d}.png")
    return root


@pytest.fixture
def class_folder(tmp_path: Path) -> Path:
    return write_class_folder(tmp_path / "data")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads or writes the user's embedding cache: a stale row there would hide a change."""
    monkeypatch.setenv("SSLPROBE_CACHE_DIR", str(tmp_path_factory.mktemp("sslprobe-cache")))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--slow", action="store_true", help="also run tests marked slow (kill -9 fault injection, …)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
