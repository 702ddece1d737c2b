"""Batched BYOL views: shapes, per-image randomness, each op against its definition."""
import pytest
import torch

from sslprobe.images.crops import crop_boxes, resized_crop
from sslprobe.pretraining.augment import (
    ViewConfig,
    blur_drawn,
    byol_views,
    color_jitter,
    gaussian_blur,
    grayscale,
    hsv_to_rgb,
    make_view,
    rgb_to_hsv,
)

MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


def _batch(n=16, s=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, s, s, generator=g) * 255).to(torch.uint8)


def test_views_follow_paper_asymmetry_and_small_image_rule():
    v1, v2 = byol_views(224)
    assert (v1.blur_p, v2.blur_p, v1.solarize_p, v2.solarize_p) == (1.0, 0.1, 0.0, 0.2)
    assert (v1.brightness, v1.contrast, v1.saturation, v1.hue, v1.jitter_p, v1.gray_p) == (0.4, 0.4, 0.2, 0.1, 0.8, 0.2)
    s1, s2 = byol_views(32)
    assert s1.blur_p == 0 and s2.blur_p == 0 and s2.solarize_p == 0.2


def test_make_view_shape_and_determinism():
    x = _batch()
    v = make_view(x, ViewConfig(), size=20, mean=MEAN, std=STD, generator=torch.Generator().manual_seed(1))
    w = make_view(x, ViewConfig(), size=20, mean=MEAN, std=STD, generator=torch.Generator().manual_seed(1))
    assert v.shape == (16, 3, 20, 20) and v.dtype == torch.float32
    assert torch.equal(v, w)
    assert v.min() >= -1 - 1e-5 and v.max() <= 1 + 1e-5


def test_make_view_leaves_a_float_batch_alone():
    # ViewMaker makes both views from one batch: an in-place /255 made view 2 from x/255².
    x8 = _batch()
    x = x8.float()
    before = x.clone()
    kw = {"size": 20, "mean": MEAN, "std": STD}
    v = make_view(x, ViewConfig(), generator=torch.Generator().manual_seed(1), **kw)
    assert torch.equal(x, before)
    again = make_view(x, ViewConfig(), generator=torch.Generator().manual_seed(1), **kw)
    assert torch.equal(v, again)
    assert torch.equal(v, make_view(x8, ViewConfig(), generator=torch.Generator().manual_seed(1), **kw))


def test_view_maker_gives_float_and_uint8_batches_the_same_two_views():
    from sslprobe.pretraining.trainstep import ViewMaker

    x8 = _batch()
    make = ViewMaker(byol_views(20), 20, MEAN, STD, seed=3)
    for a, b in zip(make(x8.float(), 5), make(x8, 5)):
        assert torch.equal(a, b)


def test_each_image_gets_its_own_crop():
    same = _batch(1).expand(8, -1, -1, -1).contiguous()
    v = make_view(same, ViewConfig(), size=16, mean=MEAN, std=STD, generator=torch.Generator().manual_seed(0))
    diffs = [(v[0] - v[i]).abs().mean().item() for i in range(1, 8)]
    assert min(diffs) > 1e-3


def test_crop_boxes_respect_area_and_ratio():
    cfg = ViewConfig()
    b = crop_boxes(2000, scale=cfg.crop_scale, ratio=cfg.crop_ratio, generator=torch.Generator().manual_seed(0),
                   device="cpu")
    w, h, cx, cy = b.unbind(1)
    assert ((cy - h / 2) >= -1e-6).all() and ((cy + h / 2) <= 1 + 1e-6).all()
    area = w * h
    assert area.min() >= 0.08 - 1e-6 and area.max() <= 1 + 1e-6
    assert ((cx - w / 2) >= -1e-6).all() and ((cx + w / 2) <= 1 + 1e-6).all()
    ratio = w / h
    inside = (w < 1) & (h < 1)
    assert ratio[inside].min() >= 3 / 4 - 1e-4 and ratio[inside].max() <= 4 / 3 + 1e-4


def test_full_box_without_flip_is_identity_and_flip_mirrors():
    x = torch.rand(2, 3, 8, 8)
    box = torch.tensor([[1.0, 1.0, 0.5, 0.5]] * 2)
    out = resized_crop(x, box, torch.tensor([False, True]), 8, "bilinear")
    assert torch.allclose(out[0], x[0], atol=1e-5)
    assert torch.allclose(out[1], x[1].flip(-1), atol=1e-5)


