#!/usr/bin/env python3
"""What choosing each arm's layer costs: the demo's study at ``--layers last`` against ``--layers auto``.

Both runs are ``sslprobe demo``'s study (the built-in Fashion-MNIST sample, pixels / random / BYOL,
test_resnet at 32 px, the demo's BYOL steps), each from scratch: a fresh output folder and a fresh
embedding cache, so neither reuses the other's BYOL run or rows. The runs alternate (last, auto, last,
auto, …) on one machine in one process, so a neighbour's load falls on both; the ratio of the sums is
the number to read, the single times are noisy on a shared machine. Each run's time is also split by
stage (pretrain, extract, probe — the probe stage holds the layer choice).

    python bench/study_layers.py --work /tmp/study-layers --rounds 2
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from collections import defaultdict
from pathlib import Path


def _timed_stages(stages_module, seconds: dict[str, float]) -> None:
    """Wrap the study's stage functions so each call adds its wall time to ``seconds[name]``."""
    for name in ("byol_backbone", "extracted", "probed"):
        real = getattr(stages_module, name)

        def wrapper(*a, _real=real, _name=name, **k):
            t0 = time.perf_counter()
            try:
                return _real(*a, **k)
            finally:
                seconds[_name] += time.perf_counter() - t0

        setattr(stages_module, name, wrapper)


def one_run(work: Path, *, layers: str, tag: str, steps: int | None) -> dict:
    """One demo study from scratch at ``layers``; its wall time, per-stage times and each arm's layer."""
    from sslprobe import demo
    from sslprobe.study import stages
    from sslprobe.study.run import study

    out = work / tag
    shutil.rmtree(out, ignore_errors=True)
    os.environ["SSLPROBE_CACHE_DIR"] = str(out / "cache")
    data = demo.write_sample(work / "data")
    config = demo.demo_config(out=out, data=data, steps=steps or demo.DEMO_STEPS, device="cpu").replace(
        layers=layers)
    seconds: dict[str, float] = defaultdict(float)
    real = {n: getattr(stages, n) for n in ("byol_backbone", "extracted", "probed")}
    _timed_stages(stages, seconds)
    try:
        t0 = time.perf_counter()
        result = study(config)
        wall = time.perf_counter() - t0
    finally:
        for n, f in real.items():
            setattr(stages, n, f)
    doc = result.to_json()
    return {"layers": layers, "tag": tag, "wall_s": round(wall, 1), "stages_s": {k: round(v, 1) for k, v in
                                                                                seconds.items()},
            "arm_layers": {a["name"]: a.get("layer") for a in doc["arms"]},
            "test": {name: round(r["test"]["balanced_accuracy"], 4) for name, r in doc["results"].items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/study-layers"))
    ap.add_argument("--rounds", type=int, default=2, help="pairs of runs (last, auto), alternated")
    ap.add_argument("--steps", type=int, default=None, help="BYOL steps (default: the demo's)")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    runs = []
    for i in range(args.rounds):
        for layers in ("last", "auto"):
            runs.append(one_run(args.work, layers=layers, tag=f"{layers}-{i}", steps=args.steps))
            print(json.dumps(runs[-1]), flush=True)
    total = {m: sum(r["wall_s"] for r in runs if r["layers"] == m) for m in ("last", "auto")}
    after = {m: sum(r["stages_s"].get("extracted", 0) + r["stages_s"].get("probed", 0) for r in runs
                    if r["layers"] == m) for m in ("last", "auto")}
    summary = {"runs": runs, "ratio_wall": round(total["auto"] / total["last"], 3),
               "ratio_extract_and_probe": round(after["auto"] / after["last"], 3)}
    (args.work / "study_layers.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}))


if __name__ == "__main__":
    main()
