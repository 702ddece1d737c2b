"""Every command that reads images, over the corpus of good, odd and hostile files (tests/corpus).

Good files are all used with the right shape; each bad one is skipped with its reason in the
manifest/summary and on stderr; exit code 0. A folder of only bad files exits 2 with one line.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from sslprobe.images.datasets import ImageDataset, collate
from sslprobe.images.folders import open_images
from tests import corpus
from tests.clirun import run


@pytest.fixture
def files(tmp_path):
    c = corpus.build(tmp_path / "corpus")
    yield c
    corpus.restore_permissions(c.root)


@pytest.fixture
def only_bad(tmp_path):
    c = corpus.build(tmp_path / "bad", good=False)
    yield c
    corpus.restore_permissions(c.root)


def _to_tensor(im) -> torch.Tensor:
    return torch.from_numpy(np.array(im)).permute(2, 0, 1)  # (3, H, W) uint8, full size


def _shape(im: torch.Tensor) -> tuple[int, int]:
    return int(im.shape[2]), int(im.shape[1])  # (3, H, W) -> (w, h)


def test_corpus_covers_the_issue(files):
    assert len(files.good) >= 11 and len(files.bad) >= 13
    assert files.good["exif_rot6.jpg"] == (20, 40)  # stored 40×20, orientation 6 transposes it
    assert files.ignored[0] == "folder.jpg"


def test_reading_bytes_is_bounded(files):
    """Hashing reads whole files: a device, a pipe or a file over the limit is refused, not read."""
    from sslprobe.images.decode import BadImageError

    s = open_images(files.root)
    for name in files.bad.keys() & {"pipe_link.jpg", "zero_link.jpg"}:
        with pytest.raises(BadImageError, match="not a regular file"):
            s.read_bytes(s.ids.index(name))
    i = s.ids.index("rgb.png")
    size = len(s.read_bytes(i))
    assert len(s.read_bytes(i, max_bytes=size)) == size
    with pytest.raises(BadImageError, match="too large"):
        s.read_bytes(i, max_bytes=size - 1)


@pytest.mark.parametrize("workers", [0, 2])
def test_data_loader_over_the_corpus(files, workers):
    s = open_images(files.root)
    assert set(s.ids) == set(files.good) | set(files.bad)  # the directory named like an image is not listed
    loader = torch.utils.data.DataLoader(ImageDataset(s, _to_tensor), batch_size=None, num_workers=workers)
    seen_good, seen_bad = {}, {}
    for i, img, label, reason in loader:
        if img is None:
            seen_bad[s.ids[i]] = reason
        else:
            assert img.dtype == torch.uint8 and img.shape[0] == 3 and label == -1
            seen_good[s.ids[i]] = _shape(img)
    assert seen_good == files.good
    assert set(seen_bad) == set(files.bad)
    for name, reason in seen_bad.items():
        assert files.bad[name] in reason, (name, reason)


def test_collate_batches_only_good_images(files):
    import torchvision.transforms.functional as TF

    s = open_images(files.root)
    ds = ImageDataset(s, lambda im: TF.pil_to_tensor(TF.resize(im, [8, 8])))
    batches = list(torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=collate))
    good = [s.ids[i] for b in batches for i in b.indices.tolist()]
    assert sorted(good) == sorted(files.good)
    assert all(b.images.shape[1:] == (3, 8, 8) for b in batches if len(b.indices))
    assert sorted(s.ids[i] for b in batches for i, _ in b.skipped) == sorted(files.bad)


@pytest.mark.parametrize("weights, dim", [("pixels", 3 * 8 * 8), ("random", 96)])
def test_extract_over_the_corpus(monkeypatch, capsys, files, tmp_path, weights, dim):
    out = tmp_path / "feats"
    args = ["extract", files.root, "--out", out, "--weights", weights, "--image-size", "8", "--workers", "0",
            "--batch-size", "5"]
    if weights == "random":
        args += ["--model", "test_resnet"]
    code, _, err = run(monkeypatch, capsys, *args)
    assert code == 0, err
    m = json.loads((out / "manifest.json").read_text())
    t = load_file(str(out / "features.safetensors"))
    assert sorted(m["paths"]) == sorted(files.good)
    assert t["features"].shape == (len(files.good), dim) and torch.isfinite(t["features"]).all()
    assert m["counts"] == {"found": len(files.good) + len(files.bad), "embedded": len(files.good),
                           "skipped": len(files.bad)}
    assert {s["path"]: s["reason"] for s in m["skipped"]}.keys() == files.bad.keys()
    for s in m["skipped"]:
        assert files.bad[s["path"]] in s["reason"], s
    assert f"{len(files.good)} images embedded" in err and f"{len(files.bad)} skipped" in err
    shown = [line for line in err.splitlines() if line.startswith("  skipped ")]
    assert len(shown) == min(10, len(files.bad)) and all(": " in line for line in shown)
    assert "Traceback" not in err


def test_extract_pixels_match_the_decoded_shapes(files, tmp_path):
    """Pixel features of a 1×1 and a rotated image are what the decode gives, not garbage."""
    from sslprobe.extraction.extract import extract

    m = extract(files.root, out=tmp_path / "f", weights="pixels", image_size=4, workers=0, show_progress=False)
    t = load_file(str(tmp_path / "f" / "features.safetensors"))["features"]
    one = t[m.paths.index("one_pixel.png")].view(3, 4, 4)
    assert torch.allclose(one, torch.tensor([9, 99, 199]).view(3, 1, 1) / 255, atol=1 / 255)


def test_pretrain_over_the_corpus(monkeypatch, capsys, files, tmp_path):
    run_dir = tmp_path / "run"
    code, _, err = run(monkeypatch, capsys, "pretrain", files.root, "--out", run_dir, "--model", "test_resnet",
                       "--image-size", "16", "--batch-size", "4", "--max-steps", "2", "--proj-hidden", "16",
                       "--proj-dim", "8", "--workers", "0")
    assert code == 0, err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["images"] == len(files.good) + len(files.bad)
    assert {s["path"] for s in summary["skipped"]} == set(files.bad)
    for s in summary["skipped"]:
        assert files.bad[s["path"]] in s["reason"], s
    assert f"skipped {len(files.bad)} files" in err
    assert (run_dir / "backbone.safetensors").is_file()


@pytest.mark.parametrize("command", ["extract", "pretrain"])
def test_only_bad_files_exit_2_with_one_line(monkeypatch, capsys, only_bad, tmp_path, command):
    args = [command, only_bad.root, "--out", tmp_path / "o", "--workers", "0", "--image-size", "16"]
    args += ["--weights", "pixels"] if command == "extract" else ["--model", "test_resnet", "--max-steps", "1"]
    code, _, err = run(monkeypatch, capsys, *args)
    line = corpus.error_line(err)
    assert code == 2 and line.startswith("error: no readable image") and str(only_bad.root) in line
    assert not (tmp_path / "o" / "features.safetensors").exists()
    assert not (tmp_path / "o" / "backbone.safetensors").exists()


def test_only_bad_files_through_the_library_list_the_reasons(only_bad, tmp_path):
    from sslprobe.errors import SSLProbeError
    from sslprobe.extraction.extract import extract

    with pytest.raises(SSLProbeError) as e:
        extract(only_bad.root, out=tmp_path / "o", weights="pixels", workers=0, show_progress=False)
    assert f"all {len(only_bad.bad)} files were skipped" in str(e.value) and "\n" not in str(e.value)


def test_extract_over_the_corpus_as_a_hugging_face_dataset(monkeypatch, capsys, tmp_path):
    """The same bytes as dataset rows (the bytes path of the loader): good rows kept, bad rows listed."""
    datasets = pytest.importorskip("datasets")
    good, bad = corpus.good_files(), corpus.bad_files()
    names = sorted(good) + sorted(bad)
    rows = [{"bytes": (good.get(n) or bad[n])[0], "path": None} for n in names]
    ds = datasets.Dataset.from_dict({"image": rows}, features=datasets.Features({"image": datasets.Image()}))
    ds.save_to_disk(str(tmp_path / "ds"))
    out = tmp_path / "f"
    code, _, err = run(monkeypatch, capsys, "extract", tmp_path / "ds", "--out", out, "--weights", "pixels",
                       "--image-size", "8", "--workers", "0")
    assert code == 0, err
    m = json.loads((out / "manifest.json").read_text())
    assert m["kind"] == "hf" and m["counts"]["embedded"] == len(good) and m["counts"]["skipped"] == len(bad)
    assert sorted(names[int(p)] for p in m["paths"]) == sorted(good)
    for s in m["skipped"]:
        assert bad[names[int(s["path"])]][1] in s["reason"], s


def test_gpu_decode_path_is_handed_no_file_the_cpu_path_refuses_on_its_header(files):
    """extract --decode gpu sends raw JPEG bytes to nvJPEG, bypassing decode_image: bombs and byte-count
    lies must be caught before (``images.decode.check_header``), not decoded into huge padded images."""
    from sslprobe.extraction.hashed import HashedImages

    s = open_images(files.root)
    ds = HashedImages(s, lambda im: im, order=list(range(len(s))), raw_jpeg=True)
    for name in ("bomb.jpg", "claims_9000.jpg"):
        *_, data, kind = ds[s.ids.index(name)]
        assert kind != "jpeg" and data is None, (name, kind)
        assert files.bad[name] in kind
