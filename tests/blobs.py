"""Gaussian-blob feature sets for the probe and solver tests, and the one-thread fixture they share."""
import math

import numpy as np
import pytest
import torch


def blobs(n_per: int, k: int, d: int, *, sep: float = 4.0, noise: float = 1.0, offset: float = 0.0,
          shuffle: bool = True, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(k·n_per, d) float32 features and int64 labels: class centres ``sep`` apart, a random
    per-feature shift of scale ``offset`` (so standardising matters), rows shuffled if asked."""
    g = np.random.default_rng(seed)
    centres = g.normal(size=(k, d)) * sep / math.sqrt(2)
    y = np.repeat(np.arange(k), n_per)
    x = centres[y] + noise * g.normal(size=(len(y), d))
    if offset:
        x = x + g.normal(size=d) * offset
    if shuffle:
        p = g.permutation(len(y))
        x, y = x[p], y[p]
    return x.astype(np.float32), y


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Matrices here are tiny: on a busy 2-core box each OpenMP fork/join can cost a scheduler
    slice (~10 ms), which would dominate the run time. The library itself never changes threads."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
