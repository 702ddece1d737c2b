#!/usr/bin/env python3
"""Every GPU claim of sslprobe in one prepared command: one table, one JSON (issue 16).

On one H100/H200 the full check is sized for about 8 minutes (a 540 s deadline over all stages). Each
stage runs in its own process with its own budget, so one that fails, hangs or kills CUDA costs only its
own rows; the JSON is rewritten after every stage, so a run stopped half-way keeps what it finished.
Every row prints its goal beside the measurement.

  env         the device, driver and versions
  data        Fashion-MNIST as PNG class folders (from the IDX files) and 10,240 generated 500x375 JPEGs
  cuda_tests  the tests that skip without CUDA (found in tests/ by their ``cuda.is_available`` skip)
  probe       ImageNet-sized synthetic features (1.28M x 2048, 1000 classes): search + refit ≤ 60 s;
              CUDA kNN (50,000 queries against 1.28M rows); the host-resident probe against the on-device one
  extract     ResNet-50 at 224 px from the JPEGs: a plain timm + DataLoader loop vs ``extract`` with CPU and
              nvJPEG decode (goal ≥ 2x the plain loop), beside the model-only forward (the ceiling)
  byol_r50    BYOL ResNet-50 at 224 px from the JPEGs vs lightly's recipe (goal ≥ 1.8x), model-only ceiling
  byol_r18    BYOL ResNet-18, small stem, 32 px, Fashion-MNIST, ``--compile`` (goal ≥ 1.2x lightly)
  quality     Fashion-MNIST at lightly's 2-minute budget: ResNet-18 BYOL for the steps that fit 2 minutes
              (sslprobe.timebudget), then linear top-1 on the 10,000 test images (goal ≥ 90 %; lightly's
              recipe: 87.3 % at that budget), beside the random-init and raw-pixel rows

The throughput stages reuse bench/pretrain_throughput.py (its presets gpu-r50 and gpu-r18, its Bench);
the probe's data is bench/probe_vs_sklearn.py's recipe, drawn on the device.

What travels (the GPU machine has no network; its python3 has torch, timm, numpy, pillow, safetensors,
rich, typer, huggingface-hub and lightning-utilities, but neither sslprobe, which runs from the checkout,
nor lightly). Once, here, in the repository's root:

    echo /.gpu_check/ >> .git/info/exclude
    mkdir -p .gpu_check/fashion-mnist .gpu_check/whl
    cp ~/.cache/fashion-mnist-deb/usr/share/datasets/fashion-mnist/*-ubyte.gz .gpu_check/fashion-mnist/
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
        --platform manylinux_2_28_x86_64 -d .gpu_check/whl lightly==1.6.0

(the four IDX files are 30 MB, lightly's wheel 0.3 MB; ../shared does not travel). Then the one command,
with ``carry: [".gpu_check"]`` and ``timeout_s: 600``:

    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu_check/whl/*.whl;
    export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1;
    python3 bench/gpu_check.py --json $OUT/gpu_check.json 2>&1 | tee $OUT/gpu_check.log

(a failed install only turns the lightly rows into "skipped: lightly not installed").
It writes $OUT/gpu_check.json and $OUT/gpu_check.md (the table, for bench/RESULTS.md). To redo one
stage: ``--only NAME`` (env always runs, so every JSON names its card); a stage's budget: ``--budget NAME=SECONDS``.

    python bench/gpu_check.py --smoke     # every stage at toy size on the CPU (tests/test_gpu_check.py)

In ``--smoke`` the goals are shown but not judged, CUDA-only rows say "skipped: no CUDA" (nvJPEG runs
its CPU fallback), and the Fashion-MNIST files are a generated stand-in written in the same IDX format.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import gzip
import importlib.util
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from multiprocessing import Pool
from pathlib import Path
from typing import Any

import numpy as np

# Before torch loads anywhere (children inherit it): busy-waiting OpenMP threads slow 4-20x on a shared CPU.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]
# The GPU machine runs the checkout as it is (no pip install): sslprobe from the root, the benches from bench/.
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from sslprobe.fileio import write_json  # noqa: E402 -- needs the sys.path set-up above

SCHEMA = "sslprobe-gpu-check/1"
DEADLINE_S = 540.0  # the whole run; a device command may run 600 s
MIN_STAGE_S = 5.0  # a stage is not started with less time than this left
LIGHTLY_FMNIST_TOP1 = 87.3  # lightly's recipe at the 2-minute budget (issue 16)
FMNIST_CLASSES = ("tshirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                  "ankle_boot")
IDX_DIRS = (ROOT / ".gpu_check" / "fashion-mnist", Path("/usr/share/datasets/fashion-mnist"),
            Path.home() / ".cache" / "fashion-mnist-deb" / "usr" / "share" / "datasets" / "fashion-mnist")


# ----------------------------------------------------------------------------- rows, goals, results

@dataclass(frozen=True)
class Goal:
    """A target a row's value must reach (``>=``) or stay under (``<=``), and how the table says it."""

    op: str
    target: float
    text: str

    def met(self, value: float) -> bool:
        return value >= self.target if self.op == ">=" else value <= self.target


@dataclass(frozen=True)
class Planned:
    """A row every run prints, measured or not, so the table and the JSON keep one shape."""

    key: str
    measure: str
    goal: Goal | None = None
    goal_text: str = ""  # a goal without a number (a reference, "all pass")


@dataclass(frozen=True)
class Measured:
    value: float | str | None
    unit: str = ""
    note: str = ""
    status: str = "ok"


class Skip(Exception):
    """Raised by a stage that cannot run here ("no CUDA", "lightly not installed")."""


@dataclass
class StageResult:
    name: str
    title: str
    status: str
    seconds: float
    budget_s: float
    rows: list[dict[str, Any]]
    details: dict[str, Any] = field(default_factory=dict)


def row_dicts(planned: tuple[Planned, ...], got: dict[str, Measured], *, status: str, judge: bool
              ) -> list[dict[str, Any]]:
    """Every planned row: its measurement if there is one, else the stage's status."""
    unknown = set(got) - {p.key for p in planned}
    if unknown:  # a stage that measures a row it did not plan is a bug in this script
        raise KeyError(f"unplanned rows {sorted(unknown)}")
    out = []
    for p in planned:
        m = got.get(p.key)
        if m is None:
            m = Measured(None, status=status if status != "ok" else "not measured")
        met = None
        if judge and p.goal is not None and m.status == "ok" and isinstance(m.value, (int, float)):
            met = p.goal.met(float(m.value))
        out.append({"key": p.key, "measure": p.measure, "value": m.value, "unit": m.unit,
                    "goal": p.goal.text if p.goal else p.goal_text, "met": met, "note": m.note,
                    "status": m.status})
    return out


# ----------------------------------------------------------------------------- sizes

@dataclass(frozen=True)
class Throughput:
    """One bench/pretrain_throughput.py configuration: its preset, then these values where not None."""

    preset: str
    model: str | None = None
    image_size: int | None = None
    batch: int | None = None
    warmup: int = 5
    steps: int = 20
    workers: int | None = None  # None: the bench's default (all cores, at most 16)
    proj_hidden: int | None = None
    proj_dim: int | None = None


