"""MNMEF pretraining and fine-tuning (paper §4.3–4.4, App. C.4 Table C.8).

Data (facts file): truth chains from the "train" random streams; every epoch cuts `trajectories` windows of
`cycles` steps, each start shifted by a random offset in [0, 45), in a shuffled order (an incomplete last
batch is dropped). Observation noise is drawn afresh for every batch, as the authors do (`redraw_obs_noise`;
off: one fixed draw per chain, as the first shipped weights were trained). All randomness of epoch e, batch b, rank k is
derived from (seed, e, b, k), and the learning rate is a pure function of the step, so a run resumed from
a checkpoint (weights, optimizer, position) continues exactly.

Learning-rate schedules (`TrainConfig.schedule`), each with an optional linear warm-up:
  steps   halve the LR at `lr_milestones` fractions of the epochs (the authors' code: 200/300/400 of 1000);
  cosine  cosine decay from the LR to 0 over the run;
  wsd     warm-up, constant, then cosine decay over the last `decay_fraction` of the run. A run cut short by
          `until_step` or `budget_seconds` keeps its constant-LR state in `out` (the trunk, which the next
          run resumes exactly) and decays a branch from it into `branch_path(out)` (the weights to use).
The step itself (gather, rollout, loss, backward, AdamW) is daviz.mnmef.step.TrainStep: eager on the CPU,
captured as a CUDA graph (optionally with torch.compile'd cycles) on a GPU.
Runs data-parallel (DistributedDataParallel, eager steps) when launched by torchrun (WORLD_SIZE > 1).
"""
from __future__ import annotations

import functools
import math
import os
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from ..seeding import stream
from ..systems import SYSTEM_NAMES, get_system
from . import checkpoint as ckpt
from .model import MNMEF, ModelConfig, parameter_counts
from .rollout import RolloutLoss
from .step import MODES, STATS, TrainStep, _is_oom, make_optimizer
from .warm_start import set_enkf_prior, warm_start



def table_c8(system: str) -> tuple[float, int]:
    """Table C.8 (pretraining at N=10): the system's learning rate and batch size (kept on the System)."""
    s = get_system(system)  # unknown names: ValueError listing the known ones
    return s.train_lr, s.train_batch


MAX_OFFSET = 45
SCHEDULES = ("steps", "cosine", "wsd")
MAX_N = 1000  # far above the paper's 100; beyond it a step would not fit in memory anyway


class TrainingError(ValueError):
    """Training cannot go on (non-finite loss or weights, out of memory); the message says what is kept.
    A ValueError, so `daviz` prints it as one line and exits non-zero."""


def _opt(default, help: str, **cli):
    """A TrainConfig field with its command-line description: `daviz train` / `finetune` generate their flags
    from these (daviz.mnmef.commands); `cli` may add choices, or flag (another name than the field's)."""
    kw = {"default_factory": default} if callable(default) else {"default": default}
    return field(metadata={"help": help, **cli}, **kw)


