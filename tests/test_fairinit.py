"""fairinit: the calibration pick (one seeded, name-keyed order, unreadable images skipped, read lazily) and
the within-layer rescale (every pre-activation at mean β, std 1 on the calibration batch; features as good as
the random init's on digits)."""
import hashlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sslprobe.backbone import create_backbone
from sslprobe.errors import SSLProbeError
from sslprobe.fairinit import BETA, CALIBRATION_IMAGES, calibration_batch, calibration_order, rescale_init_

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


# --- the rescale ---------------------------------------------------------------------------------------------


def _moments(z: torch.Tensor, ch: int) -> tuple[torch.Tensor, torch.Tensor]:
    dims = [d for d in range(z.ndim) if d != ch]
    return z.mean(dims), z.std(dims, correction=0)


def test_linear_layer_gets_the_closed_form():
    """One linear layer on known data: W_c ← W_c/σ_c, b_c ← β − μ_c/σ_c, with μ, σ of W x + b over the batch."""
    torch.manual_seed(0)
    lin = nn.Linear(5, 3)
    x = torch.randn(200, 5) * torch.tensor([1.0, 2.0, 0.5, 3.0, 1.0]) + 4.0
    with torch.no_grad():
        z = lin(x)
    mu, sd = _moments(z, 1)
    w, b = lin.weight.detach().clone(), lin.bias.detach().clone()
    done = rescale_init_(lin, x, beta=0.5)
    assert done.layers == [""] and not done.norms
    torch.testing.assert_close(lin.weight.detach(), w / sd[:, None])
    torch.testing.assert_close(lin.bias.detach(), 0.5 + (b - mu) / sd)


def test_batchnorm_takes_the_statistics_and_its_conv_is_untouched():
    """conv → BN: the BN is the calibrated affine map (running stats := the batch's, γ = 1, β = target); the conv
    keeps its weights and gains no bias. A conv no BN reads is calibrated by its weights and a new bias."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1, bias=False))
    x = torch.rand(16, 3, 8, 8) * 2 - 0.3
    w0 = net[0].weight.detach().clone()
    with torch.no_grad():
        mu, sd = _moments(net[0](x), 1)
    done = rescale_init_(net, x)
    assert done.norms == ["1"] and done.layers == ["3"]
    assert torch.equal(net[0].weight, w0) and net[0].bias is None and net[3].bias is not None
    torch.testing.assert_close(net[1].running_mean, mu)
    torch.testing.assert_close(net[1].running_var, sd.square() - net[1].eps)
    assert torch.equal(net[1].weight.detach(), torch.ones(4))
    assert torch.equal(net[1].bias.detach(), torch.full((4,), BETA))


def test_constant_units_are_left_alone_and_a_reused_layer_is_calibrated_once():
    torch.manual_seed(2)
    lin = nn.Linear(4, 3)
    with torch.no_grad():
        lin.weight[1] = 0  # unit 1 is its bias on every input: nothing to scale
    w1, b1 = lin.weight[1].clone(), lin.bias[1].clone()
    net = nn.Sequential(lin, nn.ReLU(), nn.Linear(3, 3))
    done = rescale_init_(net, torch.randn(64, 4))
    assert done.constant == 1 and torch.equal(lin.weight[1], w1) and torch.equal(lin.bias[1], b1)

    twice = nn.Linear(3, 3)
    x = torch.randn(64, 3)
    done = rescale_init_(nn.Sequential(twice, nn.Tanh(), twice), x)  # the second use sees calibrated weights
    assert done.layers == ["0"]
    with torch.no_grad():
        mu, sd = _moments(twice(x), 1)
    torch.testing.assert_close(mu, torch.full((3,), BETA), atol=1e-5, rtol=0)
    torch.testing.assert_close(sd, torch.ones(3), atol=1e-5, rtol=0)


def _pre_activations(net: nn.Module, names: list[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """What each named calibrated module hands on before any activation it applies itself (BatchNormAct2d)."""
    mods, out = dict(net.named_modules()), {}

    def hook(name):
        def h(m, inp, o):
            if isinstance(m, nn.modules.batchnorm._BatchNorm):  # BN alone, without a fused activation
                o = F.batch_norm(inp[0], m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)
            out[name] = o.clone()  # before an in-place activation changes it
        return h

    hs = [mods[n].register_forward_hook(hook(n)) for n in names]
    try:
        with torch.no_grad():
            net.eval()(x)
    finally:
        for h in hs:
            h.remove()
    return out


@pytest.mark.parametrize("model", ["test_resnet", "test_efficientnet", "test_convnext", "test_vit"])
def test_every_calibrated_pre_activation_has_the_target_mean_and_std(model):
    """BatchNorm CNNs, a mixed one (BN + squeeze-excite convs), LayerNorm CNNs and ViTs: after the rescale every
    calibrated unit has mean β and std 1 on the calibration batch, with every BN or unread conv/linear covered."""
    net, _ = create_backbone(model, weights="random", image_size=32, seed=0)
    torch.manual_seed(0)
    x = torch.randn(32, 3, 32, 32) * 0.7 + 0.2
    done = rescale_init_(net, x)
    bns = [n for n, m in net.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    affine = [n for n, m in net.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert sorted(done.norms) == sorted(bns) and set(done.layers) <= set(affine) and len(done) > 0
    assert len(done.layers) + len(bns) >= len(affine)  # a conv a BN reads is calibrated through that BN
    mods = dict(net.named_modules())
    for name, z in _pre_activations(net, done.norms + done.layers, x).items():
        mu, sd = _moments(z, z.ndim - 1 if isinstance(mods[name], nn.Linear) else 1)
        live = sd > 1e-3
        assert live.float().mean() > 0.9, name
        torch.testing.assert_close(mu[live], torch.full_like(mu[live], BETA), atol=1e-4, rtol=0, msg=name)
        torch.testing.assert_close(sd[live], torch.ones_like(sd[live]), atol=1e-4, rtol=0, msg=name)


# --- features as good as the random init's on digit images at 32 px ----------------------------------------


def _digits(per_class: int = 60) -> tuple[torch.Tensor, np.ndarray, list[str]]:
    """The first ``per_class`` of each of sklearn's bundled 8×8 digits, upsampled to 32 px RGB uint8."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    pick = np.concatenate([np.flatnonzero(d.target == c)[:per_class] for c in range(10)])
    imgs = [np.asarray(Image.fromarray((d.images[i] * 255 / 16).astype(np.uint8)).resize((32, 32), Image.BICUBIC))
            for i in pick]
    x = torch.from_numpy(np.stack(imgs))[:, None].expand(-1, 3, -1, -1).contiguous()
    return x, d.target[pick], [f"{d.target[i]}/{i:04d}.png" for i in pick]