@dataclass(frozen=True)
class Quality:
    model: str
    image_size: int
    batch: int
    minutes: float
    proj_hidden: int
    extract_batch: int
    workers: int | None  # None: sslprobe's default
    step_cap: int | None = None  # smoke: train at most this many of the fitted steps


@dataclass(frozen=True)
class Extract:
    model: str
    image_size: int
    batch: int
    workers: int | None


@dataclass(frozen=True)
class Probe:
    n: int
    d: int
    k: int
    test: int
    knn_queries: int
    offload_rows: int


@dataclass(frozen=True)
class Sizes:
    jpegs: int
    jpeg_wh: tuple[int, int]
    per_class: int  # Fashion-MNIST train images per class (0: all 6,000)
    test_per_class: int
    r50: Throughput
    r18: Throughput
    quality: Quality
    extract: Extract
    probe: Probe


FULL = Sizes(
    jpegs=10_240, jpeg_wh=(500, 375), per_class=0, test_per_class=0,
    r50=Throughput("gpu-r50", warmup=5, steps=20),
    r18=Throughput("gpu-r18", warmup=5, steps=30),
    quality=Quality("resnet18", 32, 512, 2.0, 4096, 1024, None),
    extract=Extract("resnet50", 224, 256, None),
    probe=Probe(1_280_000, 2048, 1000, 50_000, 50_000, 131_072))
SMOKE = Sizes(
    jpegs=24, jpeg_wh=(64, 48), per_class=12, test_per_class=6,
    r50=Throughput("gpu-r50", "test_resnet", 32, 8, 1, 1, 0, 64, 32),
    r18=Throughput("gpu-r18", "test_resnet", 16, 8, 1, 1, 0, 64, 32),
    quality=Quality("test_resnet", 16, 8, 1.0, 64, 64, 0, step_cap=2),
    extract=Extract("test_resnet", 32, 8, 0),
    probe=Probe(600, 32, 10, 200, 100, 300))


@dataclass(frozen=True)
class Context:
    """What every stage reads: the mode, the device, the sizes and the work folder."""

    smoke: bool
    device: str
    sizes: Sizes
    work: Path
    idx_dir: Path | None
    partial: Path | None = None  # in a stage's own process: where it leaves the rows measured so far
    kept: dict[str, Measured] = field(default_factory=dict)

    @property
    def data(self) -> DataSets:
        return DataSets(self)

    def keep(self, got: dict[str, Measured]) -> None:
        """Leave the rows measured so far: a stage that raises, or is stopped at its budget, keeps them."""
        self.kept.clear()
        self.kept.update(got)
        if self.partial is not None:
            write_json(self.partial, {k: asdict(m) for k, m in got.items()})


# ----------------------------------------------------------------------------- data

def find_idx(given: Path | None) -> Path | None:
    """The folder holding Fashion-MNIST's four IDX files: ``--fmnist-idx``, the carried folder, Debian's."""
    for d in ([given] if given else []) + list(IDX_DIRS):
        if (d / "train-images-idx3-ubyte.gz").is_file():
            return d
    return None


def _idx_bytes(arr: np.ndarray) -> bytes:
    """IDX: two zero bytes, the type (0x08 = uint8), the rank, big-endian sizes, then the data."""
    head = bytes([0, 0, 8, arr.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
    return head + arr.astype(np.uint8).tobytes()


def write_toy_idx(out: Path, *, train: int, test: int, seed: int = 0) -> Path:
    """A stand-in in Fashion-MNIST's format for the smoke run: 28x28 grey images, a bright bar per class."""
    out.mkdir(parents=True, exist_ok=True)
    g = np.random.default_rng(seed)
    for prefix, n in (("train", train), ("t10k", test)):
        y = np.arange(n) % 10
        x = g.integers(0, 60, (n, 28, 28))
        for i, c in enumerate(y):
            x[i, 2 * c + 4: 2 * c + 7, 3:25] += 150
        (out / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(x)))
        (out / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(y)))
    return out


def read_idx(path: Path) -> np.ndarray:
    raw = gzip.decompress(path.read_bytes())
    rank = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(rank)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * rank).reshape(shape)


def _write_pngs(job: tuple[str, np.ndarray, np.ndarray, np.ndarray]) -> None:
    from PIL import Image

    root, images, labels, index = job
    for img, lab, i in zip(images, labels, index):
        Image.fromarray(img, "L").save(f"{root}/{FMNIST_CLASSES[lab]}/{i:05d}.png")


def fmnist_folder(idx: Path, out: Path, *, prefix: str, per_class: int) -> int:
    """One split as class folders of 28 px grey PNGs (the first ``per_class`` of each class; 0: all)."""
    x, y = read_idx(idx / f"{prefix}-images-idx3-ubyte.gz"), read_idx(idx / f"{prefix}-labels-idx1-ubyte.gz")
    keep = np.arange(len(y))
    if per_class:
        keep = np.concatenate([np.flatnonzero(y == c)[:per_class] for c in range(10)])
    for c in FMNIST_CLASSES:
        (out / c).mkdir(parents=True, exist_ok=True)
    parts = np.array_split(keep, min(len(keep), 64))
    with Pool(min(16, os.cpu_count() or 1)) as pool:
        pool.map(_write_pngs, [(str(out), x[p], y[p], p) for p in parts])
    return len(keep)


class DataSets:
    """The image folders the stages share, written once under the work folder (a ``.done`` file marks them)."""

    def __init__(self, ctx: Context):
        self.ctx = ctx

    def idx(self) -> Path:
        if self.ctx.smoke:
            s = self.ctx.sizes
            return write_toy_idx(self.ctx.work / "toy-idx", train=10 * s.per_class, test=10 * s.test_per_class)
        if self.ctx.idx_dir is None:
            raise FileNotFoundError("Fashion-MNIST's IDX files were not found: copy the four *-ubyte.gz files "
                                    f"into {IDX_DIRS[0]} (see this script's docstring) or pass --fmnist-idx DIR")
        return self.ctx.idx_dir

    def fmnist(self) -> tuple[Path, Path]:
        """(train, test) class folders."""
        s, root = self.ctx.sizes, self.ctx.work / "fmnist"
        if not (root / ".done").exists():
            shutil.rmtree(root, ignore_errors=True)
            idx = self.idx()
            fmnist_folder(idx, root / "train", prefix="train", per_class=s.per_class)
            fmnist_folder(idx, root / "test", prefix="t10k", per_class=s.test_per_class)
            (root / ".done").write_text(str(idx))
        return root / "train", root / "test"

    def jpegs(self) -> Path:
        """Generated photo-like JPEGs (pretrain_throughput's synthetic images), one flat folder."""
        from pretrain_throughput import synthetic_folder

        s = self.ctx.sizes
        w, h = s.jpeg_wh
        return synthetic_folder(self.ctx.work / f"jpeg-{s.jpegs}-{w}x{h}", n=s.jpegs, width=w, height=h, ext="jpg")


