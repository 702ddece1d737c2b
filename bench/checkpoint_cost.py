#!/usr/bin/env python3
"""Cost of one pretraining checkpoint: save (write + fsync + read back + sha256), find_latest, load.

    python bench/checkpoint_cost.py
"""
from __future__ import annotations

import tempfile
import time

import torch

from sslprobe import checkpoint as ck
from sslprobe.pretraining.trainstep import RunSpec, TrainStep, build_byol

for model, size in (("resnet18", 32), ("resnet50", 224)):
    cfg = RunSpec(model=model, image_size=size, small_stem=size <= 64, optimizer="lars", total_steps=10)
    net, opt, spec = build_byol(cfg, device=torch.device("cpu"))
    step = TrainStep(net, opt, cfg=cfg, spec=spec, device=torch.device("cpu"))
    step(torch.randint(0, 255, (4, 3, size, size), dtype=torch.uint8), 0)  # creates the momentum buffers
    with tempfile.TemporaryDirectory() as d:
        tensors = {f"model.{k}": v for k, v in net.state_dict().items()}
        opt_tensors, opt_meta = ck.pack_optimizer(opt)
        t0 = time.perf_counter()
        c = ck.save(d, step=1, tensors={**tensors, **opt_tensors, **ck.rng_tensors()}, state={"optimizer": opt_meta})
        t1 = time.perf_counter()
        found = ck.find_latest(d)
        t2 = time.perf_counter()
        ck.load_tensors(found)
        t3 = time.perf_counter()
        print(f"{model} {size} px: checkpoint {c.tensors_path.stat().st_size / 2**20:.0f} MiB, "
              f"save+verify {t1 - t0:.2f} s, find_latest (hash) {t2 - t1:.2f} s, load {t3 - t2:.2f} s")
