"""MNMEF checkpoints and shipped weights: round trip, clear errors, variant choice, cache."""
import json
import threading

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
    with pytest.raises(ckpt.CheckpointError, match="no fine-tuned MNMEF weights for Lorenz '96 at sigma_y=1.0 and N=40"):
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


def _evaluate_l63_runs_only_enkf(tmp_path):
    """`daviz evaluate` of MNMEF and EnKF on a tiny L63 run succeeds, with rows for EnKF alone."""
    from daviz import cli

    out = tmp_path / "rows.json"
    code = cli.main(["evaluate", "--system", "l63", "--filters", "mnmef,enkf", "--N", "5", "--trajectories", "2",
                     "--cycles", "5", "--json", str(out), "--quiet"])
    assert code == 0
    assert [r["filter"] for r in json.loads(out.read_text())] == ["enkf"]


def test_evaluate_skips_mnmef_without_weights_and_runs_the_rest(tmp_path, monkeypatch, capsys):
    """No shipped weights for a request: `daviz evaluate` says so and still evaluates the other filters."""
    monkeypatch.setattr(pretrained, "PRETRAINED_DIR", tmp_path)  # an empty weights folder
    monkeypatch.setattr(pretrained.choose, "__defaults__", ("auto", tmp_path))
    _evaluate_l63_runs_only_enkf(tmp_path)
    err = capsys.readouterr().err
    assert "skipping mnmef at N=5" in err and "no MNMEF weights for Lorenz '63 at sigma_y=1.0" in err
    assert str(tmp_path) not in err  # the file's name at most, never a long absolute path


# --- broken files: one-line CheckpointError, never KeyError/AttributeError --------------------------

def _foo_system(path, system):
    write(path, system=system)
    data = torch.load(path, weights_only=True)
    torch.save({**data, "system": "foo"}, path)


def _sidecar(text):
    def make(path, system):
        write(path, system=system)
        ckpt.sidecar_path(path).write_text(text)
    return make


def _weights(content):
    def make(path, system):
        write(path, system=system)
        path.write_bytes(content(path.read_bytes()))
    return make


