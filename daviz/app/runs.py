"""The filter runs the explorer can show, each with its one colour (the same on every plot)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RunSpec:
    """One filter run shown in the app: a base filter plus optional fixed overrides."""

    label: str
    base: str  # enkf | esrf | letkf | ienkf | mnmef | ensf | latent-ensf
    color: str
    radius_off: bool = False  # this variant never localizes
    no_inflation: bool = False  # this variant never inflates (inflation = 1)
    help: str = ""


# Okabe–Ito colours (distinguishable with the common colour-vision deficiencies); each run keeps its
# colour whatever else is selected, so MNMEF is orange on every view and in every preset.
RUNS = {spec.label: spec for spec in (
    RunSpec("EnKF", "enkf", "#0072B2", help="stochastic EnKF with perturbed observations"),
    RunSpec("ESRF", "esrf", "#D55E00", help="square-root (ETKF) filter, global analysis"),
    RunSpec("LETKF", "letkf", "#009E73", help="local ETKF with Gaspari–Cohn localization"),
    RunSpec("IEnKF", "ienkf", "#CC79A7", help="iterative EnKF (Gauss–Newton), global analysis"),
    RunSpec("MNMEF", "mnmef", "#E69F00", help="the learned filter (set transformer)"),
    RunSpec("LETKF (no localization)", "letkf", "#56B4E9", radius_off=True,
            help="LETKF with localization switched off"),
    RunSpec("LETKF (no inflation)", "letkf", "#7F7F7F", no_inflation=True, help="LETKF with inflation 1"),
    # Score-based filters (Paul Tol's wine and indigo, clear of the Okabe–Ito colours above)
    RunSpec("EnSF", "ensf", "#882255",
            help="ensemble score filter: new members drawn by a reverse diffusion from the forecast's score"),
    RunSpec("Latent-EnSF", "latent-ensf", "#332288",
            help="EnSF in the latent space of a coupled VAE that also encodes the sparse observation"),
    # Variational methods (ColorBrewer brown, Paul Tol's olive: clear of every colour above)
    RunSpec("4D-Var", "4dvar", "#8C510A",
            help="strong-constraint incremental 4D-Var, cycling windows (analysis at each window end, forecast between)"),
    RunSpec("Neural Incremental DA", "nida", "#999933",
            help="learned coarse-to-fine Gaussian prior + MAP per window (Blanke et al. 2024), cycling like 4D-Var"),
)}
RUN_LABELS = tuple(RUNS)
TRUTH_COLOR = "#000000"
OBS_COLOR = "#333333"  # observation crosses: near-black, told apart from the truth line by the marker
