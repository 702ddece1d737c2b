"""sslprobe.images: finding images (folders), decoding every kind of bad or unusual file (decode), HF datasets,
the DataLoader dataset (datasets) and the uint8 transform (transforms)."""
from __future__ import annotations

import io
import os
import pickle
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from sslprobe.errors import SSLProbeError
from sslprobe.images.datasets import ImageDataset, collate
from sslprobe.images.decode import BadImageError, decode_image
from sslprobe.images.folders import IMAGE_EXTENSIONS, ImageSet, open_images, skipped_report


def _img(w: int = 8, h: int = 6, color=(200, 30, 30), mode: str = "RGB") -> Image.Image:
    return Image.new(mode, (w, h), color)


def _encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _write(path: Path, data: bytes | Image.Image, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, Image.Image):
        ext = path.suffix[1:]
        data = _encode(data, fmt or {"jpg": "JPEG", "tif": "TIFF"}.get(ext.lower(), ext.upper()))
    path.write_bytes(data)
    return path


def _noise(w: int = 64, h: int = 48) -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _png_header(w: int, h: int) -> bytes:
    """A 1-bit PNG whose IHDR claims w×h; the pixel data is a stub, it must never be decoded."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))


def _to_tensor(im: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(im.resize((8, 8)))).permute(2, 0, 1)  # (3, 8, 8)


# --- finding images ---------------------------------------------------------------------------

def test_class_folders(tmp_path):
    for rel in ["dogs/b.png", "dogs/sub/a.JPG", "cats/z.jpeg", "cats/a.webp", "ants/x.bmp"]:
        _write(tmp_path / rel, _img())
    _write(tmp_path / "cats/.hidden.png", _img())
    _write(tmp_path / ".cache/c.png", _img())  # hidden dir: not a class
    _write(tmp_path / "cats/notes.txt", b"hello")
    (tmp_path / "empty").mkdir()  # no images: not a class
    s = open_images(tmp_path)
    assert (s.kind, s.classes, s.root, s.source) == ("classes", ("ants", "cats", "dogs"), str(tmp_path), str(tmp_path))
    assert s.ids == ("ants/x.bmp", "cats/a.webp", "cats/z.jpeg", "dogs/b.png", "dogs/sub/a.JPG")
    assert s.labels == (0, 1, 1, 2, 2)
    assert len(s) == 5 and s.read(4).size == (8, 6)


@pytest.mark.parametrize("files, ids", [
    (["b.png", "a.JPG", "c.Jpeg", "d.bmp", "e.gif", "f.tif", "g.TIFF", "h.webp"],
     ("a.JPG", "b.png", "c.Jpeg", "d.bmp", "e.gif", "f.tif", "g.TIFF", "h.webp")),
    (["top.png", "x/y/deep.png", "x/b.jpg"], ("top.png", "x/b.jpg", "x/y/deep.png")),  # top-level image: unlabeled
], ids=["flat", "nested"])
def test_unlabeled_folder(tmp_path, files, ids):
    for rel in files:
        _write(tmp_path / rel, _img())
    _write(tmp_path / ".hidden.png", _img())
    _write(tmp_path / "readme.txt", b"not an image")
    s = open_images(str(tmp_path))
    assert (s.kind, s.ids, s.classes) == ("folder", ids, ())
    assert s.labels == (-1,) * len(ids)
    assert all(s.read(i).mode == "RGB" for i in range(len(s)))


def test_order_ignores_listing_order(tmp_path, monkeypatch):
    for rel in ["b/2.png", "b/1.png", "a/9.png", "a/10.png", "c/x/y.png"]:
        _write(tmp_path / rel, _img())
    first = open_images(tmp_path)
    real = os.scandir

    class Reversed:  # same entries, opposite order
        def __init__(self, p):
            self.entries = list(real(p))[::-1]

        def __enter__(self):
            return iter(self.entries)

        def __exit__(self, *a):
            return False

    monkeypatch.setattr(os, "scandir", Reversed)
    assert open_images(tmp_path) == first


def test_symlinks_dont_crash(tmp_path):
    _write(tmp_path / "a/ok.png", _img())
    os.symlink(tmp_path / "nowhere.png", tmp_path / "a/dangling.png")
    os.symlink("self.jpg", tmp_path / "a/self.jpg")  # a link to itself
    os.symlink(tmp_path, tmp_path / "a/loop")  # back to the root
    os.symlink("..", tmp_path / "a/up")
    os.symlink(tmp_path / "a", tmp_path / "alias")  # a second name for a: followed
    s = open_images(tmp_path)
    assert s.kind == "classes" and s.classes == ("a", "alias")
    assert s.ids == ("a/dangling.png", "a/ok.png", "a/self.jpg",
                     "alias/dangling.png", "alias/ok.png", "alias/self.jpg")
    with pytest.raises(BadImageError, match="broken symlink"):
        s.read(0)
    with pytest.raises(BadImageError, match="cannot read"):
        s.read(2)
    assert s.read(1).size == (8, 6)


def test_directory_named_like_an_image_is_not_a_file(tmp_path):
    _write(tmp_path / "a.png", _img())
    (tmp_path / "d.jpg").mkdir()
    assert open_images(tmp_path).ids == ("a.png",)
    with pytest.raises(BadImageError, match="is a directory"):
        decode_image(tmp_path / "d.jpg")


def test_undecodable_file_name(tmp_path):
    raw = os.path.join(os.fsencode(tmp_path), b"caf\xe9.png")  # latin-1, not valid UTF-8
    with open(raw, "wb") as f:
        f.write(_encode(_img(), "PNG"))
    s = open_images(tmp_path)
    assert s.ids == ("caf\udce9.png",)  # surrogateescape keeps the name round-trippable
    assert s.read(0).size == (8, 6) and s.read_bytes(0)[:4] == b"\x89PNG"


@pytest.mark.parametrize("setup, match", [
    (lambda p: p / "missing", "does not exist"),
    (lambda p: _write(p / "one.png", _img()), "is a file, not a folder"),
    (lambda p: p, r"no images found .*\.jpg .*\.webp"),
    (lambda p: (_write(p / "a.txt", b"x"), _write(p / "s/b.csv", b"y"), p)[-1], "2 other files"),
], ids=["missing", "file", "empty", "only-non-images"])
def test_bad_data_argument(tmp_path, setup, match):
    with pytest.raises(SSLProbeError, match=match) as e:
        open_images(setup(tmp_path))
    assert "\n" not in str(e.value) and "pass" in str(e.value)


# --- decoding -----------------------------------------------------------------------------------

_JPEG, _PNG = _encode(_noise(), "JPEG"), _encode(_noise(), "PNG")

BAD = [  # (file name, bytes, expected reason)
    ("empty.jpg", b"", "empty file"),
    ("cut.jpg", _JPEG[: len(_JPEG) // 2], "truncated image"),
    ("cut.png", _PNG[: len(_PNG) // 2], "truncated image"),
    ("text.jpg", b"just some text\n" * 10, "not an image (cannot identify)"),
    ("page.png", b"<!DOCTYPE html><html><body>404</body></html>", "not an image (cannot identify)"),
    ("bomb.png", _png_header(30_000, 30_000), "too large: 900000000 px > 89478485 px limit"),  # PIL raises in open()
    ("big.png", _png_header(10_000, 10_000), "too large: 10000x10000 px > 89478485 px limit"),  # ours, header only
]


@pytest.mark.parametrize("name, data, reason", BAD, ids=[b[0] for b in BAD])
def test_bad_file(tmp_path, name, data, reason):
    path = _write(tmp_path / name, data)
    for source in (path, str(path), data):
        with pytest.raises(BadImageError) as e:
            decode_image(source)
        assert str(e.value) == reason


def test_max_pixels():
    data = _encode(_img(100, 100), "PNG")
    with pytest.raises(BadImageError, match=r"too large: 100x100 px > 1000 px limit"):
        decode_image(data, max_pixels=1000)
    assert decode_image(data, max_pixels=10_000).size == (100, 100)


def test_bad_files_are_skipped_through_a_dataloader(tmp_path):
    _write(tmp_path / "good1.jpg", _noise(64, 48))
    _write(tmp_path / "good2.png", _img(10, 20))
    for name, data, _ in BAD:
        _write(tmp_path / name, data)
    (tmp_path / "dir.jpg").mkdir()
    s = open_images(tmp_path)
    loader = torch.utils.data.DataLoader(ImageDataset(s, _to_tensor), batch_size=4, collate_fn=collate)
    batches = list(loader)
    good = [i for b in batches for i in b.indices.tolist()]
    assert [s.ids[i] for i in good] == ["good1.jpg", "good2.png"]
    assert all(b.images.shape[1:] == (3, 8, 8) for b in batches if len(b.indices))
    assert all(b.labels.dtype == torch.int64 and b.labels.tolist() == [-1] * len(b.indices) for b in batches)
    report = skipped_report(s, [x for b in batches for x in b.skipped] * 2)  # repeats (epochs) collapse
    assert report == sorted(({"path": n, "reason": r} for n, _, r in BAD), key=lambda d: d["path"])


def test_collate_all_bad():
    b = collate([(3, None, 1, "empty file"), (5, None, -1, "truncated image")])
    assert b.images.shape == (0,) and b.labels.shape == (0,) and b.indices.dtype == torch.int64
    assert b.skipped == [(3, "empty file"), (5, "truncated image")]


def test_transform_errors(tmp_path):
    _write(tmp_path / "a.png", _img())

    def too_small(im):
        raise BadImageError("smaller than the crop")

    assert ImageDataset(open_images(tmp_path), too_small)[0] == (0, None, -1, "smaller than the crop")
    with pytest.raises(ZeroDivisionError):  # anything else is a bug and must surface
        ImageDataset(open_images(tmp_path), lambda im: 1 / 0)[0]


def test_draft_decodes_jpeg_files_smaller(tmp_path):
    """With ``draft`` a JPEG file decodes in draft mode (read as bytes, so the file-size bound holds);
    a path decodes as its bytes do."""
    path = _write(tmp_path / "a.jpg", _noise(400, 300))
    def size(im: Image.Image) -> torch.Tensor:
        return torch.tensor(im.size)

    assert ImageDataset(open_images(tmp_path), size, draft=(60, 60))[0][1].tolist() == [100, 75]  # 1/4: smallest >= 60
    assert ImageDataset(open_images(tmp_path), size)[0][1].tolist() == [400, 300]
    assert decode_image(path, draft=(60, 60)).tobytes() == decode_image(path.read_bytes(), draft=(60, 60)).tobytes()


def test_uint8_transform_is_torchvision_resize_crop_to_uint8():
    """The one uint8 transform gives the pixels of torchvision's Resize, CenterCrop, PILToTensor; from timm's eval
    transform it keeps timm's resize, crop and interpolation."""
    from torchvision import transforms as T

    from sslprobe.backbone import create_backbone, eval_transform
    from sslprobe.images.transforms import Uint8Transform

    im = _noise(50, 37)
    for size, resize in ((16, None), (32, 36), (64, 64)):
        tf = Uint8Transform(size=size, resize=resize)
        ref = T.Compose([T.Resize(resize or size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size),
                         T.PILToTensor()])
        assert torch.equal(tf(im), ref(im)) and tf(im).dtype == torch.uint8
        assert tf.draft == (resize or size,) * 2
    _, spec = create_backbone("test_resnet", weights="random", image_size=32)
    timm_tf = eval_transform(spec)
    tf = Uint8Transform.from_timm(timm_tf)
    assert (tf.size, tf.resize, tf.interpolation) == (32, 33, spec.interpolation)
    assert torch.equal(tf(im), T.Compose([*timm_tf.transforms[:2], T.PILToTensor()])(im))
    with pytest.raises(ValueError, match="Resize then CenterCrop"):
        Uint8Transform.from_timm(T.Compose([T.RandomResizedCrop(32), T.ToTensor()]))
    with pytest.raises(ValueError):
        Uint8Transform(size=8, interpolation="sideways")


