"""Successive halving of inflation × localization radius (or EnSF's settings) for the numpy baselines.

`successive_halving` scores every grid point on short runs, keeps the best third for longer runs,
adds a finer grid around the optimum (inflation steps of 0.01–0.02, radii half-way between the coarse
values) and runs the last six points on the final budget: 16 trajectories as long as the test ones (the
system's `test_cycles`: 1500, KS 2000), because a setting that loses track once in a few thousand cycles
looks best on short runs (L96 σ_y=0.7, N=20: three finalists on 16 × 1000 chose (1.12, 5.0), 0.273 with
5/64 lost on 64 × 1500 tuning trajectories; six on 16 × 1500 choose (1.10, 4.0), 0.254 with none lost).
Each round draws fresh trajectories from the "tune" random streams (disjoint from the "test" streams
that `evaluate` uses), so the final score of the chosen point is not inflated by the selection.

Within a round all points run in one batch: the twin experiment repeats the same truth, observations
and initial ensemble once per point (`replicas`), and each copy gets its own inflation and radius.
Points are ranked by daviz.tuning.scoring; `tune_many` (`daviz tune`) writes each result to the tables.

Where it runs never changes a result. The batches of a round are canonical (`CHUNKS`, not the number of
workers): a stochastic filter (EnKF, EnSF) draws its noise for the whole batch from its one named stream,
so another split of the points would give other draws. `tune_many` runs the table entries, each a whole
successive halving, as tasks on a Dask cluster (daviz.parallel) and saves each as it arrives.
"""
from __future__ import annotations

import math
import resource
import time
from itertools import product
from pathlib import Path

import numpy as np

from ..experiment import LOST_TRACK_WINDOW, TwinExperiment
from ..filters import FILTER_CLASSES, filter_localizes, make_filter
from ..parallel import run_tasks, runs_here
from ..systems import get_system
from .scoring import assess, lost_track_level, ranking
from .tables import METHOD, TUNED_DIR, is_current, is_untunable, save_tuned, save_untunable

# Default grids: wide enough to contain the paper's optima (L96 LETKF radii 1..6 for N=5..100).
INFLATION_GRID = (1.0, 1.02, 1.05, 1.1, 1.15, 1.2, 1.3, 1.45)
# Radii: each system's `radius_grid`; where nothing is tuned, its `fallback_inflation`/`fallback_radius`.

# Successive-halving defaults: (trajectories, cycles) of the rounds before the final one; the first runs
# every coarse grid point, each next one the best 1/KEEP of the previous, and the finer grid joins the last.
DEFAULT_ROUNDS = ((2, 200), (4, 300), (4, 500))
DEFAULT_FINAL = (16, None)  # None: the system's test length
DEFAULT_KEEP = 3.0
DEFAULT_FINALISTS = 6
# Batches a round's points are split into (points[i::CHUNKS]). One: every table scripts/tune_all.sh made
# was tuned so (its --workers 1), and `daviz tune --workers K` reproduces them whatever K. (The EnSF tables
# came from the old default, one batch per core: two on the 2-core machine that tuned them.)
CHUNKS = 1


def grid_for(system_name: str, filter_name: str, inflations=None, radii=None, grid=None) -> list[tuple]:
    """(inflation, radius) points; radius None where the filter or the system does not localize.

    A filter class with a `tune_grid` ({setting: values}, e.g. EnSF's kernel) gets (inflation, settings)
    points instead, settings a tuple of (name, value) pairs over the product of `grid` (default tune_grid).
    """
    inflations = tuple(inflations or INFLATION_GRID)
    settings = getattr(FILTER_CLASSES[filter_name], "tune_grid", None)
    if settings is not None:  # filter-specific settings (EnSF): points (inflation, ((name, value), ...))
        settings = dict(settings if grid is None else grid)
        names = sorted(settings)
        return list(product(inflations, [tuple(zip(names, v)) for v in product(*(settings[n] for n in names))]))
    if not filter_localizes(filter_name, get_system(system_name)):
        return [(a, None) for a in inflations]
    return list(product(inflations, tuple(radii or get_system(system_name).radius_grid)))


