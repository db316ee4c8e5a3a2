"""`daviz simulate`: truth and observations of test trajectories, written to one .npz file."""
from __future__ import annotations

import numpy as np

from ..artifacts import atomic_write, check_writable
from ..experiment import TwinExperiment, available_memory
from ..systems import get_system


def cmd_simulate(args) -> None:
    check_writable(args.out, "--out")
    system = get_system(args.system)
    # truth (cycles+1) and observations (cycles) per trajectory, float64, twice over while stacking
    need = 2 * 8 * args.trajectories * ((args.cycles + 1) * system.dim + args.cycles * system.obs_dim)
    limit = available_memory()
    if need > limit:
        raise ValueError(f"{args.trajectories} trajectories x {args.cycles} cycles need about {need / 2**30:.3g} GiB, "
                         f"more than the {limit / 2**30:.3g} GiB available (limit: DAVIZ_MAX_MEMORY_GB, else the "
                         "free memory); ask for fewer")
    exp = TwinExperiment(system, args.sigma_y, 2, {}, trajectories=args.trajectories, seed=args.seed)
    truth, obs = [exp.truth], []
    for _ in range(args.cycles):
        exp.step()
        truth.append(exp.truth)
        obs.append(exp.observation)
    truth, obs = np.stack(truth), np.stack(obs)

    def write(tmp):
        with open(tmp, "wb") as fh:  # a file object: numpy would otherwise append ".npz" to other names
            np.savez_compressed(fh, truth=truth, observations=obs, obs_idx=system.obs_idx,
                                dt_obs=system.dt_obs, sigma_y=args.sigma_y)

    atomic_write(args.out, write)
    print(f"wrote {args.out}: truth {truth.shape} (cycle, trajectory, d), observations {obs.shape}")
