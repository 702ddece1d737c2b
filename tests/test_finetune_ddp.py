"""sslprobe finetune under torchrun: two CPU processes on gloo train their shards in lockstep, end with the same
network, rank 0 alone writes, and a stopped run resumes to the uninterrupted one's weights and curve."""
import dataclasses
import json
import os
import socket

import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from sslprobe.results import FinetuneStopped
from tests.conftest import write_class_folder

TINY = {"model": "test_resnet", "weights": "random", "image_size": 16, "batch_size": 4, "lr": 0.01, "epochs": 2,
        "warmup_epochs": 1, "workers": 0, "device": "cpu"}


def _worker(rank: int, world: int, port: int, root: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    import torch.distributed as td

    import sslprobe.finetuning.finetune as fm

    td.init_process_group("gloo")  # one group for the three sessions (each finetune() joins it, none ends it)

    seen = {}
    make = fm._trainer

    def capture(*a, **k):
        seen["trainer"] = make(*a, **k)
        return seen["trainer"]

    fm._trainer = capture
    data, test = os.path.join(root, "train"), os.path.join(root, "test")
    whole = fm.finetune(data, out=os.path.join(root, "whole"), test=test, **TINY)
    state = {k: v.clone() for k, v in seen["trainer"].net.state_dict().items()}
    stopped = fm.finetune(data, out=os.path.join(root, "split"), test=test, stop_after=3, **TINY)
    resumed = fm.finetune(data, out=os.path.join(root, "split"), test=test, resume="auto", **TINY)
    td.destroy_process_group()
    torch.save({"state": state, "results": [whole, stopped, resumed]}, os.path.join(root, f"rank{rank}.pt"))


def test_two_gloo_ranks_fine_tune_in_lockstep_and_resume_exactly(tmp_path):
    write_class_folder(tmp_path / "train", per_class=12)
    write_class_folder(tmp_path / "test", per_class=4, seed=1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert r0["state"].keys() == r1["state"].keys()
    for k in r0["state"]:  # parameters through DDP's all-reduce, BatchNorm statistics from rank 0
        assert torch.equal(r0["state"][k], r1["state"][k]), k
    whole, stopped, resumed = r0["results"]
    assert r1["results"][0] == FinetuneStopped(status="complete", out=str(tmp_path / "whole"), rank=1)
    assert stopped.status == r1["results"][1].status == "stopped after 3 steps"
    assert whole.recipe["world_size"] == 2 and whole.recipe["lr"] == 0.01 * 8 / 256
    assert whole.schedule["batch_size"] == 4 and whole.schedule["steps_per_epoch"] == 19 // 8
    assert whole.distributed.startswith("torchrun DDP, 2 processes: --batch-size 4 per process, global batch 8")
    assert whole.test is not None and resumed.resumed == ["main"]
    report = json.loads((tmp_path / "whole" / "report.json").read_text())
    assert report == whole.to_json()  # rank 0 alone wrote it
    assert sorted(p.name for p in (tmp_path / "whole").glob("model*")) == ["model.safetensors"]
    a, b = load_file(tmp_path / "whole" / "model.safetensors"), load_file(tmp_path / "split" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a) and torch.equal(a["fc.weight"], r0["state"]["fc.weight"])
    strip = [dataclasses.replace(e, seconds=0.0) for e in whole.learning_curve]
    assert strip == [dataclasses.replace(e, seconds=0.0) for e in resumed.learning_curve]