@dataclass
class TrainConfig:
    system: str = _opt("l96", "dynamical system", choices=SYSTEM_NAMES)
    sigma_y: float = _opt(1.0, "observation noise std")
    N: int = _opt(10, "ensemble size (train default 10)")
    epochs: int = _opt(1000, "epochs (pretrain default 1000, fine-tune 20)")
    trajectories: int = _opt(8192, "training windows per epoch (8192; fine-tune: half)")
    cycles: int = _opt(60, "assimilation cycles per window (60)")
    batch_size: int | None = _opt(None, "Table C.8: l96 512, ks 256, l63 1024")  # None: Table C.8
    lr: float | None = _opt(None, "Table C.8: 1e-3 (ks 5e-4); fine-tune: a tenth")  # None: Table C.8
    # paper App. C (C.13): 1e-2 keeps training stable; authors' code: 0
    weight_decay: float = _opt(1e-2, "AdamW weight decay (default 1e-2, paper App. C; authors' code: 0)")
    lr_milestones: tuple = _opt((0.2, 0.3, 0.4), "fractions of the epochs where the LR halves (0.2 0.3 0.4)")
    schedule: str = _opt("steps", "LR schedule: steps (halve at the milestones; default), cosine, or wsd (warm-up, "
                         "constant, decay over the last --decay-fraction; a run cut short also writes OUT_decayed.pt)",
                         choices=SCHEDULES)
    warmup_steps: int = _opt(0, "linear LR warm-up steps (default 0)")
    decay_fraction: float = _opt(0.2, "wsd: fraction of the steps in the final decay (0.2)")
    max_steps: int | None = _opt(None, "total optimizer steps of the recipe (default: epochs x batches)")
    grad_window: int = _opt(1, "detach the ensemble every this many cycles (1)")
    seed: int = _opt(42, "seed of the training data and initial weights (42)")
    chains: int = _opt(256, "truth chains generated in parallel; windows are cut along them (256)")
    # pretrained checkpoint: freeze the set transformer, train the heads
    finetune_from: str | None = _opt(None, "pretrained checkpoint", flag="from")
    model: dict = _opt(dict, "ModelConfig fields")
    recipe_note: str = _opt("", "recipe note recorded in the metadata", flag="note")
    warm_start: bool = _opt(False, "start as the tuned localized EnKF at N (pretrain: heads zeroed; fine-tune: that N's "
                            "localization prior and inflation swapped in; daviz.mnmef.warm_start)")
    redraw_obs_noise: bool = _opt(True, "draw fresh observation noise for every batch (authors' code; default); "
                                  "false: one fixed draw per truth chain")

    def __post_init__(self):
        lr, batch = table_c8(self.system)
        self.lr = lr if self.lr is None else self.lr
        self.batch_size = batch if self.batch_size is None else self.batch_size
        self.lr_milestones = tuple(self.lr_milestones or ())
        self.model = dict(self.model or {})
        validate(self)
        self.batch_size = min(self.batch_size, self.trajectories)

    @property
    def batches_per_epoch(self) -> int:
        return self.trajectories // self.batch_size  # an incomplete last batch is dropped (fixed shapes)

    @property
    def total_steps(self) -> int:
        return self.max_steps if self.max_steps is not None else self.epochs * self.batches_per_epoch

    @property
    def milestone_epochs(self) -> list[int]:
        return sorted({max(1, round(f * self.epochs)) for f in self.lr_milestones})


def _int_at_least(name, value, low):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def _finite(name, value, positive=False):
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v) or (v <= 0 if positive else v < 0):
        raise ValueError(f"{name} must be a finite {'positive' if positive else 'non-negative'} number, got {value!r}")


def validate(cfg: TrainConfig) -> None:
    """Every input checked before any work, each failure one line naming the value and what is accepted."""
    _finite("sigma_y", cfg.sigma_y, positive=True)
    _int_at_least("N (ensemble size)", cfg.N, 2)
    if cfg.N > MAX_N:
        raise ValueError(f"N (ensemble size) must be at most {MAX_N}, got {cfg.N}")
    for name in ("epochs", "trajectories", "cycles", "batch_size", "chains"):
        _int_at_least(name.replace("_", " "), getattr(cfg, name), 1)
    _int_at_least("grad window", cfg.grad_window, 0)
    _int_at_least("warm-up steps", cfg.warmup_steps, 0)
    _int_at_least("seed", cfg.seed, 0)
    if cfg.max_steps is not None:
        _int_at_least("max steps", cfg.max_steps, 1)
    _finite("learning rate", cfg.lr, positive=True)
    _finite("weight decay", cfg.weight_decay)
    if not 0 < float(cfg.decay_fraction) < 1:
        raise ValueError(f"decay fraction must be in (0, 1), got {cfg.decay_fraction!r}")
    if cfg.schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {cfg.schedule!r}")
    for f in cfg.lr_milestones:
        if not (isinstance(f, (int, float)) and 0 < f <= 1):
            raise ValueError(f"LR milestones are fractions of the epochs in (0, 1], got {cfg.lr_milestones!r}")
    try:
        ModelConfig(**cfg.model)
    except TypeError as exc:
        raise ValueError(f"bad model config {cfg.model!r}: {exc}") from None