def count_files(folder: Path, pattern: str) -> int:
    return sum(1 for _ in folder.rglob(pattern))


# ----------------------------------------------------------------------------- small helpers

def cuda_ready(ctx: Context) -> bool:
    import torch

    from sslprobe.runtime.device import pick_device

    return pick_device(ctx.device).type == "cuda" and torch.cuda.is_available()


def need_lightly() -> None:
    if importlib.util.find_spec("lightly") is None:
        raise Skip("lightly not installed (carry its wheel: see this script's docstring)")


def no_cuda(note: str = "") -> Measured:
    return Measured(None, note=note, status="skipped: no CUDA")


def failed(e: BaseException) -> str:
    text = str(e).splitlines()[0][:300] if str(e) else ""
    return f"failed: {type(e).__name__}: {text}"


def guarded(measure: Callable[..., Measured], **kw: Any) -> Measured:
    """One row: what it raises becomes its status, and the stage's other rows are still measured."""
    try:
        return measure(**kw)
    except Exception as e:  # noqa: BLE001 -- a row's failure is a result (nvJPEG missing, an OOM)
        traceback.print_exc()
        return Measured(None, status=failed(e))


@dataclass
class Clock:
    """Wall seconds of a block, with the device synchronised at both ends (CUDA work is asynchronous)."""

    cuda: bool
    seconds: float = 0.0

    def __enter__(self) -> Clock:
        self._sync()
        self._t = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self._sync()
        self.seconds = time.perf_counter() - self._t

    def _sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()


# ----------------------------------------------------------------------------- stage: env

ENV_ROWS = (Planned("device", "device", goal_text="one H100/H200"),
            Planned("software", "python / torch / CUDA / timm / lightly"))


def env_stage(ctx: Context) -> tuple[dict[str, Measured], dict[str, Any]]:
    import timm
    import torch

    cuda = torch.cuda.is_available()
    name = torch.cuda.get_device_name(0) if cuda else f"CPU only ({os.cpu_count()} cores)"
    lightly = "missing"
    if importlib.util.find_spec("lightly") is not None:
        import lightly as lightly_mod

        lightly = getattr(lightly_mod, "__version__", "?")
    soft = (f"python {platform.python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
            f"timm {timm.__version__}, lightly {lightly}")
    details: dict[str, Any] = {"cuda": cuda, "device_name": name, "cpu_count": os.cpu_count(),
                               "platform": platform.platform(), "torch": torch.__version__, "lightly": lightly}
    if cuda:
        p = torch.cuda.get_device_properties(0)
        details.update(memory_gib=round(p.total_memory / 2**30, 1), capability=f"{p.major}.{p.minor}",
                       multiprocessors=p.multi_processor_count, driver=_driver())
    note = f"{details.get('memory_gib', '')} GiB, driver {details.get('driver', '')}" if cuda else ""
    return {"device": Measured(name, note=note), "software": Measured(soft)}, details


def _driver() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=False).stdout
        return out.strip().splitlines()[0] if out.strip() else "?"
    except (OSError, subprocess.TimeoutExpired):
        return "?"


# ----------------------------------------------------------------------------- stage: data

DATA_ROWS = (Planned("fmnist", "Fashion-MNIST class folders (train + test PNG)"),
             Planned("jpegs", "generated JPEGs (photo-like, quality 90)"))


def data_stage(ctx: Context) -> tuple[dict[str, Measured], dict[str, Any]]:
    t = time.perf_counter()
    train, test = ctx.data.fmnist()
    t_fm = time.perf_counter() - t
    t = time.perf_counter()
    jpg = ctx.data.jpegs()
    t_jpg = time.perf_counter() - t
    n_train, n_test, n_jpg = count_files(train, "*.png"), count_files(test, "*.png"), count_files(jpg, "*.jpg")
    w, h = ctx.sizes.jpeg_wh
    src = (ctx.work / "fmnist" / ".done").read_text()
    return ({"fmnist": Measured(f"{n_train:,} + {n_test:,}", "images", f"from {src}; {t_fm:.1f} s"),
             "jpegs": Measured(n_jpg, "images", f"{w}x{h}; {t_jpg:.1f} s")},
            {"fmnist_train": str(train), "fmnist_test": str(test), "jpegs": str(jpg)})


# ----------------------------------------------------------------------------- stage: cuda_tests

TEST_ROWS = (Planned("tests", "tests that skip without CUDA", goal_text="all pass"),)