def test_hsv_roundtrip_and_known_colours():
    x = torch.rand(4, 3, 5, 5)
    assert torch.allclose(hsv_to_rgb(rgb_to_hsv(x)), x, atol=1e-5)
    red = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    assert torch.allclose(rgb_to_hsv(red).flatten(), torch.tensor([0.0, 1.0, 1.0]))
    green_hsv = torch.tensor([1 / 3, 1.0, 1.0]).view(1, 3, 1, 1)
    assert torch.allclose(hsv_to_rgb(green_hsv).flatten(), torch.tensor([0.0, 1.0, 0.0]), atol=1e-6)


def _hsv_to_rgb_sector_table(x):
    # The previous formulation (int64 sector index + gather), kept as the reference the closed form must match.
    h, s, v = x.unbind(1)
    h6 = h * 6
    i = torch.floor(h6)
    f = h6 - i
    i = i.long() % 6
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    table = torch.stack([v, q, p, t], 1)
    order = torch.tensor(((0, 3, 2), (1, 0, 2), (2, 0, 3), (2, 1, 0), (3, 2, 0), (0, 2, 1)))
    return table.gather(1, order[i].permute(0, 3, 1, 2))


def _pixels(n=4000, seed=1):
    """Random RGB pixels as (1, 3, 1, n), with grey pixels, two-channel ties, black, white and pure hues."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(3, n, generator=g)
    x[:, :200] = x[0, :200]  # grey: r = g = b
    x[1, 200:300] = x[0, 200:300]  # r = g is the max or not
    x[2, 300:400] = x[1, 300:400]  # g = b
    x[2, 400:500] = x[0, 400:500]  # r = b
    x[:, 500] = 0.0
    x[:, 501] = 1.0
    x[:, 502:508] = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 1, 1], [0, 0, 1], [1, 0, 1]]).T.float()
    return x.view(1, 3, 1, n)


def test_rgb_to_hsv_matches_colorsys_including_grey_and_ties():
    import colorsys

    x = _pixels()
    got = rgb_to_hsv(x).view(3, -1).T
    want = torch.tensor([colorsys.rgb_to_hsv(*map(float, px)) for px in x.view(3, -1).T], dtype=torch.float32)
    assert torch.allclose(got[:, 1:], want[:, 1:], atol=1e-6)
    # Hue is circular: compare the distance around the circle (0.999 and 0.001 are close).
    dh = (got[:, 0] - want[:, 0]).abs()
    assert torch.minimum(dh, 1 - dh).max() < 2e-6
    assert (got[:200, 0] == 0).all() and (got[:200, 1] == 0).all()  # grey: hue and saturation exactly 0
    assert ((got[:, 0] >= 0) & (got[:, 0] < 1)).all()


def test_hsv_to_rgb_matches_colorsys_and_the_sector_table_across_the_hue_wrap():
    import colorsys

    g = torch.Generator().manual_seed(2)
    n = 4000
    hsv = torch.rand(3, n, generator=g)
    hsv[0, :100] = 1 - torch.rand(100, generator=g) * 1e-4  # just below the wrap
    hsv[0, 100:200] = torch.rand(100, generator=g) * 1e-4  # just above it
    hsv[0, 200:207] = torch.tensor([0.0, 1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6, 1.0])  # sector borders and h = 1
    hsv[1, 300:400] = 0.0  # grey
    hsv = hsv.view(1, 3, 1, n)
    got = hsv_to_rgb(hsv)
    assert torch.allclose(got, _hsv_to_rgb_sector_table(hsv), atol=1e-6)
    want = torch.tensor([colorsys.hsv_to_rgb(*map(float, px)) for px in hsv.view(3, -1).T], dtype=torch.float32)
    assert torch.allclose(got.view(3, -1).T, want, atol=1e-6)
    at_zero = hsv.clone()
    at_zero[0, 0, 0, 206] = 0.0
    assert torch.allclose(got[..., 206], hsv_to_rgb(at_zero)[..., 206])  # h = 1 is h = 0


def test_hue_shift_roundtrip_wraps_around():
    x = _pixels()
    hsv = rgb_to_hsv(x)
    for shift in (0.3, -0.3, 0.999):
        shifted = torch.cat([(hsv[:, :1] + shift) % 1.0, hsv[:, 1:]], 1)
        assert torch.allclose(hsv_to_rgb(shifted), _hsv_to_rgb_sector_table(shifted), atol=1e-6)
    assert torch.allclose(hsv_to_rgb(hsv), x, atol=1e-6)


def test_grayscale_weights():
    x = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    assert grayscale(x).item() == pytest.approx(0.299)


def test_blur_zero_sigma_is_identity_and_preserves_mean():
    x = torch.rand(3, 3, 30, 30)
    out = gaussian_blur(x, torch.tensor([0.0, 1.0, 2.0]))
    assert torch.allclose(out[0], x[0])
    assert out[2].std() < x[2].std()  # smoother
    assert out[1].mean().item() == pytest.approx(x[1].mean().item(), abs=0.02)


def _make_view_all_images(x, cfg, *, size, mean, std, generator):
    # make_view as it was before blur/solarise ran on the drawn images only: every image convolved
    # (σ = 0 where not drawn), solarise masked over the whole batch. Same draws in the same order.
    from sslprobe.pretraining.augment import _bernoulli, _uniform

    g, n = generator, x.shape[0]
    x = x.float().div_(255)
    boxes = crop_boxes(n, scale=cfg.crop_scale, ratio=cfg.crop_ratio, generator=g, device="cpu")
    x = resized_crop(x, boxes, _bernoulli(cfg.flip_p, n, g, "cpu"), size, cfg.interpolation).clamp_(0, 1)
    x = color_jitter(x, cfg, g)
    gray = _bernoulli(cfg.gray_p, n, g, "cpu").view(n, 1, 1, 1)
    x = torch.where(gray, grayscale(x).expand_as(x), x)
    if cfg.blur_p > 0:
        sig = _uniform(*cfg.blur_sigma, n, g, "cpu")
        x = gaussian_blur(x, torch.where(_bernoulli(cfg.blur_p, n, g, "cpu"), sig, torch.zeros_like(sig)))
    sol = _bernoulli(cfg.solarize_p, n, g, "cpu").view(n, 1, 1, 1)
    x = torch.where(sol & (x >= 0.5), 1 - x, x)
    m, sd = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    return (x - m) / sd


@pytest.mark.parametrize("blur_p", [(1.0, 0.1), (0.5, 0.0), (0.0, 1.0)])
def test_blurring_only_drawn_images_gives_the_same_views_and_draws(blur_p):
    x = _batch(n=24, s=72, seed=3)
    v1, v2 = byol_views(72, blur=True, blur_p=blur_p, solarize_p=(0.3, 0.2))
    kw = {"size": 64, "mean": MEAN, "std": STD}
    for seed in range(4):
        g_new, g_old = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        for cfg in (v1, v2):  # the same generator runs on into view 2, as in TrainStep.views
            new = make_view(x, cfg, generator=g_new, **kw)
            old = _make_view_all_images(x, cfg, generator=g_old, **kw)
            assert torch.allclose(new, old, atol=1e-6, rtol=0)
        assert torch.equal(g_new.get_state(), g_old.get_state())  # same number of draws: resume stays exact


def test_blur_drawn_touches_only_drawn_images():
    x = torch.rand(6, 3, 20, 20)
    sigma = torch.linspace(0.5, 2.0, 6)
    on = torch.tensor([True, False, False, True, False, False])
    out = blur_drawn(x.clone(), sigma, on)
    assert torch.equal(out[~on], x[~on])
    assert torch.allclose(out[on], gaussian_blur(x[on], sigma[on]), atol=1e-6)
    assert torch.allclose(out, gaussian_blur(x, torch.where(on, sigma, torch.zeros_like(sigma))), atol=1e-6)
    assert torch.equal(blur_drawn(x.clone(), sigma, torch.zeros(6, dtype=torch.bool)), x)


def test_solarize_always_on_inverts_bright_pixels():
    x = torch.full((2, 3, 8, 8), 230, dtype=torch.uint8)
    cfg = ViewConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0, jitter_p=0, gray_p=0, blur_p=0,
                     solarize_p=1.0)
    v = make_view(x, cfg, size=8, mean=(0, 0, 0), std=(1, 1, 1), generator=torch.Generator())
    assert torch.allclose(v, torch.full_like(v, 1 - 230 / 255), atol=1e-5)


def test_every_view_option_overrides_the_paper_default():
    v1, v2 = byol_views(224, crop_scale=(0.2, 0.9), flip_p=0.1, jitter_p=0.3, brightness=0.1, contrast=0.2,
                        saturation=0.3, hue=0.05, gray_p=0.4, blur_p=(0.7, 0.3), blur_sigma=(0.5, 1.0),
                        solarize_p=(0.1, 0.6))
    assert (v1.crop_scale, v1.flip_p, v1.jitter_p, v1.gray_p, v1.blur_sigma) == ((0.2, 0.9), 0.1, 0.3, 0.4, (0.5, 1.0))
    assert (v2.brightness, v2.contrast, v2.saturation, v2.hue) == (0.1, 0.2, 0.3, 0.05)
    assert (v1.blur_p, v2.blur_p, v1.solarize_p, v2.solarize_p) == (0.7, 0.3, 0.1, 0.6)
    assert byol_views(32, blur=True)[0].blur_p == 1.0 and byol_views(224, blur=False)[1].blur_p == 0.0
    assert v1.crop_ratio == (3 / 4, 4 / 3) and ViewConfig().interpolation == "bicubic"
    d1, d2 = byol_views(224, vflip_p=0.5, rot90_p=0.75)  # the domain augmentations, shared by both views
    assert (d1.vflip_p, d2.rot90_p, ViewConfig().vflip_p, ViewConfig().rot90_p) == (0.5, 0.75, 0.0, 0.0)


@pytest.mark.parametrize("blur", [False, True])
def test_a_grey_image_in_one_channel_gets_the_views_of_its_three_channel_copy(blur):
    # Every op works on one channel: saturation, hue and grayscale have nothing to move on a grey image,
    # so its one-channel views are the three-channel views of the same grey pixels (same draws, same stream).
    g = _batch(12)[:, :1]
    cfg = byol_views(72 if blur else 24, blur=blur, solarize_p=(0.5, 0.5), rot90_p=0.75)[0]
    kw = {"size": 20, "aspect": torch.linspace(0.5, 2.0, 12)}
    one = make_view(g, cfg, mean=(0.5,), std=(0.25,), generator=torch.Generator().manual_seed(7), **kw)
    three = make_view(g.expand(-1, 3, -1, -1), cfg, mean=(0.5,) * 3, std=(0.25,) * 3,
                      generator=torch.Generator().manual_seed(7), **kw)
    assert one.shape == (12, 1, 20, 20)
    assert torch.allclose(one, three[:, :1], atol=1e-4) and torch.allclose(three[:, 0], three[:, 2], atol=1e-4)


@pytest.mark.parametrize("kw, match", [
    ({"flip_p": 1.5}, "--flip-p"), ({"gray_p": -0.1}, "--gray-p"), ({"blur_p": (1.0, 2.0)}, r"--blur-p \(view 2\)"),
    ({"solarize_p": (-1.0, 0.2)}, r"--solarize-p \(view 1\)"), ({"hue": 0.6}, "--hue"),
    ({"contrast": -1}, "--contrast"),
    ({"crop_scale": (0.5, 0.2)}, "--crop-scale"), ({"crop_scale": (0.0, 1.0)}, "--crop-scale"),
    ({"blur_sigma": (0.0, 2.0)}, "--blur-sigma"), ({"vflip_p": 1.5}, "--vflip-p"), ({"rot90_p": -0.5}, "--rot90-p"),
])
def test_view_options_are_validated(kw, match):
    from sslprobe.errors import SSLProbeError

    with pytest.raises(SSLProbeError, match=match):
        byol_views(224, **kw)


@pytest.mark.parametrize("size, blur, note", [
    (224, None, "on"), (64, None, "off (automatic: image size 64 ≤ 64 px)"), (32, True, "on"),
    (224, False, "off (--no-blur)"),
])
def test_blur_note(size, blur, note):
    from sslprobe.pretraining.augment import blur_note

    assert blur_note(size, blur) == note
