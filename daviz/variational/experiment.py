"""TwinExperiment that also scores variational methods at their window ends only.

A variational filter's estimate is an analysis at window ends and a pure forecast in between
(daviz.variational.filter). `TwinExperiment.running_rrmse` scores every cycle, i.e. analyses and 1 … L−1-step
forecasts mixed; the filters' R-RMSE scores an analysis at every cycle. The comparable figure is therefore
the R-RMSE (5.2) over the window-end analyses only, Σ_ends ‖x̂ − v†‖ / Σ_ends ‖v†‖ per trajectory, which this
class accumulates next to the usual one. Filters without `scores_window_ends` are untouched, so the same
experiment runs the ensemble filters and the variational methods in lock-step on the same truth.
"""
from __future__ import annotations

import numpy as np

from ..experiment import TwinExperiment


class WindowEndExperiment(TwinExperiment):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        B = self.trajectories * self.replicas
        self.window_end_names = [n for n, f in self.filters.items() if getattr(f, "scores_window_ends", False)]
        self._end_error = {n: np.zeros(B) for n in self.window_end_names}
        self._end_truth_norm = {n: np.zeros(B) for n in self.window_end_names}
        self.window_ends = {n: 0 for n in self.window_end_names}

    def step(self) -> None:
        super().step()
        truth = self.truth
        for name in self.window_end_names:
            f, state = self.filters[name], self.states[name]
            if not f.at_window_end(state):
                continue
            with np.errstate(all="ignore"):
                err = np.linalg.norm(f.mean(state) - truth, axis=-1)
            self._end_error[name] += np.where(self.diverged[name], 0.0, err)
            self._end_truth_norm[name] += np.linalg.norm(truth, axis=-1)
            self.window_ends[name] += 1

    def window_end_rrmse(self) -> dict[str, np.ndarray]:
        """Per variational filter and trajectory: R-RMSE over its window-end analyses (NaN where diverged
        or before its first window end)."""
        out = {}
        for name in self.window_end_names:
            with np.errstate(all="ignore"):
                value = self._end_error[name] / np.where(self._end_truth_norm[name] > 0, self._end_truth_norm[name], np.nan)
            out[name] = np.where(self.diverged[name], np.nan, value)
        return out

    def variational_report(self, name: str) -> dict:
        """Fields for `daviz evaluate`'s row of a variational method: its R-RMSE keys hold the window-end scores
        (what compares with the filters' analyses), the every-cycle figure is kept apart, plus solver figures."""
        from ..metrics import average_rrmse, rrmse_std

        end = self.window_end_rrmse()[name]
        every = self.running_rrmse()[name]
        f = self.filters[name]
        return {
            "rrmse_mean": average_rrmse(end), "rrmse_std": rrmse_std(end),
            "scored": "window-end analyses (every window's last cycle); rrmse_all_cycles_mean adds the forecasts "
                      "between them",
            "rrmse_all_cycles_mean": average_rrmse(every), "window_ends": self.window_ends[name],
            "solver": {"solves": f.solves, "seconds_per_solve": round(f.solve_seconds / max(1, f.solves), 4),
                       "last_window": f.last_stats},
        }