def test_one_pixel_limit_is_pils_default():
    from sslprobe.images.decode import MAX_PIXELS

    assert MAX_PIXELS == Image.MAX_IMAGE_PIXELS  # (PIL's global itself is never changed: see below)


def test_images_and_pretraining_data_import_no_cache_or_extraction():
    """images/ is a leaf for the commands; pretraining's data path must not pull in extraction or the cache."""
    import subprocess
    import sys

    code = ("import sys, sslprobe.images.decode, sslprobe.images.folders, sslprobe.images.datasets, "
            "sslprobe.images.transforms, sslprobe.pretraining.batches, sslprobe.pretraining.monitor\n"
            "bad = [m for m in sys.modules if m == 'sslprobe.cache' or m.startswith('sslprobe.extraction')]\n"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def _palette_with_transparency() -> Image.Image:
    im = Image.new("P", (2, 1))
    im.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    im.putdata([0, 1])
    im.info["transparency"] = 0  # index 0 (red) fully transparent
    return im


MODES = [  # (file name, image, expected RGB of the first pixels, tolerance)
    ("l.png", Image.fromarray(np.array([[100, 7]], np.uint8), "L"), [(100,) * 3, (7,) * 3], 0),
    ("la.png", Image.fromarray(np.array([[[100, 0], [100, 255]]], np.uint8), "LA"), [(255,) * 3, (100,) * 3], 0),
    ("p.png", _palette_with_transparency(), [(255, 255, 255), (0, 0, 255)], 0),
    ("p.gif", _palette_with_transparency(), [(255, 255, 255), (0, 0, 255)], 0),
    ("rgba.png", Image.fromarray(np.array([[[255, 0, 0, 0], [255, 0, 0, 255]]], np.uint8), "RGBA"),
     [(255, 255, 255), (255, 0, 0)], 0),
    ("cmyk.jpg", Image.new("CMYK", (16, 16), (0, 255, 255, 0)), [(255, 0, 0)], 12),
    ("i16.png", Image.fromarray(np.array([[0, 32768, 65535]], np.uint16)), [(0,) * 3, (128,) * 3, (255,) * 3], 0),
    ("i16.tif", Image.fromarray(np.array([[0, 32768, 65535]], np.uint16)), [(0,) * 3, (128,) * 3, (255,) * 3], 0),
    ("f.tif", Image.fromarray(np.array([[0, 0.5, 1]], np.float32)), [(0,) * 3, (128,) * 3, (255,) * 3], 0),
    ("one.png", Image.fromarray(np.array([[False, True]])), [(0,) * 3, (255,) * 3], 0),
    ("one.bmp", Image.fromarray(np.array([[False, True]])), [(0,) * 3, (255,) * 3], 0),
]


@pytest.mark.parametrize("name, im, expected, tol", MODES, ids=[m[0] for m in MODES])
def test_modes_become_rgb(tmp_path, name, im, expected, tol):
    path = _write(tmp_path / name, im)
    out = decode_image(path)
    assert out.mode == "RGB" and out.size == im.size
    got = np.asarray(out)[0, : len(expected)].astype(int)
    assert np.abs(got - np.array(expected)).max() <= tol, got


def test_16bit_ppm_decodes_as_I_and_is_scaled():
    data = b"P5 3 1 65535\n" + np.array([0, 32768, 65535], ">u2").tobytes()
    assert Image.open(io.BytesIO(data)).mode == "I"
    assert np.asarray(decode_image(data))[0, :, 0].tolist() == [0, 128, 255]


def test_exif_orientation(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    path = _write(tmp_path / "rot.jpg", _encode(_img(40, 20), "JPEG", exif=exif.tobytes()))
    assert Image.open(path).size == (40, 20)
    assert decode_image(path).size == (20, 40)


def test_animated_gif_first_frame(tmp_path):
    frames = [_img(10, 10, c) for c in [(255, 0, 0), (0, 0, 255), (0, 255, 0)]]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert Image.open(path).n_frames == 3
    out = decode_image(path)
    assert out.size == (10, 10) and tuple(np.asarray(out)[5, 5]) == (255, 0, 0)


def test_unreadable_file(tmp_path):
    path = _write(tmp_path / "secret.png", _img())
    path.chmod(0)
    if os.access(path, os.R_OK):
        pytest.skip("running as root: permissions are not enforced")
    with pytest.raises(BadImageError, match="permission denied"):
        decode_image(path)


def test_unsafe_format_refused():
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"  # would run Ghostscript
    with pytest.raises(BadImageError, match="cannot identify"):
        decode_image(eps)


def test_pil_globals_untouched(tmp_path):
    import sslprobe.images.datasets  # noqa: F401
    import sslprobe.images.folders  # noqa: F401
    import sslprobe.images.transforms  # noqa: F401

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing leaks out as a warning either
        for _, data, _ in BAD:
            with pytest.raises(BadImageError):
                decode_image(data)
    assert Image.MAX_IMAGE_PIXELS == 89_478_485
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_imageset_pickles(tmp_path):
    _write(tmp_path / "c/a.png", _img())
    s = open_images(tmp_path)
    t = pickle.loads(pickle.dumps(s))
    assert isinstance(t, ImageSet) and t == s and t.read(0).size == (8, 6)
    assert IMAGE_EXTENSIONS == (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


# --- Hugging Face datasets ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def hf_dataset(tmp_path_factory):
    """A saved Dataset with an Image column (third row corrupt) and a ClassLabel; and a DatasetDict."""
    datasets = pytest.importorskip("datasets")
    root = tmp_path_factory.mktemp("hf")
    rows = [_encode(_img(8, 6), "PNG"), _encode(_img(5, 7), "JPEG"), b"\x89PNG not really", _encode(_img(4, 4), "PNG")]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["zebra", "ant"]),
                                  "note": datasets.Value("string")})
    ds = datasets.Dataset.from_dict({"image": [{"bytes": b, "path": None} for b in rows], "label": [1, 0, 1, 0],
                                     "note": ["x", "y", "x", "z"]}, features=features)
    ds.save_to_disk(str(root / "single"))
    datasets.DatasetDict({"train": ds, "test": ds.select([3, 0])}).save_to_disk(str(root / "dict"))
    return root, rows


