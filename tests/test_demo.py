"""The built-in sample: what the demo materialises."""
from sslprobe.demo import demo_config, write_sample
from sslprobe.images.folders import open_images


def test_sample_is_stratified_fashion_mnist(tmp_path):
    root = write_sample(tmp_path / "sample")
    train, test = open_images(root / "train"), open_images(root / "test")
    assert len(train) == 2000 and len(test) == 500
    assert train.classes == test.classes and len(train.classes) == 10 and "ankle_boot" in train.classes
    assert all(train.labels.count(c) == 200 for c in range(10))
    img = train.read(0)
    assert img.size == (28, 28) and img.mode == "RGB"
    (root / "train" / "bag" / "00200.png").unlink()
    assert write_sample(root) == root  # complete marker: reused, not rewritten


def test_demo_recipe_fits_small_images(tmp_path):
    for split in ("train", "test"):
        (tmp_path / split).mkdir()
    c = demo_config(out=tmp_path, data=tmp_path)
    assert c.image_size <= 64 and c.steps * c.byol.batch_size >= 10 * 2000  # at least ten epochs of the sample
