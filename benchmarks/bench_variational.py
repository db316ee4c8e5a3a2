"""Time per window of 4D-Var (both linearizations), NIDA and the hybrid, at B=1 (the explorer) and B=64 (evaluate).

    python benchmarks/bench_variational.py [--systems l63,l96] [--repeats 5]

One torch/BLAS thread. Windows are test-stream truths with the system's own observation pattern and a background
error of 0.2 x climatological std; each figure is the median over `repeats` solves of the same windows (after one
warm-up solve). NIDA rows need the shipped weights (skipped otherwise).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from daviz.systems import get_system  # noqa: E402
from daviz.variational import HYBRID_OUTER, nida_io  # noqa: E402
from daviz.variational.filter import FourDVar, NIDAFilter, NIDAHybrid  # noqa: E402
from daviz.variational.nida_train import WindowSampler  # noqa: E402
from daviz.variational.tuned import fourdvar_params  # noqa: E402


def median_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--systems", default="l63,l96")
    p.add_argument("--batches", default="1,64")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(1)
    print(f"{'system':6} {'method':28} {'L':>2} {'B':>3} {'ms/window-batch':>16} {'ms/trajectory':>14}")
    for name in args.systems.split(","):
        system = get_system(name)
        tuned = fourdvar_params(name, 1.0)
        tuned.pop("source")
        try:
            model, _ = nida_io.load_pretrained(name, 1.0)
        except nida_io.CheckpointError:
            model = None
        windows = sorted({tuned["window"]} | ({model.config.window} if model is not None else set()))
        for L in windows:
            methods = {
                "4D-Var (jacobian)": FourDVar(system, 1.0, **{**tuned, "window": L}),
                "4D-Var (tangent, matrix-free)": FourDVar(system, 1.0, **{**tuned, "window": L,
                                                                           "linearization": "tangent"}),
            }
            if model is not None and model.config.window == L:
                methods["NIDA"] = NIDAFilter(model)
                methods[f"NIDA + 4D-Var ({HYBRID_OUTER} outer)"] = NIDAHybrid(
                    model, FourDVar(system, 1.0, **{**tuned, "window": L, "outer": HYBRID_OUTER}))
            for B in (int(b) for b in args.batches.split(",")):
                batch = WindowSampler(system, 1.0, L, B, seed=0, purpose="test", pattern="own",
                                      a_range=(0.2, 0.2)).draw()
                Y = batch["Y"][:, 1:]
                for label, f in methods.items():
                    state = f.state_from(batch["xb"])
                    seconds = median_time(lambda: f.solve_window(state, Y), args.repeats)
                    print(f"{name:6} {label:28} {L:>2} {B:>3} {1e3 * seconds:>16.1f} {1e3 * seconds / B:>14.2f}",
                          flush=True)


if __name__ == "__main__":
    main()
