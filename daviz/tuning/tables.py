"""The tuned tables: daviz/tuned/<system>_<filter>.json, {sigma_y: {N: {inflation, radius, rrmse, ...}}}.

Each entry carries the budget that produced it. (N, sigma_y) where every candidate diverged are listed in
daviz/tuned/untunable.json instead. Tuners of different tables run side by side: every read-modify-write
holds a lock on the folder, and every write renames a finished temporary file into place.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..artifacts import folder_locked, write_text
from ..experiment import LOST_TRACK_WINDOW
from ..filters import filter_localizes
from ..systems import System, get_system

TUNED_DIR = Path(__file__).resolve().parents[1] / "tuned"
UNTUNABLE = "untunable.json"
METHOD = "successive-halving"  # entries of older grid searches lack it and are re-tuned by --skip-existing


def table_path(system_name: str, filter_name: str, directory: Path = TUNED_DIR) -> Path:
    return Path(directory) / f"{system_name}_{filter_name}.json"


def is_tuned(system_name, filter_name, N, sigma_y, directory: Path = TUNED_DIR, method: str | None = None) -> bool:
    """Whether the table has an entry for (N, sigma_y); with `method`, only one made by that method."""
    table = _read_table(table_path(system_name, filter_name, directory))
    entry = table.get(f"{float(sigma_y)}", {}).get(str(int(N)))
    return entry is not None and (method is None or entry.get("method") == method)


def is_current(system_name, filter_name, N, sigma_y, directory: Path = TUNED_DIR) -> bool:
    """Whether the entry was made by this tuner: successive halving with the windowed lost-track test and a
    final round as long as the test trajectories (entries of the older grid search, of halving that only
    looked at whole-run R-RMSE, or with a shorter final round are not)."""
    table = _read_table(table_path(system_name, filter_name, directory))
    entry = table.get(f"{float(sigma_y)}", {}).get(str(int(N)), {})
    return (entry.get("method") == METHOD and entry.get("lost_window") == LOST_TRACK_WINDOW
            and entry.get("cycles", 0) >= get_system(system_name).test_cycles)


def is_untunable(system_name, filter_name, N, sigma_y, directory: Path = TUNED_DIR) -> bool:
    """Whether a search already found every candidate diverging at this (N, sigma_y)."""
    table = _read_table(Path(directory) / UNTUNABLE)
    return str(int(N)) in table.get(f"{system_name}_{filter_name}", {}).get(f"{float(sigma_y)}", {})


def save_untunable(system_name, filter_name, N, sigma_y, meta: dict, directory: Path = TUNED_DIR) -> Path:
    """Record in untunable.json that every candidate diverged (with the budget that showed it), and drop any
    older setting for (N, sigma_y) from the tuned table: a setting this search saw diverge is not kept."""
    path = Path(directory) / UNTUNABLE
    with folder_locked(directory):
        table = _read_table(path)
        table.setdefault(f"{system_name}_{filter_name}", {}).setdefault(f"{float(sigma_y)}", {})[str(int(N))] = meta
        _write_table(path, table)
        _drop_entry(table_path(system_name, filter_name, directory), [f"{float(sigma_y)}", str(int(N))])
    return path


def _drop_entry(path: Path, keys: list[str]) -> None:
    """Remove table[keys[0]][keys[1]]... from a JSON table file, and the containers it leaves empty."""
    table = _read_table(path)
    chain = [table]  # the containers along `keys`, outermost first
    for k in keys[:-1]:
        if k not in chain[-1]:
            return
        chain.append(chain[-1][k])
    if chain[-1].pop(keys[-1], None) is None:
        return
    for parent, k in zip(reversed(chain[:-1]), reversed(keys[:-1])):
        if not parent[k]:
            del parent[k]
    _write_table(path, table)


def _read_table(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _write_table(path: Path, table: dict) -> None:
    """Write through a temporary file and rename, so a reader never sees half a table."""
    write_text(path, json.dumps(table, indent=1, sort_keys=True))


def save_tuned(system_name, filter_name, N, sigma_y, inflation, radius, rrmse, meta: dict,
               directory: Path = TUNED_DIR) -> Path:
    path = table_path(system_name, filter_name, directory)
    with folder_locked(directory):
        table = _read_table(path)
        table.setdefault(f"{float(sigma_y)}", {})[str(int(N))] = {
            "inflation": float(inflation), "radius": None if radius is None else float(radius),
            "rrmse": float(rrmse), **meta,
        }
        _write_table(path, table)
        # A search that now finds a setting supersedes an earlier "every candidate diverged".
        _drop_entry(Path(directory) / UNTUNABLE, [f"{system_name}_{filter_name}", f"{float(sigma_y)}", str(int(N))])
    return path


def tuned_params(system_name: str, filter_name: str, N: int, sigma_y: float, directory: Path = TUNED_DIR) -> dict:
    """Tuned {inflation, radius, source} for the nearest shipped σ_y and N (log-distance in N).

    Falls back to a moderate default when nothing is shipped for this system and filter.
    """
    system = get_system(system_name)
    localizes = filter_localizes(filter_name, system)
    path = table_path(system_name, filter_name, directory)
    if path.exists():
        table = json.loads(path.read_text())
        if table:
            s_key = min(table, key=lambda s: abs(float(s) - sigma_y))
            n_key = min(table[s_key], key=lambda n: abs(np.log(int(n) / N)))
            entry = table[s_key][n_key]
            return {"inflation": entry["inflation"], "radius": entry["radius"] if localizes else None,
                    "source": f"tuned at N={n_key}, sigma_y={s_key}",
                    **({"params": entry["params"]} if isinstance(entry.get("params"), dict) else {})}
    return untuned(system, localizes)


def untuned(system: System, localizes: bool, source: str = "default (not tuned)") -> dict:
    """What a filter uses where nothing is tuned: the system's fallback inflation, and its fallback radius
    where the filter localizes."""
    return {"inflation": system.fallback_inflation, "radius": system.fallback_radius if localizes else None,
            "source": source}
