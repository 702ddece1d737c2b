"""Crops as the paper defines them, on the whole image: against torchvision's RandomResizedCrop on a 4:3 photo."""
import math

import numpy as np
import pytest
import torch
from PIL import Image

from sslprobe.images.crops import crop_boxes, resized_crop
from sslprobe.pretraining.augment import ViewConfig, make_view

W, H = 448, 336  # the 4:3 photo of the issue
N = 2000


def _torchvision_boxes(n=N, seed=0):
    """(n, 4) boxes (left, top, width, height) in pixels, as torchvision's RandomResizedCrop draws them."""
    from torchvision.transforms import RandomResizedCrop

    torch.manual_seed(seed)
    img = Image.new("RGB", (W, H))
    rrc = RandomResizedCrop(224, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3))
    rows = [rrc.get_params(img, rrc.scale, rrc.ratio) for _ in range(n)]  # (top, left, height, width)
    return torch.tensor([(j, i, w, h) for i, j, h, w in rows], dtype=torch.float64)


def _view_boxes(n, cfg, g, *, aspect=None):
    """crop_boxes with a view's crop area and ratio ranges, on the CPU."""
    return crop_boxes(n, scale=cfg.crop_scale, ratio=cfg.crop_ratio, generator=g, device="cpu", aspect=aspect)


def _ours(n=N, seed=0):
    """The same boxes from sslprobe's per-image crop draws on the whole image, in pixels."""
    b = _view_boxes(n, ViewConfig(), torch.Generator().manual_seed(seed), aspect=torch.full((n,), W / H)).double()
    w, h, cx, cy = b.unbind(1)
    return torch.stack([(cx - w / 2) * W, (cy - h / 2) * H, w * W, h * H], 1)


def _quantiles(x):
    return torch.quantile(x, torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9], dtype=x.dtype))


def test_area_and_aspect_follow_torchvision_on_a_non_square_image():
    tv, ours = _torchvision_boxes(), _ours()
    for boxes in (tv, ours):
        assert (boxes[:, 0] >= -1e-6).all() and (boxes[:, 0] + boxes[:, 2] <= W + 1e-6).all()
        assert (boxes[:, 1] >= -1e-6).all() and (boxes[:, 1] + boxes[:, 3] <= H + 1e-6).all()
    area = [b[:, 2] * b[:, 3] / (W * H) for b in (tv, ours)]  # a fraction of the ORIGINAL image
    assert (area[1] >= 0.08 - 1e-6).all() and (area[1] <= 1 + 1e-6).all()
    assert torch.allclose(_quantiles(area[0]), _quantiles(area[1]), atol=0.04)
    log_ratio = [torch.log(b[:, 2] / b[:, 3]) for b in (tv, ours)]  # the aspect in the crop's own pixels
    assert log_ratio[1].min() >= math.log(3 / 4) - 1e-6 and log_ratio[1].max() <= math.log(4 / 3) + 1e-6
    assert torch.allclose(_quantiles(log_ratio[0]), _quantiles(log_ratio[1]), atol=0.03)


def test_every_region_is_covered_as_often_as_with_torchvision():
    tv, ours = _torchvision_boxes(), _ours()

    def covered(boxes, x0, x1, y0, y1):
        left, top, w, h = boxes.unbind(1)
        return ((left < x1) & (left + w > x0) & (top < y1) & (top + h > y0)).double().mean().item()

    # the left eighth: 725 of 2,000 torchvision crops show some of it; the centre-cropped store showed none
    left_tv, left_ours = covered(tv, 0, W / 8, 0, H), covered(ours, 0, W / 8, 0, H)
    assert 0.3 < left_tv < 0.42 and abs(left_ours - left_tv) < 0.04
    for gx in range(4):  # and every cell of a 4×4 grid, corners included
        for gy in range(4):
            cell = (gx * W / 4, (gx + 1) * W / 4, gy * H / 4, (gy + 1) * H / 4)
            assert abs(covered(ours, *cell) - covered(tv, *cell)) < 0.05, cell


