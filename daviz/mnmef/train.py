"""MNMEF pretraining and fine-tuning (paper §4.3–4.4, App. C.4 Table C.8).

Data (facts file): truth chains from the "train" random streams, observed once with fixed noise; every
epoch cuts `trajectories` windows of `cycles` steps, each start shifted by a random offset in [0, 45),
in a shuffled order. All randomness of epoch e, batch b, rank k is derived from (seed, e, b, k), so a run
resumed from a checkpoint (weights, optimizer, scheduler, position) continues exactly.
Runs data-parallel (DistributedDataParallel) when launched by torchrun (WORLD_SIZE > 1).
"""
from __future__ import annotations

import math
from collections import Counter
import os
import signal
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from ..seeding import stream
from ..systems import get_system
from . import checkpoint as ckpt
from .model import MNMEF, ModelConfig, parameter_counts
from .rollout import Rollout, masked_mean

# Table C.8 (pretraining at N=10): learning rate and batch size per system.
TABLE_C8 = {"l96": (1e-3, 512), "ks": (5e-4, 256), "l63": (1e-3, 1024), "linear": (1e-3, 512)}
MAX_OFFSET = 45


@dataclass
class TrainConfig:
    system: str = "l96"
    sigma_y: float = 1.0
    N: int = 10
    epochs: int = 1000
    trajectories: int = 8192
    cycles: int = 60
    batch_size: int | None = None      # None: Table C.8
    lr: float | None = None            # None: Table C.8
    weight_decay: float = 1e-2         # paper App. C (C.13): 1e-2 keeps training stable; authors' code: 0
    lr_milestones: tuple = (0.2, 0.3, 0.4)  # halve the LR at these fractions of the epochs (code: 200/300/400 of 1000)
    grad_window: int = 1
    seed: int = 42
    chains: int = 256                  # truth chains generated in parallel; windows are cut along them
    finetune_from: str | None = None   # pretrained checkpoint: freeze the set transformer, train the heads
    model: dict = field(default_factory=dict)  # ModelConfig fields
    recipe_note: str = ""

    def __post_init__(self):
        lr, batch = TABLE_C8[self.system]
        self.lr = lr if self.lr is None else self.lr
        self.batch_size = batch if self.batch_size is None else self.batch_size
        self.batch_size = min(self.batch_size, self.trajectories)
        self.lr_milestones = tuple(self.lr_milestones)

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(self.trajectories / self.batch_size)


def make_data(cfg: TrainConfig):
    """Truth (C, T, d) and observations (C, T, p), float64, from the disjoint "train" streams."""
    system = get_system(cfg.system)
    chains = min(cfg.chains, cfg.trajectories)
    per_chain = math.ceil(cfg.trajectories / chains)
    T = per_chain * cfg.cycles + MAX_OFFSET + 1
    x = system.initial_truth(stream(cfg.seed, "train", f"mnmef-truth-{cfg.system}"), chains)
    truth = np.empty((chains, T, system.dim))
    for t in range(T):
        truth[:, t] = x
        x = system.step(x)
        if system.model_noise_std > 0:
            x = x + system.model_noise_std * stream(cfg.seed, "train", f"mnmef-model-noise-{t}").standard_normal(x.shape)
    noise = stream(cfg.seed, "train", f"mnmef-obs-{cfg.system}-{cfg.sigma_y}").standard_normal((chains, T, system.obs_dim))
    return truth, system.observe(truth) + cfg.sigma_y * noise


def epoch_windows(cfg: TrainConfig, chains: int, epoch: int) -> np.ndarray:
    """(trajectories, 2) shuffled (chain, start) pairs for this epoch."""
    rng = stream(cfg.seed, "train", f"mnmef-epoch-{epoch}")
    k = np.arange(cfg.trajectories)
    starts = (k // chains) * cfg.cycles + rng.integers(0, MAX_OFFSET, size=cfg.trajectories)
    pairs = np.stack([k % chains, starts], 1)
    return pairs[rng.permutation(cfg.trajectories)]


def batch_seed(seed: int, epoch: int, batch: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, batch, rank]).generate_state(1)[0])