BROKEN = {  # case -> (how to break a weights file, what the message must say; {stem} = the file's stem)
    "system foo": (_foo_system, "{stem}.pt was made for an unknown system 'foo'"),
    "sidecar list": (_sidecar("[1, 2]"), "sidecar {stem}.json holds a JSON array"),
    "sidecar string": (_sidecar('"just a string"'), "sidecar {stem}.json holds a JSON string"),
    "sidecar truncated": (_sidecar('{"system": "l96", "N": 1'), "sidecar {stem}.json is not valid JSON"),
    "weights corrupt": (_weights(lambda b: b"PK\x03\x04 definitely not a zip"), "{stem}.pt is corrupt"),
    "weights empty": (_weights(lambda b: b""), "{stem}.pt is empty"),
    "weights truncated": (_weights(lambda b: b[: len(b) // 2]), "{stem}.pt is corrupt"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_weights_give_a_one_line_checkpoint_error(tmp_path, case):
    make, expected = BROKEN[case]
    path = tmp_path / "l96_sigma1.0_N10.pt"
    make(path, "l96")
    expected = expected.format(stem=path.stem)
    for call in (lambda: pretrained.load_filter("l96", 1.0, 10, device="cpu"),
                 lambda: pretrained.load_model(path, "cpu")):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(pretrained, "PRETRAINED_DIR", tmp_path)
            with pytest.raises(ckpt.CheckpointError) as info:
                call()
        message = str(info.value)
        assert expected in message
        assert "\n" not in message and str(tmp_path) not in message  # one line, no absolute path
        assert ": " in message.split(expected, 1)[1]  # ... followed by what to do
        assert info.value.path and str(tmp_path) in info.value.path  # the full path is still there for logs


def test_checkpoint_fields_are_checked(tmp_path):
    path = tmp_path / "w.pt"
    write(path)
    data = torch.load(path, weights_only=True)
    for bad, expected in (({"sigma_y": float("nan")}, "no valid sigma_y"), ({"sigma_y": "1.0"}, "no valid sigma_y"),
                          ({"model": [1, 2]}, "no model weights"), ({"model_config": None}, "no model configuration"),
                          ({"N": 0}, "invalid ensemble size"), ({"format": "other"}, "is not a daviz-mnmef-1")):
        torch.save({**data, **bad}, path)
        with pytest.raises(ckpt.CheckpointError, match=expected):
            ckpt.load(path)
    torch.save([1, 2, 3], path)
    with pytest.raises(ckpt.CheckpointError, match="is not a daviz-mnmef-1 checkpoint"):
        ckpt.load(path)


def test_weights_for_another_system_or_sigma_are_refused(tmp_path, monkeypatch):
    """A file whose name says l96 sigma 1.0 but whose contents were trained otherwise is refused, cached or not."""
    monkeypatch.setattr(pretrained, "PRETRAINED_DIR", tmp_path)
    write(tmp_path / "l96_sigma1.0_N10.pt", sigma_y=0.7)
    with pytest.raises(ckpt.CheckpointError, match=r"l96_sigma1\.0_N10\.pt was trained for sigma_y=0\.7, not 1\.0"):
        pretrained.load_filter("l96", 1.0, 10, device="cpu")
    model, _ = pretrained.load_model(tmp_path / "l96_sigma1.0_N10.pt", "cpu", system="l96", sigma_y=0.7)  # fits
    with pytest.raises(ckpt.CheckpointError, match="trained for sigma_y=0.7, not 1.0"):  # now cached: still refused
        pretrained.load_model(tmp_path / "l96_sigma1.0_N10.pt", "cpu", system="l96", sigma_y=1.0)
    write(tmp_path / "l96_sigma0.5_N10.pt", system="l63", sigma_y=0.5)
    with pytest.raises(ckpt.CheckpointError, match="trained for system 'l63', not 'l96'"):
        pretrained.load_filter("l96", 0.5, 10, device="cpu")
    with pytest.raises(ckpt.CheckpointError, match="sigma_y=0.7, not 1.0"):
        ckpt.load(tmp_path / "l96_sigma1.0_N10.pt", system="l96", sigma_y=1.0)


def test_missing_weights_message_is_short_and_says_what_to_run(tmp_path, monkeypatch):
    monkeypatch.setattr(pretrained, "PRETRAINED_DIR", tmp_path)
    write(tmp_path / "l96_sigma1.0_N10.pt")
    with pytest.raises(ckpt.CheckpointError) as info:
        pretrained.load_filter("l96", 0.5, 10)
    message = str(info.value)
    assert message.startswith("no MNMEF weights for Lorenz '96 at sigma_y=0.5: run `daviz train --system l96 --sigma-y 0.5")
    assert "\n" not in message and str(tmp_path) not in message and ".pt" not in message  # no paths, no file list
    with pytest.raises(ckpt.CheckpointError, match="no fine-tuned .* N=20: run `daviz finetune"):
        pretrained.load_filter("l96", 1.0, 20, variant="finetuned")


def test_odd_file_names_are_ignored(tmp_path):
    write(tmp_path / "l96_sigma1.0_N10.pt")
    (tmp_path / "l96_sigma1.0.0_N10.pt").write_bytes(b"")  # matches the pattern loosely, not a number
    (tmp_path / "notes.pt").write_bytes(b"")
    assert [e["file"].split("/")[-1] for e in pretrained.available(tmp_path)] == ["l96_sigma1.0_N10.pt"]


def test_preload_loads_each_file_once_and_reports_failures(tmp_path):
    write(tmp_path / "l96_sigma1.0_N10.pt")
    write(tmp_path / "l63_sigma1.0_N10.pt", system="l63")
    (tmp_path / "ks_sigma1.0_N10.pt").write_bytes(b"")  # broken
    results = []
    threads = [threading.Thread(target=lambda: results.append(pretrained.preload(device="cpu", directory=tmp_path)))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        assert sorted(r["loaded"]) == ["l63_sigma1.0_N10.pt", "l96_sigma1.0_N10.pt"]
        assert list(r["failed"]) == ["ks_sigma1.0_N10.pt"] and "is empty" in r["failed"]["ks_sigma1.0_N10.pt"]
    # One model object per file, whichever thread loaded it, and load_filter reuses it.
    m1, _ = pretrained.load_model(tmp_path / "l96_sigma1.0_N10.pt", "cpu")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pretrained, "PRETRAINED_DIR", tmp_path)
        f, _ = pretrained.load_filter("l96", 1.0, 10, device="cpu")
    assert f.model is m1
    only = pretrained.preload(["l63"], device="cpu", directory=tmp_path)
    assert only == {"loaded": ["l63_sigma1.0_N10.pt"], "failed": {}}


@pytest.mark.parametrize("case", ["system foo", "sidecar list", "sidecar string", "sidecar truncated",
                                  "weights empty"])
def test_evaluate_skips_broken_mnmef_weights_and_runs_the_rest(tmp_path, monkeypatch, capsys, case):
    make, expected = BROKEN[case]
    path = tmp_path / "l63_sigma1.0_N10.pt"
    make(path, "l63")
    monkeypatch.setattr(pretrained, "PRETRAINED_DIR", tmp_path)
    _evaluate_l63_runs_only_enkf(tmp_path)
    err = capsys.readouterr().err
    assert "skipping mnmef at N=5, sigma_y=1.0: " in err and expected.format(stem=path.stem) in err


def test_evaluate_skips_a_list_sidecar_in_daviz_pretrained_dir(tmp_path):
    """The issue's case end to end: the console script, DAVIZ_PRETRAINED_DIR, a sidecar that is a JSON list."""
    import os
    import subprocess
    import sys

    _sidecar("[]")(tmp_path / "l63_sigma1.0_N10.pt", "l63")
    env = {**os.environ, "DAVIZ_PRETRAINED_DIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "daviz.cli", "evaluate", "--system", "l63", "--filters", "mnmef,esrf",
                           "--N", "5", "--trajectories", "2", "--cycles", "5", "--quiet"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "skipping mnmef at N=5, sigma_y=1.0: MNMEF sidecar l63_sigma1.0_N10.json holds a JSON array" in proc.stderr
    assert "esrf" in proc.stdout and "mnmef" not in proc.stdout
