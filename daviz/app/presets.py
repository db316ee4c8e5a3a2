"""Guided presets: each sets a handful of parameters and explains, in two lines, what to look at."""
from __future__ import annotations

NO_PRESET = "— none —"

PRESETS: dict[str, dict] = {
    "Why localization": {
        "settings": {"system": "l96", "N": 10, "sigma_y": 1.0, "seed": 0,
                     "filters": ["LETKF", "LETKF (no localization)"]},
        "explanation": (
            "Lorenz '96 with only N=10 members: far fewer than the ~13 unstable directions of the attractor.",
            "Without localization LETKF trusts spurious long-range correlations and its error grows; "
            "with Gaspari–Cohn localization it tracks the truth.",
        ),
    },
    "Why inflation": {
        "settings": {"system": "l96", "N": 20, "sigma_y": 1.0, "seed": 0,
                     "filters": ["LETKF", "LETKF (no inflation)"]},
        "explanation": (
            "Sampling error makes an ensemble underestimate its own uncertainty: watch the spread images.",
            "Without inflation the spread collapses below the actual error and the filter ignores new observations; "
            "a few per cent of inflation keeps it honest.",
        ),
    },
    "What the learned filter changes": {
        "settings": {"system": "l96", "N": 10, "sigma_y": 1.0, "seed": 0, "filters": ["LETKF", "MNMEF"]},
        "explanation": (
            "MNMEF against tuned LETKF at N=10: the learned filter corrects the gain, inflation and localization.",
            "Compare the |error| images and the R-RMSE curves; the right-hand plot shows its learned localization "
            "g_θ(distance) next to Gaspari–Cohn.",
        ),
    },
    "Why score filters need a latent space": {
        "settings": {"system": "ks", "N": 20, "sigma_y": 1.0, "seed": 0,
                     "filters": ["LETKF", "EnSF", "Latent-EnSF"]},
        "explanation": (
            "Kuramoto–Sivashinsky observed at every 8th point. EnSF moves members along the likelihood's gradient, "
            "which is zero at the 7 points in 8 nobody observes: there its error grows to that of knowing nothing.",
            "Latent-EnSF runs the same sampler in the latent space of a VAE that also encodes the sparse observation, "
            "so every latent component is observed and the whole field is corrected.",
        ),
    },
    "Filters vs smoothers": {
        "settings": {"system": "l96", "N": 20, "sigma_y": 1.0, "seed": 0,
                     "filters": ["LETKF", "4D-Var", "Neural Incremental DA"]},
        "explanation": (
            "LETKF updates at every observation; 4D-Var and Neural Incremental DA wait for a window of observations, "
            "solve it at once (a smoother over the window) and forecast until the next window end.",
            "Their error is lowest at window ends (the analyses) and grows in between (forecasts); compare the "
            "window-end errors with LETKF's, and the cost of a window's solve with a filter's update.",
        ),
    },
}


def explanation(name: str) -> tuple[str, str] | None:
    """The two lines shown for a preset, or None for no preset."""
    entry = PRESETS.get(name)
    return None if entry is None else entry["explanation"]
