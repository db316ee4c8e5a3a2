"""MNMEF training: loss goes down, interrupted + resumed equals uninterrupted, fine-tuning, schedules,
the captured-step code path on the CPU, input validation and non-finite safety, DDP smoke test."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from daviz.mnmef import checkpoint as ckpt
from daviz.mnmef import train as train_mod
from daviz.mnmef.model import MNMEF, ModelConfig
from daviz.mnmef.rollout import RolloutLoss
from daviz.mnmef.step import TrainStep, make_optimizer
from daviz.mnmef.train import TrainConfig, TrainingError, branch_path, finetune_config, lr_at, train
from daviz.systems import get_system

TINY = dict(system="l96", sigma_y=1.0, N=6, trajectories=16, cycles=8, batch_size=8, chains=4, seed=3,
            lr_milestones=(0.5,), model={"feature_dim": 16})
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # bitwise-reproducible CPU arithmetic
    yield
    torch.set_num_threads(n)


def weights(path):
    return ckpt.load(path)["model"]


def assert_same_weights(a, b):
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_training_reduces_loss(tmp_path):
    meta = train(TrainConfig(epochs=6, lr=3e-3, **TINY), tmp_path / "a.pt", progress=False)
    h = meta["loss_history"]
    assert len(h) == 12 and meta["progress"]["finished"] and meta["progress"]["recipe_complete"]
    assert sum(h[-4:]) / 4 < 0.8 * sum(h[:4]) / 4, h


@pytest.mark.parametrize("mode", ["eager", "graph"])
def test_resume_equals_uninterrupted(tmp_path, mode):
    """`graph` on the CPU is the rehearsal of the captured step: warm-up steps, then an in-place restore."""
    cfg = dict(epochs=3, **TINY)
    train(TrainConfig(**cfg), tmp_path / "full.pt", progress=False, mode=mode)
    part = train(TrainConfig(**cfg), tmp_path / "part.pt", progress=False, stop_after_batches=3, mode=mode)  # mid-epoch 1
    assert {k: part["progress"][k] for k in ("epoch", "batch", "finished")} == {"epoch": 1, "batch": 1, "finished": False}
    train(TrainConfig(**cfg), tmp_path / "part.pt", resume=True, progress=False, mode=mode)
    a, b = ckpt.load(tmp_path / "full.pt"), ckpt.load(tmp_path / "part.pt")
    assert_same_weights(a["model"], b["model"])
    assert a["history"] == b["history"]
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        for k in sa:
            assert torch.equal(sa[k], sb[k]), k


def test_captured_step_path_equals_plain_loop(tmp_path):
    """The TrainStep (device-side batch gather, fused AdamW with device LR and found_inf, warm-up then
    restore) against a plain loop (index on the host, default AdamW, float LR) from the same start.
    Gradients are computed by the same ops, so only AdamW's rounding differs, and parameters agree to 1e-6 except
    where a gradient was within 100 ε of zero: there Adam's step g/(√v + ε) turns the tiny gradient differences
    that the first step's rounding (≈ 1e-8 in the weights) leaves into update differences of order 1e-3 LR.
    Measured with numpy 2.4.6's data: one weight differed by 2.1e-6, its gradients 4.6e-8 and 1.7e-8 (the latter
    1.749e-8 vs 1.737e-8 in the two runs). All parameters agree to 1e-5."""
    cfg = TrainConfig(epochs=1, **TINY)
    truth, obs = train_mod.make_data(cfg)
    truth, obs = torch.as_tensor(truth, dtype=torch.float32), torch.as_tensor(obs, dtype=torch.float32)
    windows = train_mod.epoch_windows(cfg, truth.shape[0], 0)
    lrs = [1e-3, 2e-3, 5e-4]

    def fresh():
        torch.manual_seed(0)
        return MNMEF(get_system("l96"), 1.0, ModelConfig(feature_dim=16))

    ref = fresh()
    runner = RolloutLoss(ref, cfg.N)
    opt = torch.optim.AdamW(ref.parameters(), lr=lrs[0], weight_decay=0.01)
    steps = torch.arange(cfg.cycles + 1)
    smallest_grad = {}  # per weight, the smallest |gradient| over the steps
    for b, lr in enumerate(lrs):
        sel = torch.as_tensor(windows[(b % 2) * 8:(b % 2 + 1) * 8])
        c, t = sel[:, :1], sel[:, 1:] + steps
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad()
        runner(truth[c, t], obs[c, t], 1000 + b, backward_scale=1 / (8 * (cfg.cycles + 1)))
        for k, p in ref.named_parameters():
            if p.grad is not None:
                smallest_grad[k] = torch.minimum(smallest_grad.get(k, p.grad.abs()), p.grad.abs())
        opt.step()

    fast = fresh()
    opt2 = make_optimizer(list(fast.parameters()), lrs[0], 0.01, torch.device("cpu"))
    st = TrainStep(RolloutLoss(fast, cfg.N), fast, opt2, truth, obs, cfg.cycles, 8, cfg.trajectories, mode="graph",
                   warmup_steps=2)
    st.set_windows(windows)
    for b, lr in enumerate(lrs):
        stats = st.step(b % 2, 1000 + b, lr)
        assert stats[3] == 0 and torch.isfinite(stats).all()
    for (k, p), q in zip(ref.named_parameters(), fast.parameters()):
        torch.testing.assert_close(q, p, atol=1e-5, rtol=0, msg=k)
        near_eps = smallest_grad.get(k, torch.full_like(p, math.inf)) < 100 * opt.defaults["eps"]
        torch.testing.assert_close(q[~near_eps], p[~near_eps], atol=1e-6, rtol=0, msg=k)
    assert any(not torch.equal(p, q) for p, q in zip(fresh().parameters(), fast.parameters()))


@pytest.mark.parametrize("grad_window", [1, 3])
def test_per_cycle_backward_equals_one_backward(grad_window):
    """Gradients accumulated window by window (activations of one window in memory) equal one backward
    through the whole rollout, up to float32 summation order."""
    cfg = TrainConfig(epochs=1, **TINY)
    truth, obs = (torch.as_tensor(a[:, :cfg.cycles + 1], dtype=torch.float32) for a in train_mod.make_data(cfg))
    torch.manual_seed(0)
    model = MNMEF(get_system("l96"), 1.0, ModelConfig(feature_dim=16))
    runner = RolloutLoss(model, cfg.N, grad_window)
    losses = runner(truth, obs, 5)
    losses.mean().backward()
    params = [q for q in model.parameters() if q.requires_grad]
    whole = [q.grad.clone() for q in params]
    model.zero_grad(set_to_none=True)
    again = runner(truth, obs, 5, backward_scale=1 / truth.shape[0] / truth.shape[1])
    torch.testing.assert_close(again, losses.detach(), rtol=0, atol=0)
    for g, q in zip(whole, params):
        torch.testing.assert_close(q.grad, g, rtol=1e-5, atol=1e-8)


@pytest.mark.slow
def test_compiled_cycle_matches_eager(tmp_path):
    """torch.compile'd cycles (inductor's C++ kernels here, Triton on CUDA): same losses to 1e-5 relative
    over 3 steps; parameters to 2e-5 (Adam's first steps move each weight by about ±LR, so a rounding
    difference in a tiny gradient component can show up at that scale, hence LR 1e-5 here)."""
    cfg = dict(epochs=1, lr=1e-5, **{**TINY, "trajectories": 24})
    a = train(TrainConfig(**cfg), tmp_path / "e.pt", progress=False, mode="eager")
    b = train(TrainConfig(**cfg), tmp_path / "c.pt", progress=False, mode="compile")
    np.testing.assert_allclose(b["loss_history"], a["loss_history"], rtol=1e-5)
    wa, wb = weights(tmp_path / "e.pt"), weights(tmp_path / "c.pt")
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], atol=2e-5, rtol=0, msg=k)


def test_finetune_trains_heads_only(tmp_path):
    train(TrainConfig(epochs=1, **TINY), tmp_path / "pre.pt", progress=False)
    cfg = finetune_config(tmp_path / "pre.pt", N=9, epochs=1)
    assert (cfg.trajectories, cfg.lr, cfg.N, cfg.epochs) == (8, 1e-4, 9, 1)
    meta = train(cfg, tmp_path / "ft.pt", progress=False)
    assert meta["stage"] == "finetune" and meta["pretrained_from"].endswith("pre.pt")
    pre, ft = weights(tmp_path / "pre.pt"), weights(tmp_path / "ft.pt")
    changed = {k for k in pre if not torch.equal(pre[k], ft[k])}
    assert changed and all(k.split(".")[0] in ("gain", "inflation", "localization") for k in changed)


def test_finetune_can_train_the_set_transformer_too(tmp_path):
    """--train-set-transformer true: the set transformer moves as well; resuming such a trunk with the
    default (frozen) is refused, since it would train another set of weights."""
    train(TrainConfig(epochs=1, **TINY), tmp_path / "pre.pt", progress=False)
    cfg = finetune_config(tmp_path / "pre.pt", N=9, epochs=2, train_set_transformer=True)
    train(cfg, tmp_path / "ft.pt", progress=False, stop_after_batches=1)
    pre, ft = weights(tmp_path / "pre.pt"), weights(tmp_path / "ft.pt")
    changed = {k.split(".")[0] for k in pre if not torch.equal(pre[k], ft[k])}
    assert "set_transformer" in changed and "gain" in changed
    with pytest.raises(ckpt.CheckpointError, match="train_set_transformer = True.*--train-set-transformer true"):
        train(finetune_config(tmp_path / "pre.pt", N=9, epochs=2), tmp_path / "ft.pt", progress=False, resume=True)


def test_finetune_does_not_resume_onto_replaced_pretrained_weights(tmp_path):
    """A fine-tune trunk records which N=10 weights it started from; once they are replaced (a better pretrain
    was promoted), resuming would mix two models: refused with a message that says what to do."""
    train(TrainConfig(epochs=1, **TINY), tmp_path / "pre.pt", progress=False)
    cfg = dict(N=9, epochs=2)
    train(finetune_config(tmp_path / "pre.pt", **cfg), tmp_path / "ft.pt", progress=False, stop_after_batches=1)
    train(finetune_config(tmp_path / "pre.pt", **cfg), tmp_path / "ft.pt", progress=False, resume=True,
          stop_after_batches=1)  # same weights: resumes
    train(TrainConfig(epochs=1, **{**TINY, "seed": 4}), tmp_path / "pre.pt", progress=False)  # replaced
    with pytest.raises(ckpt.CheckpointError, match="started from other weights.*delete it"):
        train(finetune_config(tmp_path / "pre.pt", **cfg), tmp_path / "ft.pt", progress=False, resume=True)


def test_resumed_finetune_keeps_the_record_of_its_start(tmp_path):
    """A resumed trunk continues from its own weights whatever start is asked (train_cpu.sh asks "enkf"), so its
    sidecar keeps the start it really had; it used to record the start asked at the last resume."""
    train(TrainConfig(epochs=1, **TINY), tmp_path / "pre.pt", progress=False)
    cfg = dict(N=9, epochs=2)
    first = train(finetune_config(tmp_path / "pre.pt", warm_start="prior", **cfg), tmp_path / "ft.pt",
                  progress=False, stop_after_batches=1)
    resumed = train(finetune_config(tmp_path / "pre.pt", warm_start="enkf", **cfg), tmp_path / "ft.pt",
                    progress=False, resume=True)
    assert first["warm_start"]["kind"] == "prior" and resumed["progress"]["step"] > first["progress"]["step"]
    assert resumed["warm_start"] == first["warm_start"] and resumed["recipe"]["warm_start"] == "prior"


def test_resume_refuses_another_gradient_window(tmp_path):
    """The gradient window is part of what a trunk was trained on: resuming with another one is refused."""
    train(TrainConfig(epochs=2, grad_window=2, **TINY), tmp_path / "a.pt", progress=False, stop_after_batches=1)
    with pytest.raises(ckpt.CheckpointError, match="grad_window = 2.*--grad-window 2"):
        train(TrainConfig(epochs=2, **TINY), tmp_path / "a.pt", progress=False, resume=True)
    train(TrainConfig(epochs=2, grad_window=2, **TINY), tmp_path / "a.pt", progress=False, resume=True)


def test_resume_refuses_another_batch_or_learning_rate(tmp_path):
    """Batch size and LR are part of what a trunk was trained with (the fine-tune rule derives them): a run whose
    rule now gives others is refused, with the flag that resumes the trunk as it was; more epochs are allowed."""
    train(TrainConfig(epochs=2, **TINY), tmp_path / "a.pt", progress=False, stop_after_batches=1)
    batch = TINY.get("batch_size", TrainConfig.batch_size)
    with pytest.raises(ckpt.CheckpointError, match=f"batch_size = {batch}.*--batch-size {batch}"):
        train(TrainConfig(epochs=2, **{**TINY, "batch_size": batch * 2}), tmp_path / "a.pt", progress=False,
              resume=True)
    with pytest.raises(ckpt.CheckpointError, match="lr = "):
        train(TrainConfig(epochs=2, **{**TINY, "lr": 0.123}), tmp_path / "a.pt", progress=False, resume=True)
    train(TrainConfig(epochs=3, **TINY), tmp_path / "a.pt", progress=False, resume=True, stop_after_batches=1)


def test_chained_finetune_takes_the_rule_from_the_pretraining(tmp_path):
    """Fine-tuning a fine-tune (N = 40 -> 100) uses the same LR, batch and data size as fine-tuning the pretrained
    weights: the rule is applied to the pretraining recipe, not again to the fine-tune's (which divided the LR by
    10 and halved the windows at every link)."""
    train(TrainConfig(epochs=1, **{**TINY, "trajectories": 32}), tmp_path / "pre.pt", progress=False)
    first = finetune_config(tmp_path / "pre.pt", N=9, epochs=1)
    train(first, tmp_path / "ft.pt", progress=False)
    chained = finetune_config(tmp_path / "ft.pt", N=9, epochs=1)
    assert (chained.lr, chained.batch_size, chained.trajectories) == (first.lr, first.batch_size, first.trajectories)
    assert chained.finetune_from.endswith("ft.pt") and first.trajectories == 16
    meta = train(chained, tmp_path / "chain.pt", progress=False)
    assert meta["pretrained_meta"]["pretrained_meta"]["recipe"]["lr"] == first.lr * 10  # ancestry walked back
    assert "loss_history" in meta and "loss_history" not in meta["pretrained_meta"]  # nor copied down the chain
    assert "loss_history" not in meta["pretrained_meta"]["pretrained_meta"]


# -- schedules ---------------------------------------------------------------------------------------------
def test_lr_schedules():
    c = TrainConfig(epochs=10, **{**TINY, "lr_milestones": (0.2, 0.3, 0.4)}, lr=1.0)  # 2 steps per epoch
    assert [lr_at(c, s, 0, 0) for s in (0, 3, 4, 5, 6, 7, 8, 19)] == [1, 1, .5, .5, .25, .25, .125, .125]
    cos = TrainConfig(epochs=10, schedule="cosine", warmup_steps=4, **TINY, lr=1.0)
    expect = [min(1, (s + 1) / 4) * 0.5 * (1 + math.cos(math.pi * s / 20)) for s in (0, 1, 3)]
    assert [lr_at(cos, s, 0, 0) for s in (0, 1, 3)] == pytest.approx(expect) and expect[0] == 0.25
    assert lr_at(cos, 10, 0, 0) == pytest.approx(0.5) and lr_at(cos, 19, 0, 0) < 0.01
    wsd = TrainConfig(epochs=10, schedule="wsd", warmup_steps=2, **TINY, lr=1.0)
    start, length = train_mod.natural_decay(wsd)
    assert (start, length) == (16, 4)
    assert [lr_at(wsd, s, start, length) for s in (0, 1, 15, 16)] == [0.5, 1, 1, 1]
    assert lr_at(wsd, 18, start, length) == pytest.approx(0.5) and lr_at(wsd, 19, start, length) < 0.15


def test_wsd_branch_and_exact_continuation(tmp_path):
    """A wsd run cut at step 6 keeps its trunk at 5 (resumable) and decays a branch to 6; continuing the
    trunk to step 10 gives bitwise the branch a single run to step 10 gives."""
    cfg = dict(epochs=10, schedule="wsd", warmup_steps=2, **TINY)
    m = train(TrainConfig(**cfg), tmp_path / "a.pt", progress=False, until_step=6)
    assert m["progress"]["kind"] == "decayed branch" and m["progress"]["step"] == 6
    assert m["schedule"]["branch"] == {"from_step": 5, "decay_steps": 1}
    assert ckpt.load(tmp_path / "a.pt")["batch"] == 1 and branch_path(tmp_path / "a.pt").is_file()
    train(TrainConfig(**cfg), tmp_path / "a.pt", resume=True, progress=False, until_step=10)
    train(TrainConfig(**cfg), tmp_path / "b.pt", progress=False, until_step=10)
    assert_same_weights(weights(branch_path(tmp_path / "a.pt")), weights(branch_path(tmp_path / "b.pt")))
    assert_same_weights(weights(tmp_path / "a.pt"), weights(tmp_path / "b.pt"))  # both trunks at step 8
    full = train(TrainConfig(**cfg), tmp_path / "c.pt", progress=False)  # the whole recipe: no branch
    assert full["progress"]["kind"] == "main" and full["progress"]["recipe_complete"]


# -- input validation (issue 15 point 4): one clear line, non-zero status, nothing written -------------------
BASE = ["train", "--system", "l63", "--sigma-y", "1.0", "--epochs", "1", "--trajectories", "8", "--cycles", "5",
        "--batch-size", "8", "--feature-dim", "16", "--threads", "1", "--no-progress"]


def _set(args, flag, value):
    args = list(args)
    if flag in args:
        args[args.index(flag) + 1] = value
    else:
        args += [flag, value]
    return args


@pytest.fixture
def no_training(monkeypatch):
    """Validation must happen before any work: reaching the data generation is a failure."""
    def boom(*a, **k):
        raise AssertionError("training started before the input was validated")
    monkeypatch.setattr(train_mod, "make_data", boom)


def run_cli(args, capsys):
    from daviz.cli import main
    code = main(args)
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.mark.parametrize("flag,value,message", [
    ("--sigma-y", "nan", "sigma_y must be a finite positive number"),
    ("--sigma-y", "0", "sigma_y must be a finite positive number"),
    ("--sigma-y", "-1", "sigma_y must be a finite positive number"),
    ("--sigma-y", "inf", "sigma_y must be a finite positive number"),
    ("--N", "1", "N (ensemble size) must be an integer >= 2"),
    ("--N", "0", "N (ensemble size) must be an integer >= 2"),
    ("--N", "100000", "N (ensemble size) must be at most 1000"),
    ("--trajectories", "0", "trajectories must be an integer >= 1"),
    ("--batch-size", "0", "batch size must be an integer >= 1"),
    ("--cycles", "0", "cycles must be an integer >= 1"),
    ("--cycles", "-5", "cycles must be an integer >= 1"),
    ("--epochs", "0", "epochs must be an integer >= 1"),
    ("--lr", "nan", "learning rate must be a finite positive number"),
    ("--lr", "0", "learning rate must be a finite positive number"),
    ("--weight-decay", "-1", "weight decay must be a finite non-negative number"),
    ("--threads", "0", "--threads must be >= 1"),
    ("--checkpoint-minutes", "0", "checkpoint minutes must be a positive number"),
    ("--out", "/proc/daviz-no-such-dir/t.pt", "--out /proc/daviz-no-such-dir/t.pt: cannot write there"),
])
def test_train_rejects_bad_input_before_work(tmp_path, capsys, no_training, flag, value, message):
    args = _set(BASE + ["--out", str(tmp_path / "t.pt")], flag, value)
    code, err = run_cli(args, capsys)
    assert code == 2 and err.count("\n") == 0 and message in err, err
    assert err.startswith("daviz train: error:")
    assert not (tmp_path / "t.pt").exists() and not (tmp_path / "t.json").exists()


def test_step_that_cannot_fit_in_memory(tmp_path, capsys, no_training, monkeypatch):
    monkeypatch.setenv("DAVIZ_MAX_MEMORY_GB", "0.001")
    code, err = run_cli(BASE + ["--out", str(tmp_path / "t.pt")], capsys)
    assert code == 2 and "needs about" in err and "use a smaller --batch-size or --N" in err, err
    assert train_mod.step_memory_estimate(TrainConfig(system="l96", N=1000, batch_size=512)) > 100 * 2**30


def test_output_that_is_a_directory(tmp_path, capsys, no_training):
    code, err = run_cli(BASE + ["--out", str(tmp_path)], capsys)
    assert code == 2 and "is a folder, not a file" in err


@pytest.fixture
def pretrained(tmp_path):
    path = tmp_path / "pre.pt"
    cfg = TrainConfig(system="l63", sigma_y=1.0, N=5, trajectories=8, batch_size=8, model={"feature_dim": 16})
    torch.manual_seed(0)
    ckpt.save(path, train_mod.export_payload(MNMEF(get_system("l63"), 1.0, ModelConfig(feature_dim=16)), cfg),
              {"recipe": {"trajectories": 8, "batch_size": 8, "cycles": 5}})
    return path


@pytest.mark.parametrize("case,message", [
    ("N0", "N (ensemble size) must be an integer >= 2"),
    ("unknown-system", "unknown system 'foo'"),
    ("sidecar-list", "not an object"),
    ("sidecar-recipe-string", "'recipe' is not a mapping"),
    ("missing", "does not exist"),
])
def test_finetune_rejects_bad_input(tmp_path, capsys, no_training, pretrained, case, message):
    src = pretrained
    N = "0" if case == "N0" else "6"
    if case == "unknown-system":
        data = ckpt.load(src)
        data["system"] = "foo"
        ckpt.save(src, {k: v for k, v in data.items() if k != "format"})
    elif case == "sidecar-list":
        ckpt.sidecar_path(src).write_text("[1, 2]")
    elif case == "sidecar-recipe-string":
        ckpt.sidecar_path(src).write_text('{"recipe": "x"}')
    elif case == "missing":
        src = tmp_path / "nothing.pt"
    out = tmp_path / "ft.pt"
    code, err = run_cli(["finetune", "--from", str(src), "--N", N, "--epochs", "1", "--threads", "1",
                         "--no-progress", "--out", str(out)], capsys)
    assert code == 2 and err.count("\n") == 0 and message in err, err
    assert not out.exists()


def test_good_input_still_trains(tmp_path, capsys):
    code, _ = run_cli(BASE + ["--out", str(tmp_path / "t.pt")], capsys)
    assert code == 0 and json.loads((tmp_path / "t.json").read_text())["progress"]["finished"]


# -- non-finite safety ------------------------------------------------------------------------------------
def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    """From the 4th step on every observation is NaN: the update of that step is skipped on the device,
    training stops with a clear error, and the checkpoint on disk is the one after step 3, finite."""
    calls = []
    orig = TrainStep.load

    def load(self, batch, key, lr):
        calls.append(batch)
        if len(calls) == 5:  # the first load() prepares step 1; the 5th loads step 4
            self.obs_all.fill_(float("nan"))
        orig(self, batch, key, lr)

    monkeypatch.setattr(TrainStep, "load", load)
    out = tmp_path / "n.pt"
    with pytest.raises(TrainingError, match=r"stopped at step 3 .*all 8 trajectories of the batch diverged.*"
                                            r"keeps the last good checkpoint \(epoch 1, batch 1\)"):
        train(TrainConfig(epochs=3, **TINY), out, progress=False, checkpoint_minutes=1e-9)
    data = ckpt.load(out)
    assert (data["epoch"], data["batch"]) == (1, 1) and len(data["history"]) == 3
    assert all(torch.isfinite(v).all() for v in data["model"].values())
    assert not json.loads(out.with_suffix(".json").read_text())["progress"]["finished"]


def test_nonfinite_weights_are_never_saved(tmp_path, monkeypatch):
    real = train_mod.lr_at
    monkeypatch.setattr(train_mod, "lr_at", lambda cfg, s, a, b: float("inf") if s == 2 else real(cfg, s, a, b))
    out = tmp_path / "w.pt"
    with pytest.raises(TrainingError, match=r"(weights turned non-finite|the gradient is non-finite|diverged)"):
        train(TrainConfig(epochs=3, **TINY), out, progress=False, checkpoint_minutes=1e-9)
    data = ckpt.load(out)
    assert all(torch.isfinite(v).all() for v in data["model"].values())
    assert data["epoch"] * 2 + data["batch"] <= 2


def test_cli_exit_status_on_nonfinite(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(train_mod, "lr_at", lambda *a: float("inf"))
    code, err = run_cli(BASE + ["--out", str(tmp_path / "t.pt")], capsys)
    assert code == 2 and err.startswith("daviz train: error:") and err.count("\n") == 0, err


@pytest.mark.slow
def test_ddp_two_processes_gloo(tmp_path):
    out = tmp_path / "ddp.pt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "daviz.mnmef.commands", "train", "--system", "l96", "--sigma-y", "1.0", "--N", "5",
           "--epochs", "1", "--trajectories", "8", "--cycles", "4", "--batch-size", "4", "--feature-dim", "16",
           "--device", "cpu", "--threads", "1", "--no-progress", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["world_size"] == 2 and meta["progress"]["finished"] and len(meta["loss_history"]) == 2
    ckpt.build_model(ckpt.load(out, system="l96"), out)


def test_wsd_time_budget_branches(tmp_path, monkeypatch):
    """budget_seconds: the trunk stops at about 80 % of the time left after set-up, then decays a branch
    sized from the measured step rate; a finished budget leaves both files (trunk resumable).
    The trainer's clock is a fake that advances 0.05 s per reading, so the test does not depend on speed."""
    ticks = iter(range(10**9))
    monkeypatch.setattr(train_mod.time, "time", lambda: 0.05 * next(ticks))
    cfg = TrainConfig(epochs=1000, schedule="wsd", warmup_steps=2, **TINY)
    m = train(cfg, tmp_path / "b.pt", progress=False, budget_seconds=6.0)
    assert m["progress"]["kind"] == "decayed branch", m["progress"]
    br = m["schedule"]["branch"]
    assert br["from_step"] >= 1 and br["decay_steps"] >= 1
    assert m["progress"]["step"] <= br["from_step"] + br["decay_steps"]
    trunk = ckpt.load(tmp_path / "b.pt")
    assert trunk["epoch"] * 2 + trunk["batch"] == br["from_step"] and not trunk["scheduler"]["branch"]


def test_compile_failure_falls_back(tmp_path, monkeypatch):
    """A speed-up that fails on a machine must not kill the run: the step falls back and says so."""
    def broken(fn, **kw):
        def f(*a, **k):
            raise RuntimeError("inductor: simulated failure")
        return f

    monkeypatch.setattr(torch, "compile", broken)
    cfg = dict(epochs=1, **TINY)
    ref = train(TrainConfig(**cfg), tmp_path / "e.pt", progress=False, mode="eager")
    m = train(TrainConfig(**cfg), tmp_path / "c.pt", progress=False, mode="compile")
    assert m["step_mode"] == "eager" and m["step_mode_asked"] == "compile"
    assert "simulated failure" in m["step_fallbacks"][0]
    assert m["loss_history"] == ref["loss_history"]
    assert_same_weights(weights(tmp_path / "e.pt"), weights(tmp_path / "c.pt"))