def check_writable(path) -> None:
    """Fail now, not after hours of training, if `path` (and its .json sidecar) cannot be written."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"output {path} is a directory; give a file name such as {path / 'model.pt'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe = path.parent / f".{path.name}.write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ValueError(f"cannot write the output {path}: {exc.strerror or exc}") from None


def step_memory_estimate(cfg: TrainConfig, world: int = 1) -> float:
    """Rough peak bytes of one training step: autograd's saved tensors per trajectory-cycle, measured with
    saved_tensors_hooks at f_v = width = 64 (0.46 MB + 14 kB x N + 128 B x N^2 on all three systems, within
    10 %), times the cycles held at once (one gradient window; all of them under DDP), twice for backward's
    temporaries, plus the training data in float32. Meant to refuse runs that cannot fit."""
    width = max(ModelConfig(**cfg.model).width, 64) / 64
    per = (0.46e6 + 14.2e3 * cfg.N + 128.0 * cfg.N**2) * width
    held = cfg.cycles if world > 1 or not cfg.grad_window else min(cfg.grad_window, cfg.cycles)
    system = get_system(cfg.system)
    data = 4 * (cfg.trajectories + cfg.chains) * (cfg.cycles + MAX_OFFSET) * (system.dim + system.obs_dim)
    return 2 * (cfg.batch_size // world) * held * per + data


def check_step_memory(cfg: TrainConfig, device: torch.device, world: int = 1) -> None:
    from ..experiment import available_memory
    need = step_memory_estimate(cfg, world)
    limit = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else available_memory()
    if need > limit:
        raise ValueError(f"a training step at batch {cfg.batch_size} x N={cfg.N} needs about {need / 2**30:.3g} GiB, "
                         f"more than the {limit / 2**30:.3g} GiB available on {device} (CPU limit: DAVIZ_MAX_MEMORY_GB, "
                         "else the free memory); use a smaller --batch-size or --N")


def branch_path(out) -> Path:
    """Where a wsd run cut short writes its decayed branch (the weights to use)."""
    out = Path(out)
    return out.with_name(out.stem + "_decayed" + out.suffix)


def lr_at(cfg: TrainConfig, step: int, decay_start: int, decay_steps: int) -> float:
    """Learning rate of optimizer step `step` (0-based): a pure function, so a resume is exact."""
    warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    if cfg.schedule == "steps":
        epoch = step // cfg.batches_per_epoch
        factor = 0.5 ** sum(epoch >= m for m in cfg.milestone_epochs)
    elif cfg.schedule == "cosine":
        factor = 0.5 * (1 + math.cos(math.pi * min(step, cfg.total_steps) / cfg.total_steps))
    else:  # wsd
        i = step - decay_start
        factor = 1.0 if i < 0 else 0.5 * (1 + math.cos(math.pi * min(i, decay_steps) / max(decay_steps, 1)))
    return cfg.lr * warm * factor


def natural_decay(cfg: TrainConfig) -> tuple[int, int]:
    """(first step, length) of the wsd decay at the end of the full run."""
    length = max(1, round(cfg.decay_fraction * cfg.total_steps))
    return cfg.total_steps - length, length


def make_data(cfg: TrainConfig):
    """Truth (C, T, d) and observations (C, T, p), float64, from the disjoint "train" streams (cached, so
    successive fine-tunes in one process build them once: callers must not modify them). With
    `redraw_obs_noise` the observations are noise-free, h(truth): the step adds fresh noise per batch."""
    truth, obs = _data(cfg.system, float(cfg.sigma_y), cfg.trajectories, cfg.cycles, cfg.chains, cfg.seed)
    return (truth, get_system(cfg.system).observe(truth)) if cfg.redraw_obs_noise else (truth, obs)


@functools.lru_cache(maxsize=2)
def _data(system_name, sigma_y, trajectories, cycles, chains, seed):
    system = get_system(system_name)
    chains = min(chains, trajectories)
    per_chain = math.ceil(trajectories / chains)
    T = per_chain * cycles + MAX_OFFSET + 1
    x = system.initial_truth(stream(seed, "train", f"mnmef-truth-{system_name}"), chains)
    truth = np.empty((chains, T, system.dim))
    for t in range(T):
        truth[:, t] = x
        x = system.step(x)
        if system.model_noise_std > 0:  # (the stream is only created when it is drawn from)
            x = system.add_model_noise(x, stream(seed, "train", f"mnmef-model-noise-{t}"))
    noise = stream(seed, "train", f"mnmef-obs-{system_name}-{sigma_y}").standard_normal((chains, T, system.obs_dim))
    return truth, system.observe(truth) + sigma_y * noise


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
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:K") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} asked for, but this torch sees no CUDA GPU")
    return dev


def pick_mode(mode: str | None, device: torch.device, world: int) -> str:
    """'auto': eager on the CPU (capture and compile gain little there), a captured graph on CUDA."""
    if mode in (None, "auto"):
        return "graph" if device.type == "cuda" and world == 1 else "eager"
    if mode not in MODES:
        raise ValueError(f"step mode must be auto or one of {MODES}, got {mode!r}")
    return mode


def load_pretrained(path, system: str | None = None) -> tuple[dict, dict]:
    """(checkpoint, sidecar) of a pretrained model, with clear errors for unusable files."""
    data = ckpt.load(path, system=system)
    if data.get("system") not in SYSTEM_NAMES:
        raise ckpt.CheckpointError(f"MNMEF checkpoint {path} was trained for system {data.get('system')!r}, "
                                   f"which daviz does not know (known: {', '.join(SYSTEM_NAMES)})")
    for key in ("sigma_y", "model_config"):
        if key not in data:
            raise ckpt.CheckpointError(f"MNMEF checkpoint {path} lacks {key!r}")
    if not isinstance(data["model_config"], dict):
        raise ckpt.CheckpointError(f"MNMEF checkpoint {path}: model_config is not a mapping")
    meta = ckpt.read_meta(path)
    if not isinstance(meta, dict):
        raise ckpt.CheckpointError(f"MNMEF sidecar {ckpt.sidecar_path(path)} is not a JSON object")
    return data, meta


def init_model(cfg: TrainConfig) -> tuple[MNMEF, dict]:
    """Fresh model, or the pretrained one (set transformer frozen) when fine-tuning; `warm_start` makes a fresh
    model the tuned localized EnKF at N, and gives a fine-tune that N's localization prior and inflation."""
    model, extra = _initial_model(cfg)
    if cfg.warm_start:
        apply = set_enkf_prior if cfg.finetune_from else warm_start
        extra["warm_start"] = {"kind": apply.__name__, **apply(model, cfg.N)}
    return model, extra


