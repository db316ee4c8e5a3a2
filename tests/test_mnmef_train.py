"""MNMEF training: loss goes down, interrupted + resumed equals uninterrupted, fine-tuning, DDP smoke test."""
import json
import os
import subprocess
import sys

import pytest
import torch

from daviz.mnmef import checkpoint as ckpt
from daviz.mnmef.train import TrainConfig, finetune_config, train

TINY = dict(system="l96", sigma_y=1.0, N=6, trajectories=16, cycles=8, batch_size=8, chains=4, seed=3,
            lr_milestones=(0.5,), model={"feature_dim": 16})


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # bitwise-reproducible CPU arithmetic
    yield
    torch.set_num_threads(n)


def test_training_reduces_loss(tmp_path):
    meta = train(TrainConfig(epochs=6, lr=3e-3, **TINY), tmp_path / "a.pt", progress=False)
    h = meta["loss_history"]
    assert len(h) == 12 and meta["progress"]["finished"]
    assert sum(h[-4:]) / 4 < 0.8 * sum(h[:4]) / 4, h


def test_resume_equals_uninterrupted(tmp_path):
    cfg = dict(epochs=3, **TINY)
    train(TrainConfig(**cfg), tmp_path / "full.pt", progress=False)
    part = train(TrainConfig(**cfg), tmp_path / "part.pt", progress=False, stop_after_batches=3)  # mid-epoch 1
    assert part["progress"] == {"epoch": 1, "batch": 1, "finished": False}
    train(TrainConfig(**cfg), tmp_path / "part.pt", resume=True, progress=False)
    a, b = ckpt.load(tmp_path / "full.pt"), ckpt.load(tmp_path / "part.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert a["history"] == b["history"] and a["scheduler"] == b["scheduler"]


def test_finetune_trains_heads_only(tmp_path):
    train(TrainConfig(epochs=1, **TINY), tmp_path / "pre.pt", progress=False)
    cfg = finetune_config(tmp_path / "pre.pt", N=9, epochs=1)
    assert (cfg.trajectories, cfg.lr, cfg.N, cfg.epochs) == (8, 1e-4, 9, 1)
    meta = train(cfg, tmp_path / "ft.pt", progress=False)
    assert meta["stage"] == "finetune" and meta["pretrained_from"].endswith("pre.pt")
    pre, ft = ckpt.load(tmp_path / "pre.pt")["model"], ckpt.load(tmp_path / "ft.pt")["model"]
    changed = {k for k in pre if not torch.equal(pre[k], ft[k])}
    assert changed and all(k.split(".")[0] in ("gain", "inflation", "localization") for k in changed)


@pytest.mark.slow
def test_ddp_two_processes_gloo(tmp_path):
    out = tmp_path / "ddp.pt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "daviz.mnmef.commands", "train", "--system", "l96", "--sigma-y", "1.0", "--N", "5",
           "--epochs", "1", "--trajectories", "8", "--cycles", "4", "--batch-size", "4", "--feature-dim", "16",
           "--device", "cpu", "--threads", "1", "--no-progress", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert res.returncode == 0, res.stderr[-3000:]
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["world_size"] == 2 and meta["progress"]["finished"] and len(meta["loss_history"]) == 2
    ckpt.build_model(ckpt.load(out, system="l96"), out)
