"""One MNMEF training step (batch gather, rollout, loss, backward, AdamW), eager or captured.

Modes (`TrainStep(mode=...)`):
  eager          plain PyTorch, one host round trip per step (the CPU default).
  graph          the whole step captured once as a CUDA graph and replayed: no kernel-launch cost, no host
                 synchronisation. On the CPU it runs the same code eagerly after the same warm-up and
                 state restore ("rehearsal"), which is what the CPU tests exercise.
  compile        the per-cycle function (forecast, analysis, error) through torch.compile: its forward
                 and backward become a few fused kernels (inductor; C++ on the CPU, Triton on CUDA).
  compile+graph  both: the fused kernels of all cycles, backward and optimizer in one CUDA graph.

What makes the captured step legal and exact:
  * static buffers: the epoch's (chain, start) windows live on the device; the host writes the batch
    index, the noise key and the learning rate into 0-d device tensors (`fill_`: a kernel launch, no
    sync), and the graph gathers the batch itself;
  * randomness from `noise` (a hash of key and index), so a replay draws fresh numbers per step and a
    resumed run draws what an uninterrupted one would;
  * fused AdamW reading its LR from a device tensor; its `found_inf` input skips the update on the device
    when the loss is non-finite for every trajectory or the gradient is non-finite, so weights never turn
    NaN and the host learns of it at its next read of the stats;
  * warm-up steps (lazy state, cuBLAS handles, compilation) run on the capture stream and are then undone:
    parameters and optimizer state are restored in place, so the first replay is step 1 of the same run;
  * the model's ops are deterministic on CUDA (no atomics in its backward), so replays are reproducible.
Per step the stats (loss, non-finite trajectories, gradient norm, skipped) stay on the device; the
trainer reads them back every `sync_every` steps.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch

from . import noise
from .rollout import DATA_OBS

MODES = ("eager", "graph", "compile", "compile+graph")


def _is_oom(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, (MemoryError, torch.OutOfMemoryError)) or "out of memory" in text or "not enough memory" in text
STATS = ("loss", "nonfinite_trajectories", "grad_norm", "skipped")


def losses_count(truth) -> int:
    """B x (J+1): the loss is the mean of the per-cycle errors over trajectories and cycles. (A non-finite
    trajectory makes the gradient non-finite whatever the mask, so the step is skipped: see found_inf.)"""
    return truth.shape[0] * truth.shape[1]


def make_optimizer(params, lr: float, weight_decay: float, device: torch.device):
    """Fused AdamW (one kernel for all tensors; CPU and CUDA) with the LR in a device tensor.

    capturable=True on CUDA keeps every optimizer scalar on the device (CUDA-graph safe)."""
    lr_t = torch.tensor(float(lr), dtype=torch.float32, device=device)
    return torch.optim.AdamW(params, lr=lr_t, weight_decay=weight_decay, fused=True,
                             capturable=device.type == "cuda")


class TrainStep:
    """Callable training step over fixed-size batches drawn from device-resident training data.

    truth_all (C, T, d), obs_all (C, T, p): the training chains (with `obs_noise_std`, obs_all is h(truth)
    and each step adds its own noise, drawn from the step's key); `set_windows(pairs)` loads one epoch's
    (chain, start) pairs (trajectories, 2); `step(batch, key, lr)` trains on rows
    [batch*B_global + rank*B_local, +B_local) of them and returns the (4,) stats tensor (device).
    """

    def __init__(self, runner, model, opt, truth_all, obs_all, cycles: int, local_batch: int, windows: int,
                 rank: int = 0, world: int = 1, mode: str = "eager", warmup_steps: int = 2,
                 obs_noise_std: float | None = None):
        if mode not in MODES:
            raise ValueError(f"step mode must be one of {MODES}, got {mode!r}")
        self.runner, self.model, self.opt = runner, model, opt
        self.params = [q for g in opt.param_groups for q in g["params"]]
        self.device = truth_all.device
        self.mode, self.cuda = mode, self.device.type == "cuda"
        self.capture = "graph" in mode and self.cuda
        if "graph" in mode and world > 1:
            raise ValueError("graph capture is single-process only (DistributedDataParallel hooks are not captured)")
        self.world = world
        self.truth_all, self.obs_all = truth_all, obs_all
        self.obs_noise_std = obs_noise_std
        dev = self.device
        self.local = int(local_batch)
        self.global_batch = self.local * world
        self.windows = torch.zeros((int(windows), 2), dtype=torch.long, device=dev)
        self.rows = torch.arange(self.local, device=dev) + rank * self.local
        self.steps = torch.arange(cycles + 1, device=dev)
        self.batch_index = torch.zeros((), dtype=torch.long, device=dev)
        self.key = torch.zeros((), dtype=torch.long, device=dev)
        self.lr = opt.param_groups[0]["lr"]
        if not isinstance(self.lr, torch.Tensor):
            raise ValueError("TrainStep needs an optimizer from make_optimizer (LR in a device tensor)")
        self.found_inf = torch.zeros((), dtype=torch.float32, device=dev)
        opt.found_inf = self.found_inf  # fused AdamW reads it (the contract GradScaler uses)
        self.stats = torch.zeros(len(STATS), dtype=torch.float32, device=dev)
        self.graph = None
        self.fallbacks: list[str] = []
        self.warmup_steps = int(warmup_steps)
        if "compile" in mode:
            (runner.module if hasattr(runner, "module") else runner).compile_cycle()
        if self.cuda:
            # cuSOLVER/cuBLAS for the batched LU solve: capturable kernels, no MAGMA (host-side logic)
            torch.backends.cuda.preferred_linalg_library("cusolver")
        self._ready = mode == "eager"

    # -- the step itself -------------------------------------------------------------------------------
    def _body(self):
        sel = self.windows[self.batch_index * self.global_batch + self.rows]  # (B, 2) chain, start
        c = sel[:, :1]
        t = sel[:, 1:] + self.steps
        truth, obs = self.truth_all[c, t], self.obs_all[c, t]
        if self.obs_noise_std is not None:  # obs_all is h(truth): fresh noise for this batch, from its key
            obs = obs + self.obs_noise_std * noise.normal(noise.derive(self.key, DATA_OBS), obs.shape, obs.dtype)
        if self.world == 1:  # gradients accumulated cycle by cycle: one cycle's activations in memory
            losses = self.runner(truth, obs, self.key, backward_scale=1.0 / losses_count(truth))
        else:  # DistributedDataParallel reduces gradients in one backward per forward
            losses = self.runner(truth, obs, self.key)
        ok = torch.isfinite(losses)
        n_ok = ok.sum()
        loss = torch.where(ok, losses, torch.zeros_like(losses)).sum() / n_ok.clamp(min=1)
        if self.world > 1:
            loss.backward()
        grads = [q.grad if q.grad is not None else torch.zeros_like(q) for q in self.params]
        gnorm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        bad = (n_ok == 0) | ~torch.isfinite(gnorm)
        self.found_inf.copy_(bad.to(torch.float32))
        self.opt.step()
        self.stats.copy_(torch.stack([loss.detach(), (losses.numel() - n_ok).to(torch.float32),
                                      gnorm.detach(), bad.to(torch.float32)]))

    def _eager(self):
        self.opt.zero_grad(set_to_none=True)
        self._body()

    # -- warm-up, restore, capture -------------------------------------------------------------------
    def _snapshot(self):
        with torch.no_grad():
            params = [q.detach().clone() for q in self.params]
            state = {i: {k: v.clone() for k, v in self.opt.state[q].items() if isinstance(v, torch.Tensor)}
                     for i, q in enumerate(self.params) if q in self.opt.state}
        return params, state

    def _restore(self, snap):
        """Undo the warm-up steps in place (the captured graph holds these very tensors)."""
        params, state = snap
        with torch.no_grad():
            for i, q in enumerate(self.params):
                q.copy_(params[i])
                st = self.opt.state.get(q, {})
                for k, v in st.items():
                    if isinstance(v, torch.Tensor):
                        # a fresh AdamW state is all zeros (moments and step count)
                        v.copy_(state[i][k]) if i in state else v.zero_()

    def prepare(self):
        """Warm up, restore, and capture (CUDA) — once, after the first `set_windows` and `load`.

        If compiling or capturing fails (an op the compiler or the graph cannot take on this machine), the
        step falls back to the next simpler mode (compile+graph -> graph -> eager) from the same restored
        state and says so in `self.fallbacks`: a long run should not die on a speed-up."""
        if self._ready:
            return
        snap = self._snapshot()
        while True:
            try:
                self._prepare(snap)
                break
            except Exception as exc:  # noqa: BLE001 - any failure of the fast path
                if self.mode == "eager" or _is_oom(exc):
                    raise
                self._restore(snap)
                self.graph = None
                nxt = {"compile+graph": "graph", "compile": "eager", "graph": "eager"}[self.mode]
                self.fallbacks.append(f"{self.mode} failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); using {nxt}")
                if "compile" in self.mode:
                    inner = self.runner.module if hasattr(self.runner, "module") else self.runner
                    inner.cycle = inner._cycle
                self.mode = nxt
                self.capture = "graph" in nxt and self.cuda
        self._ready = True

    def _prepare(self, snap):
        stream = torch.cuda.Stream(self.device) if self.cuda else None
        ctx = torch.cuda.stream(stream) if self.cuda else contextlib.nullcontext()
        if self.cuda:
            stream.wait_stream(torch.cuda.current_stream(self.device))
        with ctx:
            for _ in range(max(1, self.warmup_steps)):
                self._eager()
        if self.cuda:
            torch.cuda.current_stream(self.device).wait_stream(stream)
        self._restore(snap)
        if self.capture:
            self.opt.zero_grad(set_to_none=True)  # backward inside the capture allocates the grads
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=stream):
                self._body()
            self.graph = graph
            # capture recorded the work without running it: parameters are still the restored ones

    # -- driving it ----------------------------------------------------------------------------------
    def set_windows(self, pairs: np.ndarray):
        """Load one epoch's (chain, start) pairs (a host-to-device copy: once per epoch)."""
        if pairs.shape != tuple(self.windows.shape):
            raise ValueError(f"windows must have shape {tuple(self.windows.shape)}, got {pairs.shape}")
        self.windows.copy_(torch.from_numpy(np.ascontiguousarray(pairs, dtype=np.int64)))

    def load(self, batch: int, key: int, lr: float) -> None:
        """Write the next step's batch index, noise key and LR into the device buffers (no sync)."""
        self.batch_index.fill_(int(batch))
        self.key.fill_(int(key))
        self.lr.fill_(float(lr))

    def run(self) -> torch.Tensor:
        """Train on the loaded step; returns the (4,) stats tensor on the device (overwritten next step)."""
        if not self._ready:
            self.prepare()
        if self.graph is not None:
            self.graph.replay()
        else:
            self._eager()  # eager, compile, and the CPU rehearsal of graph capture
        return self.stats

    def step(self, batch: int, key: int, lr: float) -> torch.Tensor:
        self.load(batch, key, lr)
        return self.run()