def cuda_only_tests(tests: Path) -> list[str]:
    """pytest ids of the test functions whose skip condition mentions ``cuda.is_available``."""
    ids = []
    for path in sorted(tests.glob("test_*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test") and any(
                    "skip" in ast.unparse(d) and "cuda.is_available" in ast.unparse(d) for d in node.decorator_list):
                ids.append(f"{path.relative_to(tests.parent)}::{node.name}")
    return ids


def junit_counts(xml: Path) -> dict[str, int]:
    import xml.etree.ElementTree as ET  # noqa: N817

    suites = ET.parse(xml).getroot()
    suite = suites if suites.tag == "testsuite" else suites.find("testsuite")
    return {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}


def cuda_tests_stage(ctx: Context) -> tuple[dict[str, Measured], dict[str, Any]]:
    ids = cuda_only_tests(ROOT / "tests")
    if not ids:
        return {"tests": Measured(0, "tests", "none found", status="failed: no CUDA-only test found")}, {}
    import pytest

    xml = ctx.work / "cuda_tests.xml"
    xml.unlink(missing_ok=True)
    # In this process: torch is loaded once, and with isolation the stage's process is the test's sandbox
    # (the parent stops it at the stage's budget).
    code = int(pytest.main(["-q", "-p", "no:cacheprovider", "-W", "ignore::pytest.PytestAssertRewriteWarning",
                            f"--rootdir={ROOT}", f"--junitxml={xml}", *(str(ROOT / i) for i in ids)]))
    if not xml.exists():  # pytest stopped before running anything (an import error, a bad id)
        return {"tests": Measured(None, note=", ".join(ids), status=f"failed: pytest exit code {code}")}, {}
    c = junit_counts(xml)
    passed = c["tests"] - c["failures"] - c["errors"] - c["skipped"]
    details = {"ids": ids, "counts": c, "exit_code": code}
    if c["skipped"] == c["tests"]:
        return {"tests": Measured(f"{c['skipped']} skipped", note=", ".join(ids), status="skipped: no CUDA")}, details
    status = "ok" if passed == c["tests"] else f"failed: {c['failures']} failed, {c['errors']} errors"
    return {"tests": Measured(f"{passed}/{c['tests']} passed", note=", ".join(ids), status=status)}, details


# ----------------------------------------------------------------------------- stage: probe

PROBE_ROWS = (
    Planned("search_refit", "linear probe 1.28M x 2048, 1000 classes: C search + refit",
            Goal("<=", 60.0, "≤ 60 s")),
    Planned("knn", "kNN k=20: 50,000 queries vs 1.28M rows", goal_text="record (exact fp32)"),
    Planned("offload", "host-resident probe vs on-device (131k rows, fixed C)", goal_text="same test top-1"),
)


def imagenet_like(*, n: int, d: int, k: int, test: int, device: Any, seed: int = 0) -> tuple[Any, Any]:
    """bench/probe_vs_sklearn.py's synthetic recipe (class means in a 32-dim subspace, anisotropic noise,
    ReLU'd), drawn in float32 blocks on ``device`` so an ImageNet-sized set takes seconds; host FeatureSets."""
    import torch

    from sslprobe.probing.features import FeatureSet

    g = torch.Generator(device=device).manual_seed(seed)
    r = min(32, d)
    means = torch.randn(k, r, generator=g, device=device) * 0.6
    mix = torch.randn(r, d, generator=g, device=device) / r ** 0.5
    scales = (torch.randn(d, generator=g, device=device) * 0.7).exp()

    def draw(m: int) -> FeatureSet:
        y = torch.randint(0, k, (m,), generator=g, device=device)
        x = torch.empty(m, d, dtype=torch.float32)
        for s in range(0, m, 65536):
            yy = y[s:s + 65536]
            z = (means[yy] + torch.randn(len(yy), r, generator=g, device=device)) @ mix
            x[s:s + len(yy)] = ((z + 0.5 * torch.randn(len(yy), d, generator=g, device=device)).clamp_(min=0)
                                * scales).cpu()
        return FeatureSet.from_arrays(x, y.cpu(), source=f"synthetic {m}x{d}x{k}")

    return draw(n), draw(test)


def _probe_timed(train: Any, test: Any, *, device: str, **kw: Any) -> dict:
    from sslprobe import probe

    return probe(train, test=test, knn_k=(), device=device, **kw)


def probe_stage(ctx: Context) -> tuple[dict[str, Measured], dict[str, Any]]:
    from sslprobe.probing.features import FeatureSet
    from sslprobe.runtime.device import pick_device

    p, dev = ctx.sizes.probe, pick_device(ctx.device)
    t = time.perf_counter()
    train, test = imagenet_like(n=p.n, d=p.d, k=p.k, test=p.test, device=dev)
    details: dict[str, Any] = {"generate_s": round(time.perf_counter() - t, 2), "n": p.n, "d": p.d, "k": p.k}
    step = max(1, p.n // 4096)  # warm-up: CUDA context, kernels and the allocator are not billed to the run
    _probe_timed(FeatureSet.from_arrays(train.features[::step], train.labels[::step]), None, device=ctx.device, C=1.0)
    r = _probe_timed(train, test, device=ctx.device)
    tm = r.timing
    took = tm["search"] + tm["refit"]
    details["probe"] = {"C": r.C, "fits": len(r.val_curve), "path_iters": sum(q.iters for q in r.val_curve),
                        "refit_iters": r.refit_iters, "timing": tm, "test_top1": r.test.top1,
                        "device": r.device, "dtype": r.dtype}
    rows = {"search_refit": Measured(round(took, 2), "s", f"search {tm['search']:.1f} s ({len(r.val_curve)} fits)"
                                     f" + refit {tm['refit']:.1f} s, C={r.C:.3g}, top-1 {r.test.top1:.3f}, "
                                     f"on {r.device}")}
    ctx.keep(rows)
    rows["knn"] = guarded(knn_row, train=train, test=test, queries=p.knn_queries, k=p.k, dev=dev, details=details)
    ctx.keep(rows)
    rows["offload"] = guarded(offload_row, train=train, test=test, rows=p.offload_rows, C=r.C, ctx=ctx,
                              details=details)
    return rows, details


def knn_row(*, train: Any, test: Any, queries: int, k: int, dev: Any, details: dict[str, Any]) -> Measured:
    from sslprobe.knn import knn_votes

    q = test.features[:queries]
    with Clock(dev.type == "cuda") as c:
        votes = knn_votes(train.features, train.labels, q, ks=(20,), num_classes=k, device=dev)[20]
    top1 = float((votes.argmax(1).cpu() == test.labels[:queries]).float().mean())
    tflops = 2 * train.features.shape[0] * q.shape[0] * q.shape[1] / c.seconds / 1e12
    details["knn"] = {"seconds": round(c.seconds, 3), "queries": q.shape[0], "top1": top1, "tflops": round(tflops, 2)}
    return Measured(round(c.seconds, 2), "s", f"{q.shape[0] / c.seconds:,.0f} queries/s, {tflops:.1f} TFLOP/s "
                                              f"(host→device copy included), top-1 {top1:.3f} on {dev.type}")


def offload_row(*, train: Any, test: Any, rows: int, C: float, ctx: Context, details: dict[str, Any]) -> Measured:
    """The same fixed-C probe with the features on the device and with them streamed from host memory
    (the path :func:`sslprobe.probing.compute.offload` takes when they'd fill over half the GPU)."""
    import sslprobe.probing.compute as compute
    from sslprobe.probing.features import FeatureSet

    step = max(1, train.features.shape[0] // rows)
    sub = FeatureSet.from_arrays(train.features[::step], train.labels[::step])
    on = _probe_timed(sub, test, device=ctx.device, C=C)
    chooser = compute.offload
    compute.offload = lambda *a, **k: True  # no public switch: force the host-resident path for one call
    try:
        off = _probe_timed(sub, test, device=ctx.device, C=C)
    finally:
        compute.offload = chooser
    t_on, t_off = (x.timing["refit"] for x in (on, off))
    a, b = on.test.top1, off.test.top1
    status = "ok" if abs(a - b) <= 1e-3 else f"failed: top-1 {b:.4f} host-resident vs {a:.4f} on the device"
    details["offload"] = {"on_device": {"top1": a, "refit_s": t_on}, "host": {"top1": b, "refit_s": t_off}}
    note = f"{a:.4f} vs {b:.4f}; refit {t_on:.1f} s on the device, {t_off:.1f} s streamed ({len(sub.labels):,} rows)"
    return Measured(round(b - a, 4), "Δ top-1", note, status=status)


# ----------------------------------------------------------------------------- stage: extract

EXTRACT_ROWS = (
    Planned("plain", "plain timm + DataLoader loop, fp32 (the peer)"),
    Planned("cpu_decode", "sslprobe extract, CPU decode, cold cache", Goal(">=", 2.0, "≥ 2× plain")),
    Planned("gpu_decode", "sslprobe extract, nvJPEG decode, cold cache", Goal(">=", 2.0, "≥ 2× plain")),
    Planned("model_only", "model-only forward (extract's ceiling)", goal_text="anchor H100 ~12,900 img/s"),
)


def plain_loop(data: Path, *, model: str, image_size: int, batch: int, workers: int, device: Any,
               limit: int | None = None) -> tuple[Any, list[str]]:
    """What one writes without sslprobe (bench/extract_throughput.py's peer, on the device): timm's
    ImageDataset and eval transform, a DataLoader, ``model.eval()`` under ``no_grad``."""
    import torch
    from timm.data import ImageDataset

    from sslprobe.backbone import eval_transform, random_backbone

    net, spec, _ = random_backbone(model, image_size=image_size, seed=0)  # extract's weights="random" network
    net = net.to(device).eval()
    ds = ImageDataset(str(data), transform=eval_transform(spec))
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, num_workers=workers, pin_memory=device.type == "cuda")
    feats = []
    with torch.no_grad():
        for x, _ in loader:
            feats.append(net(x.to(device, non_blocking=True)))
            if limit is not None and len(feats) * batch >= limit:
                break
    return torch.cat(feats).cpu(), [os.path.relpath(p, data) for p, _ in ds.reader.samples]


@dataclass(frozen=True)
class PlainRun:
    """The peer's pass: its features (file order), their paths, and its wall seconds over ``n`` images."""

    features: Any
    paths: list[str]
    seconds: float
    n: int


def decode_row(*, data: Path, decode: str, e: Extract, ctx: Context, workers: int, plain: PlainRun,
               details: dict[str, Any]) -> Measured:
    """A cold ``extract`` (fresh cache) with ``decode``, against the plain loop's time and features."""
    from safetensors.torch import load_file

    from sslprobe import extract
    from sslprobe.runtime.device import pick_device

    out = ctx.work / f"extract-{decode}"
    shutil.rmtree(out, ignore_errors=True)
    cuda = pick_device(ctx.device).type == "cuda"
    with Clock(cuda) as c:
        m = extract(data, out=out / "features", model=e.model, weights="random", image_size=e.image_size,
                    batch_size=e.batch, device=ctx.device, workers=workers, cache_dir=out / "cache", decode=decode,
                    show_progress=False)
    feats = load_file(str(out / "features" / "features.safetensors"))["features"]
    order = {p: i for i, p in enumerate(plain.paths)}
    cos = _min_cosine(feats, plain.features[[order[p] for p in m.paths]])
    details[f"{decode}_decode"] = {"seconds": round(c.seconds, 2), "min_cosine_vs_plain": cos,
                                   "timings": m.timings, "decode": m.preprocessing.get("decode")}
    note = f"{plain.n / c.seconds:,.0f} img/s in {c.seconds:.1f} s; min cosine vs plain {cos:.4f}"
    return Measured(round(plain.seconds / c.seconds, 2), "× plain", note,
                    status="ok" if cuda or decode == "cpu" else "skipped: no CUDA (ran the CPU decode)")


def model_only_row(*, e: Extract, dev: Any) -> Measured:
    """img/s of the bare forward on device-resident input: bf16 + channels_last on CUDA, fp32 on CPU."""
    import torch

    from sslprobe.backbone import random_backbone

    net, _, _ = random_backbone(e.model, image_size=e.image_size, seed=0)
    cuda = dev.type == "cuda"
    batches = 20 if cuda else 2
    net = net.to(dev).eval().to(memory_format=torch.channels_last)
    x = torch.randn(e.batch, 3, e.image_size, e.image_size, device=dev).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cuda):
        for _ in range(3):
            net(x)
        with Clock(cuda) as c:
            for _ in range(batches):
                net(x)
    return Measured(round(batches * e.batch / c.seconds), "img/s", "bf16 + channels_last" if cuda else "fp32 on CPU")


def extract_stage(ctx: Context) -> tuple[dict[str, Measured], dict[str, Any]]:
    from sslprobe.runtime.device import pick_device
    from sslprobe.runtime.workers import default_workers

    data, e, dev = ctx.data.jpegs(), ctx.sizes.extract, pick_device(ctx.device)
    cuda, workers = dev.type == "cuda", default_workers() if e.workers is None else e.workers
    for f in data.iterdir():  # page cache warm for every run alike
        f.read_bytes()
    kw = {"model": e.model, "image_size": e.image_size, "batch": e.batch, "workers": workers, "device": dev}
    plain_loop(data, **kw, limit=e.batch)  # imports, CUDA context and cuDNN plans, for all runs
    n = count_files(data, "*.jpg")
    with Clock(cuda) as c:
        ref, paths = plain_loop(data, **kw)
    plain = PlainRun(ref, paths, c.seconds, n)
    rows = {"plain": Measured(round(n / c.seconds), "img/s", f"{c.seconds:.1f} s, {workers} workers")}
    details: dict[str, Any] = {"images": n, "workers": workers}
    for decode in ("cpu", "gpu"):
        rows[f"{decode}_decode"] = guarded(decode_row, data=data, decode=decode, e=e, ctx=ctx, workers=workers,
                                           plain=plain, details=details)
        ctx.keep(rows)
    rows["model_only"] = guarded(model_only_row, e=e, dev=dev)
    return rows, details


def _min_cosine(a: Any, b: Any) -> float:
    import torch.nn.functional as F

    return round(float(F.cosine_similarity(a.float(), b.float(), dim=1).min()), 5)


# ----------------------------------------------------------------------------- stages: byol_r50, byol_r18

ROW_WORDS = ("lightly:", "sslprobe:", "model-only")  # the pretrain_throughput rows timed here (no aug-only rows)


def throughput_args(t: Throughput, *, data: Path, ctx: Context, compile: bool) -> argparse.Namespace:
    """pretrain_throughput's own arguments: its preset, then this check's sizes (one repeat, no e2e)."""
    import pretrain_throughput as pt

    a = pt.parse(["--no-e2e", "--repeats", "1", "--device", ctx.device, "--cache-dir", str(ctx.work / "cache")])
    for k, v in pt.PRESETS[t.preset].items():
        setattr(a, k, v)
    overrides = {"model": t.model, "image_size": t.image_size, "batch_size": t.batch, "proj_hidden": t.proj_hidden,
                 "proj_dim": t.proj_dim}
    for k, v in overrides.items():
        if v is not None:
            setattr(a, k, v)
    a.warmup, a.steps, a.data, a.compile, a.synthetic_jpeg = t.warmup, t.steps, str(data), compile, None
    a.workers = min(16, os.cpu_count() or 1) if t.workers is None else t.workers
    return a


def time_rows(t: Throughput, *, data: Path, ctx: Context, compile: bool,
              as_rows: Callable[[dict[str, float], str], dict[str, Measured]]) -> tuple[dict[str, float], dict]:
    """img/s of each timed pretrain_throughput row (its Bench: same backbone, heads, optimiser, batch both
    sides); after each, ``as_rows(rates, compile note)`` is kept (``Context.keep``)."""
    import pretrain_throughput as pt

    a = throughput_args(t, data=data, ctx=ctx, compile=compile)
    b = pt.Bench(a, data)
    todo = [(name, fn) for name, fn in b.rows().items() if any(w in name for w in ROW_WORDS)]
    todo.sort(key=lambda item: item[0].endswith("compiled"))  # compiling last: a slow compile costs its row only
    rates: dict[str, float] = {}
    for name, fn in todo:
        b.row = name
        rates[name] = fn()
        ctx.keep(as_rows(rates, b.compiled.compile_note if b.compiled is not None else "off"))
    info = {"model": b.spec.model, "image_size": b.size, "small_stem": b.spec.small_stem, "batch": b.batch,
            "workers": a.workers, "files": len(b.files), "store_px": b.store, "decode_to_store_s": round(b.decode_s, 2),
            "optimizer": b.cfg.optimizer, "precision": b.cfg.precision, "warmup": a.warmup, "steps": a.steps,
            "compile": b.compiled.compile_note if b.compiled is not None else "off", "img_per_s": rates,
            "img_per_cpu_s": {k: v[0] for k, v in b.cpu_rates.items()}}
    return rates, info


def pick(rates: dict[str, float], start: str, *, end: str = "", not_end: str = "") -> float | None:
    """The rate of the row named ``start…end`` (names carry the worker count and device)."""
    for k, v in rates.items():
        if k.startswith(start) and k.endswith(end) and not (not_end and k.endswith(not_end)):
            return v
    return None


def ratio_row(v: float | None, lightly: float | None, *, status: str = "ok") -> Measured:
    if v is None or lightly is None:
        return Measured(None, status=status if status != "ok" else "not measured")
    return Measured(round(v / lightly, 2), "× lightly", f"{v:,.0f} vs {lightly:,.0f} img/s", status=status)


R50_ROWS = (
    Planned("lightly", "lightly's recipe (BYOLTransform in workers + step)", goal_text="anchor H100: 480 img/s"),
    Planned("ram", "sslprobe: RAM store + views on the GPU", Goal(">=", 1.8, "≥ 1.8× lightly")),
    Planned("streamed", "sslprobe: streamed decode + views on the GPU", Goal(">=", 1.8, "≥ 1.8× lightly")),
    Planned("model_only", "model-only sslprobe step (the ceiling)", goal_text="anchor H100: 1,410 img/s"),
    Planned("model_only_lightly", "model-only lightly step", goal_text="context"),
)


def r50_rows(rates: dict[str, float], compile_note: str) -> dict[str, Measured]:
    lt = pick(rates, "lightly:")
    return {"lightly": Measured(_round(lt), "img/s"),
            "ram": ratio_row(pick(rates, "sslprobe: RAM", not_end="compiled"), lt),
            "streamed": ratio_row(pick(rates, "sslprobe: streamed"), lt),
            "model_only": Measured(_round(pick(rates, "model-only: sslprobe")), "img/s"),
            "model_only_lightly": Measured(_round(pick(rates, "model-only: lightly")), "img/s")}


def r50_stage(ctx: Context) -> tuple[dict[str, Measured], dict[str, Any]]:
    need_lightly()
    rates, info = time_rows(ctx.sizes.r50, data=ctx.data.jpegs(), ctx=ctx, compile=False, as_rows=r50_rows)
    return r50_rows(rates, info["compile"]), info


def _round(v: float | None) -> int | None:
    return None if v is None else round(v)


R18_ROWS = (
    Planned("lightly", "lightly's recipe (BYOLTransform in workers + step)", goal_text="anchor H100: 7,890 img/s"),
    Planned("compiled", "sslprobe: RAM store + views, --compile", Goal(">=", 1.2, "≥ 1.2× lightly")),
    Planned("eager", "sslprobe: RAM store + views, eager", goal_text="context"),
    Planned("model_only", "model-only sslprobe step (eager)", goal_text="the ceiling without compile"),
)


def r18_rows(rates: dict[str, float], *, compile_note: str, cuda: bool) -> dict[str, Measured]:
    lt = pick(rates, "lightly:")
    compiled = ratio_row(pick(rates, "sslprobe: RAM", end="compiled"), lt)
    if not cuda:
        compiled = no_cuda("torch.compile is timed on the GPU only")
    elif compiled.value is not None and not compile_note.startswith("on"):  # TrainStep fell back to eager
        compiled = Measured(compiled.value, compiled.unit, compiled.note, status=f"failed: compile {compile_note}")
    return {"lightly": Measured(_round(lt), "img/s"), "compiled": compiled,
            "eager": ratio_row(pick(rates, "sslprobe: RAM", not_end="compiled"), lt),
            "model_only": Measured(_round(pick(rates, "model-only: sslprobe")), "img/s")}


def r18_stage(ctx: Context) -> tuple[dict[str, Measured], dict[str, Any]]:
    need_lightly()
    train, _ = ctx.data.fmnist()
    cuda = cuda_ready(ctx)
    rates, info = time_rows(ctx.sizes.r18, data=train, ctx=ctx, compile=cuda,  # inductor on a CPU: minutes
                            as_rows=lambda r, note: r18_rows(r, compile_note=note, cuda=cuda))
    return r18_rows(rates, compile_note=info["compile"], cuda=cuda), info


# ----------------------------------------------------------------------------- stage: quality

QUALITY_ROWS = (
    Planned("budget", "BYOL steps that fit the 2-minute budget (fitted to the measured rate)"),
    Planned("byol", "BYOL ResNet-18: linear top-1 on Fashion-MNIST test",
            Goal(">=", 90.0, f"≥ 90 % (lightly {LIGHTLY_FMNIST_TOP1} %)")),
    Planned("random", "random init: linear top-1", goal_text="below BYOL"),
    Planned("pixels", "raw pixels: linear top-1", goal_text="below BYOL"),
    Planned("byol_knn", "BYOL: kNN top-1", goal_text="context"),
)


def timing_run(out: Path, steps: int, *, data: Path, kw: dict[str, Any]) -> Path:
    """The study's timing run (sslprobe/study/stages.py): ``steps`` logged steps that measure the rate."""
    from sslprobe import pretrain
    from sslprobe.timebudget import MEASURE_LOG_EVERY

    pretrain(data, out=out, max_steps=steps, log_every=MEASURE_LOG_EVERY, save_every="end", **kw)
    return out


def quality_stage(ctx: Context) -> tuple[dict[str, Measured], dict[str, Any]]:
    from sslprobe import pretrain
    from sslprobe.timebudget import fitted_steps

    q, (train, test) = ctx.sizes.quality, ctx.data.fmnist()
    work = ctx.work / "quality"
    shutil.rmtree(work, ignore_errors=True)  # a rerun measures again (fitted_steps would reuse its fit)
    kw = {"model": q.model, "image_size": q.image_size, "batch_size": q.batch, "proj_hidden": q.proj_hidden,
          "device": ctx.device, "workers": q.workers, "show_progress": False}
    fitted = fitted_steps(q.minutes, workdir=work / "budget", measure=partial(timing_run, data=train, kw=kw))
    steps = fitted.max_steps if q.step_cap is None else min(q.step_cap, fitted.max_steps)
    t = time.perf_counter()
    summary = pretrain(train, out=work / "byol", max_steps=steps, save_every="end", **kw)
    train_s = time.perf_counter() - t
    details: dict[str, Any] = {"fitted": asdict(fitted), "steps": steps, "train_s": round(train_s, 1),
                               "final_loss": summary.final_loss, "arms": {}}
    epochs = steps * q.batch / max(1, count_files(train, "*.png"))
    rows = {"budget": Measured(steps, "steps", f"{epochs:.1f} epochs at {fitted.steps_per_second * q.batch:,.0f} "
                                               f"img/s; the run took {train_s:.0f} s of {60 * q.minutes:.0f} s")}
    ctx.keep(rows)
    arms = {"byol": {"weights": str(work / "byol" / "backbone.safetensors")},  # the goal's row first
            "random": {"weights": "random", "model": q.model, "image_size": q.image_size},
            "pixels": {"weights": "pixels", "image_size": q.image_size}}
    for name, weights in arms.items():
        rows[name] = guarded(arm_row, train=train, test=test, work=work / name, weights=weights, q=q, ctx=ctx,
                             details=details["arms"].setdefault(name, {}))
        ctx.keep(rows)
    knn = details["arms"]["byol"].get("knn_top1")
    rows["byol_knn"] = Measured(None if knn is None else round(100 * knn, 2), "%",
                                status="ok" if knn is not None else rows["byol"].status)
    return rows, details


def arm_row(*, train: Path, test: Path, work: Path, weights: dict[str, Any], q: Quality, ctx: Context,
            details: dict[str, Any]) -> Measured:
    """extract train and test → probe (C on a 20 % hold-out, refit, test once; kNN beside it)."""
    from sslprobe import extract, probe

    t = time.perf_counter()
    for split, folder in (("train", train), ("test", test)):
        extract(folder, out=work / split, batch_size=q.extract_batch, device=ctx.device, workers=q.workers,
                cache_dir=ctx.work / "quality" / "cache", show_progress=False, **weights)
    t_extract = time.perf_counter() - t
    r = probe(work / "train", test=work / "test", device=ctx.device)
    knn_test = r.knn.test if r.knn is not None else None
    details.update(linear_top1=r.test.top1, knn_top1=knn_test.top1 if knn_test is not None else None,
                   C=r.C, dim=r.dim, extract_s=round(t_extract, 1), probe_s=round(r.seconds, 1))
    return Measured(round(100 * r.test.top1, 2), "%", f"C={r.C:.3g}, {r.dim}-d; extract "
                                                      f"{t_extract:.0f} s, probe {r.seconds:.0f} s")


# ----------------------------------------------------------------------------- the stages, in run order

@dataclass(frozen=True)
class Stage:
    name: str
    title: str
    budget_s: float
    planned: tuple[Planned, ...]
    run: Callable[[Context], tuple[dict[str, Measured], dict[str, Any]]]


STAGES = (
    Stage("env", "device and versions", 60, ENV_ROWS, env_stage),
    Stage("data", "data sets", 60, DATA_ROWS, data_stage),
    Stage("cuda_tests", "CUDA-only tests", 90, TEST_ROWS, cuda_tests_stage),
    Stage("probe", "probe on ImageNet-sized features; CUDA kNN", 150, PROBE_ROWS, probe_stage),
    Stage("extract", "extract from JPEG, ResNet-50 224 px", 90, EXTRACT_ROWS, extract_stage),
    Stage("byol_r50", "BYOL throughput, ResNet-50 224 px from JPEG", 110, R50_ROWS, r50_stage),
    Stage("byol_r18", "BYOL throughput, ResNet-18 small stem 32 px, compiled", 180, R18_ROWS, r18_stage),
    Stage("quality", "Fashion-MNIST at the 2-minute budget", 240, QUALITY_ROWS, quality_stage),
)
BY_NAME = {s.name: s for s in STAGES}


def run_inline(stage: Stage, ctx: Context) -> StageResult:
    """The stage in this process; what it raises becomes its status, so the stages after it still run."""
    t = time.perf_counter()
    details: dict[str, Any] = {}
    status, judge = "ok", not ctx.smoke
    try:
        got, details = stage.run(ctx)
        rows = row_dicts(stage.planned, got, status=status, judge=judge)
    except Skip as e:
        status = f"skipped: {e}"
    except Exception as e:  # noqa: BLE001 -- one failing stage must not lose the others' numbers
        status = failed(e)
        details = {"traceback": traceback.format_exc()[-4000:]}
        traceback.print_exc()
    if status != "ok":
        rows = row_dicts(stage.planned, dict(ctx.kept), status=status, judge=judge)
    seconds = time.perf_counter() - t
    if status == "ok" and seconds > stage.budget_s:
        details["over_budget"] = True
    return StageResult(stage.name, stage.title, status, round(seconds, 1), stage.budget_s, rows, details)


# ----------------------------------------------------------------------------- isolation: one process per stage

def partial_path(part: Path) -> Path:
    return part.with_name(part.stem + ".partial.json")


def kept_rows(part: Path) -> dict[str, Measured]:
    """What a stopped stage had measured (``Context.keep``); nothing if it kept nothing readable."""
    import json

    try:
        return {k: Measured(**v) for k, v in json.loads(partial_path(part).read_text()).items()}
    except (OSError, ValueError, TypeError):
        return {}


def child_command(argv: list[str], *, stage: str, part: Path) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), *argv, "--child", stage, "--part", str(part)]


