"""Packing a GPU run's results into at most MAX_FILES files under 16 MiB, and installing them (`unpack`)."""
from __future__ import annotations

import io
import json
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from .gpu_worker import EVAL_NS, PAIRS, stem

PART_BYTES = 15 * 2**20          # each returned file < 16 MiB
MAX_FILES = 8
BUNDLE = "daviz_gpu_bundle.tgz"


def heads_only(src: Path) -> bytes:
    """A fine-tuned file without its set transformer (frozen: equal to the pretrained one's)."""
    import torch
    data = torch.load(src, map_location="cpu", weights_only=True)
    data["model"] = {k: v for k, v in data["model"].items() if not k.startswith("set_transformer.")}
    data["set_transformer_from"] = src.name.split("_ft")[0] + ".pt"
    buf = io.BytesIO()
    torch.save(data, buf)
    return buf.getvalue()



def pack(out: Path, work: Path, state_dir: Path, summary: dict, pairs=PAIRS) -> list[Path]:
    stage = work / "bundle"
    shutil.rmtree(stage, ignore_errors=True)
    for sub in ("pretrained", "train_state", "logs"):
        (stage / sub).mkdir(parents=True)
    for f in sorted((work / "export").glob("*.pt")):
        side = f.with_suffix(".json")
        if "_ft" in f.name:
            (stage / "pretrained" / (f.stem + ".heads.pt")).write_bytes(heads_only(f))
        else:
            shutil.copy2(f, stage / "pretrained" / f.name)
        if side.is_file():
            shutil.copy2(side, stage / "pretrained" / side.name)
    for system, sigma in pairs:
        for f in (state_dir / f"{stem(system, sigma)}.pt", state_dir / f"{stem(system, sigma)}.json"):
            if f.is_file():
                shutil.copy2(f, stage / "train_state" / f.name)
    for f in list((work / "logs").glob("*")) + list((work / "status").glob("*.json")):
        shutil.copy2(f, stage / "logs" / f.name)
    (stage / "logs" / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    blob = io.BytesIO()
    with tarfile.open(fileobj=blob, mode="w:gz", compresslevel=1) as tar:  # float weights hardly compress
        tar.add(stage, arcname="bundle")
    data = blob.getvalue()
    parts = [data[i:i + PART_BYTES] for i in range(0, len(data), PART_BYTES)] or [b""]
    if len(parts) > MAX_FILES - 1:
        raise RuntimeError(f"bundle is {len(data) / 2**20:.0f} MiB: more than {MAX_FILES - 1} parts of 15 MiB")
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob(BUNDLE + ".part*"):
        old.unlink()
    files = []
    for i, part in enumerate(parts):
        f = out / f"{BUNDLE}.part{i:02d}"
        f.write_bytes(part)
        files.append(f)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    files.append(out / "summary.json")
    return files



def unpack(a) -> int:
    """Install a run's files: weights into --pretrained-dir, trunk states into --state-dir, logs into --runs-dir."""
    import torch

    from . import checkpoint as ckpt
    src = Path(a.dir)
    parts = sorted(src.glob(BUNDLE + ".part*"))
    if not parts:
        print(f"daviz: error: no {BUNDLE}.partNN files in {src}", file=sys.stderr)
        return 2
    data = b"".join(p.read_bytes() for p in parts)
    pre_dir, state_dir = Path(a.pretrained_dir), Path(a.state_dir)
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            tar.extractall(tmp, filter="data")
        stage = Path(tmp) / "bundle"
        summary = json.loads((stage / "logs" / "summary.json").read_text())
        runs = Path(a.runs_dir) / "gpu" / summary.get("stamp", time.strftime("%Y%m%dT%H%M%S"))
        installed = []
        pre_dir.mkdir(parents=True, exist_ok=True)
        for f in sorted((stage / "pretrained").glob("*.pt")):
            if f.name.endswith(".heads.pt"):
                continue
            shutil.copy2(f, pre_dir / f.name)
            shutil.copy2(f.with_suffix(".json"), pre_dir / f.with_suffix(".json").name)
            installed.append(f.name)
        for f in sorted((stage / "pretrained").glob("*.heads.pt")):
            heads = torch.load(f, map_location="cpu", weights_only=True)
            base = ckpt.load(stage / "pretrained" / heads.pop("set_transformer_from"))
            model = {**{k: v for k, v in base["model"].items() if k.startswith("set_transformer.")}, **heads["model"]}
            heads["model"] = {k: model[k] for k in base["model"]}  # the pretrained file's key order
            heads.pop("format", None)
            name = f.name.replace(".heads.pt", ".pt")
            meta = json.loads((stage / "pretrained" / (f.name.replace(".heads.pt", ".json"))).read_text())
            ckpt.save(pre_dir / name, heads, meta)
            ckpt.build_model(ckpt.load(pre_dir / name), pre_dir / name)  # it loads as a whole model again
            installed.append(name)
        state_dir.mkdir(parents=True, exist_ok=True)
        for f in sorted((stage / "train_state").glob("*")):
            shutil.copy2(f, state_dir / f.name)
        runs.mkdir(parents=True, exist_ok=True)
        for f in sorted((stage / "logs").glob("*")):
            shutil.copy2(f, runs / f.name)
    print(f"installed {len(installed)} weight files into {pre_dir}, trunk states into {state_dir}, logs into {runs}")
    print_summary(summary)
    return 0



def print_summary(summary: dict) -> None:
    print(f"{'model':18} {'pretrain step':>15} {'kind':>15} {'mode':>14} {'traj-cyc/s':>10}  "
          + " ".join(f"{'N=' + str(n):>7}" for n in EVAL_NS))
    for w in summary.get("workers", []):
        p = w.get("pretrain", {})
        prog = p.get("progress") or {}
        ev = {r["N"]: r.get("rrmse_mean") for r in w.get("eval", []) if "N" in r}
        cells = " ".join(f"{ev[n]:7.4f}" if isinstance(ev.get(n), float) else f"{'-':>7}" for n in EVAL_NS)
        print(f"{stem(w['system'], w['sigma_y']):18} {str(prog.get('step', '-')) + '/' + str(prog.get('total_steps', '-')):>15} "
              f"{prog.get('kind', 'failed'):>15} {str(p.get('step_mode', '-')):>14} "
              f"{str(p.get('trajectory_cycles_per_second_this_run', '-')):>10}  {cells}")
        for e in w.get("errors", []):
            print(f"    error: {e}")
    print("R-RMSE: quick held-out evaluation (test-stream trajectories; see summary.json for sizes)")

