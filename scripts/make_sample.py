#!/usr/bin/env python3
"""Build sslprobe/sample/fashion_mnist_sample.npz, the built-in sample `sslprobe demo` uses.

Fashion-MNIST (Zalando, MIT licence), a stratified subset: the first N train and M test images
of each class, written by ../shared/data/fashion_mnist.py and packed as uint8 arrays.

    python scripts/make_sample.py [--per-class 200] [--test-per-class 50]
"""
import argparse
import pathlib
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image

HERE = pathlib.Path(__file__).resolve().parent
OUT = HERE.parent / "sslprobe" / "sample" / "fashion_mnist_sample.npz"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--per-class", type=int, default=200)
    ap.add_argument("--test-per-class", type=int, default=50)
    ap.add_argument("--writer", default=str(HERE.parent.parent / "shared" / "data" / "fashion_mnist.py"))
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, a.writer, tmp, "--per-class", str(a.per_class),
                        "--test-per-class", str(a.test_per_class)], check=True)
        arrays = {}
        classes = sorted(p.name for p in pathlib.Path(tmp, "train").iterdir())
        for split in ("train", "test"):
            xs, ys = [], []
            for c, name in enumerate(classes):
                for f in sorted(pathlib.Path(tmp, split, name).glob("*.png")):
                    xs.append(np.asarray(Image.open(f).convert("L")))
                    ys.append(c)
            arrays[f"{split}_images"] = np.stack(xs).astype(np.uint8)
            arrays[f"{split}_labels"] = np.asarray(ys, np.int64)
        arrays["classes"] = np.asarray(classes)
    np.savez_compressed(OUT, **arrays)
    print(OUT, {k: v.shape for k, v in arrays.items()}, OUT.stat().st_size, "bytes")


if __name__ == "__main__":
    main()
