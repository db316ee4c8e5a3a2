"""MNMEF checkpoints and shipped weights: round trip, clear errors, variant choice, cache."""
import json

import numpy as np
import pytest
import torch

from daviz.mnmef import checkpoint as ckpt
from daviz.mnmef import pretrained
from daviz.mnmef.model import MNMEF, ModelConfig
from daviz.mnmef.train import TrainConfig, export_payload
from daviz.systems import get_system


def write(path, system="l96", sigma_y=1.0, N=10, seed=0):
    torch.manual_seed(seed)
    model = MNMEF(get_system(system), sigma_y, ModelConfig(feature_dim=16))
    cfg = TrainConfig(system=system, sigma_y=sigma_y, N=N, trajectories=8)
    ckpt.save(path, export_payload(model, cfg), {"system": system, "N": N, "recipe_note": "test"})
    return model


def test_round_trip(tmp_path):
    model = write(tmp_path / "w.pt")
    data = ckpt.load(tmp_path / "w.pt", system="l96")
    again = ckpt.build_model(data)
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k
    assert again.config.feature_dim == 16 and ckpt.read_meta(tmp_path / "w.pt")["recipe_note"] == "test"


def test_errors_name_file_and_problem(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match=r"missing\.pt does not exist"):
        ckpt.load(tmp_path / "missing.pt")
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ckpt.CheckpointError, match=r"corrupt\.pt is corrupt"):
        ckpt.load(bad)
    write(tmp_path / "l63.pt", system="l63")
    with pytest.raises(ckpt.CheckpointError, match=r"l63\.pt was trained for system 'l63', not 'l96'"):
        ckpt.load(tmp_path / "l63.pt", system="l96")
    assert issubclass(ckpt.CheckpointError, ValueError)


def test_choose_and_load_filter(tmp_path, monkeypatch):
    write(tmp_path / "l96_sigma1.0_N10.pt")
    write(tmp_path / "l96_sigma1.0_N10_ft20.pt", N=20, seed=1)
    monkeypatch.setattr(pretrained, "PRETRAINED_DIR", tmp_path)
    assert {e["variant"] for e in pretrained.available(tmp_path)} == {"pretrained", "finetuned"}
    assert pretrained.choose("l96", 1.0, 20, directory=tmp_path)["variant"] == "finetuned"
    assert pretrained.choose("l96", 1.0, 20, "pretrained", directory=tmp_path)["N"] == 10
    assert pretrained.choose("l96", 1.0, 40, directory=tmp_path)["variant"] == "pretrained"
    with pytest.raises(ckpt.CheckpointError, match="no shipped finetuned MNMEF weights for system=l96 sigma_y=1.0 N=40"):
        pretrained.choose("l96", 1.0, 40, "finetuned", directory=tmp_path)
    with pytest.raises(ckpt.CheckpointError, match="sigma_y=0.7"):
        pretrained.choose("l96", 0.7, 10, directory=tmp_path)
    e = pretrained.choose("l96", 1.0, 20, directory=tmp_path)
    m1, _ = pretrained.load_model(e["file"], "cpu")
    m2, _ = pretrained.load_model(e["file"], "cpu")
    assert m1 is m2 and not any(q.requires_grad for q in m1.parameters())


def test_shipped_weights_load():
    """Every file in pretrained/ loads, fits its system and runs one analysis."""
    for e in pretrained.available():
        f, info = pretrained.load_filter(e["system"], e["sigma_y"], e["N"], e["variant"], device="cpu")
        system = get_system(e["system"])
        rng = np.random.default_rng(0)
        E = system.initial_truth(rng, 1)[:, None, :] + rng.standard_normal((1, e["N"], system.dim))
        y = system.observe(E.mean(1))
        assert np.isfinite(f.analysis(E, y, rng)).all() and info["file"] == e["file"].split("/")[-1]
        json.loads(open(e["file"][:-3] + ".json").read())


def test_evaluate_skips_mnmef_without_weights_and_runs_the_rest(tmp_path, monkeypatch, capsys):
    """No shipped weights for a request: `daviz evaluate` says so and still evaluates the other filters."""
    from daviz import cli

    monkeypatch.setattr(pretrained, "PRETRAINED_DIR", tmp_path)  # an empty weights folder
    monkeypatch.setattr(pretrained.choose, "__defaults__", ("auto", tmp_path))
    out = tmp_path / "rows.json"
    code = cli.main(["evaluate", "--system", "l63", "--filters", "mnmef,enkf", "--N", "5", "--trajectories", "2",
                     "--cycles", "5", "--json", str(out), "--quiet"])
    assert code == 0
    assert [r["filter"] for r in json.loads(out.read_text())] == ["enkf"]
    err = capsys.readouterr().err
    assert "skipping mnmef at N=5" in err and "no shipped" in err and str(tmp_path) in err
