"""Promotion of trained weights: only a better tune-set score replaces the shipped file; scores are kept."""
import json

import torch

from daviz.mnmef import checkpoint as ckpt
from daviz.mnmef.model import MNMEF, ModelConfig
from daviz.mnmef.promote import promote
from daviz.mnmef.train import export_payload
from daviz.mnmef.train_config import TrainConfig
from daviz.mnmef.warm_start import warm_start
from daviz.systems import get_system

EVAL = dict(N=10, trajectories=2, cycles=30)


def weights_file(path, warm: bool, seed: int):
    """An untrained random model (poor) or the warm start (the tuned EnKF: good), as a weights file."""
    torch.manual_seed(seed)
    config = ModelConfig(feature_dim=8, loc_activation="sigmoid")
    model = MNMEF(get_system("l96"), 1.0, config)
    if warm:
        warm_start(model, 10)
    cfg = TrainConfig(system="l96", sigma_y=1.0, N=10, trajectories=8, model=config.to_dict())
    ckpt.save(path, export_payload(model, cfg), {"progress": {"step": 7, "trajectory_cycles": 700}, "recipe_note": path.name})
    return path


def test_better_candidate_replaces_shipped_and_worse_does_not(tmp_path):
    torch.set_num_threads(1)
    shipped = weights_file(tmp_path / "shipped.pt", warm=False, seed=0)
    poor = weights_file(tmp_path / "poor.pt", warm=False, seed=1)
    good = weights_file(tmp_path / "good.pt", warm=True, seed=2)
    curve = tmp_path / "curve.json"

    first = promote(good, shipped, curve=curve, **EVAL)
    assert first["promoted"] and first["candidate"]["rrmse_mean"] < first["shipped"]["rrmse_mean"]
    torch.testing.assert_close(ckpt.load(shipped)["model"]["loc_prior"], ckpt.load(good)["model"]["loc_prior"])
    meta = ckpt.read_meta(shipped)
    assert meta["recipe_note"] == "good.pt" and meta["evaluation"]["tune"]["rrmse_mean"] == first["candidate"]["rrmse_mean"]

    second = promote(poor, shipped, curve=curve, **EVAL)
    assert not second["promoted"]
    assert second["shipped"] == meta["evaluation"]["tune"]  # reused from the sidecar, not measured again
    assert ckpt.read_meta(shipped)["recipe_note"] == "good.pt"

    points = json.loads(curve.read_text())["points"]
    assert [p["promoted"] for p in points] == [True, False]
    assert points[0]["trajectory_cycles"] == 700 and points[0]["rrmse_mean"] == first["candidate"]["rrmse_mean"]


def test_new_n10_weights_retire_only_the_finetunes_they_beat(tmp_path):
    """New N = 10 weights scored at each fine-tune's N: a fine-tune they beat is removed, one that still beats
    them (its recorded tune score, measured the same way) is kept, another system's is not touched."""
    shipped = weights_file(tmp_path / "l96_sigma1.0_N10.pt", warm=False, seed=0)
    beaten = weights_file(tmp_path / "l96_sigma1.0_N10_ft40.pt", warm=False, seed=3)
    better = weights_file(tmp_path / "l96_sigma1.0_N10_ft20.pt", warm=False, seed=7)
    ckpt.record_evaluation(better, {"tune": {"N": 20, "trajectories": 2, "cycles": 30, "seed": 0, "purpose": "tune",
                                             "rrmse_mean": 1e-6, "rrmse_std": 0.0, "diverged": 0}})
    other = weights_file(tmp_path / "ks_sigma1.0_N10_ft40.pt", warm=False, seed=4)
    out = promote(weights_file(tmp_path / "good.pt", warm=True, seed=2), shipped, **EVAL)
    assert out["promoted"] and out["retired_finetunes"] == ["l96_sigma1.0_N10_ft40.pt"]
    assert not beaten.exists() and not beaten.with_suffix(".json").exists() and other.exists()
    kept = out["kept_finetunes"]["l96_sigma1.0_N10_ft20.pt"]
    assert better.exists() and kept["finetune"] == 1e-6 and kept["new_n10_at_N"] > 1e-3
    # a fine-tune promoted over a fine-tune retires nothing
    ft = weights_file(tmp_path / "l96_sigma1.0_N10_ft60.pt", warm=False, seed=5)
    out = promote(weights_file(tmp_path / "g60.pt", warm=True, seed=6), ft, **EVAL)
    assert out["promoted"] and out["retired_finetunes"] == [] and better.exists()


def test_no_shipped_file_yet_is_a_promotion(tmp_path):
    good = weights_file(tmp_path / "good.pt", warm=True, seed=2)
    out = promote(good, tmp_path / "new.pt", **EVAL)
    assert out["promoted"] and out["shipped"] is None and ckpt.load(tmp_path / "new.pt")["system"] == "l96"


def test_first_finetune_must_beat_the_n10_weights_at_its_n(tmp_path):
    """No `_ft20` file yet: the candidate competes with the N = 10 weights scored at N = 20, whose sidecar keeps
    its own N = 10 record."""
    n10 = weights_file(tmp_path / "l96_sigma1.0_N10.pt", warm=True, seed=0)
    before = ckpt.read_meta(n10)
    at20 = dict(EVAL, N=20)
    poor = promote(weights_file(tmp_path / "poor.pt", warm=False, seed=1), tmp_path / "l96_sigma1.0_N10_ft20.pt", **at20)
    assert not poor["promoted"] and poor["shipped"]["N"] == 20
    assert poor["candidate"]["rrmse_mean"] > poor["shipped"]["rrmse_mean"]
    assert not (tmp_path / "l96_sigma1.0_N10_ft20.pt").exists() and ckpt.read_meta(n10) == before
    good = promote(weights_file(tmp_path / "good.pt", warm=True, seed=2), tmp_path / "l96_sigma1.0_N10_ft40.pt",
                   **dict(EVAL, N=40))
    assert good["shipped"]["N"] == 40 and (tmp_path / "l96_sigma1.0_N10_ft40.pt").exists() == good["promoted"]


