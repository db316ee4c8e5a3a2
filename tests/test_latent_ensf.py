"""Latent-EnSF (daviz.latent): the coupled VAE, its safe loading, the filter, and what the shipped weights do."""
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from daviz.cli import main
from daviz.experiment import TwinExperiment
from daviz.filters import make_filter
from daviz.latent import pretrained
from daviz.latent.filter import LatentEnSF
from daviz.latent.train import TrainSettings, pattern_shifts, train_vae
from daviz.latent.vae import CoupledVAE, NumpyVAE, VAEConfig
from daviz.methods import build
from daviz.mnmef.checkpoint import CheckpointError
from daviz.systems import get_system

torch.set_num_threads(1)
L96, KS = get_system("l96"), get_system("ks")
SHIPPED = Path(pretrained.PRETRAINED_DIR)


def tiny_vae(system=L96, seed=0) -> CoupledVAE:
    torch.manual_seed(seed)
    return CoupledVAE(VAEConfig(system.dim, system.obs_dim, latent=6, hidden=16, layers=1), system.obs_idx, 2.0, 3.0)


def test_numpy_copy_computes_what_the_torch_model_computes():
    model = tiny_vae()
    vae = NumpyVAE(model)
    x = np.random.default_rng(0).normal(2, 3, size=(5, 40))
    with torch.no_grad():
        mu, lv = model.encode_state(torch.as_tensor((x - 2) / 3, dtype=torch.float32))
        dec = 2 + 3 * model.decode(mu)
        mu_y, lv_y = model.encode_obs(torch.as_tensor((x[:, L96.obs_idx] - 2) / 3, dtype=torch.float32))
    assert np.abs(vae.encode_state(x)[0] - mu.numpy()).max() < 1e-5
    assert np.abs(vae.encode_state(x)[1] - lv.numpy()).max() < 1e-5
    assert np.abs(vae.decode(mu.numpy().astype(float)) - dec.numpy()).max() < 1e-4
    assert np.abs(vae.encode_obs(x[:, L96.obs_idx])[0] - mu_y.numpy()).max() < 1e-5


def test_training_lowers_both_reconstructions_and_uses_pattern_preserving_shifts():
    assert pattern_shifts(L96).tolist() == list(range(0, 40, 4))
    assert pattern_shifts(KS).tolist() == list(range(0, 128, 8))
    settings = TrainSettings(latent=8, hidden=32, layers=1, steps=300, batch=64, lr=5e-3, trajectories=2, cycles=100)
    model, record = train_vae(L96, 1.0, settings, log=lambda *a, **k: None)
    first, last = record["history"][0], record["history"][-1]  # measured 43.5 -> 25.5 and 40.6 -> 30.5
    assert last["rec_x"] < 0.7 * first["rec_x"] and last["rec_y"] < 0.85 * first["rec_y"], (first, last)
    assert record["pattern_shifts"] == 10 and record["samples"] == 200


def _save_tiny(tmp_path, system=L96, sigma_y=1.0, meta=None) -> Path:
    path = tmp_path / pretrained.weights_name(system, sigma_y)
    pretrained.save(path, tiny_vae(system), system, sigma_y, meta or {"filter": {"inflation": 1.1, "gamma": 0.5}})
    return path


def test_weights_round_trip_and_the_filter_uses_the_sidecar_settings(tmp_path):
    path = _save_tiny(tmp_path)
    f, info = pretrained.load_filter("l96", 1.0, directory=tmp_path)
    assert isinstance(f, LatentEnSF) and f.inflation == 1.1 and f.gamma == 0.5 and info["file"] == path.name
    f2, _ = pretrained.load_filter("l96", 1.0, inflation=1.0, gamma=2.0, directory=tmp_path)
    assert f2.inflation == 1.0 and f2.gamma == 2.0
    rng = np.random.default_rng(0)
    E, y = rng.normal(2, 3, size=(3, 8, 40)), rng.normal(2, 3, size=(3, 10))
    Ea = f.analysis(E, y, np.random.default_rng(1))
    assert Ea.shape == E.shape and np.isfinite(Ea).all()
    assert np.array_equal(Ea, f.analysis(E, y, np.random.default_rng(1)))  # deterministic given the rng


@pytest.mark.parametrize("case", ["missing", "empty", "garbage", "pickle", "foreign", "system", "sigma", "pattern",
                                  "config", "sidecar-list", "sidecar-json"])
