"""Ship trained weights only when they beat the shipped ones on the tune set (issue 20 point 5).

    python -m daviz.mnmef.promote --candidate runs/l96_s1.0_N10_warm_decayed.pt \
        --shipped pretrained/l96_sigma1.0_N10.pt [--N 10] [--trajectories 64] [--cycles 1500]

Both files are scored on the same "tune" trajectories (held out from training and from README's test set;
daviz.mnmef.quickeval). Each file's score is kept in its sidecar (evaluation.tune) and reused while it was
measured the same way (so an A/B that scored its arms does not score the winner twice). The candidate
replaces the shipped file (weights only, no optimizer state) when its mean R-RMSE is lower and no more of its
trajectories diverged; its sidecar then records both scores.
A first fine-tune for an N (no `..._ftN.pt` yet) must beat the N = 10 weights scored at that N.
When new N = 10 weights replace old ones, each fine-tune shipped beside them (`..._ftN.pt`, a complete model
made from the old weights) competes with the new N = 10 weights scored at its N: it is removed (git keeps it)
only when they beat it there, so a better base never takes a better fine-tune away from the explorer.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from . import checkpoint as ckpt
from .quickeval import evaluate_file

SAME_MEASURE = ("N", "trajectories", "cycles", "seed", "purpose")


def _tune_score(path, N: int, trajectories: int, cycles: int, seed: int) -> dict:
    """The file's tune-set score: from its sidecar when measured the same way, else measured now."""
    want = {"N": N, "trajectories": trajectories, "cycles": cycles, "seed": seed, "purpose": "tune"}
    old = (ckpt.read_meta(path).get("evaluation") or {}).get("tune")
    if isinstance(old, dict) and all(old.get(k) == want[k] for k in SAME_MEASURE):
        return old
    return evaluate_file(path, N, trajectories=trajectories, cycles=cycles, seed=seed, purpose="tune")


def promote(candidate, shipped, N: int | None = None, trajectories: int = 64, cycles: int | None = None,
            seed: int = 0, curve=None) -> dict:
    """Score both files on the tune set; export `candidate` over `shipped` if it is better. Returns the scores
    and whether it was promoted. With `curve` (a JSON file), the candidate's score is appended to it against
    the trajectory-cycles it was trained on: the run's learning curve, built up run by run."""
    data = ckpt.load(candidate)
    from ..systems import get_system
    N = int(N or data["N"])
    cycles = int(cycles or get_system(data["system"]).test_cycles)
    cand = _tune_score(candidate, N, trajectories, cycles, seed)
    base = None
    if Path(shipped).is_file():
        ckpt.load(shipped, system=data["system"], sigma_y=data["sigma_y"])  # refuse another system's file
        base = _tune_score(shipped, N, trajectories, cycles, seed)
        ckpt.record_evaluation(shipped, {"tune": base})
    elif (n10 := _n10_weights(Path(shipped))) is not None:
        # a first fine-tune competes with what N uses without it: the N = 10 weights, scored at N (not recorded:
        # the N = 10 file's sidecar keeps its own N = 10 score)
        ckpt.load(n10, system=data["system"], sigma_y=data["sigma_y"])
        base = evaluate_file(n10, N, trajectories=trajectories, cycles=cycles, seed=seed, purpose="tune")
    better = base is None or _beats(cand, base)
    retired, kept = [], {}
    if better:
        ckpt.export_weights(candidate, shipped)
        ckpt.record_evaluation(shipped, {"tune": cand, "promoted_over": base})
        retired, kept = _retire_beaten_finetunes(Path(shipped), trajectories, cycles, seed)
    if curve is not None:
        _append_point(curve, candidate, cand, better)
    return {"candidate": cand, "shipped": base, "promoted": better, "retired_finetunes": retired,
            "kept_finetunes": kept}


def _beats(score: dict, other: dict) -> bool:
    """A lower mean tune-set R-RMSE with no more diverged trajectories."""
    return score["rrmse_mean"] < other["rrmse_mean"] and score["diverged"] <= other["diverged"]


def _n10_weights(shipped: Path) -> Path | None:
    """For a fine-tune's file name (..._N10_ftN.pt), the shipped N = 10 weights beside it, if any."""
    if "_ft" not in shipped.stem:
        return None
    n10 = shipped.with_name(shipped.stem.rsplit("_ft", 1)[0] + shipped.suffix)
    return n10 if n10.is_file() else None


def _retire_beaten_finetunes(shipped: Path, trajectories: int, cycles: int, seed: int) -> tuple[list, dict]:
    """After new N = 10 weights: remove each fine-tune beside them that they beat at its N; keep the others.
    Returns (removed names, {kept name: both tune scores})."""
    if "_ft" in shipped.stem:
        return [], {}
    retired, kept = [], {}
    for ft in sorted(shipped.parent.glob(f"{shipped.stem}_ft*.pt")):
        N = int(ft.stem.rsplit("_ft", 1)[1])
        own = _tune_score(ft, N, trajectories, cycles, seed)
        new = evaluate_file(shipped, N, trajectories=trajectories, cycles=cycles, seed=seed, purpose="tune")
        if _beats(new, own):
            ft.unlink()
            ckpt.sidecar_path(ft).unlink(missing_ok=True)
            retired.append(ft.name)
        else:
            kept[ft.name] = {"finetune": own["rrmse_mean"], "new_n10_at_N": new["rrmse_mean"]}
    return retired, kept


def _append_point(curve, candidate, score: dict, promoted: bool) -> None:
    meta = ckpt.read_meta(candidate)
    progress = meta.get("progress") or {}
    row = {"trajectory_cycles": progress.get("trajectory_cycles"), "step": progress.get("step"),
           "kind": progress.get("kind"), "training_seconds": meta.get("training_seconds"),
           "promoted": promoted, "file": Path(candidate).name, "saved_at_utc": meta.get("saved_at_utc"),
           **{k: score[k] for k in ("rrmse_mean", "rrmse_std", "diverged", "N", "trajectories", "cycles", "purpose")}}
    path = Path(curve)
    doc = json.loads(path.read_text()) if path.is_file() else {
        "description": "tune-set R-RMSE of each decayed branch against the trajectory-cycles it was trained on "
                       "(python -m daviz.mnmef.promote --curve)", "points": []}
    doc["points"].append(row)
    ckpt.atomic_write(path, lambda tmp: tmp.write_text(json.dumps(doc, indent=1) + "\n"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m daviz.mnmef.promote", description=__doc__.split("\n\n")[0])
    p.add_argument("--candidate", required=True, help="training checkpoint or weights to try")
    p.add_argument("--shipped", required=True, help="the shipped weights file it would replace")
    p.add_argument("--N", type=int, help="ensemble size to score at (default: the candidate's)")
    p.add_argument("--trajectories", type=int, default=64)
    p.add_argument("--cycles", type=int, help="default: the system's test length")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--curve", help="JSON file to append the candidate's score to (a learning curve over runs)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    try:
        out = promote(a.candidate, a.shipped, a.N, a.trajectories, a.cycles, curve=a.curve)
    except ValueError as err:
        print(f"daviz: error: {err}", file=sys.stderr)
        return 2
    scores = ("candidate", "shipped")
    short = {k: ({kk: v[kk] for kk in ("rrmse_mean", "rrmse_std", "diverged")} if k in scores else v)
             for k, v in out.items() if v or k == "promoted"}
    print(json.dumps(short))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
