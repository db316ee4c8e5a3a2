"""One run that trains every shipped MNMEF model (issue 11 point 2): `scripts/train_gpu.sh` calls `run`.

    python -m daviz.mnmef.gpu run --out DIR [--toy] [--total-seconds 525]
    python -m daviz.mnmef.gpu unpack DIR        # on the developer machine: files of DIR -> pretrained/, runs/

`run`, within --total-seconds of wall time counted from the shell script's start:
  1. smoke test (about 30 s on a GPU): imports, device, free memory and disk, writable folders, a tiny
     eager step vs the captured step (same parameters), exact resume of the captured step, a captured step
     for each system; any failure stops the run with one clear line (exit 3) before the budget is spent;
  2. one worker process per (system, sigma_y) of PAIRS, all at once on the one GPU, each:
     pretrain at N=10 with the Table C.8 data, batch and LR and a wsd schedule (weight decay 1e-2), resumed
     exactly from its trunk in --state-dir (pretrained/train_state/, kept in the repository) and trained to
     its phase deadline; the decayed branch (or, once the 1000 epochs are done, the finished model) is the
     exported N=10 model; then fine-tunes for N in FT_NS (paper §4.4: heads only, half the windows, LR/10,
     batch halved for N >= 40 and quartered for N >= 100, wsd within the time left); then a quick held-out
     evaluation (test-stream trajectories, fewer than README's tables) at every N. The pretrain step is
     captured as one CUDA graph; with the default --mode mixed the sigma_y=1.0 workers also torch.compile
     their cycles and the sigma_y=0.7 ones do not, so every run measures both (rates in the summary);
  3. packs weights (fine-tunes as their heads only; `unpack` puts the frozen set transformer back),
     trunk states, logs and the summary into at most 8 files under 16 MiB in --out, and prints the one-line
     command that installs them.
--toy runs the same code at CI size on the CPU (CUDA features off: the captured step runs its CPU
rehearsal) in well under a minute, writing only under --out and --work.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
from pathlib import Path

PAIRS = (("l96", 1.0), ("l96", 0.7), ("ks", 1.0), ("ks", 0.7), ("l63", 1.0), ("l63", 0.7))
FT_NS = (5, 15, 20, 40, 60, 100)
EVAL_NS = (5, 10, 15, 20, 40, 60, 100)
ROOT = Path(__file__).resolve().parents[2]
PART_BYTES = 15 * 2**20          # each returned file < 16 MiB
MAX_FILES = 8
BUNDLE = "daviz_gpu_bundle.tgz"
TOY_MODEL = {"feature_dim": 8, "width": 8, "heads": 2, "seeds": 2, "head_width": 8, "loc_activation": "sigmoid"}  # a few thousand weights
REQUIRED = ("numpy", "torch", "array_api_compat", "tqdm")  # what training and evaluation import


def stem(system: str, sigma_y: float) -> str:
    return f"{system}_sigma{sigma_y}_N10"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- recipes -------------------------------------------------------------------------------------------------
def pretrain_config(system: str, sigma_y: float, toy: bool):
    from .train import TrainConfig, table_c8
    if toy:
        return TrainConfig(system=system, sigma_y=sigma_y, N=10, epochs=1000, trajectories=8, cycles=4, batch_size=4,
                           chains=4, schedule="wsd", warmup_steps=2, model=TOY_MODEL, warm_start=True,
                           recipe_note="toy run of scripts/train_gpu.sh (CI size; not for use)")
    lr, batch = table_c8(system)
    total = 1000 * (8192 // batch)
    return TrainConfig(system=system, sigma_y=sigma_y, N=10, epochs=1000, trajectories=8192, cycles=60, batch_size=batch,
                       lr=lr, weight_decay=1e-2, schedule="wsd", warmup_steps=max(1, total // 100), decay_fraction=0.2,
                       warm_start=True, model={"loc_activation": "sigmoid"},
                       recipe_note=("scripts/train_gpu.sh: Table C.8 data, batch and LR (8192 windows x 60 cycles, "
                                    f"1000 epochs = {total} steps), warm start from the tuned localized EnKF (g = "
                                    "2·sigmoid), AdamW weight decay 1e-2, wsd schedule (1% warm-up, "
                                    "constant LR, cosine decay over the last 20%); a run cut short by its time budget "
                                    "decays a branch from its trunk (progress/schedule say where)"))


def finetune_cfg(pretrained: Path, N: int, toy: bool):
    from .train import finetune_config
    return finetune_config(pretrained, N, schedule="wsd", warmup_steps=0, decay_fraction=0.2, warm_start=True, recipe_note=(
        "toy fine-tune (CI size)" if toy else
        "scripts/train_gpu.sh fine-tune (paper §4.4: heads only, 4096 windows x 60, LR/10, 20 epochs, batch "
        "halved for N >= 40 and quartered for N >= 100) with a wsd schedule cut to the run's time budget"))


# -- the worker: one (system, sigma_y) -----------------------------------------------------------------------
def worker(a) -> int:
    import torch

    from . import checkpoint as ckpt
    from .quickeval import evaluate_file
    from .train import branch_path, train

    torch.set_num_threads(a.threads)
    work, state_dir = Path(a.work), Path(a.state_dir)
    export = work / "export"
    export.mkdir(parents=True, exist_ok=True)
    name = stem(a.system, a.sigma_y)
    status = {"system": a.system, "sigma_y": a.sigma_y, "errors": [], "finetunes": {}, "eval": []}
    status_path = work / "status" / f"{name}.json"
    status_path.parent.mkdir(parents=True, exist_ok=True)

    def write_status():
        status_path.write_text(json.dumps(status, indent=1) + "\n")

    def used(meta):
        keys = ("progress", "schedule", "step_mode", "step_fallbacks", "trajectory_cycles_per_second_this_run",
                "steps_per_second_this_run", "training_seconds")
        return {k: meta.get(k) for k in keys}

    dev = "cpu" if a.toy else "cuda"
    try:  # 1. pretrain (resumed trunk) and export
        cfg = pretrain_config(a.system, a.sigma_y, a.toy)
        trunk = state_dir / f"{name}.pt"
        start_step = None
        if trunk.is_file():
            try:
                d = ckpt.load(trunk)
                start_step = int(d["epoch"]) * cfg.batches_per_epoch + int(d["batch"])
            except Exception as exc:  # noqa: BLE001 - an unusable trunk: start afresh, say so
                status["errors"].append(f"trunk {trunk} unusable, starting afresh: {exc}")
                trunk.unlink()
        until = (start_step or 0) + a.pretrain_steps if a.pretrain_steps else None
        meta = train(cfg, trunk, resume=True, device=dev, mode=a.mode, progress=False, checkpoint_minutes=2,
                     budget_seconds=None if until else max(5.0, a.pretrain_until - time.time()), until_step=until)
        best = branch_path(trunk) if meta["progress"]["kind"] == "decayed branch" else trunk
        ckpt.export_weights(best, export / f"{name}.pt")
        status["pretrain"] = {"resumed_from_step": start_step, **used(meta), "exported": best.name}
        log(f"{name}: pretrain step {meta['progress']['step']}/{meta['progress']['total_steps']} "
            f"({meta['progress']['kind']}), mode {meta['step_mode']}, "
            f"{meta.get('trajectory_cycles_per_second_this_run')} traj-cycles/s")
    except Exception as exc:  # noqa: BLE001 - recorded; the other workers go on
        status["errors"].append(f"pretrain: {type(exc).__name__}: {exc}")
        traceback.print_exc()
        write_status()
        return 1
    write_status()

    pre = export / f"{name}.pt"
    for i, N in enumerate(FT_NS):  # 2. fine-tunes, sharing what is left of the phase equally
        left = a.finetune_until - time.time()
        if left < 2:
            status["finetunes"][str(N)] = {"skipped": "no time left"}
            write_status()
            continue
        out = work / "ft" / f"{name}_ft{N}.pt"
        for p in (out, out.with_suffix(".json"), branch_path(out), branch_path(out).with_suffix(".json")):
            p.unlink(missing_ok=True)  # fresh: the pretrained model changed since any earlier run
        try:
            meta = train(finetune_cfg(pre, N, a.toy), out, device=dev, mode=a.ft_mode, progress=False,
                         checkpoint_minutes=5, until_step=a.finetune_steps or None,
                         budget_seconds=None if a.finetune_steps else left / (len(FT_NS) - i))
            best = branch_path(out) if meta["progress"]["kind"] == "decayed branch" else out
            ckpt.export_weights(best, export / f"{name}_ft{N}.pt")
            status["finetunes"][str(N)] = used(meta)
        except Exception as exc:  # noqa: BLE001
            status["finetunes"][str(N)] = {"error": f"{type(exc).__name__}: {exc}"}
            traceback.print_exc()
        write_status()

    for N in EVAL_NS:  # 3. quick held-out evaluation
        f = export / (f"{name}.pt" if N == 10 else f"{name}_ft{N}.pt")
        if time.time() > a.eval_until or not f.is_file():
            status["eval"].append({"N": N, "skipped": "no time left" if f.is_file() else "no weights"})
            continue
        try:
            row = evaluate_file(f, N, device=dev, trajectories=a.eval_trajectories, cycles=a.eval_cycles,
                                purpose="test", seed=0)
            status["eval"].append(row)
        except Exception as exc:  # noqa: BLE001
            status["eval"].append({"N": N, "error": f"{type(exc).__name__}: {exc}"})
        write_status()
    write_status()
    return 0


# -- smoke test ----------------------------------------------------------------------------------------------
class SmokeFailure(RuntimeError):
    pass


def smoke(a, work: Path, state_dir: Path) -> dict:
    """About 30 s on a GPU. Raises SmokeFailure(one line) on anything that would spoil the run."""
    t0 = time.time()
    report = {"warnings": []}
    missing = []
    for mod in REQUIRED:
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        raise SmokeFailure(f"missing Python packages {missing}: give scripts/train_gpu.sh a wheel folder (--wheels DIR; "
                           "README of scripts/train_gpu.sh says how to build it with pip download)")
    import torch
    torch.set_num_threads(a.threads)  # oversubscribed CPU threads make small steps many times slower

    from . import checkpoint as ckpt
    from .model import MNMEF, ModelConfig
    from .rollout import RolloutLoss
    from .step import TrainStep, make_optimizer
    from .train import TrainConfig, epoch_windows, make_data, train
    from ..systems import get_system
    if "panel" in sys.modules:
        report["warnings"].append("panel was imported by the training code (harmless, but slow)")
    report["python"], report["torch"] = sys.version.split()[0], torch.__version__
    if a.toy:
        dev = torch.device("cpu")
        report["device"] = "CPU (toy run: CUDA features off, captured step rehearsed eagerly)"
    else:
        if not torch.cuda.is_available():
            raise SmokeFailure("no CUDA GPU visible to torch (run with --toy for the CPU rehearsal)")
        dev = torch.device("cuda")
        free, total = torch.cuda.mem_get_info()
        report["device"] = f"{torch.cuda.get_device_name()} ({total / 2**30:.0f} GiB, {free / 2**30:.0f} GiB free)"
        if free < 24 * 2**30:
            raise SmokeFailure(f"only {free / 2**30:.1f} GiB GPU memory free; six workers need about 24 GiB")
    for d in (Path(a.out), work, state_dir):
        d.mkdir(parents=True, exist_ok=True)
        probe = d / ".write-test"
        try:
            probe.write_bytes(b"x")
            probe.unlink()
        except OSError as exc:
            raise SmokeFailure(f"cannot write to {d}: {exc.strerror}") from None
    free_disk = shutil.disk_usage(work).free
    if free_disk < 2 * 2**30:
        raise SmokeFailure(f"only {free_disk / 2**30:.1f} GiB disk free in {work}")
    for f in state_dir.glob("*_N10.pt"):
        try:
            ckpt.load(f)
        except Exception as exc:  # noqa: BLE001
            report["warnings"].append(f"trunk state {f.name} is unusable and will be restarted: {exc}")

    # eager vs captured step, from one start, on this device: same parameters
    torch.manual_seed(0)
    cfg = TrainConfig(system="l96", sigma_y=1.0, N=5, trajectories=16, cycles=6, batch_size=8, chains=4, epochs=1,
                      model={"feature_dim": 16})
    truth, obs = make_data(cfg)
    truth = torch.as_tensor(truth, dtype=torch.float32, device=dev)
    obs = torch.as_tensor(obs, dtype=torch.float32, device=dev)
    finals = {}
    for mode in ("eager", "graph"):
        torch.manual_seed(0)
        model = MNMEF(get_system("l96"), 1.0, ModelConfig(feature_dim=16)).to(dev)
        opt = make_optimizer(list(model.parameters()), 1e-3, 1e-2, dev)
        st = TrainStep(RolloutLoss(model, 5), model, opt, truth, obs, 6, 8, 16, mode=mode)
        st.set_windows(epoch_windows(cfg, truth.shape[0], 0))
        for b in range(3):
            stats = st.step(b % 2, 10 + b, 1e-3).cpu()
            if not torch.isfinite(stats).all() or stats[3] != 0:
                raise SmokeFailure(f"{mode} training step gave non-finite results {stats.tolist()}")
        if st.fallbacks:
            report["warnings"].append(f"graph capture fell back: {st.fallbacks}")
        finals[mode] = [q.detach().cpu() for q in model.parameters()]
    diff = max(float((x - y).abs().max()) for x, y in zip(finals["eager"], finals["graph"]))
    report["eager_vs_graph_max_param_diff"] = diff
    if diff > 1e-5:
        raise SmokeFailure(f"captured and eager steps disagree (max parameter difference {diff:.2e} > 1e-5)")

    # exact resume of the captured step (the property successive GPU runs rely on)
    tmp = Path(tempfile.mkdtemp(dir=work))
    kw = dict(device=str(dev), mode="graph", progress=False)
    rcfg = dict(system="l96", sigma_y=1.0, N=5, trajectories=16, cycles=6, batch_size=8, chains=4, epochs=2,
                model={"feature_dim": 16})
    train(TrainConfig(**rcfg), tmp / "full.pt", **kw)
    train(TrainConfig(**rcfg), tmp / "part.pt", stop_after_batches=2, **kw)
    train(TrainConfig(**rcfg), tmp / "part.pt", resume=True, **kw)
    wa, wb = ckpt.load(tmp / "full.pt")["model"], ckpt.load(tmp / "part.pt")["model"]
    rdiff = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    report["resume_max_param_diff"] = rdiff
    if rdiff > 1e-5:
        raise SmokeFailure(f"resume is not exact (max parameter difference {rdiff:.2e})")
    if rdiff > 0:
        report["warnings"].append(f"resume exact only to {rdiff:.1e} on this device (not bitwise)")

    # one captured step per system (FFT, solves of every size)
    for system in ("ks", "l63"):
        c = TrainConfig(system=system, sigma_y=1.0, N=5, trajectories=8, cycles=3, batch_size=8, chains=4, epochs=1,
                        model={"feature_dim": 16})
        m = train(c, tmp / f"{system}.pt", mode="graph", progress=False, device=str(dev))
        if m["step_fallbacks"]:
            report["warnings"].append(f"{system}: graph capture fell back: {m['step_fallbacks']}")
    shutil.rmtree(tmp, ignore_errors=True)
    report["seconds"] = round(time.time() - t0, 1)
    return report


# -- packing -------------------------------------------------------------------------------------------------
def heads_only(src: Path) -> bytes:
    """A fine-tuned file without its set transformer (frozen: equal to the pretrained one's)."""
    import torch
    data = torch.load(src, map_location="cpu", weights_only=True)
    data["model"] = {k: v for k, v in data["model"].items() if not k.startswith("set_transformer.")}
    data["set_transformer_from"] = src.name.split("_ft")[0] + ".pt"
    buf = io.BytesIO()
    torch.save(data, buf)
    return buf.getvalue()


def pack(out: Path, work: Path, state_dir: Path, summary: dict) -> list[Path]:
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
    for system, sigma in PAIRS:
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


# -- the orchestrator ----------------------------------------------------------------------------------------
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


def run(a) -> int:
    t0 = float(os.environ.get("DAVIZ_GPU_T0") or time.time())
    deadline = t0 + a.total_seconds
    out = Path(a.out).resolve()
    work = Path(a.work or (out.parent / (out.name + "-work"))).resolve()
    state_dir = Path(a.state_dir or (work / "state" if a.toy else ROOT / "pretrained" / "train_state")).resolve()
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    for sub in ("export", "ft", "status", "logs"):
        shutil.rmtree(work / sub, ignore_errors=True)
    (work / "logs").mkdir(parents=True, exist_ok=True)
    log(f"daviz GPU run {stamp}: out {out}, work {work}, trunk states {state_dir}, deadline in {deadline - time.time():.0f} s")
    import threading

    def hung():  # a smoke test stuck in a driver call cannot raise: end the process with the message
        print(f"SMOKE TEST FAILED: no answer after {limit:.0f} s (device or driver hung?)", file=sys.stderr, flush=True)
        os._exit(3)

    limit = 240.0 if a.toy else 120.0
    watchdog = threading.Timer(limit, hung)
    watchdog.daemon = True
    watchdog.start()
    try:
        report = smoke(a, work, state_dir)
    except SmokeFailure as exc:
        print(f"SMOKE TEST FAILED: {exc}", file=sys.stderr, flush=True)
        return 3
    except Exception as exc:  # noqa: BLE001 - anything else is a failure too, with its one line
        traceback.print_exc()
        print(f"SMOKE TEST FAILED: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
              file=sys.stderr, flush=True)
        return 3
    finally:
        watchdog.cancel()
    log(f"smoke test passed in {report['seconds']} s on {report['device']}; warnings: {report['warnings'] or 'none'}")

    now = time.time()
    reserve = 6.0 if a.toy else 25.0   # packing
    avail = deadline - now - reserve
    if avail < (10 if a.toy else 120):
        print(f"daviz: error: only {avail:.0f} s left after the smoke test; give a larger --total-seconds", file=sys.stderr)
        return 2
    ev = min(60.0, 0.15 * avail)
    ft = 0.3 * (avail - ev)
    t_pre, t_ft, t_ev = now + avail - ev - ft, now + avail - ev, now + avail
    if a.toy:  # fixed step counts bound the work; the deadline is only a safety net
        t_pre = t_ft = t_ev = now + avail
    log(f"phases: pretrain until +{t_pre - now:.0f} s, fine-tune until +{t_ft - now:.0f} s, evaluate until +{t_ev - now:.0f} s")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(a.threads),
           "TORCHINDUCTOR_COMPILE_THREADS": "2", "CUBLAS_WORKSPACE_CONFIG": ":4096:8",
           "PYTHONPATH": os.pathsep.join([str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
    if a.toy:
        env["CUDA_VISIBLE_DEVICES"] = ""
    procs = []
    for system, sigma in PAIRS:
        cmd = [sys.executable, "-W", "ignore", "-m", "daviz.mnmef.gpu", "worker", "--system", system, "--sigma-y", str(sigma),
               "--work", str(work), "--state-dir", str(state_dir), "--pretrain-until", str(t_pre),
               "--finetune-until", str(t_ft), "--eval-until", str(t_ev), "--ft-mode", a.ft_mode,
               "--mode", a.mode if a.mode != "mixed" else ("compile+graph" if sigma == 1.0 else "graph"),
               "--threads", str(a.threads), "--eval-trajectories", str(a.eval_trajectories),
               "--eval-cycles", str(a.eval_cycles)] + (["--toy"] if a.toy else [])
        if a.toy:  # a fixed, tiny amount of work, so every phase runs even on a busy CI machine
            cmd += ["--pretrain-steps", "6", "--finetune-steps", "2"]
        fh = open(work / "logs" / f"{stem(system, sigma)}.log", "w")
        procs.append((system, sigma, subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=ROOT), fh))
    log(f"{len(procs)} workers started")
    hard = t_ev + (10 if a.toy else 20)
    while any(p.poll() is None for _, _, p, _ in procs) and time.time() < hard:
        time.sleep(0.5)
    late = [p for _, _, p, _ in procs if p.poll() is None]
    for p in late:
        p.send_signal(signal.SIGTERM)  # the trainer checkpoints and exits at its next step
    grace = time.time() + (5 if a.toy else 15)
    while any(p.poll() is None for p in late) and time.time() < grace:
        time.sleep(0.2)
    for p in late:
        if p.poll() is None:
            p.kill()
            p.wait()
    if late:
        log(f"{len(late)} worker(s) were still running at the deadline and were stopped")
    for *_, fh in procs:
        fh.close()
    workers = []
    for system, sigma, p, _ in procs:
        f = work / "status" / f"{stem(system, sigma)}.json"
        w = json.loads(f.read_text()) if f.is_file() else {"system": system, "sigma_y": sigma, "errors": []}
        if p.returncode:
            w["errors"].append(f"worker exited with status {p.returncode} (log: logs/{stem(system, sigma)}.log)")
        workers.append(w)
    summary = {"stamp": stamp, "toy": a.toy, "smoke": report, "workers": workers,
               "eval": {"purpose": "test", "seed": 0, "trajectories": a.eval_trajectories, "cycles": a.eval_cycles},
               "wall_seconds_before_pack": round(time.time() - t0, 1)}
    files = pack(out, work, state_dir, summary)
    log(f"packed {len(files)} files into {out}: " + ", ".join(f"{f.name} ({f.stat().st_size / 2**20:.1f} MiB)" for f in files))
    print_summary(summary)
    print(f"wall time {time.time() - t0:.0f} s of {a.total_seconds:.0f}")
    print("install on the developer machine (from the repository root, FILES = the folder holding these files):")
    print("  python -m daviz.mnmef.gpu unpack FILES")
    bad = [w for w in workers if w.get("errors")]
    return 1 if len(bad) == len(workers) else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m daviz.mnmef.gpu", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="smoke test, train everything, evaluate, pack")
    r.add_argument("--out", required=True, help="folder for the (at most 8) files to bring back")
    r.add_argument("--work", help="scratch folder (default: OUT-work beside OUT)")
    r.add_argument("--state-dir", help="trunk states to resume (default: pretrained/train_state; toy: WORK/state)")
    r.add_argument("--toy", action="store_true", help="CI size on the CPU, same code path")
    r.add_argument("--total-seconds", type=float, help="wall-time budget from the script's start (default 525; "
                                                         "toy: 240, a safety net: its work is a fixed few steps)")
    r.add_argument("--mode", help="pretrain step mode: compile+graph, graph, eager, or mixed (default: compile+graph "
                                  "for sigma_y=1.0, graph for 0.7, so one run measures both; toy: graph); a mode "
                                  "that fails falls back by itself to graph, then eager")
    r.add_argument("--ft-mode", default="graph", help="fine-tune step mode (one compile per N would cost too much)")
    r.add_argument("--threads", type=int, help="CPU threads per process (default: 2 on a GPU machine, 1 with --toy)")
    r.add_argument("--eval-trajectories", type=int)
    r.add_argument("--eval-cycles", type=int)
    r.set_defaults(func=run)
    w = sub.add_parser("worker", help=argparse.SUPPRESS)
    w.add_argument("--system", required=True)
    w.add_argument("--sigma-y", type=float, required=True)
    w.add_argument("--work", required=True)
    w.add_argument("--state-dir", required=True)
    for k in ("--pretrain-until", "--finetune-until", "--eval-until"):
        w.add_argument(k, type=float, required=True)
    w.add_argument("--mode", default="compile+graph")
    w.add_argument("--ft-mode", default="graph")
    w.add_argument("--threads", type=int, default=2)
    w.add_argument("--eval-trajectories", type=int, default=16)
    w.add_argument("--eval-cycles", type=int, default=500)
    w.add_argument("--toy", action="store_true")
    w.add_argument("--pretrain-steps", type=int, default=0, help="stop after this many more steps (0: time budget only)")
    w.add_argument("--finetune-steps", type=int, default=0)
    w.set_defaults(func=worker)
    u = sub.add_parser("unpack", help="install a run's files into pretrained/ and runs/")
    u.add_argument("dir")
    u.add_argument("--pretrained-dir", default=str(ROOT / "pretrained"))
    u.add_argument("--state-dir", default=str(ROOT / "pretrained" / "train_state"))
    u.add_argument("--runs-dir", default=str(ROOT / "runs"))
    u.set_defaults(func=unpack)
    a = ap.parse_args(argv)
    if a.command == "run":
        a.threads = a.threads or (1 if a.toy else 2)
        a.total_seconds = a.total_seconds or (240.0 if a.toy else 525.0)
        a.mode = a.mode or ("graph" if a.toy else "mixed")  # compiling on a CPU takes minutes
        a.eval_trajectories = a.eval_trajectories or (2 if a.toy else 16)
        a.eval_cycles = a.eval_cycles or (10 if a.toy else 500)
    return a.func(a)


if __name__ == "__main__":
    sys.exit(main())
