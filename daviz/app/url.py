"""The page's URL and the explorer's settings kept equal, with Panel's own `location.sync`.

A lecturer can paste the URL into slides: it always holds the current settings. Values that cannot
be used are named in the page (escaped: shown as typed, never as markup) and the others still apply.
"""
from __future__ import annotations

import urllib.parse

import numpy as np
import panel as pn
import param

from .presets import NO_PRESET
from .runs import RUNS
from .settings import N_BOUNDS, SEED_BOUNDS, SIGMA_BOUNDS, SYSTEMS, ExplorerSettings

URL_PARAMS = ("system", "N", "sigma_y", "seed", "speed", "preset", "filters", "localization", "radius",
              "inflation_mode", "inflation")


def _convert_url_value(name: str, raw: str):
    """A URL value as the parameter's type (comma lists for filters, titles or keys for system)."""
    if name == "filters":
        return [f.strip() for f in raw.strip("[]").replace('"', "").split(",") if f.strip()]
    if name == "system":
        return SYSTEMS.get(raw, raw)
    ptype = type(ExplorerSettings.param[name])
    if ptype is param.Integer:
        return int(raw)
    if ptype is param.Number:
        value = float(raw)
        if not np.isfinite(value):
            raise ValueError("not a finite number")
        return value
    return raw


def sync_url(explorer, start: bool = True) -> None:
    """Read the settings from the page's URL and keep the URL equal to the settings (Panel's own sync).

    Panel applies all URL values in one batch and gives up on the batch if any is invalid; then each
    value is tried alone, so the good ones still apply and each bad one is named in the message.
    `start=False` leaves building the experiment to the caller (the served page: `Explorer.start`).
    """
    location = pn.state.location
    if location is None:
        return
    state = explorer.state
    refused: list[str] = []

    # Panel drops values it cannot parse (with a log line only): find them in the raw query string.
    raw_query = urllib.parse.parse_qsl(location.search.lstrip("?"), keep_blank_values=False)
    parsed = location.query_params
    refused.extend(f"{k}={v}" for k, v in raw_query if k in URL_PARAMS and k not in parsed)

    def apply_one_by_one(values: dict):
        for name, raw in values.items():
            try:
                value = _convert_url_value(name, str(raw)) if isinstance(raw, str) else raw
                with state.quietly():
                    setattr(state, name, value)  # param refuses a value outside its type or bounds
            except Exception:
                refused.append(f"{name}={raw}")

    with state.quietly():
        location.sync(state, list(URL_PARAMS), on_error=apply_one_by_one)
    if state.preset != NO_PRESET:
        state.apply_preset(state.preset)
    else:
        state.fit_component()
        state.apply_tuned_defaults()
        if start:
            state.restart()
    if refused:
        explorer.show_url_problem(
            "ignored URL settings (shown as typed): " + ", ".join(refused)
            + f". Accepted: N {N_BOUNDS[0]}–{N_BOUNDS[1]}, σ_y {SIGMA_BOUNDS[0]}–{SIGMA_BOUNDS[1]}, "
            f"seed {SEED_BOUNDS[0]}–2³²−1, filters from {', '.join(RUNS)}.")

        def clear(*events):
            explorer.show_url_problem("")
            state.param.unwatch(watcher)

        watcher = state.param.watch(clear, list(URL_PARAMS))
