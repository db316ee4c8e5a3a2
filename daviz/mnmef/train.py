"""MNMEF pretraining and fine-tuning (paper §4.3–4.4, App. C.4 Table C.8): the training run.

The pieces, one module each: the recipe (train_config: TrainConfig, the fine-tune rule), the data
(train_data), the LR schedule (train_schedule), where the run executes (train_runtime), and the step itself
(step.TrainStep: gather, rollout, loss, backward, AdamW; eager on the CPU, a captured CUDA graph on a GPU).
This module holds the run: build the model (fresh, warm-started or pretrained), then step, checkpoint and
stop. A run resumed from a checkpoint (weights, optimizer, position) continues exactly.
Runs data-parallel (DistributedDataParallel, eager steps) when launched by torchrun (WORLD_SIZE > 1).
"""
from __future__ import annotations

import hashlib
import math
import signal
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from ..artifacts import check_writable
from ..systems import get_system
from . import checkpoint as ckpt
from .model import MNMEF, ModelConfig, parameter_counts
from .rollout import RolloutLoss
from .step import STATS, TrainStep, _is_oom, make_optimizer
from .train_config import TrainConfig, finetune_config, finite, flag_of, int_at_least, load_pretrained, table_c8
from .train_data import batch_seed, epoch_windows, make_data
from .train_runtime import (Stop, check_step_memory, distributed, main_thread, pick_device,
                            pick_mode, step_memory_estimate)
from .train_schedule import branch_path, lr_at, natural_decay
from .warm_start import set_enkf_prior, warm_start


class TrainingError(ValueError):
    """Training cannot go on (non-finite loss or weights, out of memory); the message says what is kept.
    A ValueError, so `daviz` prints it as one line and exits non-zero."""


# What a trunk was trained with and on: resuming continues with these (the CLI takes them from the trunk unless
# a flag is given) and refuses others.
TRUNK_RECIPE = ("grad_window", "train_set_transformer", "batch_size", "lr", "trajectories", "cycles", "seed")


def init_model(cfg: TrainConfig) -> tuple[MNMEF, dict]:
    """Fresh model, or the pretrained one (set transformer frozen by default) when fine-tuning; then the warm start:
    "enkf" makes it the tuned localized EnKF at N (heads zeroed), "prior" swaps in only N's prior and inflation."""
    model, extra = _initial_model(cfg)
    if cfg.warm_start != "none":
        apply = warm_start if cfg.warm_start == "enkf" else set_enkf_prior
        extra["warm_start"] = {"kind": cfg.warm_start, **apply(model, cfg.N)}
    return model, extra


def _initial_model(cfg: TrainConfig) -> tuple[MNMEF, dict]:
    if cfg.finetune_from:
        data, meta = load_pretrained(cfg.finetune_from, system=cfg.system)
        model = ckpt.build_model(data, cfg.finetune_from)
        if abs(float(data["sigma_y"]) - cfg.sigma_y) > 1e-12:
            raise ckpt.CheckpointError(f"MNMEF checkpoint {cfg.finetune_from} was trained for sigma_y={data['sigma_y']}, not {cfg.sigma_y}")
        for q in model.set_transformer.parameters():
            q.requires_grad_(cfg.train_set_transformer)
        cfg.model = model.config.to_dict()
        return model, {"pretrained_from": str(cfg.finetune_from), "pretrained_meta": _ancestry(meta),
                       "pretrained_sha256": hashlib.sha256(Path(cfg.finetune_from).read_bytes()).hexdigest()}
    torch.manual_seed(cfg.seed)  # weight init
    return MNMEF(get_system(cfg.system), cfg.sigma_y, ModelConfig(**cfg.model)), {}


def _ancestry(meta: dict) -> dict:
    """The sidecar of the weights a fine-tune starts from, nested in its own, without the loss histories: those
    stay in each ancestor's own sidecar, and copying them made every link of a chain carry all earlier ones."""
    slim = {k: v for k, v in meta.items() if k != "loss_history"}
    if isinstance(slim.get("pretrained_meta"), dict):
        slim["pretrained_meta"] = _ancestry(slim["pretrained_meta"])
    return slim


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
        int_at_least("until step", until_step, 1)
    if budget_seconds is not None:
        finite("budget seconds", budget_seconds, positive=True)
    check_writable(out, "--out", make_folder=True)  # fail now, not after hours of training
    if cfg.schedule == "wsd":
        check_writable(branch_path(out), "--out")
    stop = Stop()  # installed first: a SIGTERM during set-up still ends with a checkpoint, not a kill
    old = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)} if main_thread() else {}
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
        self.rank, self.world = distributed()
        self.dev = pick_device(device, self.rank)
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
            meta = ckpt.read_meta(out)
            started_from = meta.get("pretrained_sha256")
            if cfg.finetune_from and started_from not in (None, self.extra["pretrained_sha256"]):
                raise ckpt.CheckpointError(f"cannot resume the fine-tune {out}: it started from other weights than "
                                           f"{cfg.finetune_from} holds now; delete it to fine-tune the new weights")
            # Another value would silently change what is trained, or on what data (epochs may grow: an extension).
            for key in TRUNK_RECIPE:
                asked = getattr(cfg, key)
                trained = (meta.get("recipe") or {}).get(key, asked)  # older trunks do not record it: accepted
                if trained != asked and not (key == "lr" and math.isclose(trained, asked, rel_tol=1e-9)):
                    raise ckpt.CheckpointError(f"cannot resume {out}: it was trained with {key} = {trained}, this run "
                                               f"asks for {asked} (pass {flag_of(key)} {str(trained).lower()})")
            # The trunk's weights replace the start built above, so the start it recorded is the one it had.
            cfg.warm_start = (meta.get("recipe") or {}).get("warm_start", cfg.warm_start)
            self.extra.pop("warm_start", None)
            if "warm_start" in meta:
                self.extra["warm_start"] = meta["warm_start"]
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


# What callers import from here; the recipe, data and schedule names are re-exported from their modules.
__all__ = ["TrainConfig", "TrainingError", "train", "init_model", "export_payload", "finetune_config", "table_c8",
           "make_data", "epoch_windows", "lr_at", "natural_decay", "branch_path", "step_memory_estimate",
           "load_pretrained"]
