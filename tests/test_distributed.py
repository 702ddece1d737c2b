"""torch.distributed: two CPU processes on gloo train in lockstep and rank 0 alone writes the run."""
import json
import os
import socket

import torch
import torch.multiprocessing as mp

from tests.conftest import write_class_folder


def _worker(rank: int, world: int, port: int, data: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    import sslprobe.pretraining.pretrain as pm

    seen = {}
    init = pm.TrainStep.__init__

    def capture(self, *a, **k):
        init(self, *a, **k)
        seen["step"] = self

    pm.TrainStep.__init__ = capture
    s = pm.pretrain(data, out=out, model="test_resnet", image_size=16, batch_size=4, max_steps=3, proj_hidden=32,
                    proj_dim=16, workers=0, show_progress=False, log_every=1, device="cpu")
    params = {k: v for k, v in seen["step"].byol.named_parameters()}
    torch.save({"params": params, "summary": s}, os.path.join(os.path.dirname(out), f"rank{rank}.pt"))


def test_two_gloo_ranks_hold_identical_weights(tmp_path):
    data = write_class_folder(tmp_path / "data")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(2, port, str(data), str(tmp_path / "run")), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert r0["params"].keys() == r1["params"].keys() and any(k.startswith("target_") for k in r0["params"])
    for k in r0["params"]:
        assert torch.equal(r0["params"][k], r1["params"][k]), k
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["world_size"] == 2 and cfg["global_batch"] == 8 and cfg["lr"] == 0.06 * 8 / 256
    assert cfg["sync_batchnorm"].startswith("no: SyncBatchNorm has no CPU kernel")
    assert r0["summary"].steps == r1["summary"].steps == 3 and r0["summary"].world_size == 2
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2, 3]  # rank 0 alone wrote, once per step
    assert (tmp_path / "run" / "backbone.safetensors").exists()
