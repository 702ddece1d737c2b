"""Several layers' stores as one: keys every layer has, wide rows read back, each store written what it lacks."""
import dataclasses

import pytest
import torch

from sslprobe.cache import Fingerprint, Store, content_key
from sslprobe.extraction.layered import LayeredStore

FP = Fingerprint(model="test_resnet", weights="random", weights_id="seed=0", preprocessing='{"image_size": 32}',
                 layer="pre-logits", pool="auto", dtype="float32", compute="float32", sslprobe_major="0")
WIDTHS = (3, 5)


def _stores(root):
    stores = [Store.open(root, dataclasses.replace(FP, layer=name)) for name in ("stage2", "pre-logits")]
    for s in stores:
        s.refresh()
    return stores


def _keys(n, start=0):
    return [content_key(f"img{i}".encode()) for i in range(start, start + n)]


def test_rows_split_by_layer_and_read_back_whole(tmp_path):
    keys, wide = _keys(4), torch.randn(4, sum(WIDTHS))
    LayeredStore(_stores(tmp_path), WIDTHS).write_shard(keys, wide)
    stage, head = _stores(tmp_path)
    assert torch.equal(stage.get(keys)[0], wide[:, :3]) and torch.equal(head.get(keys)[0], wide[:, 3:])
    both = LayeredStore([stage, head], WIDTHS)
    rows, found = both.get([keys[2], content_key(b"new"), keys[0]])
    assert found == [True, False, True] and torch.equal(rows, wide[[2, 0]])


def test_a_key_one_layer_lacks_is_missing_and_only_that_layer_is_written(tmp_path):
    stage, head = _stores(tmp_path)
    keys, wide = _keys(5), torch.randn(5, sum(WIDTHS))
    head.write_shard(keys, wide[:, 3:])  # e.g. an earlier --layers last run
    stage.write_shard(keys[:2], wide[:2, :3])
    for s in (stage, head):
        s.refresh()
    both = LayeredStore([stage, head], WIDTHS)
    assert both.keys() == set(keys[:2])
    rows, found = both.get(keys)
    assert found == [True, True, False, False, False] and torch.equal(rows, wide[:2])
    both.write_shard(keys, wide)  # the pass computed all five
    assert both.shards == [1, 0]  # pre-logits had every row: nothing written to it
    stage.refresh()
    assert len(stage) == 5 and torch.equal(stage.get(keys)[0], wide[:, :3])


def test_widths_must_match_the_stores(tmp_path):
    with pytest.raises(ValueError):
        LayeredStore(_stores(tmp_path), (3,))