def test_views_from_the_store_show_the_left_eighth_as_often_as_torchvision():
    from torchvision.transforms import RandomResizedCrop
    from torchvision.transforms.functional import pil_to_tensor

    from sslprobe.images.transforms import WholeImage

    a = np.full((H, W, 3), 200, np.uint8)
    a[:, : W // 8] = (0, 0, 255)  # a blue left eighth
    img = Image.fromarray(a)
    torch.manual_seed(0)
    rrc = RandomResizedCrop(32)
    tv = torch.stack([pil_to_tensor(rrc(img)) for _ in range(600)]).float() / 255
    store = WholeImage(side=64)(img).unsqueeze(0).expand(600, -1, -1, -1)  # squashed to the square
    cfg = ViewConfig(jitter_p=0, gray_p=0, blur_p=0, solarize_p=0)
    ours = make_view(store, cfg, size=32, mean=(0, 0, 0), std=(1, 1, 1), generator=torch.Generator().manual_seed(0),
                     aspect=torch.full((600,), W / H))

    def blue(v):  # a view with some of the blue strip
        return ((v[:, 2] - v[:, 0] > 0.5).flatten(1).any(1)).float().mean().item()

    assert abs(blue(ours) - blue(tv)) < 0.06 and blue(ours) > 0.25


def test_store_side_keeps_resolution_and_small_squares_as_before(tmp_path):
    from sslprobe.images.folders import open_images
    from sslprobe.pretraining.batches import STORE_SCALE, store_side

    photos, small = tmp_path / "photos", tmp_path / "small"
    photos.mkdir(), small.mkdir()
    for i in range(3):
        Image.new("RGB", (W, H), (i, 0, 0)).save(photos / f"{i}.png")
        Image.new("L", (28, 28), i).save(small / f"{i}.png")  # Fashion-MNIST
    assert store_side(open_images(photos), size=224) == W  # the long side at full resolution: 8 % crops ×2, not ×3.5
    assert store_side(open_images(photos), size=96) == STORE_SCALE * 96  # capped at twice the training size
    assert store_side(open_images(photos), size=224, ram_limit=3 * 3 * 300 * 300) == 300  # shrunk to fit in RAM
    assert store_side(open_images(photos), size=224, ram_limit=0) == 224  # never below the training size
    assert store_side(open_images(small), size=32) == 32  # small images: the store of before


def test_square_images_are_stored_as_the_centre_crop_stored_them(tmp_path):
    from sslprobe.images.transforms import Uint8Transform, WholeImage

    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (28, 28, 3), dtype=np.uint8))
    assert torch.equal(WholeImage(side=32)(img), Uint8Transform(size=32)(img))
    b = _view_boxes(500, ViewConfig(), torch.Generator().manual_seed(1))
    assert torch.equal(b, _view_boxes(500, ViewConfig(), torch.Generator().manual_seed(1), aspect=torch.ones(500)))


def test_no_fitting_candidate_falls_back_to_torchvision_centre_crop():
    cfg = ViewConfig(crop_scale=(0.95, 1.0))
    b = _view_boxes(50, cfg, torch.Generator().manual_seed(0), aspect=torch.full((50,), 4.0))
    # too wide for any 3:4…4:3 crop of ≥ 95 % area: the whole height, width = 4/3 of it, centred
    assert torch.allclose(b, torch.tensor([[4 / 3 / 4, 1.0, 0.5, 0.5]]).expand(50, -1))


def test_quarter_turns_and_vertical_flip_are_exact_on_the_full_box():
    x = torch.rand(4, 3, 8, 8)
    box = torch.tensor([[1.0, 1.0, 0.5, 0.5]] * 4)
    no = torch.zeros(4, dtype=torch.bool)
    turns = (torch.tensor([True, False, False, False]), torch.tensor([0, 1, 2, 3]))
    out = resized_crop(x, box, no, 8, "bilinear", turns=turns)
    assert torch.allclose(out[0], x[0].flip(-2), atol=1e-5)  # vertical flip
    assert torch.allclose(out[2], x[2].flip(-1).flip(-2), atol=1e-5)  # half turn
    assert torch.allclose(out[1], torch.rot90(x[1], 1, (-2, -1)), atol=1e-5)  # a quarter turn
    assert torch.allclose(out[3], torch.rot90(x[3], 3, (-2, -1)), atol=1e-5)  # three quarters


@pytest.mark.parametrize("p", [0.0, 1.0])
def test_turns_are_drawn_only_when_asked(p):
    x = (torch.rand(16, 3, 24, 24) * 255).to(torch.uint8)
    kw = {"size": 16, "mean": (0, 0, 0), "std": (1, 1, 1)}
    plain = make_view(x, ViewConfig(), generator=torch.Generator().manual_seed(2), **kw)
    turned = make_view(x, ViewConfig(rot90_p=p), generator=torch.Generator().manual_seed(2), **kw)
    assert torch.equal(plain, turned) == (p == 0.0)  # off: the stream of the default views, bit for bit


def test_a_crop_larger_than_the_view_is_not_aliased():
    # a 1-px checkerboard stored at twice the view's side: the full-image view must average it to grey
    board = ((torch.arange(64)[:, None] + torch.arange(64)[None, :]) % 2).float().expand(2, 3, 64, 64) * 255
    cfg = ViewConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0, jitter_p=0, gray_p=0, blur_p=0,
                     solarize_p=0, interpolation="bilinear")
    v = make_view(board, cfg, size=32, mean=(0, 0, 0), std=(1, 1, 1), generator=torch.Generator().manual_seed(0))
    assert (v - 0.5).abs().max() < 0.05


def test_the_shared_warp_keeps_normalised_values_and_supersamples_by_averaging():
    """Fine-tuning warps normalised images (negative values pass through); pretraining supersamples and clamps."""
    x = torch.randn(2, 3, 16, 16) * 3
    box = torch.tensor([[1.0, 1.0, 0.5, 0.5]] * 2)
    no = torch.zeros(2, dtype=torch.bool)
    assert torch.allclose(resized_crop(x, box, no, 16), x, atol=1e-5)  # bilinear by default, not clamped
    big = resized_crop(x, box, no, 16, "bilinear")
    assert torch.allclose(resized_crop(x, box, no, 8, supersample=2), torch.nn.functional.avg_pool2d(big, 2))