def run_isolated(stage: Stage, *, argv: list[str], work: Path, timeout: float, judge: bool) -> StageResult:
    """The stage in a child process of its own session, killed with its workers when ``timeout`` passes:
    a hang, a CUDA error that poisons the context or a crash then costs this stage only."""
    part = work / "parts" / f"{stage.name}.json"
    part.parent.mkdir(parents=True, exist_ok=True)
    part.unlink(missing_ok=True)
    partial_path(part).unlink(missing_ok=True)
    t = time.perf_counter()
    proc = subprocess.Popen(child_command(argv, stage=stage.name, part=part), start_new_session=True)
    try:
        proc.wait(timeout=timeout)
        status = None if part.exists() else f"failed: exit code {proc.returncode}, no result (crashed?)"
    except subprocess.TimeoutExpired:
        status = f"failed: timeout after {timeout:.0f} s (budget)"
    finally:
        _kill_group(proc)
    seconds = round(time.perf_counter() - t, 1)
    if status is None:
        import json

        return StageResult(**json.loads(part.read_text()))
    return StageResult(stage.name, stage.title, status, seconds, timeout,
                       row_dicts(stage.planned, kept_rows(part), status=status, judge=judge))


def _kill_group(proc: subprocess.Popen) -> None:
    """End the child and everything it started (DataLoader workers, pytest), then reap it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


# ----------------------------------------------------------------------------- the report

def fmt(value: Any, unit: str) -> str:
    if value is None:
        return "–"
    if isinstance(value, str):
        return value
    text = {"img/s": f"{value:,.0f}", "× lightly": f"{value:.2f}×", "× plain": f"{value:.2f}×",
            "%": f"{value:.1f} %", "s": f"{value:.1f} s"}.get(unit)
    return text or (f"{value:,} {unit}".strip() if isinstance(value, int) else f"{value:g} {unit}".strip())


def _met(m: bool | None) -> str:
    return {True: "yes", False: "NO", None: "–"}[m]


def table_lines(report: dict[str, Any]) -> list[str]:
    """The console table: one line per row, the stage's name, time and status on its first row."""
    head = ("stage", "measure", "value", "goal", "met", "status / note")
    lines: list[tuple[str, ...]] = []
    for s in report["stages"]:
        for i, r in enumerate(s["rows"]):
            first = f"{s['name']} ({s['seconds']:.0f} s)" if i == 0 else ""
            note = r["status"] if r["status"] != "ok" else r["note"]
            lines.append((first, r["measure"], fmt(r["value"], r["unit"]), r["goal"], _met(r["met"]), note))
    widths = [max(len(x[i]) for x in [head, *lines]) for i in range(5)]
    fmt_line = "  ".join(f"{{:<{w}}}" for w in widths) + "  {}"
    return [mode_line(report), fmt_line.format(*head), *(fmt_line.format(*x) for x in lines)]