class _Stop:
    """Set by SIGTERM/SIGINT; the loop checkpoints at the next batch boundary and exits."""

    def __init__(self):
        self.flag = False

    def __call__(self, *_):
        self.flag = True


def _distributed():
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def _pick_device(device: str | None, rank: int) -> torch.device:
    if device in (None, "auto"):
        device = f"cuda:{rank % torch.cuda.device_count()}" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def init_model(cfg: TrainConfig) -> tuple[MNMEF, dict]:
    """Fresh model, or the pretrained one (set transformer frozen) when fine-tuning."""
    if cfg.finetune_from:
        data = ckpt.load(cfg.finetune_from, system=cfg.system)
        model = ckpt.build_model(data, cfg.finetune_from)
        if abs(float(data["sigma_y"]) - cfg.sigma_y) > 1e-12:
            raise ckpt.CheckpointError(f"MNMEF checkpoint {cfg.finetune_from} was trained for sigma_y={data['sigma_y']}, not {cfg.sigma_y}")
        for q in model.set_transformer.parameters():
            q.requires_grad_(False)
        cfg.model = model.config.to_dict()
        return model, {"pretrained_from": str(cfg.finetune_from), "pretrained_meta": ckpt.read_meta(cfg.finetune_from)}
    torch.manual_seed(cfg.seed)  # weight init
    return MNMEF(get_system(cfg.system), cfg.sigma_y, ModelConfig(**cfg.model)), {}


def export_payload(model: MNMEF, cfg: TrainConfig) -> dict:
    return {"system": cfg.system, "sigma_y": cfg.sigma_y, "N": cfg.N, "model_config": model.config.to_dict(),
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()}}


