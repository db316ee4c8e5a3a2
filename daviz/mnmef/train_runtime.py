"""Where and how a training run executes: device, processes (torchrun), step mode, memory, stop signals."""
from __future__ import annotations

import os
import threading

import torch
import torch.distributed as dist

from ..systems import get_system
from .model import ModelConfig
from .step import MODES
from .train_config import TrainConfig
from .train_data import MAX_OFFSET


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


class Stop:
    """Set by SIGTERM/SIGINT; the loop checkpoints at the next batch boundary and exits."""

    def __init__(self):
        self.flag = False

    def __call__(self, *_):
        self.flag = True


def distributed():
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def pick_device(device: str | None, rank: int) -> torch.device:
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



def main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()