def _initial_model(cfg: TrainConfig) -> tuple[MNMEF, dict]:
    if cfg.finetune_from:
        data, meta = load_pretrained(cfg.finetune_from, system=cfg.system)
        model = ckpt.build_model(data, cfg.finetune_from)
        if abs(float(data["sigma_y"]) - cfg.sigma_y) > 1e-12:
            raise ckpt.CheckpointError(f"MNMEF checkpoint {cfg.finetune_from} was trained for sigma_y={data['sigma_y']}, not {cfg.sigma_y}")
        for q in model.set_transformer.parameters():
            q.requires_grad_(False)
        cfg.model = model.config.to_dict()
        return model, {"pretrained_from": str(cfg.finetune_from), "pretrained_meta": meta}
    torch.manual_seed(cfg.seed)  # weight init
    return MNMEF(get_system(cfg.system), cfg.sigma_y, ModelConfig(**cfg.model)), {}


def export_payload(model: MNMEF, cfg: TrainConfig) -> dict:
    return {"system": cfg.system, "sigma_y": cfg.sigma_y, "N": cfg.N, "model_config": model.config.to_dict(),
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()}}


def _optimizer_policy(opt, cfg: TrainConfig, dev: torch.device) -> None:
    """After loading an optimizer state (maybe saved by another device or an older, unfused trainer):
    the LR back in a device tensor, fused (and capturable on CUDA), step counts where fused AdamW wants them."""
    lr_t = torch.tensor(float(cfg.lr), dtype=torch.float32, device=dev)
    for g in opt.param_groups:
        g.update(lr=lr_t, fused=True, foreach=None, capturable=dev.type == "cuda", weight_decay=cfg.weight_decay)
    for st in opt.state.values():
        if isinstance(st.get("step"), torch.Tensor):
            st["step"] = st["step"].to(device=dev, dtype=torch.float32)