def train(cfg: TrainConfig, out: str | Path, resume: bool = False, device: str | None = None,
          checkpoint_minutes: float = 5.0, progress: bool = True, stop_after_batches: int | None = None) -> dict:
    """Train (or fine-tune) and write `out` (a training-state checkpoint + JSON sidecar). Returns the sidecar.

    `stop_after_batches` stops early as if interrupted (tests of `resume`).
    """
    out = Path(out)
    stop = _Stop()  # installed first: a SIGTERM during set-up still ends with a checkpoint, not a kill
    old = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)} if _main_thread() else {}
    try:
        return _train(cfg, out, resume, device, checkpoint_minutes, progress, stop_after_batches, stop)
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _train(cfg, out, resume, device, checkpoint_minutes, progress, stop_after_batches, stop) -> dict:
    rank, world = _distributed()
    dev = _pick_device(device, rank)
    if cfg.batch_size % world:
        raise ValueError(f"batch size {cfg.batch_size} must be divisible by the {world} processes")
    model, extra = init_model(cfg)
    model.to(dev)
    params = [q for q in model.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    milestones = sorted({max(1, round(f * cfg.epochs)) for f in cfg.lr_milestones})
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones, gamma=0.5)
    epoch, batch, elapsed, history = 0, 0, 0.0, []
    if resume and out.is_file():
        state = ckpt.load(out, system=cfg.system, map_location=dev)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        sched.milestones = Counter(milestones)  # a resume may shorten or lengthen the run
        epoch, batch, elapsed, history = state["epoch"], state["batch"], state["elapsed"], list(state["history"])
    runner = Rollout(model, cfg.N, cfg.grad_window).to(dev)
    if world > 1:
        runner = torch.nn.parallel.DistributedDataParallel(runner, device_ids=[dev.index] if dev.type == "cuda" else None)

    truth, obs = make_data(cfg)
    chains = truth.shape[0]
    truth_t = torch.as_tensor(truth, dtype=torch.float32, device=dev)
    obs_t = torch.as_tensor(obs, dtype=torch.float32, device=dev)
    steps = torch.arange(cfg.cycles + 1, device=dev)

    def meta(final: bool) -> dict:
        counts = parameter_counts(model)
        return {
            "system": cfg.system, "sigma_y": cfg.sigma_y, "N": cfg.N,
            "stage": "finetune" if cfg.finetune_from else "pretrain",
            "model_config": model.config.to_dict(), "parameters": counts,
            "recipe": {**asdict(cfg), "lr_milestone_epochs": milestones, "batches_per_epoch": cfg.batches_per_epoch},
            "recipe_note": cfg.recipe_note, "seeds": {"seed": cfg.seed, "streams": "daviz.seeding purpose 'train'"},
            "progress": {"epoch": epoch, "batch": batch, "finished": final},
            "loss_history": history[-2000:], "training_seconds": round(elapsed, 1),
            "saved_at_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "hardware": ckpt.hardware(dev), "world_size": world, "code_version": ckpt.code_version(), **extra,
        }

    def save(final=False):
        if rank == 0:
            payload = export_payload(model, cfg)
            payload.update(optimizer=opt.state_dict(), scheduler=sched.state_dict(), epoch=epoch, batch=batch,
                           elapsed=elapsed, history=history)
            ckpt.save(out, payload, meta(final))

    local = cfg.batch_size // world
    total = cfg.epochs * cfg.batches_per_epoch
    bar = tqdm(total=total, initial=epoch * cfg.batches_per_epoch + batch, disable=not progress or rank != 0,
               desc=f"mnmef {cfg.system} N={cfg.N}", unit="batch", dynamic_ncols=True)
    last_save, done_now = time.time(), 0
    try:
        while epoch < cfg.epochs:
            windows = epoch_windows(cfg, chains, epoch)
            while batch < cfg.batches_per_epoch:
                t0 = time.time()
                sel = windows[batch * cfg.batch_size:(batch + 1) * cfg.batch_size][rank * local:(rank + 1) * local]
                c = torch.as_tensor(sel[:, 0], device=dev)[:, None]
                t = torch.as_tensor(sel[:, 1], device=dev)[:, None] + steps
                loss = masked_mean(runner(truth_t[c, t], obs_t[c, t], batch_seed(cfg.seed, epoch, batch, rank)))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                value = loss.detach()
                if world > 1:
                    dist.all_reduce(value)
                    value /= world
                history.append(round(float(value), 6))
                batch += 1
                done_now += 1
                elapsed += time.time() - t0
                bar.update(1)
                bar.set_postfix(epoch=epoch, loss=f"{history[-1]:.4f}", lr=f"{opt.param_groups[0]['lr']:.1e}")
                halt = stop.flag or (stop_after_batches is not None and done_now >= stop_after_batches)
                if world > 1:  # every rank must agree to stop at the same batch
                    flag = torch.tensor(float(halt), device=dev)
                    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                    halt = bool(flag.item())
                if halt:
                    save()
                    return meta(False)
                if time.time() - last_save > 60 * checkpoint_minutes:
                    save()
                    last_save = time.time()
            epoch, batch = epoch + 1, 0
            sched.step()
        save(final=True)
        return meta(True)
    finally:
        bar.close()


def _main_thread() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()


def finetune_config(pretrained: str | Path, N: int, **overrides) -> TrainConfig:
    """Fine-tuning recipe of §4.4 / App. C.4 from a pretrained checkpoint: half the trajectories, LR/10,
    20 epochs; batch halved for N ≥ 40 and quartered for N ≥ 100 (authors' code, memory)."""
    data = ckpt.load(pretrained)
    meta = ckpt.read_meta(pretrained)
    base = meta.get("recipe", {})
    system = data["system"]
    lr, batch = TABLE_C8[system]
    lr = base.get("lr", lr) / 10
    batch = base.get("batch_size", batch)
    batch = batch // 4 if N >= 100 else batch // 2 if N >= 40 else batch
    kw = dict(system=system, sigma_y=float(data["sigma_y"]), N=N, epochs=20,
              trajectories=max(1, base.get("trajectories", 8192) // 2), cycles=base.get("cycles", 60),
              batch_size=max(1, batch), lr=lr, seed=base.get("seed", 42), finetune_from=str(pretrained),
              lr_milestones=(), model=data["model_config"])
    kw.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(**kw)