def test_candidate_score_recorded_the_same_way_is_reused(tmp_path):
    """An A/B that already scored its arms (scripts/ab_grad_window.sh records the score) is not scored twice;
    a score measured another way (another N) is measured again."""
    torch.set_num_threads(1)
    shipped = weights_file(tmp_path / "shipped.pt", warm=True, seed=0)
    cand = weights_file(tmp_path / "cand.pt", warm=False, seed=1)
    recorded = {"N": 10, "trajectories": 2, "cycles": 30, "seed": 0, "purpose": "tune",
                "rrmse_mean": 1e-6, "rrmse_std": 0.0, "diverged": 0}
    ckpt.record_evaluation(cand, {"tune": recorded})
    out = promote(cand, shipped, **EVAL)
    assert out["candidate"] == recorded and out["promoted"]
    other = weights_file(tmp_path / "other.pt", warm=False, seed=2)
    ckpt.record_evaluation(other, {"tune": dict(recorded, N=20)})
    assert promote(other, shipped, **EVAL)["candidate"]["rrmse_mean"] > 1e-3


def test_fixed_inflation_scan_writes_only_a_better_value(tmp_path):
    """scripts/scan_fixed_inflation.py --write-best: the file gets the scan's best value (the trained-with one
    is always scored) and its sidecar the scan and new tune score; a scan with nothing better leaves it as it was."""
    import subprocess
    import sys
    from pathlib import Path
    script = Path(__file__).resolve().parents[1] / "scripts" / "scan_fixed_inflation.py"
    w = weights_file(tmp_path / "l96_sigma1.0_N10.pt", warm=True, seed=0)
    trained_with = float(ckpt.load(w)["model"]["fixed_inflation"])

    def scan(alphas, out):
        subprocess.run([sys.executable, str(script), "--weights", str(w), "--N", "10", "--alphas", alphas,
                        "--trajectories", "2", "--cycles", "30", "--json", str(out), "--write-best"],
                       check=True, capture_output=True)
        return {r["alpha"]: r["rrmse_mean"] for r in json.loads(out.read_text())["rows"]}

    worse = scan("4.0", tmp_path / "worse.json")
    assert set(worse) == {4.0, round(trained_with, 6)} and worse[4.0] > worse[round(trained_with, 6)]
    assert float(ckpt.load(w)["model"]["fixed_inflation"]) == trained_with
    assert "fixed_inflation_tuned" not in ckpt.read_meta(w)

    data = ckpt.load(w)  # a badly set buffer: the tuned EnKF's value scores better
    data["model"]["fixed_inflation"] = torch.tensor(1.3)
    ckpt.save(w, {k: v for k, v in data.items() if k != "format"})
    scores = scan(f"{trained_with:.6f}", tmp_path / "scan.json")
    good = round(trained_with, 6)
    assert scores[good] < scores[1.3]
    assert float(ckpt.load(w)["model"]["fixed_inflation"]) == torch.tensor(good).item()
    meta = ckpt.read_meta(w)
    assert meta["fixed_inflation_tuned"]["from"] == 1.3 and meta["fixed_inflation_tuned"]["to"] == good
    assert meta["evaluation"]["tune"]["rrmse_mean"] == scores[good]


def test_start_comparison_keeps_apart_weights_at_the_same_step(tmp_path):
    """scripts/compare_starts.py keys its rows by the weights' file as well as their step: a neighbouring N's
    fine-tune and the N = 10 weights can share a step, and the second must be measured, not read from the first."""
    import subprocess
    import sys
    from pathlib import Path
    script = Path(__file__).resolve().parents[1] / "scripts" / "compare_starts.py"
    out = tmp_path / "starts.json"
    random_weights = weights_file(tmp_path / "random.pt", warm=False, seed=0)
    warm_weights = weights_file(tmp_path / "warm.pt", warm=True, seed=0)  # same step (7) as the first

    def best(weights):
        run = subprocess.run([sys.executable, str(script), "--system", "l96", "--sigma-y", "1.0", "--N", "10",
                              "--weights", str(weights), "--trajectories", "2", "--cycles", "30", "--out", str(out),
                              "--best"], check=True, capture_output=True, text=True)
        return run.stdout.strip()

    best(random_weights)
    assert best(warm_weights) in ("none", "prior", "enkf")
    rows = json.loads(out.read_text())["rows"]
    assert sorted((r["weights_file"], r["start"]) for r in rows) == sorted(
        (f, s) for f in ("random.pt", "warm.pt") for s in ("none", "prior", "enkf"))
    none = {r["weights_file"]: r["rrmse_mean"] for r in rows if r["start"] == "none"}
    assert none["warm.pt"] < none["random.pt"]  # the warm start is the tuned EnKF; the random heads are not
    best(warm_weights)  # a rerun measures nothing new
    assert len(json.loads(out.read_text())["rows"]) == 6