def parse_rounds(text: str | None) -> tuple[tuple[int, int], ...] | None:
    """'2x200,4x400' -> ((2, 200), (4, 400)); None stays None (the default schedule)."""
    if text is None:
        return None
    rounds = []
    for item in text.split(","):
        try:
            t, c = (int(v) for v in item.strip().lower().split("x"))
        except ValueError:
            raise ValueError(f"rounds must look like 2x200,4x400 (trajectories x cycles), got {text!r}") from None
        if t < 1 or c < 1:
            raise ValueError(f"rounds need at least 1 trajectory and 1 cycle, got {item!r}")
        rounds.append((t, c))
    if not rounds:
        raise ValueError(f"no rounds in {text!r}")
    return tuple(rounds)


def _values_batch(system_name: str, filter_name: str, N: int, sigma_y: float, points, trajectories: int,
                  cycles: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """R-RMSEs and lost-window flags (n_points, trajectories) of one batch of points: one twin experiment."""
    n = len(points)
    inflation = np.repeat([p[0] for p in points], trajectories)
    radius = None if points[0][1] is None else np.repeat([p[1] for p in points], trajectories)
    settings = {}
    if isinstance(points[0][1], tuple):  # (name, value) pairs: one value per batch element of each setting
        settings = {name: np.repeat([dict(p[1])[name] for p in points], trajectories) for name, _ in points[0][1]}
        radius = None
    f = make_filter(filter_name, system_name, sigma_y, inflation=inflation, radius=radius, **settings)
    exp = TwinExperiment(system_name, sigma_y, N, {filter_name: f}, trajectories=trajectories,
                         seed=seed, purpose="tune", replicas=n)
    values = exp.run(cycles)[filter_name].reshape(n, trajectories)
    return values, exp.lost_track(filter_name, ever=True).reshape(n, trajectories)


def evaluate_points(system_name: str, filter_name: str, N: int, sigma_y: float, points, trajectories: int,
                    cycles: int, seed: int = 0, workers: int | None = 1, lost_windows: bool = False,
                    chunks: int = CHUNKS, scheduler: str | None = None):
    """Per-trajectory R-RMSE (n_points, trajectories) on tuning trajectories; NaN where diverged.
    With lost_windows, also (n_points, trajectories) bool: lost track in some window of LOST_TRACK_WINDOW cycles.

    Every point sees the same trajectories, observations and initial ensembles (common random numbers).
    The points run in `chunks` batches (points[i::chunks], one twin experiment each), on `workers` local
    processes or the cluster at `scheduler` (daviz.parallel); the numbers depend on `chunks`, never on where
    the batches run.
    """
    points = list(points)
    chunks = max(1, min(int(chunks), len(points)))
    jobs = [(system_name, filter_name, N, sigma_y, points[i::chunks], trajectories, cycles, seed)
            for i in range(chunks)]
    results = run_tasks(_values_batch, jobs, workers, scheduler)
    values = np.empty((len(points), trajectories))
    lost = np.zeros((len(points), trajectories), dtype=bool)
    for i, (v, w) in enumerate(results):
        values[i::chunks], lost[i::chunks] = v, w
    return (values, lost) if lost_windows else values


def sweep(system_name: str, filter_name: str, N: int, sigma_y: float, trajectories: int = 16,
          cycles: int = 500, seed: int = 0, workers: int | None = None, points=None) -> dict:
    """Score every grid point once (no halving); returns {'points', 'scores', 'values', 'best', 'best_score'}.

    A score is the mean R-RMSE over the trajectories, inf where any trajectory diverged. The points run as
    `evaluate_points` runs them (one batch, here unless `workers` or a cluster is given).
    """
    points = points or grid_for(system_name, filter_name)
    values = evaluate_points(system_name, filter_name, N, sigma_y, points, trajectories, cycles, seed, workers)
    scores = np.where(np.isfinite(values).all(axis=1), values.mean(axis=1), np.inf)
    best = int(np.argmin(scores))
    return {"points": points, "scores": scores, "values": values, "best": points[best],
            "best_score": float(scores[best])}


def refined_points(center: tuple[float, float | None], inflations, radii) -> list[tuple[float, float | None]]:
    """A finer grid around `center`: inflation ± 1, 2 steps of 0.01 (below 1.1) or 0.02 (from 1.1 on), never
    below 1; radii half-way to the neighbouring coarse radii (×0.75 / ×1.5 past the ends of the grid)."""
    infl, rad = center
    step = 0.01 if infl < 1.1 - 1e-9 else 0.02
    infls = sorted({round(infl + k * step, 4) for k in (-2, -1, 0, 1, 2) if infl + k * step >= 1.0 - 1e-12})
    if rad is None or isinstance(rad, tuple):  # no radius, or filter settings: refine the inflation only
        return [(a, rad) for a in infls]
    grid = sorted(set(radii) | {rad})
    i = grid.index(rad)
    lo = (grid[i - 1] + rad) / 2 if i > 0 else 0.75 * rad
    hi = (grid[i + 1] + rad) / 2 if i + 1 < len(grid) else 1.5 * rad
    return list(product(infls, [round(lo, 4), rad, round(hi, 4)]))


def _cpu_seconds() -> float:
    """CPU seconds of this process (a halving starts no processes; a worker runs one task at a time)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime


def final_budget(system_name: str, final=None) -> tuple[int, int]:
    """(trajectories, cycles) of the final round; cycles None (or absent) means the system's test length."""
    t, c = tuple(final or DEFAULT_FINAL)
    return (int(t or DEFAULT_FINAL[0]), int(c or get_system(system_name).test_cycles))


def successive_halving(system_name: str, filter_name: str, N: int, sigma_y: float, points=None, rounds=None,
                       final=None, keep: float | None = None, finalists: int | None = None, refine: bool = True,
                       seed: int = 0, workers: int | None = 1, log=print, evaluate=None, chunks: int = CHUNKS,
                       scheduler: str | None = None) -> dict:
    """Tune (inflation, radius) for one (system, filter, N, sigma_y).

    Round 1 runs every point of `points` (default: the coarse grid) with the budget rounds[0]
    (trajectories, cycles); each later round runs the best 1/keep of the previous one (at least
    `finalists`) with the next budget; the finer grid around the previous round's best joins the last of
    these rounds (an extra round at that budget when there is only one). The final round runs the best
    `finalists` with the budget `final`; should every finalist diverge, the next-ranked candidates that did
    not diverge are tried. Points that diverge are dropped at once. Round r uses the tuning seed
    100·seed + r, so every round sees fresh trajectories.

    Each round's points run in `chunks` batches on `workers` processes or at `scheduler` (`evaluate_points`).
    `evaluate(points, trajectories, cycles, seed) -> (n_points, trajectories)` R-RMSEs, or a pair (R-RMSEs,
    lost-window flags), replaces the twin experiment (tests). Returns a dict with 'status' ('ok' or
    'diverged'), 'best', 'rrmse', 'lost', 'diverged', 'rounds' (the budget of each round), 'grid_points',
    'trajectory_cycles', 'cpu_seconds', 'seconds'.
    """
    rounds = tuple(rounds or DEFAULT_ROUNDS)
    final = final_budget(system_name, final)
    keep = float(keep or DEFAULT_KEEP)
    finalists = int(finalists or DEFAULT_FINALISTS)
    if keep <= 1 or finalists < 1:
        raise ValueError(f"need keep > 1 and finalists >= 1, got {keep}, {finalists}")
    points = list(points or grid_for(system_name, filter_name))
    coarse_infl = sorted({p[0] for p in points})
    coarse_rad = sorted({p[1] for p in points if p[1] is not None})
    if evaluate is None:
        def evaluate(pts, t, c, s):
            return evaluate_points(system_name, filter_name, N, sigma_y, pts, t, c, s, workers, lost_windows=True,
                                   chunks=chunks, scheduler=scheduler)
    level = np.inf if system_name == "linear" else lost_track_level(system_name)  # linear: no attractor
    label = f"{system_name} {filter_name} N={N} sigma_y={sigma_y}"
    cpu0, wall0 = _cpu_seconds(), time.perf_counter()
    schedule = list(rounds)
    if refine and len(schedule) == 1:
        schedule.append(schedule[0])
    refine_at = len(schedule) - 1 if refine else None
    record, seen = [], set()
    candidates = points
    previous: list = []  # (point, diverged) of the previous round, best first

    def run_round(r, pts, budget, kind):
        t, c = budget
        cpu = _cpu_seconds()
        out = evaluate(pts, t, c, 100 * seed + r)
        values, lost_windows = out if isinstance(out, tuple) else (out, None)
        a = assess(values, level, None if level == np.inf else lost_windows)
        order = ranking(a)
        seen.update(pts)
        record.append({"round": kind, "points": len(pts), "trajectories": t, "cycles": c, "seed": 100 * seed + r})
        b = order[0]
        log(f"{label} round {r + 1} ({kind}): {len(pts)} points x {t} traj x {c} cycles, best {pts[b]} "
            f"R-RMSE {a['mean'][b]:.4f} (lost {a['lost'][b]}, diverged {a['diverged'][b]}); "
            f"{int((a['diverged'] > 0).sum())} points diverged [{_cpu_seconds() - cpu:.1f} CPU s, "
            f"{_cpu_seconds() - cpu0:.1f} in all]", flush=True)
        return [(pts[i], {k: a[k][i] for k in a}) for i in order]

    for r, budget in enumerate(schedule):
        if r > 0:
            alive = [p for p, a in previous if a["diverged"] == 0]
            if not alive:
                break
            candidates = alive[:max(finalists, math.ceil(len(previous) / keep))]
            if r == refine_at:
                extra = [p for p in refined_points(alive[0], coarse_infl, coarse_rad) if p not in seen]
                candidates = candidates + [p for p in extra if p not in candidates]
        previous = run_round(r, candidates, budget, "refine" if r == refine_at else ("all" if r == 0 else "halving"))
    result = {"status": "diverged", "best": None, "rrmse": float("nan"), "lost": None, "diverged": None}
    alive = [p for p, a in previous if a["diverged"] == 0]
    r = len(schedule)
    for attempt in range(3):
        if not alive:
            break
        batch, alive = alive[:finalists], alive[finalists:]
        ranked = run_round(r + attempt, batch, final, "final")
        point, a = ranked[0]
        if a["diverged"] == 0:
            result = {"status": "ok", "best": point, "rrmse": float(a["mean"]), "lost": int(a["lost"]),
                      "diverged": 0}
            break
    if result["status"] == "diverged":
        log(f"{label}: every candidate diverged on some trajectory", flush=True)
    result.update(
        rounds=record, grid_points=len(seen), lost_level=round(float(level), 4),
        trajectory_cycles=int(sum(x["points"] * x["trajectories"] * x["cycles"] for x in record)),
        cpu_seconds=round(_cpu_seconds() - cpu0, 1), seconds=round(time.perf_counter() - wall0, 1),
    )
    return result


def tune_many(system_name: str, filter_name: str, Ns, sigma_ys, rounds=None, final=None, keep=None, finalists=None,
              refine: bool = True, inflations=None, radii=None, seed: int = 0, workers: int | None = 1,
              dry_run: bool = False, skip_existing: bool = False, directory: Path = TUNED_DIR, log=print,
              grid=None, scheduler: str | None = None) -> list[dict]:
    """`daviz tune`: successive halving for each (sigma_y, N); each result is written to the table as it
    comes (so a cut-off run resumes with skip_existing), with its budget and CPU time in the entry.

    The entries are tasks (daviz.parallel): here one after the other, logging each round as it ends, or on
    `workers` local processes / the cluster at `scheduler`, each entry's log printed when it arrives. An
    entry is the same wherever it runs (canonical batches, named streams), and a lost worker costs only the
    entry it was running.
    """
    points = grid_for(system_name, filter_name, inflations, radii, grid)
    entries = [(sigma_y, N) for sigma_y in sigma_ys for N in Ns
               if not (skip_existing and (is_current(system_name, filter_name, N, sigma_y, directory)
                                          or is_untunable(system_name, filter_name, N, sigma_y, directory)))]
    options = {"rounds": rounds, "final": final, "keep": keep, "finalists": finalists, "refine": refine, "seed": seed}
    here = runs_here(workers, scheduler, len(entries))
    tasks = [(system_name, filter_name, N, sigma_y, points, options, log if here else None) for sigma_y, N in entries]

    def finished(i, result):
        res, lines = result
        for line in lines:
            log(line, flush=True)
        sigma_y, N = entries[i]
        _record(system_name, filter_name, N, sigma_y, res, dry_run, directory, log)

    results = run_tasks(_halving_task, tasks, workers, scheduler, on_result=finished, progress=not here,
                        label=f"tune {system_name} {filter_name}")
    return [{"N": N, "sigma_y": sigma_y, **res} for (sigma_y, N), (res, _) in zip(entries, results)]


def _halving_task(system_name, filter_name, N, sigma_y, points, options: dict, log=None) -> tuple[dict, list[str]]:
    """One table entry's successive halving as a task: (result, log lines). With `log`, the rounds are logged
    as they end and no lines are kept; without (on a worker), the lines come back for the caller to print."""
    lines: list[str] = []

    def keep_line(*parts, **kwargs):
        lines.append(" ".join(map(str, parts)))

    res = successive_halving(system_name, filter_name, N, sigma_y, points=points, log=log or keep_line, **options)
    return res, lines


def _record(system_name, filter_name, N, sigma_y, res: dict, dry_run: bool, directory: Path, log) -> None:
    """Write one entry (or its "every candidate diverged") to the tables, and log the outcome."""
    t, c = res["rounds"][-1]["trajectories"], res["rounds"][-1]["cycles"]
    meta = {"method": METHOD, "trajectories": t, "cycles": c, "rounds": res["rounds"],
            "grid_points": res["grid_points"], "trajectory_cycles": res["trajectory_cycles"],
            "cpu_seconds": res["cpu_seconds"], "seconds": res["seconds"], "lost": res["lost"],
            "diverged": res["diverged"], "lost_level": res["lost_level"], "lost_window": LOST_TRACK_WINDOW}
    label = f"{system_name} {filter_name} N={N} sigma_y={sigma_y}"
    if res["status"] == "ok":
        infl, rad = res["best"]
        if isinstance(rad, tuple):  # filter settings (EnSF) are stored with the entry, not as a radius
            meta, rad = {**meta, "params": dict(rad)}, None
        if not dry_run:
            save_tuned(system_name, filter_name, N, sigma_y, infl, rad, res["rrmse"], meta, directory)
        chosen = f"settings={meta['params']}" if "params" in meta else f"radius={rad}"
        log(f"{label}: inflation={infl} {chosen} R-RMSE={res['rrmse']:.4f} on {t} x {c} "
            f"(lost {res['lost']}/{t}); {res['grid_points']} points, {res['cpu_seconds']} CPU s", flush=True)
    else:
        if not dry_run:
            save_untunable(system_name, filter_name, N, sigma_y, meta, directory)
        log(f"{label}: every candidate diverged; {res['cpu_seconds']} CPU s", flush=True)