def mode_line(report: dict[str, Any]) -> str:
    if report["mode"] == "smoke":
        return "SMOKE: every stage at toy size (the measures name the full sizes); goals shown, not judged"
    return "FULL: goals judged (met: yes / NO)"


def table_markdown(report: dict[str, Any]) -> str:
    h = report["host"]
    out = [f"`bench/gpu_check.py` {report['mode']}, {report['started']}: {h.get('device_name', '?')}, "
           f"{h.get('software', '')}; wall {report['wall_s']:.0f} s. {mode_line(report)}.", "",
           "| stage | measure | value | goal | met | status / note |", "| --- | --- | --- | --- | --- | --- |"]
    for s in report["stages"]:
        for i, r in enumerate(s["rows"]):
            note = r["status"] if r["status"] != "ok" else r["note"]
            first = f"{s['name']} ({s['seconds']:.0f} s)" if i == 0 else ""
            cells = (first, r["measure"], fmt(r["value"], r["unit"]), r["goal"], _met(r["met"]), note)
            out.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(out) + "\n"


class Report:
    """The JSON document, rewritten after every stage (a run stopped half-way keeps what it finished)."""

    def __init__(self, *, path: Path, smoke: bool, argv: list[str]):
        self.path, self.t0 = path, time.perf_counter()
        self.doc: dict[str, Any] = {"schema": SCHEMA, "mode": "smoke" if smoke else "full", "goals_judged": not smoke,
                                    "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "command": argv,
                                    "host": {"hostname": platform.node(), "cpu_count": os.cpu_count()},
                                    "wall_s": 0.0, "stages": []}

    def add(self, r: StageResult) -> None:
        self.doc["stages"].append(asdict(r))
        if r.name == "env" and r.status == "ok":
            self.doc["host"].update(r.details, software=r.rows[1]["value"])
        self.doc["wall_s"] = round(time.perf_counter() - self.t0, 1)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json(self.path, self.doc)
        write_text(self.path.with_suffix(".md"), table_markdown(self.doc))