@pytest.mark.parametrize("form", ["plain", "hf"])
def test_hf_saved_dataset(hf_dataset, form):
    root, rows = hf_dataset
    src = str(root / "single") if form == "plain" else f"hf:{root / 'single'}"
    s = open_images(src)
    assert (s.kind, s.source, s.root, s.ids) == ("hf", src, None, ("0", "1", "2", "3"))
    assert (s.labels, s.classes) == ((1, 0, 1, 0), ("zebra", "ant"))  # ClassLabel order, not sorted
    assert s.read(1).size == (5, 7) and s.read_bytes(0) == rows[0]
    batches = list(torch.utils.data.DataLoader(ImageDataset(s, _to_tensor), batch_size=3, collate_fn=collate))
    assert [i for b in batches for i in b.indices.tolist()] == [0, 1, 3]
    assert [b.labels.tolist() for b in batches] == [[1, 0], [0]]
    assert skipped_report(s, batches[0].skipped) == [{"path": "2", "reason": "not an image (cannot identify)"}]
    t = pickle.loads(pickle.dumps(s))
    assert t == s and t.read(3).size == (4, 4)


def test_hf_dataset_dict_splits(hf_dataset):
    root, _ = hf_dataset
    assert open_images(root / "dict").ids == ("0", "1", "2", "3")  # default split: train
    s = open_images(f"hf:{root / 'dict'}:test")
    assert s.labels == (0, 1) and s.read(0).size == (4, 4)
    with pytest.raises(SSLProbeError, match=r"no split 'val' \(splits: train, test\)"):
        open_images(f"hf:{root / 'dict'}:val")


def test_hf_explicit_columns(hf_dataset):
    root, _ = hf_dataset
    s = open_images(root / "single", image_column="image", label_column="note")
    assert (s.classes, s.labels) == (("x", "y", "z"), (0, 1, 0, 2))  # plain values: sorted distinct
    for kw, word in [({"image_column": "pic"}, "image"), ({"label_column": "y"}, "label")]:
        with pytest.raises(SSLProbeError, match=rf"no column .* \(columns: image, label, note\); pass --{word}-column"):
            open_images(root / "single", **kw)


def test_hf_load_error_is_one_line(monkeypatch):
    import datasets

    def offline(*a, **k):
        raise ConnectionError("Couldn't reach 'someone/thing' on the Hub\n(offline)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(SSLProbeError, match="save_to_disk") as e:
        open_images("hf:someone/thing:validation")
    assert "\n" not in str(e.value) and "'someone/thing'" in str(e.value)
