"""One run that trains every shipped MNMEF model (issue 11 point 2): `scripts/train_gpu.sh` calls `run`.

    python -m daviz.mnmef.gpu run --out DIR [--toy] [--total-seconds 525]
    python -m daviz.mnmef.gpu unpack DIR        # on the developer machine: files of DIR -> pretrained/, runs/

`run`, within --total-seconds of wall time counted from the shell script's start:
  1. smoke test (about 30 s on a GPU): imports, device, free memory and disk, writable folders, a tiny
     eager step vs the captured step (same parameters), exact resume of the captured step, a captured step
     for each system; any failure stops the run with one clear line (exit 3) before the budget is spent;
  2. one worker process per (system, sigma_y) of PAIRS (or of --pairs), all at once on the one GPU, each:
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
Measured on an H200 (2026-12-04, results/gpu_*): six workers together reach what one alone does (146 k vs 142 k
L96 trajectory-cycles/s: they share one saturated GPU), so `--pairs l96:1.0,ks:1.0` gives those two models three
times the steps of a six-model run.
--toy runs the same code at CI size on the CPU (CUDA features off: the captured step runs its CPU
rehearsal) in well under a minute, writing only under --out and --work.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

from .gpu_bundle import MAX_FILES, pack, print_summary, unpack
from .gpu_smoke import SmokeFailure, smoke
from .gpu_worker import EVAL_NS, FT_NS, PAIRS, log, stem, worker

ROOT = Path(__file__).resolve().parents[2]
REQUIRED = ("numpy", "torch", "array_api_compat", "tqdm")  # what training and evaluation import


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
        report = smoke(a, work, state_dir, REQUIRED)
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
    if not report["graph_ok"]:
        a.mode, a.ft_mode = "eager", "eager"

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
    for system, sigma in a.pairs:
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
    files = pack(out, work, state_dir, summary, a.pairs)
    log(f"packed {len(files)} files into {out}: " + ", ".join(f"{f.name} ({f.stat().st_size / 2**20:.1f} MiB)" for f in files))
    print_summary(summary)
    print(f"wall time {time.time() - t0:.0f} s of {a.total_seconds:.0f}")
    print("install on the developer machine (from the repository root, FILES = the folder holding these files):")
    print("  python -m daviz.mnmef.gpu unpack FILES")
    bad = [w for w in workers if w.get("errors")]
    return 1 if len(bad) == len(workers) else 0



def parse_pairs(text: str | None) -> tuple:
    """'l96:1.0,ks:1.0' -> (('l96', 1.0), ('ks', 1.0)), each one of PAIRS; None -> PAIRS."""
    if text is None:
        return PAIRS
    pairs = []
    for item in text.split(","):
        system, _, sigma = item.strip().partition(":")
        try:
            pair = (system, float(sigma))
        except ValueError:
            pair = None
        if pair not in PAIRS:
            known = ",".join(f"{s}:{v}" for s, v in PAIRS)
            raise ValueError(f"--pairs: {item.strip()!r} is not one of {known}")
        if pair not in pairs:
            pairs.append(pair)
    return tuple(pairs)


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
    r.add_argument("--pairs", help="which models, e.g. l96:1.0,ks:1.0 (default: all six of PAIRS)")
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
        try:
            a.pairs = parse_pairs(a.pairs)
        except ValueError as err:
            print(f"daviz: error: {err}", file=sys.stderr)
            return 2
        a.threads = a.threads or (1 if a.toy else 2)
        a.total_seconds = a.total_seconds or (240.0 if a.toy else 525.0)
        a.mode = a.mode or ("graph" if a.toy else "mixed")  # compiling on a CPU takes minutes
        a.eval_trajectories = a.eval_trajectories or (2 if a.toy else 16)
        a.eval_cycles = a.eval_cycles or (10 if a.toy else 500)
    return a.func(a)



__all__ = ["main", "run", "PAIRS", "FT_NS", "EVAL_NS", "MAX_FILES", "REQUIRED"]

if __name__ == "__main__":
    sys.exit(main())