def test_bad_weights_give_one_line_errors_naming_the_file(tmp_path, case):
    pretrained._cache.clear()
    path = tmp_path / pretrained.weights_name(L96, 1.0)
    system, sigma = L96, 1.0
    if case == "empty":
        path.write_bytes(b"")
    elif case == "garbage":
        path.write_bytes(b"\x00not a torch file" * 10)
    elif case == "pickle":  # arbitrary objects are refused by weights_only loading: no code runs
        torch.save({"format": pretrained.FORMAT, "x": Path("evil")}, path)
    elif case == "foreign":
        torch.save({"format": "something-else"}, path)
    elif case in ("system", "sigma", "pattern", "sidecar-list", "sidecar-json"):
        _save_tiny(tmp_path)
        system = {"system": KS, "pattern": replace(L96, obs_idx=np.arange(0, 40, 2))}.get(case, L96)
        sigma = 0.7 if case == "sigma" else 1.0
        if case.startswith("sidecar"):
            path.with_suffix(".json").write_text("[1, 2]" if case == "sidecar-list" else "{not json")
    elif case == "config":
        _save_tiny(tmp_path)
        data = torch.load(path, weights_only=True)
        data["config"]["hidden"] = 10**7  # would allocate tens of GB before failing
        torch.save(data, path)
    with pytest.raises(CheckpointError) as err:
        pretrained.load(path, system, sigma)
    message = str(err.value)
    assert "\n" not in message and path.stem in message and str(tmp_path) not in message, message
    expected = {"missing": "do not exist", "empty": "empty", "garbage": "corrupt", "pickle": "corrupt",
                "foreign": "not a daviz-latent-vae-1", "system": "trained for 'l96', not 'ks'",
                "sigma": "sigma_y=1.0, not 0.7", "pattern": "observation pattern", "config": "does not fit",
                "sidecar-list": "not an object", "sidecar-json": "not valid JSON"}[case]
    assert expected in message, message


def test_evaluate_skips_latent_ensf_without_weights(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(pretrained, "PRETRAINED_DIR", tmp_path)
    assert main(["evaluate", "--filters", "latent-ensf", "--N", "10", "--trajectories", "1", "--cycles", "2",
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "skipping latent-ensf" in err and "daviz train-latent --system l96" in err
    with pytest.raises(CheckpointError, match="made for Lorenz '96 and Kuramoto–Sivashinsky only"):
        pretrained.load_filter("l63", 1.0)  # no command to suggest: train-latent does not serve L63


shipped = pytest.mark.skipif(not (SHIPPED / pretrained.weights_name(KS, 1.0)).is_file()
                             or not (SHIPPED / pretrained.weights_name(L96, 1.0)).is_file(),
                             reason="shipped Latent-EnSF weights not present")


@shipped
@pytest.mark.parametrize("system", [L96, KS])
def test_shipped_weights_report_their_held_out_quality(system):
    vae, meta = pretrained.load(SHIPPED / pretrained.weights_name(system, 1.0), system, 1.0)
    held = meta["heldout"]
    assert held["streams"].startswith("test/latent-heldout") and held["samples"] >= 1000
    assert held["reconstruction_rrmse"] < 0.15, held  # measured: see the sidecar and the README
    assert 0.7 < held["latent_consistency_calibration"] < 1.4, held  # the obs encoder's variance is calibrated
    assert held["latent_consistency_rmse"] < held["latent_std"], held  # the encoded observation is informative
    assert {"inflation", "gamma"} <= set(meta["filter"]) and meta["command"].startswith("daviz train-latent")


@shipped
def test_latent_ensf_removes_most_of_the_sparse_observation_weakness_on_ks():
    """KS observed every 8th site, N=20, 4 tune trajectories x 200 cycles: EnSF with inflation 1.05 does worse
    than climatology (measured R-RMSE 1.15-1.20, climatology 1.0; tuned, daviz/tuned/ks_ensf.json, it reaches
    0.97 on 8 x 1000), Latent-EnSF with the shipped VAE and its recorded settings tracks (measured
    0.69-0.74); see the README for the full evaluation."""
    filters = {"ensf": make_filter("ensf", KS, 1.0, inflation=1.05),
               "latent": build("latent-ensf", KS, 1.0, 20)[0]}  # the sidecar's inflation and γ
    exp = TwinExperiment(KS, 1.0, 20, filters, trajectories=4, seed=0, purpose="tune")
    r = exp.run(200)
    assert np.nanmean(r["ensf"]) > 1.0, r
    assert np.nanmean(r["latent"]) < 0.85 * np.nanmean(r["ensf"]) and not exp.diverged["latent"].any(), r
