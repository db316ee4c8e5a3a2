"""Variational data assimilation next to the ensemble filters: cycling strong-constraint incremental 4D-Var and
Neural Incremental DA (Blanke, Fablet & Lelarge, arXiv 2406.15076), as engine filters.

- background.py  the static B: shrunk climatological covariance
- fourdvar.py    one window: Gauss–Newton outer loops, CG inner solves, TL/adjoint by torch autograd
- filter.py      FourDVar, NIDAFilter, NIDAHybrid: window bookkeeping and cycling behind the filter API
- experiment.py  TwinExperiment that also scores the window-end analyses
- nida.py, nida_train.py, nida_io.py, nida_eval.py   the learned prior, its training, weights, window-level evaluation
- tuned.py, tune.py   4D-Var's tuned window length and B scaling

`build_variational(name, system, sigma_y)` gives what `daviz evaluate --filters 4dvar,nida,nida-4dvar` runs.
"""
from __future__ import annotations

VARIATIONAL_NAMES = ("4dvar", "nida", "nida-4dvar")
HYBRID_OUTER = 1  # the hybrid's 4D-Var: one Gauss–Newton loop from NIDA's first guess


def build_variational(name: str, system, sigma_y: float):
    """(filter, params for reports) for one of VARIATIONAL_NAMES; NIDA needs shipped weights (CheckpointError)."""
    from ..systems import get_system
    from .filter import FourDVar, NIDAFilter, NIDAHybrid
    from .tuned import fourdvar_params

    system = get_system(system) if isinstance(system, str) else system
    if name not in VARIATIONAL_NAMES:
        raise ValueError(f"unknown variational method {name!r}; choose one of {', '.join(VARIATIONAL_NAMES)}")
    tuned = fourdvar_params(system.name, sigma_y)
    source = tuned.pop("source")
    if name == "4dvar":
        f = FourDVar(system, sigma_y, **tuned)
        return f, {**f.params, "source": source}
    from .nida_io import load_pretrained

    model, meta = load_pretrained(system.name, sigma_y)
    info = {"file": meta.get("file"), "window": model.config.window, "training_seconds": meta.get("training_seconds"),
            "recipe_steps": (meta.get("recipe") or {}).get("steps")}
    if name == "nida":
        f = NIDAFilter(model, B_scale=tuned["B_scale"])
        return f, {**f.params, "weights": info}
    var = FourDVar(system, sigma_y, **{**tuned, "window": model.config.window, "outer": HYBRID_OUTER})
    f = NIDAHybrid(model, var)
    return f, {**f.params, "weights": info, "source": source}
