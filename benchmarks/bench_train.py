"""MNMEF training-step benchmark: the floor (FLOPs, bytes, kernels per step) and the measured step, eager vs
captured/compiled, on the CPU and on CUDA when present.

    python benchmarks/bench_train.py                       # CPU: batch 64, eager and compile
    python benchmarks/bench_train.py --device cuda         # CUDA: batch 512 (Table C.8), all four modes
    python benchmarks/bench_train.py --modes eager --steps 3 --batch 16   # quick

Floor, from one eager step at the benchmarked size:
  FLOPs  torch.utils.flop_counter (matrix products; elementwise work is not counted, so a lower bound);
  bytes  tensors saved for backward (written once, read once) + fused AdamW's traffic (reads p, g, m, v;
         writes p, m, v) + the batch: a lower bound on device-memory traffic;
  ops    ATen operators dispatched (views excluded): on CUDA each is about one kernel launch in eager and
         in a graph of the eager step; `kernels` (CUDA only) counts what the profiler saw per mode.
Each floor time divides by a rate measured here, now: a large float32 matrix product, a large copy, and
the cost of one tiny op (eager dispatch on the CPU; one kernel inside a replayed CUDA graph on CUDA).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from daviz.mnmef.model import MNMEF, ModelConfig
from daviz.mnmef.rollout import RolloutLoss
from daviz.mnmef.step import TrainStep, make_optimizer
from daviz.mnmef.train import TrainConfig, table_c8, epoch_windows, make_data
from daviz.systems import SYSTEM_NAMES, get_system

FULL_RECIPE_TRAJ_CYCLES = 8192 * 60 * 1000  # Table C.8 pretrain: 8192 windows x 60 cycles x 1000 epochs
PAPER_SECONDS = 4.03 * 3600                  # paper §5.5: 4.03 h per system on one RTX 4080 Super


class OpCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        view = any(r.alias_info is not None and not r.alias_info.is_write for r in func._schema.returns)
        self.n += not view  # a view launches no kernel
        return func(*args, **(kwargs or {}))


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def build(system, N, cycles, batch, dev, mode, feature_dim, seed=0):
    cfg = TrainConfig(system=system, sigma_y=1.0, N=N, trajectories=2 * batch, cycles=cycles, batch_size=batch,
                      chains=min(256, 2 * batch), seed=42, model={"feature_dim": feature_dim}, epochs=1)
    truth, obs = make_data(cfg)
    torch.manual_seed(seed)
    model = MNMEF(get_system(system), 1.0, ModelConfig(feature_dim=feature_dim)).to(dev)
    opt = make_optimizer(list(model.parameters()), table_c8(system)[0], 1e-2, dev)
    st = TrainStep(RolloutLoss(model, N), model, opt, torch.as_tensor(truth, dtype=torch.float32, device=dev),
                   torch.as_tensor(obs, dtype=torch.float32, device=dev), cycles, batch, cfg.trajectories, mode=mode)
    st.set_windows(epoch_windows(cfg, truth.shape[0], 0))
    return st, model


def floor(system, N, cycles, batch, dev, feature_dim) -> dict:
    st, model = build(system, N, cycles, batch, dev, "eager", feature_dim)
    st.load(0, 1, 1e-3)
    st.run()  # lazy state out of the way
    saved = [0]

    def pack(t):
        saved[0] += t.numel() * t.element_size()
        return t

    counter, flops = OpCounter(), FlopCounterMode(display=False)
    st.load(1, 2, 1e-3)
    with flops, counter, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        st.run()
    sync(dev)
    P = sum(q.numel() for q in model.parameters())
    batch_bytes = batch * (cycles + 1) * (model.system.dim + model.system.obs_dim) * 4
    return {"flops": flops.get_total_flops(), "bytes": 2 * saved[0] + 7 * 4 * P + batch_bytes, "ops": counter.n,
            "params": P}


def rates(dev) -> dict:
    """Ceilings measured now: float32 matmul FLOP/s, copy bytes/s (read + write), seconds per tiny op."""
    n = 4096 if dev.type == "cuda" else 512
    a, b = torch.randn(n, n, device=dev), torch.randn(n, n, device=dev)
    for _ in range(2):
        a @ b
    sync(dev)
    reps = 20 if dev.type == "cuda" else 3
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(dev)
    flops = 2 * n**3 * reps / (time.perf_counter() - t)
    x = torch.randn(64 * 2**20 if dev.type == "cuda" else 8 * 2**20, device=dev)
    y = torch.empty_like(x)
    y.copy_(x)
    sync(dev)
    t = time.perf_counter()
    for _ in range(reps):
        y.copy_(x)
    sync(dev)
    bw = 2 * x.numel() * 4 * reps / (time.perf_counter() - t)
    small = torch.zeros(64, device=dev)
    k = 2000
    if dev.type == "cuda":
        g = torch.cuda.CUDAGraph()
        s = torch.cuda.Stream(dev)
        s.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(s):
            small.add_(1)
        torch.cuda.current_stream(dev).wait_stream(s)
        with torch.cuda.graph(g, stream=s):
            for _ in range(k):
                small.add_(1)
        g.replay()
        sync(dev)
        t = time.perf_counter()
        g.replay()
        sync(dev)
    else:
        t = time.perf_counter()
        for _ in range(k):
            small.add_(1)
    per_op = (time.perf_counter() - t) / k
    return {"matmul_flops": flops, "copy_bytes": bw, "seconds_per_op": per_op}


def kernels_per_step(st, dev) -> int | None:
    if dev.type != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile
    st.load(0, 7, 1e-3)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        st.run()
        sync(dev)
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)


def time_mode(system, N, cycles, batch, dev, mode, steps, feature_dim) -> dict:
    st, _ = build(system, N, cycles, batch, dev, mode, feature_dim)
    t = time.perf_counter()
    st.load(0, 1, 1e-3)
    st.prepare()
    sync(dev)
    setup = time.perf_counter() - t
    st.run()  # first real step (also the first graph replay)
    sync(dev)
    times = []
    for i in range(steps):
        st.load(i % 2, 100 + i, 1e-3)
        sync(dev)
        t = time.perf_counter()
        stats = st.run()
        sync(dev)
        times.append(time.perf_counter() - t)
    loss = float(stats[0])
    if mode == "compile+graph" or mode == "graph":  # back-to-back replays, no sync in between: the real loop
        t = time.perf_counter()
        for i in range(steps):
            st.load(i % 2, 200 + i, 1e-3)
            st.run()
        sync(dev)
        pipelined = (time.perf_counter() - t) / steps
    else:
        pipelined = None
    return {"setup_s": setup, "step_s": float(np.median(times)), "pipelined_s": pipelined, "loss": loss,
            "kernels": kernels_per_step(st, dev) if "graph" not in mode else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--system", default="l96", choices=SYSTEM_NAMES)
    ap.add_argument("--batch", type=int, help="default: Table C.8's batch on CUDA, 64 on the CPU")
    ap.add_argument("--N", type=int, default=10)
    ap.add_argument("--cycles", type=int, default=60)
    ap.add_argument("--feature-dim", type=int, default=64)
    ap.add_argument("--modes", help="comma list (default: eager,compile on CPU; all four on CUDA)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per mode")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tf32", action="store_true", help="CUDA: allow TF32 matrix products (reports the loss too)")
    ap.add_argument("--floor-table", action="store_true",
                    help="only the floor of all three systems at the Table C.8 batch (counted at batch 8, scaled)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.floor_table:
        print(f"{'system':6} {'batch':>5} {'params':>8} {'GFLOP/step':>10} {'GB/step':>8} {'ops/step':>9}")
        for system in ("l96", "ks", "l63"):
            f = floor(system, a.N, a.cycles, 8, torch.device("cpu"), a.feature_dim)
            B = table_c8(system)[1]
            print(f"{system:6} {B:>5} {f['params']:>8,} {f['flops'] * B / 8 / 1e9:>10.1f} {f['bytes'] * B / 8 / 1e9:>8.1f} {f['ops']:>9,}")
        return
    dev = torch.device(a.device)
    if a.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
    batch = a.batch or (table_c8(a.system)[1] if dev.type == "cuda" else 64)
    modes = (a.modes or ("eager,graph,compile,compile+graph" if dev.type == "cuda" else "eager,compile")).split(",")
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {a.threads} thread(s)"
    print(f"{a.system} N={a.N} batch {batch} x {a.cycles} cycles, f_v={a.feature_dim}, {where}, torch {torch.__version__}"
          f"{', TF32 on' if a.tf32 else ''}", flush=True)

    fl = floor(a.system, a.N, a.cycles, batch, dev, a.feature_dim)
    rt = rates(dev)
    t_flop, t_byte, t_ops = fl["flops"] / rt["matmul_flops"], fl["bytes"] / rt["copy_bytes"], fl["ops"] * rt["seconds_per_op"]
    rows = [
        ("parameters", f"{fl['params']:,}", ""),
        ("FLOPs per step (matrix products)", f"{fl['flops'] / 1e9:,.2f} GFLOP", f"-> {1e3 * t_flop:,.2f} ms at {rt['matmul_flops'] / 1e12:.2f} TFLOP/s measured"),
        ("bytes per step (lower bound)", f"{fl['bytes'] / 1e9:,.2f} GB", f"-> {1e3 * t_byte:,.2f} ms at {rt['copy_bytes'] / 1e9:,.0f} GB/s measured"),
        ("ATen ops per step (~kernels eager)", f"{fl['ops']:,}", f"-> {1e3 * t_ops:,.1f} ms at {1e6 * rt['seconds_per_op']:.2f} us/op "
                                                                f"({'graph replay' if dev.type == 'cuda' else 'eager dispatch'})"),
    ]
    traj_cycles = batch * a.cycles
    for mode in modes:
        r = time_mode(a.system, a.N, a.cycles, batch, dev, mode.strip(), a.steps, a.feature_dim)
        s = r["pipelined_s"] or r["step_s"]
        rate = traj_cycles / s
        full = FULL_RECIPE_TRAJ_CYCLES / rate
        rows.append((f"step [{mode}]", f"{1e3 * s:,.1f} ms/step",
                     f"{rate:,.0f} traj-cycles/s; full C.8 pretrain {full / 60:,.1f} min ({PAPER_SECONDS / full:,.2f}x the paper's 4.03 h);"
                     f" setup {r['setup_s']:.1f} s; loss {r['loss']:.5f}"
                     + (f"; {r['kernels']:,} kernels" if r["kernels"] else "")
                     + (f"; synced step {1e3 * r['step_s']:.1f} ms" if r["pipelined_s"] else "")))
    w = max(len(r[0]) for r in rows)
    print(f"{'benchmark':{w}}  {'value':>20}  note")
    print("-" * (w + 80))
    for name, value, note in rows:
        print(f"{name:{w}}  {value:>20}  {note}")


if __name__ == "__main__":
    main()
