"""BYOL pieces checked against their definitions (Grill et al. 2020)."""
import math

import pytest
import torch
from torch import nn

from sslprobe.pretraining.byol import BYOL, mlp, param_groups, regression_loss


def test_mlp_shape_is_paper_head():
    head = mlp(96, 4096, 256)
    kinds = [type(m) for m in head]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert head[0].in_features == 96 and head[0].out_features == 4096 and head[3].out_features == 256


@pytest.mark.parametrize(
    "p, z, expected",
    [
        ([1.0, 0.0], [1.0, 0.0], 0.0),  # same direction
        ([1.0, 0.0], [-3.0, 0.0], 4.0),  # opposite
        ([1.0, 0.0], [0.0, 5.0], 2.0),  # orthogonal
        ([2.0, 2.0], [1.0, 0.0], 2 - 2 * math.cos(math.pi / 4)),
    ],
)
def test_regression_loss_is_2_minus_2cos(p, z, expected):
    got = regression_loss(torch.tensor([p]), torch.tensor([z]))
    assert got.item() == pytest.approx(expected, abs=1e-6)


def test_regression_loss_normalises_in_float32():
    p = torch.randn(4, 8).half()
    assert regression_loss(p, p).dtype == torch.float32


def test_param_groups_exclude_bias_and_norm():
    net = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    decay, plain = param_groups(net, weight_decay=0.5)
    assert [p.shape for p in decay["params"]] == [torch.Size([3, 4])]
    assert len(plain["params"]) == 3  # linear bias, BN weight, BN bias
    assert decay["lars"] and not plain["lars"] and plain["weight_decay"] == 0.0


def _tiny_byol():
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.BatchNorm1d(6), nn.ReLU())
    return BYOL(backbone, feature_dim=6, hidden=16, out=4)


def test_ema_update_is_lerp_and_target_has_no_grad():
    net = _tiny_byol()
    with torch.no_grad():
        for p in net.backbone.parameters():
            p.add_(1.0)
    before = [p.clone() for p in net.target_backbone.parameters()]
    online = [p.clone() for p in net.backbone.parameters()]
    net.update_target(0.9)
    for t0, o, t1 in zip(before, online, net.target_backbone.parameters()):
        assert torch.allclose(t1, 0.9 * t0 + 0.1 * o)
        assert not t1.requires_grad


def test_forward_is_symmetric_and_only_online_gets_gradients():
    net = _tiny_byol()
    v1, v2 = torch.randn(8, 3, 2, 2), torch.randn(8, 3, 2, 2)
    net.eval()  # BN in eval so swapping views gives the same numbers
    a, b = net(v1, v2), net(v2, v1)
    assert torch.allclose(a, b, atol=1e-6)
    net.train()
    net(v1, v2).backward()
    assert all(p.grad is not None for p in net.predictor.parameters())
    assert all(p.grad is None for p in net.target_backbone.parameters())
    assert 0 <= a.item() <= 8


def test_batchnorm_sees_each_view_on_its_own():
    """The paper runs one forward pass per view: BatchNorm statistics must not mix the two views."""
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.BatchNorm2d(3, affine=False), nn.Flatten(), nn.Linear(3 * 4 * 4, 6))
    net = BYOL(backbone, feature_dim=6, hidden=16, out=4).train()
    v1 = torch.randn(8, 3, 4, 4)
    v2 = 3 * v1 + 5  # the same images up to a per-batch affine map: per-view BN makes them identical
    loss_same = net(v1, v1)
    loss_shifted = net(v1, v2)
    assert torch.allclose(loss_same, loss_shifted, atol=1e-5)  # a joint 2B batch norm would differ


def test_lightly_reference_loss_scale_matches_sslprobes_gradient():
    """bench/study_fashion_mnist.py trains lightly's row on LIGHTLY_LOSS_SCALE × lightly's loss,
    0.5·(NCS(p0, z1) + NCS(p1, z0)) with NCS = −mean cos: it must have sslprobe's gradient."""
    import ast
    from pathlib import Path

    src = (Path(__file__).parents[1] / "bench" / "study_fashion_mnist.py").read_text()
    scale = next(node.value.value for node in ast.walk(ast.parse(src)) if isinstance(node, ast.Assign)
                 and any(getattr(t, "id", None) == "LIGHTLY_LOSS_SCALE" for t in node.targets))
    g = torch.Generator().manual_seed(0)
    p0, p1, z0, z1 = (torch.randn(8, 16, generator=g, requires_grad=True) for _ in range(4))
    ours = (regression_loss(p0, z1) + regression_loss(p1, z0)).mean()
    def ncs(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return -torch.nn.functional.cosine_similarity(a, b, dim=1).mean()

    lightly = 0.5 * (ncs(p0, z1) + ncs(p1, z0))
    assert float(ours) == pytest.approx(4 + 4 * float(lightly), rel=1e-5)
    g_ours = torch.autograd.grad(ours, (p0, p1))
    g_lightly = torch.autograd.grad(scale * lightly, (p0, p1))
    for a, b in zip(g_ours, g_lightly):
        torch.testing.assert_close(a, b)
