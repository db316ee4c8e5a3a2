"""MNMEF benchmark: one analysis step (L96, B=1, N=20, CPU, 1 thread; target ≤ 5 ms) and training
throughput (trajectory-cycles/s) on the current device with the projected full-recipe time (Table C.8).

    python benchmarks/bench_mnmef.py [--device cpu|cuda] [--batch 64] [--threads 1]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from daviz.filters.enkf import EnKF
from daviz.mnmef.filter import MNMEFFilter
from daviz.mnmef.model import MNMEF, ModelConfig, parameter_counts
from daviz.mnmef.rollout import masked_mean, rollout_loss
from daviz.systems import get_system


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=64, help="training batch for the throughput figure")
    ap.add_argument("--cycles", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    system = get_system("l96")
    rows = []

    rng = np.random.default_rng(0)
    x = system.initial_truth(rng, 1)
    E = x[:, None, :] + rng.standard_normal((1, 20, system.dim))
    y = system.observe(x) + rng.standard_normal((1, system.obs_dim))
    for fdim in (64, 128):
        torch.manual_seed(0)
        f = MNMEFFilter(MNMEF(system, 1.0, ModelConfig(feature_dim=fdim)), device="cpu")
        ms = median_ms(lambda: f.analysis(E, y, rng), 200)
        rows.append((f"analysis L96 B=1 N=20 CPU {a.threads} thread, f_v={fdim}", f"{ms:.2f} ms", "target <= 5 ms"))
    enkf = EnKF(system, 1.0)
    rows.append(("  (EnKF analysis, same input, numpy)", f"{median_ms(lambda: enkf.analysis(E, y, rng), 200):.2f} ms", ""))

    dev = torch.device(a.device)
    torch.manual_seed(0)
    model = MNMEF(system, 1.0).to(dev)
    truth = torch.as_tensor(system.initial_truth(rng, a.batch), dtype=torch.float32, device=dev)
    tr = [truth]
    for _ in range(a.cycles):
        tr.append(system.step(tr[-1]))
    truth = torch.stack(tr, 1)
    obs = truth[..., system.obs_idx] + torch.randn_like(truth[..., system.obs_idx])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)

    def step(N):
        loss = masked_mean(rollout_loss(model, truth, obs, N))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()

    for N in (10, 20):
        ms = median_ms(lambda: step(N), 3)
        rate = a.batch * a.cycles / (ms / 1e3)
        rows.append((f"training step, batch {a.batch} x {a.cycles} cycles, N={N}, {dev}", f"{rate:,.0f} traj-cycles/s", ""))
        if N == 10:
            full = 8192 * 60 * 1000 / rate
            rows.append(("  projected full pretrain (8192 x 60 x 1000 epochs)", f"{full / 3600:,.1f} h", "paper: 4.03 h on RTX 4080S"))
        else:
            ft = 4096 * 60 * 20 / rate  # heads-only backward is cheaper: this is an upper bound
            rows.append(("  projected fine-tune N=20 (4096 x 60 x 20 epochs)", f"<= {ft / 60:,.1f} min", "paper: 0.051 h"))
    c = parameter_counts(model)
    rows.append(("parameters L96 (f_v=64 default)", f"{c['total']:,} total / {c['heads']:,} heads", ""))
    c = parameter_counts(MNMEF(system, 1.0, ModelConfig(feature_dim=128)))
    rows.append(("parameters L96 (f_v=128, authors' code)", f"{c['total']:,} total / {c['heads']:,} heads", "Table 5: 341,551 / 63,343"))

    w = max(len(r[0]) for r in rows)
    print(f"{'benchmark':{w}}  {'value':>28}  note")
    print("-" * (w + 45))
    for name, value, note in rows:
        print(f"{name:{w}}  {value:>28}  {note}")


if __name__ == "__main__":
    main()
