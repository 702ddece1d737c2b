"""kNN votes in blocks of queries and bank rows equal the direct computation."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sslprobe.knn import knn_votes


def direct(bank, labels, q, k, num_classes, T):
    """The whole (Nq, M) similarity matrix at once: the reference."""
    sims = F.normalize(q, dim=1) @ F.normalize(bank, dim=1).T
    top, idx = sims.topk(min(k, bank.shape[0]), dim=1)
    return torch.zeros(q.shape[0], num_classes).scatter_add_(1, labels[idx], (top / T).exp())


@pytest.mark.parametrize("chunk,bank_chunk", [(1, 3), (4, 7), (5, 200), (None, None), (64, 11)])
def test_blocked_equals_direct(chunk, bank_chunk):
    g = torch.Generator().manual_seed(0)
    bank, q = torch.randn(57, 6, generator=g), torch.randn(19, 6, generator=g)
    labels = torch.randint(0, 5, (57,), generator=g)
    votes = knn_votes(bank, labels, q, ks=[1, 4, 20, 100], num_classes=5, temperature=0.1,
                      chunk=chunk, bank_chunk=bank_chunk)
    for k in (1, 4, 20, 100):
        torch.testing.assert_close(votes[k], direct(bank, labels, q, k, 5, 0.1), rtol=1e-5, atol=1e-6)


def test_half_precision_rows_and_device_argument():
    g = torch.Generator().manual_seed(1)
    bank, q = torch.randn(30, 4, generator=g), torch.randn(8, 4, generator=g)
    labels = torch.randint(0, 3, (30,), generator=g)
    a = knn_votes(bank.half(), labels, q.half(), ks=[5], num_classes=3, device="cpu", bank_chunk=8)[5]
    b = direct(bank.half().float(), labels, q.half().float(), 5, 3, 0.07)
    assert a.dtype == torch.float32
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_shared_val_test_pass_equals_two_separate_calls():
    from sslprobe.knn import knn_val_test

    g = torch.Generator().manual_seed(3)
    fit, val, test = torch.randn(70, 5, generator=g), torch.randn(25, 5, generator=g), torch.randn(30, 5, generator=g)
    yf, yv = torch.randint(0, 4, (70,), generator=g), torch.randint(0, 4, (25,), generator=g)
    ks = [1, 7, 200]
    vv, vt = knn_val_test(fit, yf, val, yv, test, ks=ks, num_classes=4, temperature=0.1)
    ref_v = knn_votes(fit, yf, val, ks=ks, num_classes=4, temperature=0.1)
    ref_t = knn_votes(torch.cat([fit, val]), torch.cat([yf, yv]), test, ks=ks, num_classes=4, temperature=0.1)
    for k in ks:
        torch.testing.assert_close(vv[k], ref_v[k], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(vt[k], ref_t[k], rtol=1e-5, atol=1e-6)
    assert knn_val_test(fit, yf, val, yv, None, ks=ks, num_classes=4)[1] is None
