"""The one place where the explorer turns the selected runs into filters.

`build_filters` builds each selected run (runs.py) for the current settings; a run that cannot be
built here (MNMEF's weights are loading or missing, no coupled VAE for Latent-EnSF) is left out with
the reason and the others run. Restarts and filter swaps both come through it.

Every run but MNMEF is built by the methods registry (daviz.methods.build) from the tuned settings the
explorer holds (`ExplorerSettings.tuned_for`, i.e. `methods.tuned_settings`) with what the user fixed laid
over them (`ExplorerSettings.overrides`); MNMEF comes from `mnmef_weights` (loaded in the background).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .. import methods
from . import mnmef_weights
from .mnmef_weights import MnmefPhase, MnmefState
from .runs import RUNS, RunSpec


@dataclass
class Lineup:
    """The filters built for one experiment, and why any selected run is missing."""

    filters: dict = field(default_factory=dict)  # label → filter, in the order selected
    runs: list[RunSpec] = field(default_factory=list)
    left_out: dict[str, str] = field(default_factory=dict)  # label → why it is not running
    mnmef: MnmefState = MnmefState.OFF

    def notes(self) -> list[str]:
        """What the page says about the runs left out; MNMEF while loading says nothing (it joins by itself)."""
        return [why for label, why in self.left_out.items()
                if not (RUNS[label].base == "mnmef" and self.mnmef.phase is MnmefPhase.LOADING)]


def build_filters(labels, settings) -> Lineup:
    """Filters for the runs `labels` under `settings` (an ExplorerSettings); errors other than a
    missing optional piece propagate."""
    lineup = Lineup()
    for label in labels:
        spec = RUNS[label]
        if spec.base == "mnmef":
            filt, lineup.mnmef = mnmef_weights.get_filter(settings.system, float(settings.sigma_y), int(settings.N))
            if filt is None:
                lineup.left_out[label] = lineup.mnmef.text
                continue
        elif spec.base == "latent-ensf":
            try:  # its coupled VAE is shipped for some (system, σ_y) only: the other runs go on without it
                filt = _baseline(spec, settings)
            except (ValueError, ImportError) as exc:  # CheckpointError is a ValueError; torch may be absent
                lineup.left_out[label] = f"Latent-EnSF left out: {exc}"
                continue
        else:
            filt = _baseline(spec, settings)
        lineup.filters[label] = filt
        lineup.runs.append(spec)
    return lineup


def _baseline(spec: RunSpec, settings):
    """A classic, score-based or variational run: tuned settings with the user's choices over them."""
    base = spec.base
    if base == "letkf" and not settings.has_space:
        base = "esrf"  # without spatial structure LETKF is the global ETKF (= our ESRF), with LETKF's settings
    fixed = settings.overrides(spec)
    if "radius" in fixed and fixed["radius"] is None:
        fixed["radius"] = methods.NO_LOCALIZATION  # the user switched localization off
    return methods.build(base, settings.system, settings.sigma_y, settings.N, tuned=settings.tuned_for(spec.base),
                         **fixed)[0]