def train(cfg: TrainConfig, out: str | Path, resume: bool = False, device: str | None = None,
          checkpoint_minutes: float = 5.0, progress: bool = True, stop_after_batches: int | None = None,
          mode: str | None = "auto", until_step: int | None = None, budget_seconds: float | None = None,
          sync_every: int | None = None) -> dict:
    """Train (or fine-tune) and write `out` (a training-state checkpoint + JSON sidecar). Returns the sidecar
    of the weights to use: `out`, or for a wsd run cut short, its decayed branch `branch_path(out)`.

    `until_step` stops at that global step, `budget_seconds` after that much wall time in this call (wsd:
    the trunk stops early enough for a decayed branch to fit). `stop_after_batches` stops as if interrupted
    (tests of `resume`). `mode`: auto | eager | graph | compile | compile+graph (daviz.mnmef.step).
    Raises TrainingError (a ValueError) when the loss or the weights turn non-finite: `out` then keeps the
    last good checkpoint.
    """
    out = Path(out)
    if not math.isfinite(checkpoint_minutes) or checkpoint_minutes <= 0:
        raise ValueError(f"checkpoint minutes must be a positive number, got {checkpoint_minutes!r}")
    if until_step is not None:
        _int_at_least("until step", until_step, 1)
    if budget_seconds is not None:
        _finite("budget seconds", budget_seconds, positive=True)
    check_writable(out)
    if cfg.schedule == "wsd":
        check_writable(branch_path(out))
    stop = _Stop()  # installed first: a SIGTERM during set-up still ends with a checkpoint, not a kill
    old = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)} if _main_thread() else {}
    try:
        return _Trainer(cfg, out, resume, device, checkpoint_minutes, progress, stop_after_batches, stop, mode,
                        until_step, budget_seconds, sync_every).run()
    finally:
        for s, h in old.items():
            signal.signal(s, h)


