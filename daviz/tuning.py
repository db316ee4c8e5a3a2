"""Grid search of inflation × localization radius for the baselines, and the shipped tuned tables.

A sweep runs every grid point in one batch: the twin experiment repeats the same truth,
observations and initial ensemble once per grid point (`replicas`), and each copy gets its own
inflation and radius. The grid is split over worker processes to use all cores. Trajectories come
from the "tune" random streams, disjoint from the test trajectories that `evaluate` uses.

Tables live in daviz/tuned/<system>_<filter>.json: {sigma_y: {N: {inflation, radius, rrmse, ...}}}.
"""
from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from itertools import product
from pathlib import Path

import numpy as np

from .experiment import TwinExperiment
from .filters import FILTER_CLASSES, make_filter
from .systems import get_system

TUNED_DIR = Path(__file__).parent / "tuned"

# Default grids: wide enough to contain the paper's optima (L96 LETKF radii 1..6 for N=5..100).
INFLATION_GRID = (1.0, 1.02, 1.05, 1.1, 1.15, 1.2, 1.3, 1.45)
RADIUS_GRID = {"l96": (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0), "ks": (1.0, 2.0, 4.0, 6.0, 8.0, 12.0, 16.0)}
FALLBACK = {"inflation": 1.05, "radius": {"l96": 3.0, "ks": 4.0}}


def grid_for(system_name: str, filter_name: str, inflations=None, radii=None) -> list[tuple[float, float | None]]:
    """(inflation, radius) points; radius None where the filter or the system does not localize."""
    inflations = tuple(inflations or INFLATION_GRID)
    localizes = FILTER_CLASSES[filter_name].localizes and get_system(system_name).periodic
    if not localizes:
        return [(a, None) for a in inflations]
    return list(product(inflations, tuple(radii or RADIUS_GRID[system_name])))


def _score_chunk(args) -> np.ndarray:
    system_name, filter_name, N, sigma_y, points, trajectories, cycles, seed = args
    n = len(points)
    inflation = np.repeat([p[0] for p in points], trajectories)
    radius = None if points[0][1] is None else np.repeat([p[1] for p in points], trajectories)
    f = make_filter(filter_name, system_name, sigma_y, inflation=inflation, radius=radius)
    exp = TwinExperiment(system_name, sigma_y, N, {filter_name: f}, trajectories=trajectories,
                         seed=seed, purpose="tune", replicas=n)
    values = exp.run(cycles)[filter_name].reshape(n, trajectories)
    # A grid point on which any trajectory diverged is disqualified.
    return np.where(np.isfinite(values).all(axis=1), values.mean(axis=1), np.inf)


def sweep(system_name: str, filter_name: str, N: int, sigma_y: float, trajectories: int = 16,
          cycles: int = 500, seed: int = 0, workers: int | None = None, points=None) -> dict:
    """Score every grid point; returns {'points', 'scores', 'best'}."""
    points = points or grid_for(system_name, filter_name)
    workers = max(1, min(workers or os.cpu_count() or 1, len(points)))
    chunks = [points[i::workers] for i in range(workers)]
    jobs = [(system_name, filter_name, N, sigma_y, c, trajectories, cycles, seed) for c in chunks]
    if workers == 1:
        results = [_score_chunk(jobs[0])]
    else:
        with ProcessPoolExecutor(workers) as pool:
            results = list(pool.map(_score_chunk, jobs))
    scores = np.empty(len(points))
    for i, r in enumerate(results):
        scores[i::workers] = r
    best = int(np.argmin(scores))
    return {"points": points, "scores": scores, "best": points[best], "best_score": float(scores[best])}


def table_path(system_name: str, filter_name: str, directory: Path = TUNED_DIR) -> Path:
    return Path(directory) / f"{system_name}_{filter_name}.json"


def is_tuned(system_name, filter_name, N, sigma_y, directory: Path = TUNED_DIR) -> bool:
    path = table_path(system_name, filter_name, directory)
    return path.exists() and str(int(N)) in json.loads(path.read_text()).get(f"{float(sigma_y)}", {})


def save_tuned(system_name, filter_name, N, sigma_y, inflation, radius, rrmse, meta: dict,
               directory: Path = TUNED_DIR) -> Path:
    path = table_path(system_name, filter_name, directory)
    table = json.loads(path.read_text()) if path.exists() else {}
    table.setdefault(f"{float(sigma_y)}", {})[str(int(N))] = {
        "inflation": float(inflation), "radius": None if radius is None else float(radius),
        "rrmse": float(rrmse), **meta,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(table, indent=1, sort_keys=True))
    return path


def tuned_params(system_name: str, filter_name: str, N: int, sigma_y: float, directory: Path = TUNED_DIR) -> dict:
    """Tuned {inflation, radius, source} for the nearest shipped σ_y and N (log-distance in N).

    Falls back to a moderate default when nothing is shipped for this system and filter.
    """
    system = get_system(system_name)
    localizes = filter_name in FILTER_CLASSES and FILTER_CLASSES[filter_name].localizes and system.periodic
    path = table_path(system_name, filter_name, directory)
    if path.exists():
        table = json.loads(path.read_text())
        if table:
            s_key = min(table, key=lambda s: abs(float(s) - sigma_y))
            n_key = min(table[s_key], key=lambda n: abs(np.log(int(n) / N)))
            entry = table[s_key][n_key]
            return {"inflation": entry["inflation"], "radius": entry["radius"] if localizes else None,
                    "source": f"tuned at N={n_key}, sigma_y={s_key}"}
    return {"inflation": FALLBACK["inflation"] if system_name != "linear" else 1.0,
            "radius": FALLBACK["radius"].get(system_name) if localizes else None, "source": "default (not tuned)"}
