"""scripts/train_gpu.sh at toy size on the CPU (the GPU run's code path with CUDA off), its packing limits,
the unpack that installs the files, and the smoke test's refusals."""
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from daviz.mnmef import checkpoint as ckpt
from daviz.mnmef import gpu, pretrained

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "train_gpu.sh"


def run_script(*args, timeout=900):
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(["bash", str(SCRIPT), *map(str, args)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_toy_run_packs_and_unpacks(tmp_path):
    out = tmp_path / "out"
    res = run_script(out, "--toy", "--work", tmp_path / "work")
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    files = sorted(out.iterdir())
    assert 1 <= len(files) <= gpu.MAX_FILES and all(f.stat().st_size < 16 * 2**20 for f in files), files
    summary = json.loads((out / "summary.json").read_text())
    assert summary["toy"] and len(summary["workers"]) == len(gpu.PAIRS)
    for w in summary["workers"]:
        assert not w["errors"], w["errors"]
        assert w["pretrain"]["progress"]["kind"] == "decayed branch" and w["pretrain"]["progress"]["step"] == 6
        assert sorted(map(int, w["finetunes"])) == sorted(gpu.FT_NS)
        assert all(f["progress"]["step"] == 2 for f in w["finetunes"].values()), w["finetunes"]
        rows = {r["N"]: r for r in w["eval"]}
        assert sorted(rows) == sorted(gpu.EVAL_NS) and all(0 < r["rrmse_mean"] < 5 for r in rows.values()), rows
    assert "python -m daviz.mnmef.gpu unpack FILES" in res.stdout

    pre, state, runs = tmp_path / "pre", tmp_path / "state", tmp_path / "runs"
    assert gpu.main(["unpack", str(out), "--pretrained-dir", str(pre), "--state-dir", str(state),
                     "--runs-dir", str(runs)]) == 0
    shipped = pretrained.available(pre)
    assert len(shipped) == len(gpu.PAIRS) * (1 + len(gpu.FT_NS))
    for e in shipped:
        model = ckpt.build_model(ckpt.load(e["file"]), e["file"])  # whole models again
        assert ckpt.read_meta(e["file"])["N"] == e["N"]
        if e["variant"] == "finetuned":  # the set transformer put back is the pretrained one
            base = ckpt.load(Path(e["file"]).with_name(Path(e["file"]).name.split("_ft")[0] + ".pt"))["model"]
            for k, v in model.state_dict().items():
                if k.startswith("set_transformer."):
                    assert torch.equal(v, base[k]), k
    assert len(list(state.glob("*_N10.pt"))) == len(gpu.PAIRS)  # trunk states for the next run
    assert (next((runs / "gpu").iterdir()) / "summary.json").is_file()


def test_smoke_failure_stops_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(gpu, "REQUIRED", gpu.REQUIRED + ("daviz_no_such_package",))
    code = gpu.main(["run", "--out", str(tmp_path / "o"), "--toy"])
    err = capsys.readouterr().err
    assert code == 3 and "SMOKE TEST FAILED: missing Python packages ['daviz_no_such_package']" in err
    assert not list((tmp_path / "o").glob("*.part*"))


def test_script_usage_and_empty_wheel_folder(tmp_path):
    res = run_script(timeout=60)
    assert res.returncode == 2 and "usage: scripts/train_gpu.sh OUT_DIR" in res.stderr
    (tmp_path / "w").mkdir()
    res = run_script(tmp_path / "o", "--wheels", tmp_path / "w", "--toy", timeout=60)
    assert res.returncode == 2 and "no .whl files" in res.stderr


def test_unpack_without_files(tmp_path, capsys):
    assert gpu.main(["unpack", str(tmp_path)]) == 2
    assert "no daviz_gpu_bundle.tgz.partNN files" in capsys.readouterr().err


def test_pairs_choose_the_models(tmp_path, capsys):
    assert gpu.parse_pairs("l96:1.0, ks:1.0") == (("l96", 1.0), ("ks", 1.0))
    assert gpu.parse_pairs(None) == gpu.PAIRS
    assert gpu.main(["run", "--out", str(tmp_path / "o"), "--toy", "--pairs", "l96:0.5"]) == 2
    err = capsys.readouterr().err
    assert "--pairs: 'l96:0.5' is not one of l96:1.0," in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
    out = tmp_path / "one"
    res = run_script(out, "--toy", "--work", tmp_path / "work", "--pairs", "l63:0.7")
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert [(w["system"], w["sigma_y"]) for w in summary["workers"]] == [("l63", 0.7)] and not summary["workers"][0]["errors"]
