"""DistributedDataParallel under torchrun: 2 CPU processes (gloo) match one process with the same global batch."""
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from inrprior import io
from inrprior.train import train

sys.path.insert(0, str(Path(__file__).parent))
from toy_prior import ToyPrior, make_toy, toy_images  # noqa: E402

STEPS = 4
KW = dict(batch_size=4, lr=1e-3, progress=False, density=None, checkpoint_every=2)

WORKER = """
import os, sys
import torch.distributed as dist
sys.path.insert(0, {tests!r})
from toy_prior import make_toy, toy_images
from inrprior.train import train

kw = dict(batch_size=4, lr=1e-3, progress=False, density=None, checkpoint_every=2)
# train() creates and destroys the process group itself, as under `torchrun -m inrprior train`
train(make_toy(), toy_images(12), steps={steps}, out={out!r} + "/straight", **kw)
# a group the caller manages (on a fresh store: a re-created default group would meet the old one's addresses)
dist.init_process_group("gloo", store=dist.FileStore({out!r} + "/store", 2), rank=int(os.environ["RANK"]),
                        world_size=2)
train(make_toy(), toy_images(12), steps=2, out={out!r} + "/resumed", **kw)  # stop at step 2 ...
train(make_toy(seed=5), toy_images(12), steps={steps}, out={out!r} + "/resumed", resume=True, **kw)  # ... go on
assert dist.is_initialized()  # train() left the caller's group alone
dist.destroy_process_group()
"""


def load_weights(path):
    tensors, config = io.load_state(path)
    return ToyPrior.from_state(tensors, config).state_dict()


def test_two_processes_match_one(tmp_path):
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER.format(tests=str(Path(__file__).parent), out=str(tmp_path), steps=STEPS))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(worker)], capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]

    single = train(make_toy(), toy_images(12), steps=STEPS, out=tmp_path / "single", **KW)
    ddp = load_weights(tmp_path / "straight" / "prior.safetensors")
    for k, v in single.state_dict().items():
        torch.testing.assert_close(ddp[k], v, rtol=0, atol=1e-5, msg=k)
    # resuming under DDP is exact too
    for k, v in load_weights(tmp_path / "resumed" / "prior.safetensors").items():
        assert torch.equal(v, ddp[k]), k

    rows = {p: [json.loads(x) for x in (tmp_path / p / "metrics.jsonl").read_text().splitlines()]
            for p in ("single", "straight", "resumed")}
    assert [r["step"] for r in rows["straight"]] == list(range(1, STEPS + 1))  # only rank 0 wrote
    for a, b in zip(rows["single"], rows["straight"]):  # the loss is averaged over the ranks' half-batches
        assert abs(a["loss"] - b["loss"]) < 1e-6 and a["context_pixels"] == b["context_pixels"]
    assert json.loads((tmp_path / "straight" / "config.json").read_text())["world_size"] == 2
