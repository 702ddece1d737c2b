"""fairinit's calibration pick: one seeded, name-keyed order, unreadable images skipped, read lazily."""
import hashlib

import pytest
import torch

from sslprobe.errors import SSLProbeError
from sslprobe.fairinit import CALIBRATION_IMAGES, calibration_batch, calibration_order

IDS = [f"c{i % 3}/{i:03d}.png" for i in range(150)]


def _reader(bad=(), asked=None):
    def read(positions):
        if asked is not None:
            asked.append(list(positions))
        return [None if i in bad else torch.full((1, 2, 2), i, dtype=torch.int64) for i in positions]
    return read


def test_order_is_the_seeded_hash_of_the_names():
    want = sorted(range(len(IDS)), key=lambda i: hashlib.sha256(f"7:{IDS[i]}".encode()).digest())
    assert calibration_order(IDS, seed=7) == want
    assert calibration_order(IDS, seed=8) != want


def test_batch_is_the_first_readable_in_order_and_skips_unreadable():
    order = calibration_order(IDS, seed=3)
    bad = set(order[:5]) | {order[40]}
    asked = []
    x = calibration_batch(IDS, _reader(bad, asked), seed=3)
    good = [i for i in order if i not in bad][:CALIBRATION_IMAGES]
    assert x.shape[0] == CALIBRATION_IMAGES and x[:, 0, 0, 0].tolist() == good
    # read n at a time, then only as many more as were missing; never past the last one needed
    assert [len(a) for a in asked] == [CALIBRATION_IMAGES, 6]
    assert sum(len(a) for a in asked) == order.index(good[-1]) + 1


def test_same_pick_whatever_names_are_absent():
    """A fine-tune's rows (the unreadable already dropped) pick what extract picks from the whole folder."""
    order = calibration_order(IDS, seed=1)
    bad = set(order[:10:2])
    whole = calibration_batch(IDS, _reader(bad), seed=1)[:, 0, 0, 0]
    kept = [i for i in range(len(IDS)) if i not in bad]
    rows = calibration_batch([IDS[i] for i in kept], _reader(), seed=1)[:, 0, 0, 0]
    assert [kept[p] for p in rows.tolist()] == whole.tolist()


def test_fewer_than_two_readable_is_an_error():
    with pytest.raises(SSLProbeError, match="at least 2 readable"):
        calibration_batch(IDS[:3], _reader({0, 1}), seed=0)
    assert calibration_batch(IDS[:3], _reader({0}), seed=0).shape[0] == 2