def _probe_top1(f: np.ndarray, y: np.ndarray, train: np.ndarray) -> float:
    """Test top-1 of a standardised logistic regression, C chosen by 4-fold CV on the training rows."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.preprocessing import StandardScaler

    sc = StandardScaler().fit(f[train])
    ftr, fte = sc.transform(f[train]), sc.transform(f[~train])
    c = max((1e-2, 1e-1, 1.0, 10.0), key=lambda c: cross_val_score(LogisticRegression(C=c, max_iter=1000), ftr,
                                                                   y[train], cv=4).mean())
    return float((LogisticRegression(C=c, max_iter=1000).fit(ftr, y[train]).predict(fte) == y[~train]).mean())


def _random_vs_rescaled(model: str) -> dict[str, float]:
    """Probe top-1 of the fair random init, the rescale (calibrated on 64 training images) and the old rescale
    (β = 0) on 600 digits (40 train, 20 test a class), as ``extract`` embeds them."""
    from sslprobe.starts import open_start, parse_start

    x, y, ids = _digits()
    train = np.concatenate([np.arange(60) < 40] * 10)  # the first 40 of each class train, 20 test
    tr = np.flatnonzero(train)
    out = {}
    for name, beta in (("random", None), ("rescaled", BETA), ("beta0", 0.0)):
        o = open_start(parse_start("random"), model=model, image_size=32, seed=0)
        mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in (o.spec.mean, o.spec.std))
        norm = (x.float() / 255 - mean) / std
        if beta is not None:
            cal = calibration_batch([ids[i] for i in tr], lambda pos, z=norm: [z[tr[p]] for p in pos], seed=0)
            rescale_init_(o.net, cal, beta=beta)
        with torch.no_grad():
            f = torch.cat([o.net.eval()(norm[i:i + 200]) for i in range(0, len(norm), 200)]).numpy()
        out[name] = _probe_top1(f, y, train)
    return out


def _check(acc: dict[str, float]) -> None:
    assert acc["rescaled"] >= acc["random"] - 0.03, acc  # within 3 points of the random init, or above it
    assert acc["beta0"] < acc["random"] - 0.03, acc  # the old rescale (β = 0) fails the same check


def test_rescaled_features_match_the_random_init_on_digits():
    _check(_random_vs_rescaled("test_resnet"))


@pytest.mark.slow
def test_rescaled_resnet18_features_match_the_random_init_on_digits():
    _check(_random_vs_rescaled("resnet18"))