def write_text(path: Path, text: str) -> None:
    from sslprobe.fileio import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(text)


# ----------------------------------------------------------------------------- driver

def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, default=Path("gpu_check.json"), help="results (and the table beside it, .md)")
    ap.add_argument("--smoke", action="store_true", help="every stage at toy size on the CPU")
    ap.add_argument("--only", nargs="+", choices=list(BY_NAME), metavar="STAGE", help=f"of {', '.join(BY_NAME)}")
    ap.add_argument("--budget", action="append", default=[], metavar="STAGE=SECONDS", help="a stage's time limit")
    ap.add_argument("--deadline", type=float, default=DEADLINE_S, help="seconds for the whole run")
    ap.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=None,
                    help="each stage in a process of its own (default: on, off with --smoke)")
    ap.add_argument("--device", default=None, help="default: auto (cpu with --smoke)")
    ap.add_argument("--work", type=Path, default=None,
                    help="data and scratch (default: /tmp/sslprobe-gpu-check[-smoke])")
    ap.add_argument("--fmnist-idx", type=Path, default=None, help="folder of Fashion-MNIST's *-ubyte.gz files")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--part", type=Path, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def budgets(a: argparse.Namespace) -> dict[str, float]:
    out = {s.name: float(s.budget_s) for s in STAGES}
    for item in a.budget:
        name, _, secs = item.partition("=")
        if name not in out or not secs:
            raise SystemExit(f"--budget {item!r}: want STAGE=SECONDS with STAGE one of {', '.join(out)}")
        out[name] = float(secs)
    return out