class _Trainer:
    def __init__(self, cfg, out, resume, device, checkpoint_minutes, progress, stop_after_batches, stop, mode,
                 until_step, budget_seconds, sync_every):
        self.t_start = time.time()
        self.cfg, self.out, self.stop = cfg, out, stop
        self.checkpoint_minutes, self.progress = checkpoint_minutes, progress
        self.stop_after, self.until_step, self.budget = stop_after_batches, until_step, budget_seconds
        self.rank, self.world = _distributed()
        self.dev = _pick_device(device, self.rank)
        self.mode = pick_mode(mode, self.dev, self.world)
        if self.world > 1 and self.mode != "eager":
            raise ValueError(f"step mode {self.mode} is single-process only; use eager under torchrun")
        if cfg.batch_size % self.world:
            raise ValueError(f"batch size {cfg.batch_size} must be divisible by the {self.world} processes")
        check_step_memory(cfg, self.dev, self.world)
        self.sync_every = max(1, sync_every or (50 if self.dev.type == "cuda" else 1))
        self.model, self.extra = init_model(cfg)
        self.model.to(self.dev)
        params = [q for q in self.model.parameters() if q.requires_grad]
        self.opt = make_optimizer(params, cfg.lr, cfg.weight_decay, self.dev)
        self.epoch = self.batch = 0
        self.elapsed, self.history = 0.0, []
        self.decay_start, self.decay_steps = natural_decay(cfg)
        self.branch = None  # (from step, decay steps) once a wsd run branches
        self.last_good = None  # (epoch, batch) of the last checkpoint written
        if resume and out.is_file():
            state = ckpt.load(out, system=cfg.system, map_location=self.dev)
            try:
                self.model.load_state_dict(state["model"])
                self.opt.load_state_dict(state["optimizer"])
                self.epoch, self.batch = int(state["epoch"]), int(state["batch"])
                self.elapsed, self.history = float(state["elapsed"]), list(state["history"])
            except (KeyError, RuntimeError, ValueError, TypeError) as exc:
                raise ckpt.CheckpointError(f"cannot resume from {out}: it does not fit this run ({type(exc).__name__}: {exc})") from None
            sched = state.get("scheduler") or {}
            if sched.get("branch"):  # resuming a decayed branch: keep its decay
                self.decay_start, self.decay_steps = int(sched["decay_start"]), int(sched["decay_steps"])
                self.branch = (self.decay_start, self.decay_steps)
            _optimizer_policy(self.opt, cfg, self.dev)
            self.last_good = (self.epoch, self.batch)
        runner = RolloutLoss(self.model, cfg.N, cfg.grad_window).to(self.dev)
        if self.world > 1:
            runner = torch.nn.parallel.DistributedDataParallel(
                runner, device_ids=[self.dev.index] if self.dev.type == "cuda" else None)
        truth, obs = make_data(cfg)
        self.chains = truth.shape[0]
        truth_t = torch.as_tensor(truth, dtype=torch.float32, device=self.dev)
        obs_t = torch.as_tensor(obs, dtype=torch.float32, device=self.dev)
        self.stepper = TrainStep(runner, self.model, self.opt, truth_t, obs_t, cfg.cycles,
                                 cfg.batch_size // self.world, cfg.trajectories, self.rank, self.world, self.mode,
                                 obs_noise_std=cfg.sigma_y if cfg.redraw_obs_noise else None)
        self.pending = torch.zeros((self.sync_every, len(STATS)), dtype=torch.float32, device=self.dev)
        self.n_pending = 0
        self.skipped = 0
        self.setup_seconds = 0.0
        self.steps_this_run = 0

    # -- bookkeeping -----------------------------------------------------------------------------------
    @property
    def step(self) -> int:
        return self.epoch * self.cfg.batches_per_epoch + self.batch

    def meta(self, final: bool) -> dict:
        cfg = self.cfg
        rate = self.steps_this_run / self.loop_seconds if getattr(self, "loop_seconds", 0) > 0 else None
        return {
            "system": cfg.system, "sigma_y": cfg.sigma_y, "N": cfg.N,
            "stage": "finetune" if cfg.finetune_from else "pretrain",
            "model_config": self.model.config.to_dict(), "parameters": parameter_counts(self.model),
            "recipe": {**asdict(cfg), "lr_milestone_epochs": cfg.milestone_epochs,
                       "batches_per_epoch": cfg.batches_per_epoch, "total_steps": cfg.total_steps},
            "recipe_note": cfg.recipe_note, "seeds": {"seed": cfg.seed, "streams": "daviz.seeding purpose 'train'",
                                                      "rollout_noise": "daviz.mnmef.noise (counter-based)"},
            "progress": {"epoch": self.epoch, "batch": self.batch, "step": self.step,
                         "trajectory_cycles": self.step * cfg.batch_size * cfg.cycles,
                         "total_steps": cfg.total_steps, "finished": final,
                         "recipe_complete": self.step >= cfg.total_steps,
                         "kind": "decayed branch" if self.branch is not None else "main"},
            "schedule": {"schedule": cfg.schedule, "warmup_steps": cfg.warmup_steps,
                         "decay_start": self.decay_start, "decay_steps": self.decay_steps,
                         "branch": None if self.branch is None else {"from_step": self.branch[0], "decay_steps": self.branch[1]},
                         "lr_now": lr_at(cfg, max(self.step - 1, 0), self.decay_start, self.decay_steps)},
            "loss_history": self.history[-2000:], "training_seconds": round(self.elapsed, 1),
            "step_mode": self.stepper.mode, "step_mode_asked": self.mode, "step_fallbacks": self.stepper.fallbacks,
            "steps_per_second_this_run": None if rate is None else round(rate, 3),
            "trajectory_cycles_per_second_this_run": None if rate is None else round(rate * cfg.batch_size * cfg.cycles, 1),
            "saved_at_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "hardware": ckpt.hardware(self.dev), "world_size": self.world, "code_version": ckpt.code_version(),
            **self.extra,
        }

    def flush(self) -> None:
        """Read back the pending per-step stats (the one host sync), append the losses, and stop on a skip."""
        if not self.n_pending:
            return
        vals = self.pending[:self.n_pending].cpu().numpy()
        first = self.step - self.n_pending
        self.n_pending = 0
        for i, (loss, nonfinite, gnorm, skipped) in enumerate(vals):
            if skipped:
                s = first + i
                kept = (f"{self.out} keeps the last good checkpoint (epoch {self.last_good[0]}, batch {self.last_good[1]})"
                        if self.last_good else f"no checkpoint was written to {self.out}")
                why = (f"all {self.cfg.batch_size // self.world} trajectories of the batch diverged" if nonfinite
                       and nonfinite >= self.cfg.batch_size // self.world else f"the gradient is non-finite (norm {gnorm})")
                raise TrainingError(f"training stopped at step {s} (epoch {s // self.cfg.batches_per_epoch}, batch "
                                    f"{s % self.cfg.batches_per_epoch}): {why}; the update was skipped; {kept}. "
                                    f"Try a lower --lr or check the data (sigma_y, system).")
            self.history.append(round(float(loss), 6))

    def save(self, path: Path, final: bool = False) -> dict:
        self.flush()
        meta = self.meta(final)
        if self.rank == 0:
            with torch.no_grad():
                bad = [n for n, q in self.model.named_parameters() if not torch.isfinite(q).all()]
            if bad:
                raise TrainingError(f"weights turned non-finite ({', '.join(bad[:3])}...) at step {self.step}; "
                                    f"not saved; {self.out} keeps the last good checkpoint {self.last_good}")
            payload = export_payload(self.model, self.cfg)
            payload.update(optimizer=self.opt.state_dict(), epoch=self.epoch, batch=self.batch, elapsed=self.elapsed,
                           history=self.history,
                           scheduler={"schedule": self.cfg.schedule, "decay_start": self.decay_start,
                                      "decay_steps": self.decay_steps, "branch": self.branch is not None})
            ckpt.save(path, payload, meta)
        if path == self.out:
            self.last_good = (self.epoch, self.batch)
        return meta

    # -- the loop ------------------------------------------------------------------------------------------
    def end_step(self) -> int:
        return min(self.cfg.total_steps, self.until_step or self.cfg.total_steps)

    def maybe_branch(self, loop_t0: float) -> bool:
        """wsd cut short: save the trunk and start the decay now, sized to what is left of the budget."""
        cfg = self.cfg
        if cfg.schedule != "wsd" or self.branch is not None or self.step >= self.decay_start:
            return False
        if self.until_step is not None and self.until_step < cfg.total_steps:
            end = self.until_step
            at = min(round((1 - cfg.decay_fraction) * end), end - 1)  # at least one decay step
            if self.step < at:
                return False
            length = end - self.step
        elif self.budget is not None:
            remaining = self.budget - (self.setup_seconds)
            used = time.time() - loop_t0
            if used < (1 - cfg.decay_fraction) * remaining:
                return False
            self.flush()  # the rate below must count finished steps
            rate = self.steps_this_run / max(time.time() - loop_t0, 1e-9)
            length = int(rate * max(remaining - used, 0.0))
            length = min(length, cfg.total_steps - self.step)
        else:
            return False
        if length < 1:
            return False
        self.save(self.out)  # the trunk: the next run resumes here, exactly
        self.branch = (self.step, length)
        self.decay_start, self.decay_steps = self.branch
        self.until_step = self.step + length
        return True

    def run(self) -> dict:
        cfg, st = self.cfg, self.stepper
        target = self.out
        bpe = cfg.batches_per_epoch
        bar = tqdm(total=cfg.total_steps, initial=self.step, disable=not self.progress or self.rank != 0,
                   desc=f"mnmef {cfg.system} N={cfg.N}", unit="step", dynamic_ncols=True)
        windows_epoch = None
        try:
            if self.step < self.end_step():  # warm-up / compile / capture now, outside the timed loop
                st.set_windows(epoch_windows(cfg, self.chains, self.epoch))
                windows_epoch = self.epoch
                st.load(self.batch, batch_seed(cfg.seed, self.epoch, self.batch, self.rank),
                        lr_at(cfg, self.step, self.decay_start, self.decay_steps))
                st.prepare()
            self.setup_seconds = time.time() - self.t_start
            loop_t0 = last_save = time.time()
            self.loop_seconds = 0.0
            while self.step < self.end_step():
                if self.maybe_branch(loop_t0):
                    target = branch_path(self.out)
                    self.loop_seconds = time.time() - loop_t0
                if self.step >= self.end_step():
                    break
                if windows_epoch != self.epoch:
                    st.set_windows(epoch_windows(cfg, self.chains, self.epoch))
                    windows_epoch = self.epoch
                t0 = time.time()
                lr = lr_at(cfg, self.step, self.decay_start, self.decay_steps)
                stats = st.step(self.batch, batch_seed(cfg.seed, self.epoch, self.batch, self.rank), lr)
                if self.world > 1:
                    stats = stats.clone()
                    dist.all_reduce(stats)
                    stats[0] /= self.world
                self.pending[self.n_pending].copy_(stats)
                self.n_pending += 1
                self.batch += 1
                if self.batch == bpe:
                    self.epoch, self.batch = self.epoch + 1, 0
                self.steps_this_run += 1
                if self.n_pending == self.sync_every:
                    self.flush()
                    if self.progress and self.history:
                        bar.set_postfix(epoch=self.epoch, loss=f"{self.history[-1]:.4f}", lr=f"{lr:.1e}")
                self.elapsed += time.time() - t0
                bar.update(1)
                halt = self.stop.flag or (self.stop_after is not None and self.steps_this_run >= self.stop_after)
                if self.budget is not None and time.time() - self.t_start >= self.budget:
                    halt = True
                if self.world > 1:  # every rank must agree to stop at the same batch
                    flag = torch.tensor(float(halt), device=self.dev)
                    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                    halt = bool(flag.item())
                self.loop_seconds = time.time() - loop_t0
                if halt:
                    return self.save(target, final=self.step >= self.end_step())
                if time.time() - last_save > 60 * self.checkpoint_minutes:
                    self.save(target)
                    last_save = time.time()
            self.loop_seconds = time.time() - loop_t0
            return self.save(target, final=True)
        except RuntimeError as exc:
            if _is_oom(exc):
                raise TrainingError(f"out of memory with batch {cfg.batch_size // self.world} x N={cfg.N} x "
                                    f"{cfg.cycles} cycles on {self.dev}; use a smaller --batch-size or --N "
                                    f"({self.out} keeps its last checkpoint {self.last_good})") from None
            raise
        finally:
            bar.close()


def _main_thread() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()


def finetune_config(pretrained: str | Path, N: int, **overrides) -> TrainConfig:
    """Fine-tuning recipe of §4.4 / App. C.4 from a pretrained checkpoint: half the trajectories, LR/10,
    20 epochs; batch halved for N ≥ 40 and quartered for N ≥ 100 (authors' code, memory)."""
    data, meta = load_pretrained(pretrained)
    base = meta.get("recipe", {})
    if not isinstance(base, dict):
        raise ckpt.CheckpointError(f"MNMEF sidecar {ckpt.sidecar_path(pretrained)}: 'recipe' is not a mapping")
    system = data["system"]
    lr, batch = table_c8(system)
    lr = base.get("lr", lr) / 10
    batch = base.get("batch_size", batch)
    batch = batch // 4 if N >= 100 else batch // 2 if N >= 40 else batch
    kw = dict(system=system, sigma_y=float(data["sigma_y"]), N=N, epochs=20,
              trajectories=max(1, base.get("trajectories", 8192) // 2), cycles=base.get("cycles", 60),
              batch_size=max(1, batch), lr=lr, seed=base.get("seed", 42), finetune_from=str(pretrained),
              lr_milestones=(), model=data["model_config"])
    kw.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(**kw)
