"""The shared optimiser room: parameter groups (no decay on biases, norms, tokens; lr scales), LARS, the builders."""
import copy

import pytest
import torch
from torch import nn

from sslprobe.optim import LARS, layer_decay_groups, make_optimizer, no_decay_names, param_groups


class _Tokens(nn.Module):
    def __init__(self):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 4))
        self.body = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 2)

    def no_weight_decay(self):
        return {"cls_token"}


def test_no_decay_on_biases_norms_and_the_models_own_names():
    assert no_decay_names(_Tokens()) == {"cls_token", "body.bias", "norm.weight", "norm.bias", "head.bias"}


def test_groups_split_by_scale_and_decay_in_order_of_first_appearance():
    net = _Tokens()
    head = {id(p) for p in net.head.parameters()}
    groups = param_groups(net, weight_decay=0.05, lr_scale=lambda p: 1.0 if id(p) in head else 0.1)
    assert [(g["lr_scale"], g["weight_decay"], len(g["params"])) for g in groups] == [
        (0.1, 0.0, 4), (0.1, 0.05, 1), (1.0, 0.05, 1), (1.0, 0.0, 1)]


def test_zero_decay_merges_unless_flagged_and_frozen_parameters_are_left_out():
    net = _Tokens()
    net.head.requires_grad_(False)
    assert [len(g["params"]) for g in param_groups(net, weight_decay=0.0)] == [5]
    flagged = param_groups(net, weight_decay=0.0, flag="lars", order=lambda g: not g["lars"])
    assert [(g["lars"], len(g["params"])) for g in flagged] == [(True, 1), (False, 4)]


def test_layer_decay_groups_scale_blocks_down_from_the_head():
    from sslprobe.backbone import create_backbone

    vit = create_backbone("test_vit", image_size=32)[0]
    scales = sorted({g["lr_scale"] for g in layer_decay_groups(vit, weight_decay=0.05, layer_decay=0.5)})
    assert scales[-1] == 1.0 and scales[0] == pytest.approx(0.5 ** (len(scales) - 1))


def test_builders_pick_the_optimiser_and_drop_the_lars_key():
    net = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    groups = param_groups(net, weight_decay=1e-4, flag="lars")
    assert isinstance(make_optimizer("lars", groups, lr=0.1), LARS)
    sgd = make_optimizer("sgd", groups, lr=0.1)
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.9
    assert all("lars" not in g for g in sgd.param_groups)
    assert make_optimizer("adamw", groups, lr=1e-3).defaults["betas"] == (0.9, 0.999)
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_optimizer("adam", groups, lr=0.1)


def test_lars_trust_ratio_on_known_tensor():
    w = nn.Parameter(torch.tensor([3.0, 4.0]))  # ‖w‖ = 5
    w.grad = torch.tensor([0.0, 2.0])  # with wd 0.5: d = g + 0.5 w = (1.5, 4), ‖d‖ = sqrt(18.25)
    opt = LARS([{"params": [w], "weight_decay": 0.5, "lars": True}], lr=1.0, momentum=0.9, trust=1e-3)
    opt.step()
    d = torch.tensor([1.5, 4.0])
    ratio = 1e-3 * 5 / d.norm()
    assert torch.allclose(w.detach(), torch.tensor([3.0, 4.0]) - ratio * d)


def test_lars_excluded_group_is_plain_momentum_sgd():
    b = nn.Parameter(torch.tensor([1.0, -1.0]))
    opt = LARS([{"params": [b], "weight_decay": 0.0, "lars": False}], lr=0.1, momentum=0.9)
    for _ in range(2):
        b.grad = torch.tensor([1.0, 1.0])
        opt.step()
    # buf: 1 then 1.9; p -= 0.1 * buf each step
    assert torch.allclose(b.detach(), torch.tensor([1.0, -1.0]) - 0.1 * 1.0 - 0.1 * 1.9)


def test_lars_matches_the_per_parameter_definition_over_steps():
    """The batched (foreach) LARS equals the textbook per-tensor update, momentum included."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.Linear(4, 3))
    ref = [p.detach().clone() for p in net.parameters()]
    bufs = [None] * len(ref)
    groups = param_groups(net, weight_decay=0.01, flag="lars")
    lars_of = {id(p): g["lars"] for g in groups for p in g["params"]}
    flags = [lars_of[id(p)] for p in net.parameters()]
    opt = LARS(groups, lr=0.5, momentum=0.9, trust=1e-3)
    for step in range(3):
        grads = [torch.randn_like(p) for p in net.parameters()]
        for p, g in zip(net.parameters(), grads):
            p.grad = g.clone()
        opt.step()
        for i, (w, g, lars) in enumerate(zip(ref, grads, flags)):
            d = g + 0.01 * w if lars else g
            if lars:
                d = d * (1e-3 * w.norm() / d.norm())
            bufs[i] = d.clone() if bufs[i] is None else 0.9 * bufs[i] + d
            ref[i] = w - 0.5 * bufs[i]
        for p, r in zip(net.parameters(), ref):
            assert torch.allclose(p.detach(), r, atol=1e-6), step


def _lars_pair(weight_decay: float, steps: int) -> float:
    """Largest weight difference between our LARS and timm's ``Lars`` after ``steps`` on the same tensors."""
    from timm.optim import Lars

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 16))
    twin = copy.deepcopy(net)
    ours = LARS(param_groups(net, weight_decay=weight_decay, flag="lars"), lr=0.2, momentum=0.9, trust=1e-3)
    # BYOL's exclusions in timm's terms: no decay on the unadapted groups, and timm adapts only where decay ≠ 0
    theirs = Lars(param_groups(twin, weight_decay=weight_decay), lr=0.2, momentum=0.9, trust_coeff=1e-3)
    x = torch.randn(32, 8)
    for _ in range(steps):
        for m, opt in ((net, ours), (twin, theirs)):
            opt.zero_grad()
            m(x).pow(2).mean().backward()
            opt.step()
    return max((a - b).abs().max().item() for a, b in zip(net.parameters(), twin.parameters()))


def test_timms_lars_is_not_ours_so_ours_is_kept():
    """The module docstring's claim: timm divides by ‖g‖ + λ‖w‖ + ε, BYOL by ‖g + λw‖: past 1e-7 within 20 steps."""
    first, twenty = _lars_pair(1.5e-6, 1), _lars_pair(1.5e-6, 20)  # BYOL's 1000-epoch weight decay
    assert first < 1e-7 < twenty  # close at first, apart once the momentum has carried the difference
    assert _lars_pair(1e-4, 20) > 10 * twenty  # and further apart the larger λ