def context(a: argparse.Namespace) -> Context:
    work = a.work or Path("/tmp") / ("sslprobe-gpu-check-smoke" if a.smoke else "sslprobe-gpu-check")
    work.mkdir(parents=True, exist_ok=True)
    return Context(smoke=a.smoke, device=a.device or ("cpu" if a.smoke else "auto"), sizes=SMOKE if a.smoke else FULL,
                   work=work, idx_dir=find_idx(a.fmnist_idx))


def run_child(a: argparse.Namespace) -> None:
    ctx = replace(context(a), partial=partial_path(a.part))
    write_json(a.part, asdict(run_inline(BY_NAME[a.child], ctx)))


def stages_to_run(a: argparse.Namespace) -> list[Stage]:
    want = set(a.only or BY_NAME)
    return [s for s in STAGES if s.name in want or s.name == "env"]


class Runner:
    """Runs the stages in order under the deadline, printing each as it ends, then the table."""

    def __init__(self, a: argparse.Namespace, argv: list[str]):
        self.a, self.argv = a, argv
        self.isolate = (not a.smoke) if a.isolate is None else a.isolate
        self.budgets = budgets(a)
        self.report = Report(path=a.json, smoke=a.smoke, argv=argv)
        self.t0 = time.perf_counter()
        self.no_gpu = ""

    def run(self) -> dict[str, Any]:
        for stage in stages_to_run(self.a):
            r = self.one(stage)
            self.report.add(r)
            print(f"[gpu_check] {r.name}: {r.status} in {r.seconds:.1f} s", flush=True)
            if r.name == "env" and not self.a.smoke and r.status == "ok" and not r.details.get("cuda"):
                self.no_gpu = "skipped: no CUDA (the full check needs a GPU; --smoke runs on the CPU)"
        print("\n".join(["", *table_lines(self.report.doc)]), flush=True)
        print(f"\nwall {self.report.doc['wall_s']:.0f} s; wrote {self.a.json} and {self.a.json.with_suffix('.md')}")
        return self.report.doc

    def one(self, stage: Stage) -> StageResult:
        left = self.a.deadline - (time.perf_counter() - self.t0)
        judge = not self.a.smoke
        if self.no_gpu or left < MIN_STAGE_S:
            why = self.no_gpu or f"skipped: out of time (the {self.a.deadline:.0f} s deadline)"
            return StageResult(stage.name, stage.title, why, 0.0, self.budgets[stage.name],
                               row_dicts(stage.planned, {}, status=why, judge=judge))
        if self.isolate:
            return run_isolated(stage, argv=self.argv, work=context(self.a).work,
                                timeout=min(self.budgets[stage.name], left), judge=judge)
        return run_inline(stage, context(self.a))


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parse(argv)
    if a.child:
        run_child(a)
        return None
    return Runner(a, argv).run()


if __name__ == "__main__":
    main()
